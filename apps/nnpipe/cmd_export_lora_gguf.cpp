// nnpipe export-lora-gguf: convert a PEFT LoRA adapter directory to a GGUF LoRA adapter for
// llama.cpp (as convert_lora_to_gguf.py does), checked against its base model.
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "export/lora_gguf_export.h"

namespace {

struct ExportLoraGgufArgs {
  std::string adapter, base, type = "f32", out;
};

int run_export_lora_gguf(const ExportLoraGgufArgs& a) {
  auto type = nnpipe::lora_gguf_type_from_name(a.type);
  if (!type)
    nnpipe::fail(nnpipe::ErrorCode::kInvalidArgument, "--type {}: unknown (expected {})", a.type,
                 nnpipe::lora_gguf_type_names());
  auto s = nnpipe::export_lora_gguf(a.adapter, a.base, *type, a.out);
  std::string types;
  for (const auto& [name, n] : s.type_counts)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
  nnpipe::log::info("export-lora-gguf: {} tensors ({}), r {}, alpha {}, {} bytes -> {}", s.tensors,
                    types, s.rank, s.alpha, s.bytes, a.out);
  return 0;
}

NNPIPE_COMMAND(
    "export-lora-gguf",
    "Export a PEFT LoRA adapter directory to a GGUF LoRA adapter (llama.cpp --lora)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<ExportLoraGgufArgs>();
      app.add_option("--adapter", a->adapter,
                     "PEFT adapter directory (adapter_config.json, adapter_model.safetensors)")
          ->required();
      app.add_option("--base", a->base,
                     "Hugging Face directory of the base model the adapter was trained on; the "
                     "adapter's layers and shapes are checked against it")
          ->required();
      app.add_option("--type", a->type,
                     "Tensor type: f32, f16, bf16 or q8_0 (convert_lora_to_gguf.py's --outtype; "
                     "q8_0 tensors whose rows are not a multiple of 32 fall back to f16, as "
                     "there)")
          ->capture_default_str();
      app.add_option("--out", a->out, "Output .gguf file (written atomically)")->required();
      return [a] { return run_export_lora_gguf(*a); };
    });

}  // namespace
