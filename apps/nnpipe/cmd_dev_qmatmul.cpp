// nnpipe dev-qmatmul (developer command): y (n, rows) = x (n, cols) W^T with W in ggml blocks,
// through cpu::qmatmul, so the conformance tests can compare it with ggml's own vec_dot.
// Files are raw little-endian: --weights rows * row_bytes block bytes, --x and --out f32;
// --act-out the converted activations (ggml blocks; F16/BF16-rounded values as f32).
#include <cstring>

#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "command.h"
#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"

namespace {

struct DevQmatmulArgs {
  std::string type, weights, x, out, act_out, isa = "auto";
  int64_t rows = 0, cols = 0, n = 0;
};

int run_dev_qmatmul(const DevQmatmulArgs& a) {
  using namespace nnpipe;
  const auto ggml = ggml_type_from_name(a.type);
  if (!ggml) fail(ErrorCode::kInvalidArgument, "unknown ggml type \"{}\"", a.type);
  const std::optional<DType> type = dtype_of_ggml(*ggml);
  if (!type || !cpu::qmatmul_supported(*type))
    fail(ErrorCode::kUnsupported, "qmatmul: weight type {} is not supported", a.type);
  if (a.rows <= 0 || a.cols <= 0 || a.n < 0)
    fail(ErrorCode::kInvalidArgument, "--rows, --cols must be positive and --n >= 0");
  if (a.cols % dtype_block_size(*type) != 0)
    fail(ErrorCode::kInvalidArgument, "--cols {} is not a multiple of {}'s block size {}", a.cols,
         a.type, dtype_block_size(*type));
  const std::string wb = read_file(a.weights);
  const size_t row_bytes = dtype_row_bytes(*type, a.cols);
  if (wb.size() != static_cast<size_t>(a.rows) * row_bytes)
    fail(ErrorCode::kFormat, "{}: {} bytes, expected {} rows of {}", a.weights, wb.size(), a.rows,
         row_bytes);
  const std::string xb = read_file(a.x);
  if (xb.size() != static_cast<size_t>(a.n * a.cols) * 4)
    fail(ErrorCode::kFormat, "{}: {} bytes, expected {} x {} f32", a.x, xb.size(), a.n, a.cols);
  std::vector<float> x(static_cast<size_t>(a.n * a.cols)), y(static_cast<size_t>(a.n * a.rows));
  std::memcpy(x.data(), xb.data(), xb.size());
  const Tensor w = Tensor::borrow(*type, {a.rows, a.cols},
                                  {reinterpret_cast<const uint8_t*>(wb.data()), wb.size()});
  if (a.isa == "scalar") {
    cpu::qk::force_isa(cpu::qk::Isa::kScalar);
  } else if (a.isa == "avx2") {
    cpu::qk::force_isa(cpu::qk::Isa::kAvx2);
  } else if (a.isa != "auto") {
    fail(ErrorCode::kInvalidArgument, "--isa must be auto, scalar or avx2, not \"{}\"", a.isa);
  }
  cpu::qmatmul(y.data(), x.data(), a.n, w);
  if (!a.act_out.empty()) {  // the activations as converted for the dot products
    const size_t ab = cpu::qk::act_row_bytes(*type, a.cols);
    std::vector<uint8_t> act(ab * static_cast<size_t>(a.n));
    for (int64_t t = 0; t < a.n; ++t)
      cpu::qk::convert_activations(*type, x.data() + t * a.cols, a.cols, act.data() + t * ab);
    write_file_atomic(a.act_out, {reinterpret_cast<const char*>(act.data()), act.size()});
  }
  write_file_atomic(a.out, {reinterpret_cast<const char*>(y.data()), y.size() * 4});
  return 0;
}

NNPIPE_COMMAND(
    "dev-qmatmul",
    "[developer] y = x W^T with ggml-typed W through the CPU qmatmul kernels (for "
    "tests)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<DevQmatmulArgs>();
      app.add_option("--type", a->type, "ggml type of W, e.g. Q4_K")->required();
      app.add_option("--weights", a->weights, "W: rows x cols as raw ggml blocks")->required();
      app.add_option("--x", a->x, "x: n x cols raw little-endian f32")->required();
      app.add_option("--rows", a->rows, "Rows of W (output features)")->required();
      app.add_option("--cols", a->cols, "Columns of W (input features)")->required();
      app.add_option("--n", a->n, "Tokens (rows of x)")->required();
      app.add_option("--out", a->out, "y: n x rows raw little-endian f32")->required();
      app.add_option("--isa", a->isa, "Kernels: auto, scalar or avx2");
      app.add_option("--act-out", a->act_out,
                     "Also write x converted to W's vec_dot type (F16/BF16 as f32)");
      return [a] { return run_dev_qmatmul(*a); };
    });

}  // namespace
