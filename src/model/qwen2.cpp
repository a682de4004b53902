// Qwen2: loading and the forward pass (backward in qwen2_backward.cpp).
#include "model/qwen2.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "io/hf_model_dir.h"
#include "model/qwen2_weights.h"

namespace nnpipe {

Tensor& Qwen2Params::at(const std::string& name) {
  auto it = by_name.find(name);
  if (it == by_name.end()) fail(ErrorCode::kNotFound, "qwen2: no parameter {}", name);
  return it->second;
}
const Tensor& Qwen2Params::at(const std::string& name) const {
  auto it = by_name.find(name);
  if (it == by_name.end()) fail(ErrorCode::kNotFound, "qwen2: no parameter {}", name);
  return it->second;
}

Qwen2Model Qwen2Model::load(const fs::path& dir, Backend& backend, const Qwen2LoadOptions&) {
  HfModelDir hf = HfModelDir::open(dir);  // validates config and tensor names/shapes
  Qwen2Params params;
  for (const WeightSpec& spec : qwen2_weight_specs(hf.config())) {
    const TensorView& view = hf.tensor(spec.name);
    // f32 copy for compute; LoRA will keep frozen bf16/f16 weights unconverted later.
    params.by_name[spec.name] = backend.to_f32(Tensor::borrow(view.dtype, spec.shape, view.data));
  }
  return Qwen2Model(hf.config(), std::move(params), backend);
}

Qwen2Model::Qwen2Model(ModelConfig config, Qwen2Params params, Backend& backend)
    : config_(std::move(config)), params_(std::move(params)), be_(&backend) {
  if (config_.hidden_act != "silu")
    fail(ErrorCode::kUnsupported, "qwen2: hidden_act \"{}\" (only silu)", config_.hidden_act);
  for (const WeightSpec& spec : qwen2_weight_specs(config_))
    check_tensor(params_.at(spec.name), DType::kF32, spec.shape, spec.name.c_str());
}

const Tensor& Qwen2Model::lm_head() const {
  return params_.at(tied() ? "model.embed_tokens.weight" : "lm_head.weight");
}

Tensor& Qwen2Model::lm_head_grad() {
  return grads_.at(tied() ? "model.embed_tokens.weight" : "lm_head.weight");
}

namespace {

std::string layer_name(int64_t l, const char* rest) {
  return "model.layers." + std::to_string(l) + "." + rest;
}

}  // namespace

double Qwen2Model::forward(const Qwen2Batch& batch) {
  const ModelConfig& c = config_;
  const int64_t b = batch.batch, t = batch.seq, n = b * t;
  const int64_t C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                D = c.head_dim, F = c.intermediate_size, V = c.vocab_size;
  if (b < 1 || t < 1 || static_cast<int64_t>(batch.input_ids.size()) != n)
    fail(ErrorCode::kInvalidArgument, "qwen2: batch of {}x{} with {} input ids", b, t,
         batch.input_ids.size());
  std::vector<int32_t> lengths = batch.lengths;
  if (lengths.empty()) lengths.assign(static_cast<size_t>(b), static_cast<int32_t>(t));
  if (static_cast<int64_t>(lengths.size()) != b)
    fail(ErrorCode::kInvalidArgument, "qwen2: {} lengths for batch {}", lengths.size(), b);
  have_labels_ = !batch.labels.empty();
  if (have_labels_ && static_cast<int64_t>(batch.labels.size()) != n)
    fail(ErrorCode::kInvalidArgument, "qwen2: {} labels for {} tokens", batch.labels.size(), n);
  b_ = b;
  t_ = t;

  // Inputs: positions 0..T-1 per row (right padding: real tokens sit at 0..len-1), shifted
  // targets (position t predicts labels[t + 1]; the last position has none), like transformers.
  std::vector<int32_t> pos(static_cast<size_t>(n)), tgt(static_cast<size_t>(n), kIgnoreIndex);
  for (int64_t r = 0; r < b; ++r)
    for (int64_t i = 0; i < t; ++i) {
      pos[r * t + i] = static_cast<int32_t>(i);
      if (have_labels_ && i + 1 < t) tgt[r * t + i] = batch.labels[r * t + i + 1];
    }
  ids_ = Tensor::from_i32(batch.input_ids, {n});
  positions_ = Tensor::from_i32(pos, {b, t});
  lengths_ = Tensor::from_i32(lengths, {b});
  targets_ = Tensor::from_i32(tgt, {n});

  Backend& be = *be_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor x = be.zeros(DType::kF32, {n, C});  // (N, C)
  be.embedding(x, ids_, params_.at("model.embed_tokens.weight"));
  layers_.assign(static_cast<size_t>(c.num_hidden_layers), {});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerActs& a = layers_[static_cast<size_t>(l)];
    auto w = [&](const char* rest) -> const Tensor& { return params_.at(layer_name(l, rest)); };
    a.x = x;
    // Attention block: h = x + o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x).
    a.ln1 = be.zeros(DType::kF32, {n, C});
    a.ln1_rstd = be.zeros(DType::kF32, {n});
    be.rmsnorm(a.ln1, a.ln1_rstd, a.x, w("input_layernorm.weight"), eps);
    Tensor q = be.zeros(DType::kF32, {n, H * D}), k = be.zeros(DType::kF32, {n, KV * D}),
           v = be.zeros(DType::kF32, {n, KV * D});
    be.matmul(q, a.ln1, w("self_attn.q_proj.weight"), &w("self_attn.q_proj.bias"));
    be.matmul(k, a.ln1, w("self_attn.k_proj.weight"), &w("self_attn.k_proj.bias"));
    be.matmul(v, a.ln1, w("self_attn.v_proj.weight"), &w("self_attn.v_proj.bias"));
    a.q = q.reshaped({b, t, H, D});
    a.k = k.reshaped({b, t, KV, D});
    a.v = v.reshaped({b, t, KV, D});
    a.qr = be.zeros(DType::kF32, {b, t, H, D});
    a.kr = be.zeros(DType::kF32, {b, t, KV, D});
    be.rope(a.qr, a.q, positions_, c.rope_theta);
    be.rope(a.kr, a.k, positions_, c.rope_theta);
    a.att = be.zeros(DType::kF32, {b, H, t, t});
    a.atty = be.zeros(DType::kF32, {b, t, H, D});
    be.attention(a.atty, a.att, a.qr, a.kr, a.v, lengths_);
    Tensor o = be.zeros(DType::kF32, {n, C});
    be.matmul(o, a.atty.reshaped({n, H * D}), w("self_attn.o_proj.weight"), nullptr);
    a.h = be.zeros(DType::kF32, {n, C});
    be.add(a.h, a.x, o);
    // MLP block: out = h + down(silu(gate(ln2)) * up(ln2)).
    a.ln2 = be.zeros(DType::kF32, {n, C});
    a.ln2_rstd = be.zeros(DType::kF32, {n});
    be.rmsnorm(a.ln2, a.ln2_rstd, a.h, w("post_attention_layernorm.weight"), eps);
    a.gate = be.zeros(DType::kF32, {n, F});
    a.up = be.zeros(DType::kF32, {n, F});
    a.act = be.zeros(DType::kF32, {n, F});
    be.matmul(a.gate, a.ln2, w("mlp.gate_proj.weight"), nullptr);
    be.matmul(a.up, a.ln2, w("mlp.up_proj.weight"), nullptr);
    be.swiglu(a.act, a.gate, a.up);
    Tensor mlp = be.zeros(DType::kF32, {n, C});
    be.matmul(mlp, a.act, w("mlp.down_proj.weight"), nullptr);
    x = be.zeros(DType::kF32, {n, C});
    be.add(x, a.h, mlp);
  }
  out_ = x;
  lnf_ = be.zeros(DType::kF32, {n, C});
  lnf_rstd_ = be.zeros(DType::kF32, {n});
  be.rmsnorm(lnf_, lnf_rstd_, out_, params_.at("model.norm.weight"), eps);
  Tensor logits = be.zeros(DType::kF32, {n, V});  // (N, V)
  be.matmul(logits, lnf_, lm_head(), nullptr);
  logits_ = logits.reshaped({b, t, V});
  if (!have_labels_) return std::numeric_limits<double>::quiet_NaN();
  int64_t count = 0;
  return be.cross_entropy(logits, targets_, &count);
}

void Qwen2Model::zero_grads() {
  for (auto& [name, p] : params_.by_name) {
    auto it = grads_.by_name.find(name);
    if (it == grads_.by_name.end())
      grads_.by_name[name] = be_->zeros(DType::kF32, p.shape());
    else
      be_->zero(it->second);
  }
}

}  // namespace nnpipe
