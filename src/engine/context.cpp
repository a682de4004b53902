#include "engine/context.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe::engine {

int64_t context_size_for(const ModelConfig& c, int64_t requested, std::string_view flag) {
  if (requested < 0)
    fail(ErrorCode::kInvalidArgument,
         "{} {}: the context size must be >= 0 (0: min(4096, the model's {}))", flag, requested,
         c.max_position_embeddings);
  if (requested == 0) return std::min<int64_t>(4096, c.max_position_embeddings);
  if (requested > c.max_position_embeddings) {
    log::warn("{} {} exceeds the model's context length {}: using {}", flag, requested,
              c.max_position_embeddings, c.max_position_embeddings);
    return c.max_position_embeddings;
  }
  return requested;
}

Context::Context(std::shared_ptr<const Model> model, int64_t n_ctx)
    : model_(std::move(model)),
      be_(model_->backend()),
      n_ctx_(n_ctx),
      kv_(be_, model_->config().num_hidden_layers, model_->config().kv_dim(),
          std::max<int64_t>(n_ctx, 1)) {
  if (n_ctx_ <= 0)
    fail(ErrorCode::kInvalidArgument, "context size must be positive, got {}", n_ctx);
}

void Context::truncate(int64_t n) {
  n_past_ = std::clamp<int64_t>(n, 0, n_past_);
}

void Context::set_adapters(AdapterSet set) {
  if (!same_adapters(set, adapters_)) n_past_ = 0;
  adapters_ = std::move(set);
}

namespace {

// view = a `shape` view of cap, reallocated (uninitialised contents) when too small.
void fit(Backend& be, Tensor& cap, Tensor& view, DType t, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t need = static_cast<size_t>(numel) * dtype_size(t);
  if (!cap.defined() || cap.capacity() < need) cap = be.zeros(t, {std::max<int64_t>(numel, 1)});
  view = cap.narrowed(std::move(shape));
}

}  // namespace

void Context::scratch(int64_t n, int64_t logit_rows) {
  const ModelConfig& c = model_->config();
  const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  auto f = [&](Buf& b, std::vector<int64_t> shape) {
    fit(be_, b.cap, b.view, DType::kF32, std::move(shape));
  };
  f(x_, {n, C});
  f(h_, {n, C});
  f(q_, {n, qd});
  f(k_, {n, kvd});
  f(v_, {n, kvd});
  f(att_, {n, qd});
  f(o_, {n, C});
  f(gate_, {n, F});
  f(up_, {n, F});
  f(logits_, {logit_rows, c.vocab_size});
  fit(be_, pos_.cap, pos_.view, DType::kI32, {1, n});
}

void Context::linear(Tensor& y, const Tensor& x, int64_t layer, Linear l, const Tensor* bias) {
  const Tensor& w =
      layer < 0 ? model_->output() : model_->layers()[static_cast<size_t>(layer)].lin[int(l)];
  be_.matmul(y, x, w, nullptr, Numerics::kGgml);  // (n, out)
  const int64_t n = x.dim(0);
  for (const AdapterRef& ref : adapters_) {
    if (!ref.adapter || ref.scale == 0.0f) continue;
    const LoraPair* p = layer < 0 ? ref.adapter->output() : ref.adapter->find(layer, l);
    if (!p) continue;
    const int64_t r = p->a.dim(0);
    fit(be_, lora_.cap, lora_.view, DType::kF32, {n, r});
    be_.lora_apply(y, lora_.view, x, p->a, p->b, p->bt.defined() ? &p->bt : nullptr,
                   ref.scale * p->factor);
  }
  if (bias) be_.add_bias(y, *bias);
}

const float* Context::forward(const int32_t* tokens, int64_t n, bool all_logits) {
  const ModelConfig& c = model_->config();
  if (n <= 0) fail(ErrorCode::kInvalidArgument, "forward: no tokens to evaluate");
  if (n_past_ + n > n_ctx_)
    fail(ErrorCode::kInvalidArgument,
         "{} tokens do not fit the context: {} are cached and the context holds {} (raise "
         "--ctx-size or shorten the prompt)",
         n, n_past_, n_ctx_);
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary (0..{})", tokens[i],
           c.vocab_size - 1);
  kv_.reserve(n_past_ + n, n_past_);
  const int64_t rows = all_logits ? n : 1;
  scratch(n, rows);
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor none;          // rstd is not kept at inference
  Tensor& x = x_.view;  // (n, C) the residual stream
  Tensor& h = h_.view;

  // positions (1, n) = n_past .. n_past + n - 1, and the token ids as an i32 (n) tensor
  int32_t* pos = reinterpret_cast<int32_t*>(pos_.view.raw());
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(n_past_ + i);
  const Tensor ids = Tensor::from_i32({tokens, static_cast<size_t>(n)}, {n});
  be_.embedding(x, ids, model_->token_embd());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = model_->layers()[static_cast<size_t>(l)];
    be_.rmsnorm(h, none, x, L.attn_norm, eps, Numerics::kGgml);
    linear(q_.view, h, l, Linear::kQ, &L.q_bias);  // (n, H*D)
    linear(k_.view, h, l, Linear::kK, &L.k_bias);  // (n, KV*D)
    linear(v_.view, h, l, Linear::kV, &L.v_bias);
    Tensor q4 = q_.view.reshaped({1, n, H, D}), k4 = k_.view.reshaped({1, n, KV, D});
    be_.rope(q4, q4, pos_.view, c.rope_theta, Numerics::kGgml);
    be_.rope(k4, k4, pos_.view, c.rope_theta, Numerics::kGgml);
    be_.kv_write(kv_, l, n_past_, k_.view, v_.view);
    be_.attention_kv(att_.view, q_.view, kv_, l, n_past_, H);
    linear(o_.view, att_.view, l, Linear::kO, nullptr);  // (n, C)
    be_.accumulate(x, o_.view);
    be_.rmsnorm(h, none, x, L.ffn_norm, eps, Numerics::kGgml);
    linear(gate_.view, h, l, Linear::kGate, nullptr);  // (n, F)
    linear(up_.view, h, l, Linear::kUp, nullptr);
    be_.swiglu(gate_.view, gate_.view, up_.view);
    linear(o_.view, gate_.view, l, Linear::kDown, nullptr);  // (n, C)
    be_.accumulate(x, o_.view);
  }
  n_past_ += n;
  // The last `rows` rows of the residual stream -> final norm -> lm_head.
  Tensor hl = h.rows(n - rows, rows);
  be_.rmsnorm(hl, none, x.rows(n - rows, rows), model_->output_norm(), eps, Numerics::kGgml);
  linear(logits_.view, hl, -1, Linear::kQ, nullptr);  // (rows, V)
  return reinterpret_cast<const float*>(logits_.view.raw());
}

}  // namespace nnpipe::engine
