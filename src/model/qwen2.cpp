// Qwen2: loading and the forward pass (backward in qwen2_backward.cpp).
#include "model/qwen2.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "io/hf_model_dir.h"
#include "model/bnb_checkpoint.h"

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

Qwen2Model Qwen2Model::load(const fs::path& dir, Backend& backend, const Qwen2LoadOptions& opt) {
  if (is_bnb_checkpoint(dir)) {  // bitsandbytes 8/4-bit: dequantized to f32 (frozen_base too)
    DequantizedModel dq = load_bnb_checkpoint(dir);
    Qwen2Params params;
    for (const WeightSpec& spec : qwen2_weight_specs(dq.config))
      params.by_name[spec.name] =
          backend.to_f32(Tensor::from_f32(dq.weights.at(spec.name), spec.shape));
    return Qwen2Model(std::move(dq.config), std::move(params), backend);
  }
  HfModelDir hf = HfModelDir::open(dir);  // validates config and tensor names/shapes
  Qwen2Params params;
  for (const WeightSpec& spec : qwen2_weight_specs(hf.config())) {
    const TensorView& view = hf.tensor(spec.name);
    const Tensor src = Tensor::borrow(view.dtype, spec.shape, view.data);
    const bool matrix = spec.kind == WeightKind::kMatrix || spec.kind == WeightKind::kEmbedding;
    if (opt.frozen_base && matrix && (view.dtype == DType::kF16 || view.dtype == DType::kBF16)) {
      // Owned copy in the stored dtype (the mapping is unaligned and goes away with `hf`).
      Tensor t = backend.zeros(view.dtype, spec.shape);
      std::memcpy(t.raw(), src.bytes().data(), t.nbytes());
      params.by_name[spec.name] = std::move(t);
    } else {
      params.by_name[spec.name] = backend.to_f32(src);  // f32 for compute / master weights
    }
  }
  return Qwen2Model(hf.config(), std::move(params), backend);
}

Qwen2Model::Qwen2Model(ModelConfig config, Qwen2Params params, Backend& backend)
    : config_(std::move(config)),
      params_(std::move(params)),
      be_(&backend),
      fwd_arena_(std::make_shared<Arena>(backend)),
      bwd_arena_(std::make_shared<Arena>(backend)) {
  if (config_.hidden_act != "silu")
    fail(ErrorCode::kUnsupported, "qwen2: hidden_act \"{}\" (only silu)", config_.hidden_act);
  for (const WeightSpec& spec : qwen2_weight_specs(config_)) {
    const Tensor& t = params_.at(spec.name);
    const bool matrix = spec.kind == WeightKind::kMatrix || spec.kind == WeightKind::kEmbedding;
    const bool half = t.dtype() == DType::kF16 || t.dtype() == DType::kBF16;
    check_tensor(t, matrix && half ? t.dtype() : DType::kF32, spec.shape, spec.name.c_str());
  }
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

// The HF name of an adaptable linear layer (module: arch/qwen2_arch.h's order, q .. down).
const char* module_name(int module) {
  return qwen2::kLinears[static_cast<size_t>(module)].hf;
}
std::string weight_name(int64_t l, int module) {
  return qwen2_hf_module(l, static_cast<qwen2::Linear>(module));
}

}  // namespace

void Qwen2Model::attach_lora(const PeftAdapter& adapter, const std::string& origin) {
  adapter.validate(config_, origin);
  LoraState st;
  st.config = adapter.config;
  st.scaling = static_cast<float>(adapter.config.scaling());
  const auto layers = static_cast<size_t>(config_.num_hidden_layers);
  st.a_name.assign(layers, {});
  st.b_name.assign(layers, {});
  for (const LoraModule& m : adapter.modules) {
    int idx = 0;
    while (idx < kNumLinear && m.module != module_name(idx)) ++idx;
    if (idx == kNumLinear)
      fail(ErrorCode::kFormat, "{}: unknown LoRA module \"{}\"", origin, m.module);
    const std::string an = lora_tensor_name(m.layer, m.module, 'A'),
                      bn = lora_tensor_name(m.layer, m.module, 'B');
    const int64_t r = adapter.config.r;
    st.ab[an] = Tensor::from_f32(m.A, {r, m.in});   // (r, in)
    st.ab[bn] = Tensor::from_f32(m.B, {m.out, r});  // (out, r)
    st.grads[an] = be_->zeros(DType::kF32, {r, m.in});
    st.grads[bn] = be_->zeros(DType::kF32, {m.out, r});
    st.a_name[static_cast<size_t>(m.layer)][static_cast<size_t>(idx)] = an;
    st.b_name[static_cast<size_t>(m.layer)][static_cast<size_t>(idx)] = bn;
  }
  lora_ = std::move(st);
  grads_.by_name.clear();  // frozen base: drop any full fine-tuning gradients
}

PeftAdapter Qwen2Model::lora_adapter() const {
  if (!lora_)
    fail(ErrorCode::kInvalidArgument, "qwen2: lora_adapter() without an attached adapter");
  PeftAdapter out;
  out.config = lora_->config;
  out.dtype = DType::kF32;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
    for (int i = 0; i < kNumLinear; ++i) {
      const std::string& an = lora_->a_name[static_cast<size_t>(l)][static_cast<size_t>(i)];
      if (an.empty()) continue;
      const Tensor& a = lora_->ab.at(an);
      const Tensor& b = lora_->ab.at(lora_->b_name[static_cast<size_t>(l)][static_cast<size_t>(i)]);
      LoraModule m;
      m.layer = l;
      m.module = module_name(i);
      m.in = a.dim(1);
      m.out = b.dim(0);
      m.A = a.to_f32();
      m.B = b.to_f32();
      out.modules.push_back(std::move(m));
    }
  return out;
}

std::map<std::string, Tensor>& Qwen2Model::trainable() {
  return lora_ ? lora_->ab : params_.by_name;
}

const std::map<std::string, Tensor>& Qwen2Model::trainable_grads() const {
  return lora_ ? lora_->grads : grads_.by_name;
}

float Qwen2Model::keep_scale() const {
  return static_cast<float>(1.0 / (1.0 - lora_->config.lora_dropout));
}

void Qwen2Model::set_training(bool training, CounterRng* rng) {
  if (training && lora_ && lora_->config.lora_dropout > 0 && !rng)
    fail(ErrorCode::kInvalidArgument, "qwen2: training with LoRA dropout {} needs an Rng",
         lora_->config.lora_dropout);
  training_ = training;
  rng_ = rng;
}

uint64_t Qwen2Model::dropout_draws(int64_t rows) const {
  if (!training_ || !lora_ || lora_->config.lora_dropout <= 0) return 0;
  uint64_t per_row = 0;  // linear() draws an (N, in) mask per adapted module and layer
  for (const auto& names : lora_->a_name)
    for (const std::string& an : names)
      if (!an.empty()) per_row += static_cast<uint64_t>(lora_->ab.at(an).dim(1));
  return per_row * static_cast<uint64_t>(rows);
}

void Qwen2Model::linear(Tensor& out, const Tensor& x, int64_t layer, int module, const Tensor* bias,
                        LinearActs& acts) {
  Backend& be = *be_;
  be.matmul(out, x, params_.at(weight_name(layer, module) + ".weight"), bias, matmul_num_);
  acts = {};
  if (!lora_) return;
  const std::string& an = lora_->a_name[static_cast<size_t>(layer)][static_cast<size_t>(module)];
  if (an.empty()) return;
  const Tensor& a = lora_->ab.at(an);  // (r, in)
  const Tensor& b =
      lora_->ab.at(lora_->b_name[static_cast<size_t>(layer)][static_cast<size_t>(module)]);
  const int64_t n = x.dim(0), in = x.dim(1);
  const double p = lora_->config.lora_dropout;
  if (training_ && p > 0) {
    if (!rng_)
      fail(ErrorCode::kInvalidArgument, "qwen2: LoRA dropout {} in training needs an Rng", p);
    // nn.Dropout: keep with probability 1-p (kept values scaled by 1/(1-p)); drawn row-major.
    acts.keep = fwd_zeros(DType::kU8, {n, in});  // (N, in)
    be.dropout_mask(acts.keep, p, rng_->seed, rng_->counter);
    rng_->counter += static_cast<uint64_t>(n * in);
  }
  acts.xa = fwd_zeros(DType::kF32, {n, a.dim(0)});  // (N, r)
  be.lora_forward(out, acts.xa, x, acts.keep.defined() ? &acts.keep : nullptr, keep_scale(), a, b,
                  lora_->scaling);
}

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
  // The last round's activations are views of the arena's pieces: dropped before the arena
  // replaces its pieces by one block, else both would be alive at once (twice the activations).
  layers_.clear();
  for (Tensor* t : {&ids_, &positions_, &lengths_, &targets_, &out_, &lnf_, &lnf_rstd_, &logits_,
                    &loss_rows_, &lnf_sel_, &targets_sel_})
    *t = Tensor();
  fwd_arena_->reset();
  ids_ = fwd_ints(batch.input_ids, {n});
  positions_ = fwd_ints(pos, {b, t});
  lengths_ = fwd_ints(lengths, {b});
  targets_ = fwd_ints(tgt, {n});

  Backend& be = *be_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor x = fwd_zeros(DType::kF32, {n, C});  // (N, C)
  be.embedding(x, ids_, params_.at("model.embed_tokens.weight"));
  layers_.assign(static_cast<size_t>(c.num_hidden_layers), {});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerActs& a = layers_[static_cast<size_t>(l)];
    auto w = [&](const char* rest) -> const Tensor& { return params_.at(layer_name(l, rest)); };
    a.x = x;
    // Attention block: h = x + o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x).
    a.ln1 = fwd_zeros(DType::kF32, {n, C});
    a.ln1_rstd = fwd_zeros(DType::kF32, {n});
    be.rmsnorm(a.ln1, a.ln1_rstd, a.x, w("input_layernorm.weight"), eps);
    Tensor q = fwd_zeros(DType::kF32, {n, H * D}), k = fwd_zeros(DType::kF32, {n, KV * D}),
           v = fwd_zeros(DType::kF32, {n, KV * D});
    auto bias = [&](int module) -> const Tensor* {
      if (!qwen2::kLinears[static_cast<size_t>(module)].bias) return nullptr;
      return &params_.at(weight_name(l, module) + ".bias");
    };
    linear(q, a.ln1, l, 0, bias(0), a.lin[0]);
    linear(k, a.ln1, l, 1, bias(1), a.lin[1]);
    linear(v, a.ln1, l, 2, bias(2), a.lin[2]);
    a.q = q.reshaped({b, t, H, D});
    a.k = k.reshaped({b, t, KV, D});
    a.v = v.reshaped({b, t, KV, D});
    a.qr = fwd_zeros(DType::kF32, {b, t, H, D});
    a.kr = fwd_zeros(DType::kF32, {b, t, KV, D});
    be.rope(a.qr, a.q, positions_, c.rope_theta);
    be.rope(a.kr, a.k, positions_, c.rope_theta);
    a.att = fwd_zeros(DType::kF32, {b, H, t, t});
    a.atty = fwd_zeros(DType::kF32, {b, t, H, D});
    be.attention(a.atty, a.att, a.qr, a.kr, a.v, lengths_);
    Tensor o = fwd_zeros(DType::kF32, {n, C});
    linear(o, a.atty.reshaped({n, H * D}), l, 3, bias(3), a.lin[3]);
    a.h = fwd_zeros(DType::kF32, {n, C});
    be.add(a.h, a.x, o);
    // MLP block: out = h + down(silu(gate(ln2)) * up(ln2)).
    a.ln2 = fwd_zeros(DType::kF32, {n, C});
    a.ln2_rstd = fwd_zeros(DType::kF32, {n});
    be.rmsnorm(a.ln2, a.ln2_rstd, a.h, w("post_attention_layernorm.weight"), eps);
    a.gate = fwd_zeros(DType::kF32, {n, F});
    a.up = fwd_zeros(DType::kF32, {n, F});
    a.act = fwd_zeros(DType::kF32, {n, F});
    linear(a.gate, a.ln2, l, 4, bias(4), a.lin[4]);
    linear(a.up, a.ln2, l, 5, bias(5), a.lin[5]);
    be.swiglu(a.act, a.gate, a.up);
    Tensor mlp = fwd_zeros(DType::kF32, {n, C});
    linear(mlp, a.act, l, 6, bias(6), a.lin[6]);
    x = fwd_zeros(DType::kF32, {n, C});
    be.add(x, a.h, mlp);
  }
  out_ = x;
  lnf_ = fwd_zeros(DType::kF32, {n, C});
  lnf_rstd_ = fwd_zeros(DType::kF32, {n});
  be.rmsnorm(lnf_, lnf_rstd_, out_, params_.at("model.norm.weight"), eps);
  if (loss_rows_only_ && have_labels_) {
    // Only the M positions with a target go through the lm_head: prompts and padding (often
    // half of a chat batch) cost no vocab-wide matmul. The embedding op gathers the rows.
    std::vector<int32_t> rows, sel_tgt;
    for (int64_t i = 0; i < n; ++i)
      if (tgt[i] != kIgnoreIndex) {
        rows.push_back(static_cast<int32_t>(i));
        sel_tgt.push_back(tgt[i]);
      }
    const int64_t m = static_cast<int64_t>(rows.size());
    if (m == 0) {
      logits_ = fwd_zeros(DType::kF32, {1, 0, V});
      return 0.0;
    }
    loss_rows_ = fwd_ints(rows, {m});
    targets_sel_ = fwd_ints(sel_tgt, {m});
    lnf_sel_ = fwd_zeros(DType::kF32, {m, C});  // (M, C)
    be.embedding(lnf_sel_, loss_rows_, lnf_);
    Tensor logits = fwd_zeros(DType::kF32, {m, V});  // (M, V)
    be.matmul(logits, lnf_sel_, lm_head(), nullptr, matmul_num_);
    logits_ = logits.reshaped({1, m, V});
    return loss_of(logits, targets_sel_);
  }
  loss_rows_ = Tensor();
  Tensor logits = fwd_zeros(DType::kF32, {n, V});  // (N, V)
  be.matmul(logits, lnf_, lm_head(), nullptr, matmul_num_);
  logits_ = logits.reshaped({b, t, V});
  if (!have_labels_) return std::numeric_limits<double>::quiet_NaN();
  return loss_of(logits, targets_);
}

Tensor Qwen2Model::fwd_zeros(DType dtype, std::vector<int64_t> shape) {
  Tensor t = fwd_arena_->alloc(dtype, std::move(shape));
  be_->zero(t);
  return t;
}

Tensor Qwen2Model::bwd_zeros(std::vector<int64_t> shape) {
  Tensor t = bwd_arena_->alloc(DType::kF32, std::move(shape));
  be_->zero(t);
  return t;
}

Tensor Qwen2Model::fwd_ints(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  Tensor t = fwd_arena_->alloc(DType::kI32, std::move(shape));
  be_->upload(t, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                          v.size() * sizeof(int32_t)));
  return t;
}

double Qwen2Model::loss_of(const Tensor& logits, const Tensor& targets) {
  Backend& be = *be_;
  if (!loss_.defined()) loss_ = be.zeros(DType::kF64, {2});
  be.cross_entropy(loss_, logits, targets);
  double host[2];
  be.download(std::span<uint8_t>(reinterpret_cast<uint8_t*>(host), sizeof host), loss_);
  return host[0];
}

void Qwen2Model::zero_grads() {
  if (lora_) {  // frozen base: only the adapter has gradients
    for (auto& [name, g] : lora_->grads) be_->zero(g);
    return;
  }
  for (auto& [name, p] : params_.by_name) {
    auto it = grads_.by_name.find(name);
    if (it == grads_.by_name.end())
      grads_.by_name[name] = be_->zeros(DType::kF32, p.shape());
    else
      be_->zero(it->second);
  }
}

}  // namespace nnpipe
