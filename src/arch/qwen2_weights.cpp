#include "arch/qwen2_weights.h"

#include <algorithm>

#include "core/error.h"

namespace nnpipe {

int64_t qwen2_dim(const ModelConfig& c, qwen2::Dim d) {
  switch (d) {
    case qwen2::Dim::kHidden:
      return c.hidden_size;
    case qwen2::Dim::kQ:
      return c.q_dim();
    case qwen2::Dim::kKv:
      return c.kv_dim();
    case qwen2::Dim::kIntermediate:
      return c.intermediate_size;
    case qwen2::Dim::kVocab:
      return c.vocab_size;
  }
  fail(ErrorCode::kInternal, "qwen2: unknown dimension {}", static_cast<int>(d));
}

std::pair<int64_t, int64_t> qwen2_linear_shape(const ModelConfig& c, qwen2::Linear l) {
  const qwen2::LinearInfo& i = qwen2::linear(l);
  return {qwen2_dim(c, i.out), qwen2_dim(c, i.in)};
}

std::string qwen2_hf_module(int64_t layer, qwen2::Linear l) {
  if (!qwen2::is_block_linear(l)) return qwen2::linear(l).hf_path;
  return fmt::format("{}{}.{}", qwen2::kHfLayerPrefix, layer, qwen2::linear(l).hf_path);
}

std::vector<WeightSpec> qwen2_weight_specs(const ModelConfig& c) {
  const int64_t V = c.vocab_size, H = c.hidden_size;
  std::vector<WeightSpec> w;
  w.push_back({"model.embed_tokens.weight", {V, H}, WeightKind::kEmbedding});
  auto add_linear = [&](int64_t layer, qwen2::Linear l) {
    const std::string m = qwen2_hf_module(layer, l);
    const auto [out, in] = qwen2_linear_shape(c, l);
    w.push_back({m + ".weight", {out, in}, WeightKind::kMatrix});
    if (qwen2::linear(l).bias) w.push_back({m + ".bias", {out}, WeightKind::kBias});
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("{}{}.", qwen2::kHfLayerPrefix, i);
    w.push_back({p + "input_layernorm.weight", {H}, WeightKind::kNorm});
    for (qwen2::Linear l :
         {qwen2::Linear::kQ, qwen2::Linear::kK, qwen2::Linear::kV, qwen2::Linear::kO})
      add_linear(i, l);
    w.push_back({p + "post_attention_layernorm.weight", {H}, WeightKind::kNorm});
    for (qwen2::Linear l : {qwen2::Linear::kGate, qwen2::Linear::kUp, qwen2::Linear::kDown})
      add_linear(i, l);
  }
  w.push_back({"model.norm.weight", {H}, WeightKind::kNorm});
  // kEmbedding, not kMatrix: the quantizers (bnb, hf_quantize) leave it unquantized.
  if (!c.tie_word_embeddings) w.push_back({"lm_head.weight", {V, H}, WeightKind::kEmbedding});
  return w;
}

std::set<int64_t> layer_indices(const std::vector<std::string_view>& names,
                                std::string_view prefix) {
  std::set<int64_t> out;
  for (std::string_view n : names) {
    if (!n.starts_with(prefix)) continue;
    const size_t dot = n.find('.', prefix.size());
    if (dot == std::string_view::npos) continue;
    const std::string_view num = n.substr(prefix.size(), dot - prefix.size());
    if (num.empty() || num.size() > 9 ||
        num.find_first_not_of("0123456789") != std::string_view::npos)
      continue;
    out.insert(std::stoll(std::string(num)));
  }
  return out;
}

void check_layers_present(int64_t layers, const std::set<int64_t>& present,
                          const std::string& origin, std::string_view key,
                          std::string_view prefix) {
  int64_t have = 0;
  for (int64_t i : present)
    if (i < layers) ++have;
  if (have >= layers) return;
  // Name the first few layers without a tensor: at most present.size() + kShow steps, however
  // large the claimed count is.
  constexpr int kShow = 4;
  std::vector<std::string> gaps;
  for (int64_t i = 0; i < layers && static_cast<int>(gaps.size()) < kShow; ++i)
    if (!present.count(i)) gaps.push_back(fmt::format("{}{}", prefix, i));
  fail(ErrorCode::kFormat, "{}: {} is {}, but only {} of those layers have tensors (none for {}{})",
       origin, key, layers, have, fmt::join(gaps, ", "), layers - have > kShow ? ", ..." : "");
}

void check_qwen2_weights(const ModelConfig& c,
                         const std::map<std::string, std::vector<int64_t>>& stored,
                         const std::string& origin) {
  {
    // Before the specs are built from the config: a claimed layer count is bounded by the file.
    std::vector<std::string_view> names;
    names.reserve(stored.size());
    for (const auto& kv : stored) names.push_back(kv.first);
    check_layers_present(c.num_hidden_layers, layer_indices(names, "model.layers."), origin,
                         "config num_hidden_layers", "model.layers.");
  }
  auto shape_str = [](const std::vector<int64_t>& s) {
    return fmt::format("[{}]", fmt::join(s, ", "));
  };
  std::vector<WeightSpec> specs = qwen2_weight_specs(c);
  if (c.tie_word_embeddings)  // optional duplicate of the embedding
    specs.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, WeightKind::kEmbedding});
  std::map<std::string, const WeightSpec*> expected;
  for (const WeightSpec& s : specs) expected[s.name] = &s;

  std::vector<std::string> missing, unexpected, wrong;
  for (const WeightSpec& s : specs) {
    auto it = stored.find(s.name);
    if (it == stored.end()) {
      if (!(c.tie_word_embeddings && s.name == "lm_head.weight"))
        missing.push_back(fmt::format("{} {}", s.name, shape_str(s.shape)));
    } else if (it->second != s.shape) {
      wrong.push_back(
          fmt::format("{} is {}, expected {}", s.name, shape_str(it->second), shape_str(s.shape)));
    }
  }
  for (const auto& [name, shape] : stored)
    if (!expected.count(name)) unexpected.push_back(fmt::format("{} {}", name, shape_str(shape)));
  if (missing.empty() && unexpected.empty() && wrong.empty()) return;

  std::string msg;
  auto section = [&](const char* title, const std::vector<std::string>& items) {
    if (items.empty()) return;
    // A wrong name prefix makes every tensor missing: list the first few, count the rest.
    constexpr size_t kShow = 12;
    std::vector<std::string> shown(items.begin(), items.begin() + std::min(items.size(), kShow));
    msg += fmt::format("; {} {}: {}", items.size(), title, fmt::join(shown, ", "));
    if (items.size() > kShow) msg += fmt::format(", ... ({} more)", items.size() - kShow);
  };
  section("missing", missing);
  section("unexpected", unexpected);
  section("with the wrong shape", wrong);
  fail(ErrorCode::kFormat,
       "{}: tensors do not match a Qwen2 model with {} layers, hidden {}, vocab {}{}", origin,
       c.num_hidden_layers, c.hidden_size, c.vocab_size, msg);
}

}  // namespace nnpipe
