// nnpipe export-gguf: convert a Hugging Face Qwen2 directory to a GGUF model for llama.cpp.
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "export/gguf_export.h"

namespace {

struct ExportGgufArgs {
  std::string model, type = "f16", out;
  bool pure = false;
};

int run_export_gguf(const ExportGgufArgs& a) {
  auto mix = nnpipe::gguf_export_type_from_name(a.type);
  if (!mix)
    nnpipe::fail(nnpipe::ErrorCode::kInvalidArgument, "--type {}: unknown (expected {})", a.type,
                 nnpipe::gguf_export_type_names());
  mix->pure = mix->pure || a.pure;
  auto s = nnpipe::export_model_gguf(a.model, *mix, a.out);
  std::string types;
  for (const auto& [name, n] : s.type_counts)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
  nnpipe::log::info("export-gguf: {} tensors ({}), {} bytes ({}{}) -> {}", s.tensors, types,
                    s.bytes, a.type, mix->pure ? ", pure" : "", a.out);
  return 0;
}

constexpr const char* kTypeHelp =
    "Weight type or llama.cpp quantization mix; each gives the per-tensor types that "
    "llama-quantize "
    "gives an F32 GGUF of the model for the file type of the same name, and the same bytes. "
    "f32, f16, bf16: every 2-D weight. q8_0, q4_0, q4_1, q5_0, q5_1, q6_k: that type, except "
    "output.weight (token_embd.weight when tied) gets Q6_K (q8_0: Q8_0). "
    "q4_k_s, q4_k_m, q5_k_s, q5_k_m: llama.cpp's K-quant mixes (Q4_K/Q5_K, with attn_v and "
    "ffn_down of some layers in Q5_K/Q6_K, output Q6_K). q4_k, q5_k: every weight Q4_K/Q5_K "
    "(llama-quantize --pure Q4_K_S/Q5_K_S). Rows not a multiple of a type's block fall back "
    "(Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, then F16); 1-D tensors and norms stay F32";

NNPIPE_COMMAND("export-gguf", "Export a Hugging Face Qwen2 model directory to GGUF (llama.cpp)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<ExportGgufArgs>();
                 app.add_option("--model", a->model, "Hugging Face model directory")->required();
                 app.add_option("--type", a->type, kTypeHelp)->capture_default_str();
                 app.add_flag("--pure", a->pure,
                              "No per-tensor rules: every quantizable weight in the type's "
                              "default type, output and token_embd included (llama-quantize "
                              "--pure)");
                 app.add_option("--out", a->out, "Output .gguf file")->required();
                 return [a] { return run_export_gguf(*a); };
               });

}  // namespace
