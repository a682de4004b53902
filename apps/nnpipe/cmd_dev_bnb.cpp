// nnpipe dev-bnb (developer command): run nnpipe's bitsandbytes quantizers on every f32 tensor of a
// .safetensors file, or dequantize a bitsandbytes model directory to f32, so the conformance tests
// can compare bytes and floats with bitsandbytes itself.
//   --mode int8:    <name> int8 (rows, cols), <name>.SCB f32, <name>.dequant f32
//   --mode nf4/fp4: <name> u8 packed, <name>.absmax f32 (u8 with --double-quant, then also
//                   <name>.nested_absmax f32 and <name>.nested_offset f32 [1]), <name>.dequant f32
//   --mode dequantize --in MODEL_DIR: every Qwen2 weight as bitsandbytes dequantizes it, f32
#include <cstring>

#include "command.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/bnb_checkpoint.h"
#include "quant/bnb.h"
#include "tensor/convert.h"

namespace {

struct DevBnbArgs {
  std::string mode, in, out;
  int64_t blocksize = 64;
  bool double_quant = false;
};

struct Owned {
  std::string name;
  nnpipe::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

int run_dev_bnb(const DevBnbArgs& a) {
  using namespace nnpipe;
  std::vector<Owned> outs;
  if (a.mode == "dequantize") {
    DequantizedModel m = load_bnb_checkpoint(a.in);
    for (auto& [name, v] : m.weights)
      outs.push_back({name, DType::kF32, {static_cast<int64_t>(v.size())}, as_bytes(v)});
  } else if (a.mode == "int8" || a.mode == "nf4" || a.mode == "fp4") {
    const SafetensorsFile f = SafetensorsFile::open(a.in);
    for (const TensorView& t : f.tensors()) {
      const std::vector<float> x = to_f32(t.dtype, t.data);
      const auto n = static_cast<int64_t>(x.size());
      std::vector<float> dq(x.size());
      if (a.mode == "int8") {
        if (t.shape.size() != 2)
          fail(ErrorCode::kInvalidArgument, "{}: {}: int8 needs a 2-D tensor", a.in, t.name);
        BnbInt8 q = bnb_quantize_int8(x, t.shape[0], t.shape[1]);
        bnb_dequantize_int8(q.cb, q.scb, t.shape[1], dq);
        outs.push_back({t.name, DType::kI8, t.shape, as_bytes(q.cb)});
        outs.push_back({t.name + ".SCB", DType::kF32, {t.shape[0]}, as_bytes(q.scb)});
      } else {
        const Bnb4bitType type = a.mode == "nf4" ? Bnb4bitType::kNF4 : Bnb4bitType::kFP4;
        Bnb4bit q = bnb_quantize_4bit(x, a.blocksize, type);
        std::vector<float> absmax = q.absmax;
        if (a.double_quant) {
          BnbNested nq = bnb_quantize_nested(q.absmax);
          bnb_dequantize_nested(nq.q, nq.absmax, bnb_dynamic_map(), kBnbNestedBlocksize, nq.offset,
                                absmax);
          outs.push_back(
              {t.name + ".absmax", DType::kU8, {static_cast<int64_t>(nq.q.size())}, nq.q});
          outs.push_back({t.name + ".nested_absmax",
                          DType::kF32,
                          {static_cast<int64_t>(nq.absmax.size())},
                          as_bytes(nq.absmax)});
          outs.push_back({t.name + ".nested_offset",
                          DType::kF32,
                          {1},
                          as_bytes(std::vector<float>{nq.offset})});
        } else {
          outs.push_back({t.name + ".absmax",
                          DType::kF32,
                          {static_cast<int64_t>(q.absmax.size())},
                          as_bytes(q.absmax)});
        }
        bnb_dequantize_4bit(q.packed, absmax, a.blocksize, type, dq);
        outs.push_back({t.name, DType::kU8, {(n + 1) / 2}, std::move(q.packed)});
      }
      outs.push_back({t.name + ".dequant", DType::kF32, t.shape, as_bytes(dq)});
    }
  } else {
    fail(ErrorCode::kInvalidArgument, "--mode {}: expected int8, nf4, fp4 or dequantize", a.mode);
  }
  std::vector<TensorRef> refs;
  for (const Owned& o : outs) refs.push_back({o.name, o.dtype, o.shape, o.bytes});
  write_safetensors(a.out, refs);
  return 0;
}

NNPIPE_COMMAND(
    "dev-bnb", "Developer: bitsandbytes quantizers on a .safetensors file (for tests)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<DevBnbArgs>();
      app.add_option("--mode", a->mode, "int8, nf4, fp4 or dequantize")->required();
      app.add_option("--in", a->in, "f32 .safetensors (dequantize: a model dir)")->required();
      app.add_option("--out", a->out, "Output .safetensors")->required();
      app.add_option("--blocksize", a->blocksize, "4-bit block size")->capture_default_str();
      app.add_flag("--double-quant", a->double_quant, "4-bit: nested absmax");
      return [a] { return run_dev_bnb(*a); };
    });

}  // namespace
