#include "train/params.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "train/lr_schedule.h"

namespace nnpipe {
namespace {

[[noreturn]] void bad_type(const std::string& origin, const std::string& key, const char* want,
                           const json& v) {
  fail(ErrorCode::kInvalidArgument, "{}: {}: expected {}, got {}", origin, key, want,
       json_type_name(v));
}

// Reads the fields of `j` through a visitor so one table serves both directions.
struct Reader {
  const json& j;
  const std::string& origin;
  std::set<std::string> seen;

  const json* get(const std::string& key) {
    seen.insert(key);
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  void field(const std::string& key, std::string& out) {
    if (auto* v = get(key)) {
      if (!v->is_string()) bad_type(origin, key, "a string", *v);
      out = v->get<std::string>();
    }
  }
  void field(const std::string& key, int64_t& out) {
    if (auto* v = get(key)) {
      if (!v->is_number_integer()) bad_type(origin, key, "an integer", *v);
      if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
        fail(ErrorCode::kInvalidArgument, "{}: {}: out of range", origin, key);
      out = v->get<int64_t>();
    }
  }
  void field(const std::string& key, uint64_t& out) {
    if (auto* v = get(key)) {
      if (!v->is_number_integer()) bad_type(origin, key, "an integer", *v);
      if (v->is_number_integer() && !v->is_number_unsigned() && v->get<int64_t>() < 0)
        fail(ErrorCode::kInvalidArgument, "{}: {}: must be >= 0", origin, key);
      out = v->get<uint64_t>();
    }
  }
  void field(const std::string& key, double& out) {
    if (auto* v = get(key)) {
      if (!v->is_number()) bad_type(origin, key, "a number", *v);
      out = v->get<double>();
    }
  }
  void field(const std::string& key, bool& out) {
    if (auto* v = get(key)) {
      if (!v->is_boolean()) bad_type(origin, key, "true or false", *v);
      out = v->get<bool>();
    }
  }
  void field(const std::string& key, std::vector<std::string>& out) {
    if (auto* v = get(key)) {
      if (!v->is_array()) bad_type(origin, key, "a list of strings", *v);
      out.clear();
      for (const auto& e : *v) {
        if (!e.is_string()) bad_type(origin, key, "a list of strings", *v);
        out.push_back(e.get<std::string>());
      }
    }
  }
  void field(const std::string& key, std::optional<std::string>& out) {
    if (auto* v = get(key)) {
      if (v->is_null()) {
        out.reset();
        return;
      }
      if (!v->is_string()) bad_type(origin, key, "a string or null", *v);
      out = v->get<std::string>();
    }
  }
  void finish() {
    if (!j.is_object())
      fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object, got {}", origin,
           json_type_name(j));
    for (const auto& [k, v] : j.items())
      if (!seen.count(k)) fail(ErrorCode::kInvalidArgument, "{}: unknown key \"{}\"", origin, k);
  }
};

struct Writer {
  json& j;
  template <typename T>
  void field(const std::string& key, const T& v) {
    j[key] = v;
  }
  void field(const std::string& key, const std::optional<std::string>& v) {
    j[key] = v ? json(*v) : json(nullptr);
  }
};

template <typename V, typename P>
void visit_full(V& v, P& p) {
  v.field("model_path", p.model_path);
  v.field("dataset_path", p.dataset_path);
  v.field("output_dir", p.output_dir);
  v.field("num_epochs", p.num_epochs);
  v.field("batch_size", p.batch_size);
  v.field("learning_rate", p.learning_rate);
  v.field("max_seq_len", p.max_seq_len);
  v.field("gradient_accumulation_steps", p.gradient_accumulation_steps);
  v.field("warmup_steps", p.warmup_steps);
  v.field("lr_scheduler", p.lr_scheduler);
  v.field("weight_decay", p.weight_decay);
  v.field("max_grad_norm", p.max_grad_norm);
  v.field("seed", p.seed);
  v.field("save_steps", p.save_steps);
  v.field("logging_steps", p.logging_steps);
  v.field("max_steps", p.max_steps);
  v.field("shuffle", p.shuffle);
  v.field("output_dtype", p.output_dtype);
}

template <typename V, typename P>
void visit_lora(V& v, P& p) {
  visit_full(v, p);
  v.field("lora_rank", p.lora_rank);
  v.field("lora_alpha", p.lora_alpha);
  v.field("lora_dropout", p.lora_dropout);
  v.field("target_modules", p.target_modules);
  v.field("use_rslora", p.use_rslora);
  v.field("checkpoint_lora", p.checkpoint_lora);
  v.field("matmul_dtype", p.matmul_dtype);
}

void check(bool ok, const std::string& origin, const char* key, const std::string& what) {
  if (!ok) fail(ErrorCode::kInvalidArgument, "{}: {}: {}", origin, key, what);
}

}  // namespace

json FinetuneFullParams::to_json() const {
  json j = json::object();
  Writer w{j};
  visit_full(w, *this);
  return j;
}

FinetuneFullParams FinetuneFullParams::from_json(const json& j, const std::string& origin) {
  FinetuneFullParams p;
  if (!j.is_object())
    fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object, got {}", origin,
         json_type_name(j));
  Reader r{j, origin, {}};
  visit_full(r, p);
  r.finish();
  return p;
}

void FinetuneFullParams::validate(const std::string& origin) const {
  check(!dataset_path.empty(), origin, "dataset_path", "is required");
  check(num_epochs > 0, origin, "num_epochs", "must be > 0");
  check(batch_size > 0, origin, "batch_size", "must be > 0");
  check(std::isfinite(learning_rate) && learning_rate > 0, origin, "learning_rate",
        "must be a finite number > 0");
  check(max_seq_len > 1, origin, "max_seq_len", "must be > 1");
  check(gradient_accumulation_steps > 0, origin, "gradient_accumulation_steps", "must be > 0");
  check(warmup_steps >= 0, origin, "warmup_steps", "must be >= 0");
  check(lr_schedule_from_name(lr_scheduler).has_value(), origin, "lr_scheduler",
        "must be \"constant\", \"linear\" or \"cosine\", got \"" + lr_scheduler + "\"");
  check(std::isfinite(weight_decay) && weight_decay >= 0, origin, "weight_decay", "must be >= 0");
  check(std::isfinite(max_grad_norm), origin, "max_grad_norm", "must be finite");
  check(save_steps >= 0, origin, "save_steps", "must be >= 0");
  check(logging_steps > 0, origin, "logging_steps", "must be > 0");
  check(max_steps == -1 || max_steps > 0, origin, "max_steps", "must be > 0 (or -1: epochs)");
  check(output_dtype == "auto" || output_dtype == "f32" || output_dtype == "bf16" ||
            output_dtype == "f16",
        origin, "output_dtype",
        "must be \"auto\", \"f32\", \"bf16\" or \"f16\", got \"" + output_dtype + "\"");
}

std::optional<std::string> FinetuneFullParams::context_warning(
    int64_t max_position_embeddings) const {
  if (max_seq_len <= max_position_embeddings) return std::nullopt;
  return fmt::format(
      "max_seq_len {} exceeds the model's max_position_embeddings {}: longer examples train "
      "positions the model has never seen (and attention memory grows with the square of the "
      "length)",
      max_seq_len, max_position_embeddings);
}

json FinetuneLoraParams::to_json() const {
  json j = json::object();
  Writer w{j};
  visit_lora(w, *this);
  return j;
}

FinetuneLoraParams FinetuneLoraParams::from_json(const json& j, const std::string& origin) {
  FinetuneLoraParams p;
  if (!j.is_object())
    fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object, got {}", origin,
         json_type_name(j));
  Reader r{j, origin, {}};
  visit_lora(r, p);
  r.finish();
  return p;
}

void FinetuneLoraParams::validate(const std::string& origin) const {
  FinetuneFullParams::validate(origin);
  check(lora_rank > 0, origin, "lora_rank", "must be > 0");
  // The bound of a PEFT adapter's lora_alpha when read (peft_adapter.cpp): what we train, we load.
  check(std::isfinite(lora_alpha) && lora_alpha > 0 && lora_alpha <= kMaxPeftLoraAlpha, origin,
        "lora_alpha", "must be a finite number in (0, 1e6]");
  check(std::isfinite(lora_dropout) && lora_dropout >= 0 && lora_dropout < 1, origin,
        "lora_dropout", "must be in [0, 1)");
  check(matmul_dtype == "f32" || matmul_dtype == "bf16", origin, "matmul_dtype",
        "must be \"f32\" or \"bf16\", got \"" + matmul_dtype + "\"");
  check(!target_modules.empty(), origin, "target_modules", "must not be empty");
  const auto& all = lora_all_linear_modules();
  std::set<std::string> seen;
  for (const auto& m : target_modules) {
    check(std::find(all.begin(), all.end(), m) != all.end(), origin, "target_modules",
          "unknown module \"" + m +
              "\" (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
    check(seen.insert(m).second, origin, "target_modules", "\"" + m + "\" listed twice");
  }
}

}  // namespace nnpipe
