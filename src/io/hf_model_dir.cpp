#include "io/hf_model_dir.h"

#include "arch/qwen2_weights.h"
#include "core/error.h"

namespace nnpipe {

std::optional<std::string> select_chat_template(const json& value, const std::string& origin,
                                                bool has_tools) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_array())
    fail(ErrorCode::kFormat, "{}: chat_template must be a string or a list, got {}", origin,
         json_type_name(value));
  std::optional<std::string> chosen;
  for (const json& e : value) {
    if (!e.is_object() || !e.contains("name") || !e.contains("template") ||
        !e["name"].is_string() || !e["template"].is_string())
      fail(ErrorCode::kFormat,
           "{}: chat_template list entries must be {{\"name\": str, \"template\": str}}", origin);
    if (has_tools && e["name"] == "tool_use") return e["template"].get<std::string>();
    if (e["name"] == "default") chosen = e["template"].get<std::string>();
  }
  if (!chosen)
    fail(ErrorCode::kFormat, "{}: a list of templates without one named \"default\"", origin);
  return chosen;
}

HfModelDir HfModelDir::open(const fs::path& dir) {
  HfModelDir m;
  m.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(ErrorCode::kNotFound, "{}: not a model directory", dir.string());
  fs::path cfg = dir / "config.json";
  if (!fs::exists(cfg, ec)) fail(ErrorCode::kNotFound, "{}: missing config.json", dir.string());
  m.config_ = ModelConfig::load(cfg);

  if (fs::path p = dir / "generation_config.json"; fs::exists(p, ec)) {
    m.generation_config_ = read_json_file(p);
    if (!m.generation_config_.is_object())
      fail(ErrorCode::kFormat, "{}: expected a JSON object", p.string());
  }
  if (fs::path p = dir / "tokenizer_config.json"; fs::exists(p, ec)) {
    m.tokenizer_config_ = read_json_file(p);
    if (!m.tokenizer_config_.is_object())
      fail(ErrorCode::kFormat, "{}: expected a JSON object", p.string());
    if (auto it = m.tokenizer_config_.find("chat_template"); it != m.tokenizer_config_.end())
      m.chat_template_ = select_chat_template(*it, p.string() + ": chat_template");
  }
  // transformers >= 4.43 may save the template as its own file, which then takes precedence.
  if (fs::path p = dir / "chat_template.jinja"; fs::exists(p, ec)) m.chat_template_ = read_file(p);

  m.weights_ = SafetensorsSet::open(dir);
  std::map<std::string, std::vector<int64_t>> stored;
  for (const TensorView* t : m.weights_.tensors()) stored[t->name] = t->shape;
  check_qwen2_weights(m.config_, stored, m.weights_.origin());
  return m;
}

const TensorView& HfModelDir::tensor(std::string_view name) const {
  if (const TensorView* t = weights_.find(name)) return *t;
  if (name == "lm_head.weight" && config_.tie_word_embeddings)
    return weights_.get("model.embed_tokens.weight");
  return weights_.get(name);
}

void write_hf_model_files(const fs::path& dir, const HfModelFiles& f) {
  f.config.validate(dir.string() + "/config.json");
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const TensorRef& t : f.tensors) shapes[t.name] = t.shape;
  check_qwen2_weights(f.config, shapes, "model to write");

  write_json_file(dir / "config.json", f.config.to_json());
  if (!f.generation_config.is_null())
    write_json_file(dir / "generation_config.json", f.generation_config);
  write_sharded_safetensors(dir, f.tensors, f.max_shard_bytes);
  if (!f.tokenizer_json.empty()) write_file_atomic(dir / "tokenizer.json", f.tokenizer_json);
  if (!f.tokenizer_config_text.empty())
    write_file_atomic(dir / "tokenizer_config.json", f.tokenizer_config_text);
  else if (!f.tokenizer_config.is_null())
    write_json_file(dir / "tokenizer_config.json", f.tokenizer_config);
}

void write_hf_model_dir(const fs::path& out, const HfModelFiles& files) {
  StagingDir stage(out);
  write_hf_model_files(stage.path(), files);
  stage.commit();
}

}  // namespace nnpipe
