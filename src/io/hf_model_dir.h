// A Hugging Face model directory as transformers saves it: config.json, generation_config.json,
// model.safetensors (or shards + index), tokenizer.json, tokenizer_config.json. Reading validates
// the config and checks the tensors against the Qwen2 name/shape table; writing builds the whole
// directory under a temporary name and renames it into place, so it appears complete or not at all.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "arch/config.h"
#include "core/json.h"
#include "io/safetensors.h"

namespace nnpipe {

class HfModelDir {
 public:
  // Loads and checks `dir`; errors name the file and what is missing or wrong.
  static HfModelDir open(const fs::path& dir);

  const fs::path& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // generation_config.json, or null if the directory has none.
  const json& generation_config() const { return generation_config_; }
  // tokenizer_config.json, or null.
  const json& tokenizer_config() const { return tokenizer_config_; }
  fs::path tokenizer_json_path() const { return dir_ / "tokenizer.json"; }
  // chat_template.jinja if present, else tokenizer_config's chat_template (a string, or the
  // "default" entry of a [{name, template}] list); nullopt if the model has none.
  const std::optional<std::string>& chat_template() const { return chat_template_; }
  const SafetensorsSet& weights() const { return weights_; }
  // A Qwen2 tensor by HF name; "lm_head.weight" of a tied model without one resolves to the
  // embedding. Throws kNotFound.
  const TensorView& tensor(std::string_view name) const;

 private:
  fs::path dir_;
  ModelConfig config_;
  json generation_config_;
  json tokenizer_config_;
  std::optional<std::string> chat_template_;
  SafetensorsSet weights_;
};

// Picks the template from a tokenizer_config "chat_template" value (string or list of
// {name, template}: "tool_use" when `has_tools` and present, else "default", like transformers);
// nullopt if absent/null. Throws kFormat on other types and on a list without "default".
std::optional<std::string> select_chat_template(const json& value, const std::string& origin,
                                                bool has_tools = false);

struct HfModelFiles {
  ModelConfig config;
  json generation_config;             // null: not written
  std::string tokenizer_json;         // file content; empty: not written
  json tokenizer_config;              // null: not written
  std::string tokenizer_config_text;  // verbatim file content; takes precedence over the above
  std::vector<TensorRef> tensors;
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
};

// Writes every file into an existing directory `dir` (e.g. a StagingDir's path).
void write_hf_model_files(const fs::path& dir, const HfModelFiles& files);
// Writes the directory `out` atomically (replacing an existing one).
void write_hf_model_dir(const fs::path& out, const HfModelFiles& files);

}  // namespace nnpipe
