// A Qwen2 GGUF model (as convert_hf_to_gguf.py / nnpipe export-gguf write it) read back into
// nnpipe's Hugging Face terms: the config from the qwen2.* KVs, the tokenizer.json rebuilt from the
// tokenizer.ggml.* arrays, the chat template, and every tensor dequantized to f32 under its HF
// name. Dequantized f32 compute is what evaluation needs (perplexity/KL of each quantization type);
// the inference engine runs the quantized blocks directly.
#pragma once
#include <optional>
#include <string>

#include "arch/config.h"
#include "core/file.h"
#include "core/json.h"
#include "io/gguf.h"
#include "model/qwen2.h"
#include "tokenizer/chat_assets.h"

namespace nnpipe {

// The HF name of a Qwen2 GGUF tensor ("blk.3.attn_q.bias" ->
// "model.layers.3.self_attn.q_proj.bias"), or nullopt for names outside the Qwen2 table.
std::optional<std::string> qwen2_hf_name_from_gguf(std::string_view gguf_name);

// ModelConfig from general.architecture == "qwen2" and its KVs. Errors name the file and key.
ModelConfig qwen2_config_from_gguf(const GgufFile& f);

// tokenizer.json content from tokenizer.ggml.{model gpt2, tokens, token_type, merges}: CONTROL (3)
// tokens become special added tokens, USER_DEFINED (4) non-special added tokens, UNUSED (5)
// padding entries are left out.
json tokenizer_json_from_gguf(const GgufFile& f);

// Tokenizer, chat template (tokenizer.chat_template, else ChatML) and bos/eos tokens as template
// variables.
ChatAssets chat_assets_from_gguf(const GgufFile& f);

// The model on the CPU backend with every weight dequantized to f32 (a tied model has no
// output.weight). Errors name the file and tensor (missing, unexpected, wrong shape, type nnpipe
// cannot dequantize).
Qwen2Model load_qwen2_gguf(const GgufFile& f);

// True when `path` is a regular file starting with the GGUF magic.
bool is_gguf_file(const fs::path& path);

}  // namespace nnpipe
