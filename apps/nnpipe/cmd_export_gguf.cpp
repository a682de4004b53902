// nnpipe export-gguf: convert a Hugging Face Qwen2 directory to a GGUF model for llama.cpp.
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "export/gguf_export.h"

namespace {

struct ExportGgufArgs {
  std::string model, type = "f16", out;
};

int run_export_gguf(const ExportGgufArgs& a) {
  auto type = nnpipe::gguf_export_type_from_name(a.type);
  if (!type)
    nnpipe::fail(nnpipe::ErrorCode::kInvalidArgument,
                 "--type {}: unknown (expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1)",
                 a.type);
  auto s = nnpipe::export_model_gguf(a.model, *type, a.out);
  nnpipe::log::info("export-gguf: {} tensors, {} bytes ({}) -> {}", s.tensors, s.bytes, a.type,
                    a.out);
  return 0;
}

NNPIPE_COMMAND("export-gguf", "Export a Hugging Face Qwen2 model directory to GGUF (llama.cpp)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<ExportGgufArgs>();
                 app.add_option("--model", a->model, "Hugging Face model directory")->required();
                 app.add_option("--type", a->type,
                                "Weight type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1")
                     ->capture_default_str();
                 app.add_option("--out", a->out, "Output .gguf file")->required();
                 return [a] { return run_export_gguf(*a); };
               });

}  // namespace
