// nnpipe dev-quantize (developer command): quantize a raw little-endian f32 file to ggml blocks, or
// with --dequantize expand blocks back to raw f32, so the conformance tests can compare nnpipe's
// quantizers with llama.cpp's and gguf-py's byte for byte.
#include <cstring>

#include "command.h"
#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"
#include "quant/ggml_quants.h"

namespace {

struct DevQuantizeArgs {
  std::string type, in, out;
  int64_t rows = 0, cols = 0;
  bool dequantize = false;
};

int run_dev_quantize(const DevQuantizeArgs& a) {
  using namespace nnpipe;
  const auto ggml = ggml_type_from_name(a.type);
  if (!ggml) fail(ErrorCode::kInvalidArgument, "unknown ggml type \"{}\"", a.type);
  const std::optional<DType> type = dtype_of_ggml(*ggml);
  if (!type) fail(ErrorCode::kUnsupported, "quantization to {} is not implemented", a.type);
  const std::string in = read_file(a.in);
  if (a.dequantize) {
    const size_t bytes = dtype_size(*type);
    if (in.size() % bytes != 0)
      fail(ErrorCode::kFormat, "{}: {} bytes are not whole {} blocks", a.in, in.size(), a.type);
    std::vector<float> out(in.size() / bytes * static_cast<size_t>(dtype_block_size(*type)));
    dequantize_rows(*type, {reinterpret_cast<const uint8_t*>(in.data()), in.size()}, out);
    write_file_atomic(a.out, {reinterpret_cast<const char*>(out.data()), out.size() * 4});
    return 0;
  }
  if (in.size() % 4 != 0) fail(ErrorCode::kFormat, "{}: size is not a multiple of 4", a.in);
  std::vector<float> x(in.size() / 4);
  if (a.rows > 0 && static_cast<uint64_t>(a.rows) * static_cast<uint64_t>(a.cols) != x.size())
    fail(ErrorCode::kInvalidArgument, "{}: {} values, not {} x {}", a.in, x.size(), a.rows, a.cols);
  std::memcpy(x.data(), in.data(), in.size());
  const std::vector<uint8_t> q = quantize_rows(*type, x, a.cols);
  write_file_atomic(a.out, {reinterpret_cast<const char*>(q.data()), q.size()});
  return 0;
}

NNPIPE_COMMAND(
    "dev-quantize", "Developer: quantize raw f32 to ggml blocks or back (for tests)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<DevQuantizeArgs>();
      app.add_option("--type", a->type, "ggml type name, e.g. Q4_0")->required();
      app.add_option("--in", a->in, "Input: raw little-endian f32 (or blocks)")->required();
      app.add_option("--out", a->out, "Output: blocks (or raw f32)")->required();
      app.add_option("--cols", a->cols, "Row length in values (quantize mode)");
      app.add_option("--rows", a->rows, "Number of rows (optional, checked against the input)");
      app.add_flag("--dequantize", a->dequantize, "Expand blocks to raw f32");
      return [a] {
        if (!a->dequantize && a->cols <= 0)
          nnpipe::fail(nnpipe::ErrorCode::kInvalidArgument, "--cols is required");
        return run_dev_quantize(*a);
      };
    });

}  // namespace
