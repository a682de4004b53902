// nnpipe quantize: a Hugging Face Qwen2 directory -> a 16-bit, LLM.int8 or 4-bit (NF4/FP4)
// bitsandbytes Hugging Face directory that transformers loads with from_pretrained (and nnpipe
// loads back, dequantized).
#include <iostream>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "export/hf_quantize.h"

namespace {

struct QuantizeArgs {
  std::string model, out, dtype = "bfloat16", quant_type = "nf4", compute_dtype;
  int bits = 4;
  int64_t blocksize = 64;
  bool double_quant = false, json = false;
};

nnpipe::DType parse_dtype(const std::string& flag, const std::string& v) {
  if (v == "bf16" || v == "bfloat16") return nnpipe::DType::kBF16;
  if (v == "f16" || v == "fp16" || v == "float16") return nnpipe::DType::kF16;
  if (v == "f32" || v == "fp32" || v == "float32") return nnpipe::DType::kF32;
  nnpipe::fail(nnpipe::ErrorCode::kInvalidArgument, "{} {}: expected bfloat16, float16 or float32",
               flag, v);
}

int run_quantize(const QuantizeArgs& a) {
  using namespace nnpipe;
  HfQuantizeOptions opt;
  opt.bits = a.bits;
  if (a.bits != 16 && a.bits != 8 && a.bits != 4)
    fail(ErrorCode::kInvalidArgument, "--bits {}: expected 16, 8 or 4", a.bits);
  opt.dtype = parse_dtype("--dtype", a.dtype);
  opt.quant_type = bnb4bit_type_from_name(a.quant_type);
  opt.blocksize = a.blocksize;
  opt.double_quant = a.double_quant;
  if (!a.compute_dtype.empty()) opt.compute_dtype = parse_dtype("--compute-dtype", a.compute_dtype);
  const QuantizeSummary s = quantize_model(a.model, opt, a.out);
  if (a.json) {
    std::cout << s.to_json().dump(2) << "\n";
  } else {
    log::info(
        "quantize: {} ({} of {} tensors quantized): {} -> {} bytes ({:.2f}x), rmse {:.3g}, "
        "relative {:.3g}, max abs error {:.3g} -> {}",
        s.method, s.quantized_tensors, s.tensors.size(), s.bytes_before, s.bytes_after,
        s.bytes_after ? static_cast<double>(s.bytes_before) / s.bytes_after : 0.0, s.rmse,
        s.rel_rmse, s.max_abs_err, a.out);
  }
  return 0;
}

NNPIPE_COMMAND(
    "quantize",
    "Quantize a Hugging Face Qwen2 model to 16-bit, 8-bit (LLM.int8) or 4-bit (NF4/FP4) "
    "bitsandbytes format",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<QuantizeArgs>();
      app.add_option("--model", a->model, "Hugging Face model directory (16/32-bit)")->required();
      app.add_option("--out", a->out, "Output model directory (replaced if it exists)")->required();
      app.add_option("--bits", a->bits,
                     "16: every tensor cast to --dtype; 8: LLM.int8 row-wise absmax (int8 weight + "
                     "SCB); 4: blockwise NF4/FP4 (packed weight + absmax + quant_state). 8 and 4 "
                     "quantize the decoder's linear layers only, as transformers does")
          ->capture_default_str();
      app.add_option("--dtype", a->dtype, "--bits 16: bfloat16 or float16")->capture_default_str();
      app.add_option("--quant-type", a->quant_type, "--bits 4: nf4 or fp4")->capture_default_str();
      app.add_option("--blocksize", a->blocksize,
                     "--bits 4: values per absmax block (32, 64, ..., 4096)")
          ->capture_default_str();
      app.add_flag("--double-quant", a->double_quant,
                   "--bits 4: quantize the absmax values too (8-bit, blocks of 256; "
                   "bnb_4bit_use_double_quant)");
      app.add_option("--compute-dtype", a->compute_dtype,
                     "--bits 4: bnb_4bit_compute_dtype written to config.json (default: the "
                     "model's dtype)");
      app.add_flag("--json", a->json, "Print the summary (sizes, errors per tensor) as JSON");
      return [a] { return run_quantize(*a); };
    });

}  // namespace
