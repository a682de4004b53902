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

Sequence::Sequence(const Model& model, int64_t n_ctx)
    : n_ctx_(n_ctx),
      kv_(model.backend(), model.config().num_hidden_layers, model.config().kv_dim(),
          std::max<int64_t>(n_ctx, 1)) {
  if (n_ctx_ <= 0)
    fail(ErrorCode::kInvalidArgument, "context size must be positive, got {}", n_ctx);
}

void Sequence::truncate(int64_t n) {
  n_past_ = std::clamp<int64_t>(n, 0, n_past_);
}

void Sequence::set_adapters(AdapterSet set) {
  if (!same_adapters(set, adapters_)) n_past_ = 0;
  adapters_ = std::move(set);
}

Context::Context(std::shared_ptr<const Model> model, int64_t n_ctx)
    : model_(std::move(model)), seq_(*model_, n_ctx), ev_(model_) {}

const float* Context::forward(const int32_t* tokens, int64_t n, bool all_logits) {
  const SeqTokens step{&seq_, tokens, n};
  return ev_.forward(std::span<const SeqTokens>(&step, 1), all_logits);
}

Evaluator::Evaluator(std::shared_ptr<const Model> model, Numerics num)
    : model_(std::move(model)), be_(model_->backend()), num_(num), arena_(be_) {}

void Evaluator::scratch(int64_t n, int64_t logit_rows, int64_t max_rank) {
  const ModelConfig& c = model_->config();
  const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  arena_.reset();
  auto f = [&](Tensor& t, std::vector<int64_t> shape) {
    t = arena_.alloc(DType::kF32, std::move(shape));
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
  f(hl_, {logit_rows, C});
  // lora_apply_rows' scratch: n * max_rank plus 64-byte alignment per segment (<= n segments).
  f(lora_, {std::max<int64_t>(n * max_rank + 16 * n, 1)});
  pos_ = arena_.alloc(DType::kI32, {1, n});
  last_ = arena_.alloc(DType::kI32, {logit_rows});
  ids_ = arena_.alloc(DType::kI32, {n});
}

void Evaluator::linear(Tensor& y, const Tensor& x, int64_t layer, Linear l, const Tensor* bias,
                       const std::vector<Segment>& segs) {
  const Tensor& w =
      layer < 0 ? model_->output() : model_->layers()[static_cast<size_t>(layer)].lin[int(l)];
  be_.matmul(y, x, w, nullptr, num_);  // (N, out): the base weights once for every row
  // Each segment's stack on its own rows, all segments in one op (items of a stack in order).
  items_.clear();
  for (const Segment& sg : segs)
    for (const AdapterRef& ref : *sg.adapters) {
      if (!ref.adapter || ref.scale == 0.0f) continue;
      const LoraPair* p = layer < 0 ? ref.adapter->output() : ref.adapter->find(layer, l);
      if (!p) continue;
      items_.push_back(
          {sg.row0, sg.n, &p->a, &p->b, p->bt.defined() ? &p->bt : nullptr, ref.scale * p->factor});
    }
  if (!items_.empty()) be_.lora_apply_rows(y, lora_, x, items_, num_);
  if (bias) be_.add_bias(y, *bias);
}

const float* Evaluator::forward(std::span<const SeqTokens> steps, bool all_logits) {
  const ModelConfig& c = model_->config();
  if (steps.empty()) fail(ErrorCode::kInvalidArgument, "forward: no sequences to evaluate");
  if (all_logits && steps.size() != 1)
    fail(ErrorCode::kInvalidArgument, "forward: all logits are for one sequence at a time");
  int64_t N = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SeqTokens& st = steps[i];
    if (!st.seq || st.n <= 0) fail(ErrorCode::kInvalidArgument, "forward: no tokens to evaluate");
    for (size_t j = 0; j < i; ++j)
      if (steps[j].seq == st.seq)
        fail(ErrorCode::kInvalidArgument, "forward: a sequence appears twice in one step");
    const Sequence& sq = *st.seq;
    if (sq.n_past_ + st.n > sq.n_ctx_)
      fail(ErrorCode::kInvalidArgument,
           "{} tokens do not fit the context: {} are cached and the context holds {} (raise "
           "--ctx-size or shorten the prompt)",
           st.n, sq.n_past_, sq.n_ctx_);
    for (int64_t t = 0; t < st.n; ++t)
      if (st.tokens[t] < 0 || st.tokens[t] >= c.vocab_size)
        fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary (0..{})",
             st.tokens[t], c.vocab_size - 1);
    N += st.n;
  }
  for (const SeqTokens& st : steps) st.seq->kv_.reserve(st.seq->n_past_ + st.n, st.seq->n_past_);
  const int64_t S = static_cast<int64_t>(steps.size());
  const int64_t rows = all_logits ? N : S;
  int64_t max_rank = 0;
  for (const SeqTokens& st : steps)
    for (const AdapterRef& ref : st.seq->adapters_)
      if (ref.adapter) max_rank = std::max(max_rank, ref.adapter->rank());
  scratch(N, rows, max_rank);
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor none;     // rstd is not kept at inference
  Tensor& x = x_;  // (N, C) the residual stream
  Tensor& h = h_;

  // Per sequence: its rows of the step, its positions and its cache; the token ids (N) and the
  // positions (1, N) of all rows; segments of consecutive rows that share an adapter set.
  host_ids_.resize(static_cast<size_t>(N));
  host_pos_.resize(static_cast<size_t>(N));
  host_last_.resize(static_cast<size_t>(rows));
  int32_t* ids = host_ids_.data();
  std::vector<KvSeq> kv(static_cast<size_t>(S));
  std::vector<Segment> segs, last_segs;
  int32_t* pos = host_pos_.data();
  int32_t* last = host_last_.data();
  int64_t row = 0;
  for (int64_t i = 0; i < S; ++i) {
    const SeqTokens& st = steps[static_cast<size_t>(i)];
    Sequence& sq = *st.seq;
    kv[static_cast<size_t>(i)] = KvSeq{&sq.kv_, sq.n_past_, row, st.n};
    for (int64_t t = 0; t < st.n; ++t) {
      ids[row + t] = st.tokens[t];
      pos[row + t] = static_cast<int32_t>(sq.n_past_ + t);
    }
    if (!segs.empty() && same_adapters(*segs.back().adapters, sq.adapters_))
      segs.back().n += st.n;
    else
      segs.push_back({&sq.adapters_, row, st.n});
    // The logits rows: the last token of each sequence (all rows with all_logits).
    if (!all_logits) {
      last[i] = static_cast<int32_t>(row + st.n - 1);
      if (!last_segs.empty() && same_adapters(*last_segs.back().adapters, sq.adapters_))
        ++last_segs.back().n;
      else
        last_segs.push_back({&sq.adapters_, i, 1});
    }
    row += st.n;
  }
  if (all_logits) last_segs = segs;

  auto up = [&](Tensor& t, const std::vector<int32_t>& v) {
    be_.upload(t, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                           v.size() * sizeof(int32_t)));
  };
  up(ids_, host_ids_);
  up(pos_, host_pos_);
  if (!all_logits) up(last_, host_last_);
  be_.embedding(x, ids_, model_->token_embd());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = model_->layers()[static_cast<size_t>(l)];
    be_.rmsnorm(h, none, x, L.attn_norm, eps, num_);
    linear(q_, h, l, Linear::kQ, &L.q_bias, segs);  // (N, H*D)
    linear(k_, h, l, Linear::kK, &L.k_bias, segs);  // (N, KV*D)
    linear(v_, h, l, Linear::kV, &L.v_bias, segs);
    Tensor q4 = q_.reshaped({1, N, H, D}), k4 = k_.reshaped({1, N, KV, D});
    be_.rope(q4, q4, pos_, c.rope_theta, num_);
    be_.rope(k4, k4, pos_, c.rope_theta, num_);
    be_.kv_write(kv, l, k_, v_);
    be_.attention_kv(att_, q_, kv, l, H);
    linear(o_, att_, l, Linear::kO, nullptr, segs);  // (N, C)
    be_.accumulate(x, o_);
    be_.rmsnorm(h, none, x, L.ffn_norm, eps, num_);
    linear(gate_, h, l, Linear::kGate, nullptr, segs);  // (N, F)
    linear(up_, h, l, Linear::kUp, nullptr, segs);
    be_.swiglu(gate_, gate_, up_);
    linear(o_, gate_, l, Linear::kDown, nullptr, segs);  // (N, C)
    be_.accumulate(x, o_);
  }
  for (const SeqTokens& st : steps) st.seq->n_past_ += st.n;
  // The logits rows of the residual stream -> final norm -> lm_head. One sequence: its last
  // `rows` rows in place; several: their last rows gathered (embedding over the f32 stream).
  Tensor hl;
  if (S == 1) {
    hl = h.rows(N - rows, rows);
    be_.rmsnorm(hl, none, x.rows(N - rows, rows), model_->output_norm(), eps, num_);
  } else {
    hl = h.rows(0, rows);
    be_.embedding(hl_, last_, x);  // (S, C)
    be_.rmsnorm(hl, none, hl_, model_->output_norm(), eps, num_);
  }
  linear(logits_, hl, -1, Linear::kQ, nullptr, last_segs);  // (rows, V)
  // The logits go to the host: the sampler runs there.
  host_logits_.resize(static_cast<size_t>(rows * c.vocab_size));
  be_.download(std::span<uint8_t>(reinterpret_cast<uint8_t*>(host_logits_.data()),
                                  host_logits_.size() * sizeof(float)),
               logits_);
  return host_logits_.data();
}

}  // namespace nnpipe::engine
