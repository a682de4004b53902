#include "engine/context.h"

#include "core/sysinfo.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/qmatmul_kernels.h"
#include "core/error.h"
#include "core/half.h"
#include "core/log.h"
#include "engine/prefill_attention.h"

namespace nnpipe::engine {

namespace {

// --- f16 row helpers: F16C/AVX2/FMA when the CPU has them, portable code otherwise ---

__attribute__((target("avx2,fma,f16c"))) float dot_f32_f16_avx2(const float* a, const uint16_t* b,
                                                                int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 8)));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), b1, acc1);
  }
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * f16_to_f32(b[i]);
  return r;
}

__attribute__((target("avx2,fma,f16c"))) void axpy_f16_avx2(float* y, float p, const uint16_t* v,
                                                            int64_t n) {
  const __m256 pp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pp, vv, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += p * f16_to_f32(v[i]);
}

float dot_f32_f16_ref(const float* a, const uint16_t* b, int64_t n) {
  float r = 0;
  for (int64_t i = 0; i < n; ++i) r += a[i] * f16_to_f32(b[i]);
  return r;
}

void axpy_f16_ref(float* y, float p, const uint16_t* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += p * f16_to_f32(v[i]);
}

const bool kHasAvx2 = cpu_has_avx2_fma_f16c();

inline float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  return kHasAvx2 ? dot_f32_f16_avx2(a, b, n) : dot_f32_f16_ref(a, b, n);
}
inline void axpy_f16(float* y, float p, const uint16_t* v, int64_t n) {
  kHasAvx2 ? axpy_f16_avx2(y, p, v, n) : axpy_f16_ref(y, p, v, n);
}

// Element-wise loops of a prompt run on every thread from this many elements on.
constexpr int64_t kElementwiseMin = int64_t{1} << 16;

// ggml_compute_forward_rms_norm_f32 then ggml_mul by the weight. out/x (n, c)
void rmsnorm(float* out, const float* x, const float* w, int64_t n, int64_t c, float eps) {
#pragma omp parallel for schedule(static) if (n * c >= kElementwiseMin)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * c;
    float* yr = out + r * c;
    double sum = 0;
    for (int64_t i = 0; i < c; ++i) sum += static_cast<double>(xr[i] * xr[i]);
    const float mean = static_cast<float>(sum / static_cast<double>(c));
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] * scale) * w[i];
  }
}

// NEOX rotation of x (n, heads, d) at positions pos0.. (llama.cpp's rope cache: theta = p, then
// theta *= theta_scale per pair).
void rope(float* x, int64_t n, int64_t heads, int64_t d, int64_t pos0, float freq_base) {
  const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(d));
  const int64_t half = d / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t t = 0; t < n; ++t) {
    float theta = static_cast<float>(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      cs[i] = std::cos(theta);
      sn[i] = std::sin(theta);
      theta *= theta_scale;
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cs[i] - x1 * sn[i];
        v[i + half] = x0 * sn[i] + x1 * cs[i];
      }
    }
  }
}

}  // namespace

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

// The first allocation of the KV cache, in positions (then doubled as the context fills).
constexpr int64_t kKvMinRows = 256;

Context::Context(std::shared_ptr<const Model> model, int64_t n_ctx)
    : model_(std::move(model)), n_ctx_(n_ctx) {
  if (n_ctx_ <= 0)
    fail(ErrorCode::kInvalidArgument, "context size must be positive, got {}", n_ctx);
  const ModelConfig& c = model_->config();
  k_.resize(static_cast<size_t>(c.num_hidden_layers));
  v_.resize(static_cast<size_t>(c.num_hidden_layers));
}

size_t Context::kv_bytes() const {
  size_t b = 0;
  for (const auto* kv : {&k_, &v_})
    for (const auto& layer : *kv) b += layer.capacity() * sizeof(uint16_t);
  return b;
}

void Context::reserve_kv(int64_t rows) {
  if (rows <= kv_rows_) return;
  const int64_t want = std::min(n_ctx_, std::max({rows, 2 * kv_rows_, kKvMinRows}));
  const size_t kvd = static_cast<size_t>(model_->config().kv_dim());
  const size_t keep = static_cast<size_t>(n_past_) * kvd;
  try {
    for (auto* kv : {&k_, &v_})
      for (auto& layer : *kv) {
        // A fresh exact-size buffer (vector::resize could over-allocate up to 2x).
        std::vector<uint16_t> grown(static_cast<size_t>(want) * kvd);
        std::copy(layer.begin(), layer.begin() + static_cast<std::ptrdiff_t>(keep), grown.begin());
        layer.swap(grown);
      }
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::kInvalidArgument,
         "out of memory growing the KV cache to {} positions ({:.0f} MiB): use a smaller context",
         want,
         static_cast<double>(want) * static_cast<double>(kvd) * 4 * static_cast<double>(k_.size()) /
             (1 << 20));
  }
  kv_rows_ = want;
}

void Context::truncate(int64_t n) {
  n_past_ = std::clamp<int64_t>(n, 0, n_past_);
}

void Context::set_adapters(AdapterSet set) {
  if (!same_adapters(set, adapters_)) n_past_ = 0;
  adapters_ = std::move(set);
}

void Context::linear(float* y, const float* x, int64_t n, int64_t layer, Linear l,
                     const float* bias) {
  const cpu::QMatrix& w =
      layer < 0 ? model_->output() : model_->layers()[static_cast<size_t>(layer)].lin[int(l)];
  cpu::qmatmul(y, x, n, w);  // (n, out)
  for (const AdapterRef& ref : adapters_) {
    if (!ref.adapter || ref.scale == 0.0f) continue;
    const LoraPair* p = layer < 0 ? ref.adapter->output() : ref.adapter->find(layer, l);
    if (!p) continue;
    const int64_t r = p->a.rows, out = w.rows;
    lora_t_.resize(static_cast<size_t>(n * r));
    lora_u_.resize(static_cast<size_t>(n * out));
    cpu::qmatmul(lora_t_.data(), x, n, p->a);  // (n, r)
    if (p->bt.empty()) {
      cpu::qmatmul(lora_u_.data(), lora_t_.data(), n, p->b);  // (n, out)
    } else {
      // t rounded as ggml converts activations for B's type (f16/bf16), then u = t B^T.
      lora_t16_.resize(static_cast<size_t>(n * r));
      for (int64_t t = 0; t < n; ++t)
        cpu::qk::convert_activations(p->b.type, lora_t_.data() + t * r, r,
                                     reinterpret_cast<uint8_t*>(lora_t16_.data() + t * r));
      const float* bt = p->bt.data();
      if (n >= 8) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n),
                    static_cast<int>(out), static_cast<int>(r), 1.0f, lora_t16_.data(),
                    static_cast<int>(r), bt, static_cast<int>(out), 0.0f, lora_u_.data(),
                    static_cast<int>(out));
      } else {
        for (int64_t t = 0; t < n; ++t) {
          float* u = lora_u_.data() + t * out;
          std::fill(u, u + out, 0.0f);
          for (int64_t k = 0; k < r; ++k) {
            const float c = lora_t16_[static_cast<size_t>(t * r + k)];
            const float* b = bt + k * out;
            for (int64_t o = 0; o < out; ++o) u[o] += c * b[o];  // (out) axpy
          }
        }
      }
    }
    const float s = ref.scale * p->factor;
    for (int64_t i = 0; i < n * out; ++i) y[i] += lora_u_[static_cast<size_t>(i)] * s;
  }
  if (bias) {
    for (int64_t t = 0; t < n; ++t)
      for (int64_t o = 0; o < w.rows; ++o) y[t * w.rows + o] += bias[o];
  }
}

// out (n, H*D) from q (n, H*D) and the cache rows [0, n_past + i] for query i.
void Context::attention(float* out, const float* q, int64_t layer, int64_t n) {
  const ModelConfig& c = model_->config();
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  const int64_t kvd = c.kv_dim(), group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const uint16_t* K = k_[static_cast<size_t>(layer)].data();
  const uint16_t* V = v_[static_cast<size_t>(layer)].data();
  const int64_t past = n_past_;
  if (n > 1 && prefill_attention_available(D)) {
    PrefillShape s;
    s.past = past, s.n = n, s.H = H, s.KV = KV, s.D = D, s.L = past + n;
    s.Lp = (s.L + 15) / 16 * 16, s.scale = scale;
    kt_.resize(static_cast<size_t>(KV * D * s.Lp));  // (KV, D, Lp)
    vf_.resize(static_cast<size_t>(s.L * kvd));      // (L, KV*D)
    float* kt = kt_.data();
    float* vf = vf_.data();
    constexpr int64_t kRows = 64;
    const int64_t nblk = (s.L + kRows - 1) / kRows;
#pragma omp parallel for schedule(static) if (s.L * kvd >= 65536)
    for (int64_t b = 0; b < nblk; ++b)
      prefill_expand_kv(K, V, s, kt, vf, b * kRows, std::min(s.L, (b + 1) * kRows));
    const int64_t groups = (n + 3) / 4;
#pragma omp parallel for schedule(dynamic, 1) if (n * H * s.L >= 4096)
    for (int64_t task = 0; task < groups * H; ++task) {
      thread_local std::vector<float> scratch;
      scratch.resize(static_cast<size_t>(4 * (s.Lp + D)));
      const int64_t g = task / H, h = task % H;
      prefill_attention_group(out, q, kt, vf, s, h, 4 * g,
                              static_cast<int>(std::min<int64_t>(4, n - 4 * g)), scratch.data());
    }
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) if (n * H * (past + n) >= 4096)
  for (int64_t ih = 0; ih < n * H; ++ih) {
    const int64_t i = ih / H, h = ih % H, kh = h / group;
    const int64_t len = past + i + 1;
    thread_local std::vector<float> s, q16;
    s.resize(static_cast<size_t>(len));
    q16.resize(static_cast<size_t>(D));
    const float* qi = q + (i * H + h) * D;
    for (int64_t d = 0; d < D; ++d) q16[d] = f16_to_f32(f32_to_f16(qi[d]));
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
      s[j] = dot_f32_f16(q16.data(), K + j * kvd + kh * D, D) * scale;
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < len; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    float* o = out + (i * H + h) * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float p = f16_to_f32(f32_to_f16(s[j] * inv));
      if (p != 0.0f) axpy_f16(o, p, V + j * kvd + kh * D, D);
    }
  }
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
  reserve_kv(n_past_ + n);
  const int64_t C = c.hidden_size, F = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float theta = static_cast<float>(c.rope_theta);
  auto sz = [](int64_t k) { return static_cast<size_t>(k); };
  x_.resize(sz(n * C));
  h_.resize(sz(n * C));
  q_.resize(sz(n * qd));
  k_new_.resize(sz(n * kvd));
  v_new_.resize(sz(n * kvd));
  att_.resize(sz(n * qd));
  o_.resize(sz(n * C));
  gate_.resize(sz(n * F));
  up_.resize(sz(n * F));

  for (int64_t i = 0; i < n; ++i) cpu::qmatrix_row(model_->token_embd(), tokens[i], &x_[sz(i * C)]);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = model_->layers()[sz(l)];
    rmsnorm(h_.data(), x_.data(), L.attn_norm.data(), n, C, eps);
    linear(q_.data(), h_.data(), n, l, Linear::kQ, L.q_bias.data());      // (n, H*D)
    linear(k_new_.data(), h_.data(), n, l, Linear::kK, L.k_bias.data());  // (n, KV*D)
    linear(v_new_.data(), h_.data(), n, l, Linear::kV, L.v_bias.data());
    rope(q_.data(), n, c.num_attention_heads, c.head_dim, n_past_, theta);
    rope(k_new_.data(), n, c.num_key_value_heads, c.head_dim, n_past_, theta);
    uint16_t* K = k_[sz(l)].data() + n_past_ * kvd;
    uint16_t* V = v_[sz(l)].data() + n_past_ * kvd;
#pragma omp parallel for schedule(static) if (n * kvd >= kElementwiseMin)
    for (int64_t i = 0; i < n * kvd; ++i) {
      K[i] = f32_to_f16(k_new_[sz(i)]);
      V[i] = f32_to_f16(v_new_[sz(i)]);
    }
    attention(att_.data(), q_.data(), l, n);
    linear(o_.data(), att_.data(), n, l, Linear::kO, nullptr);  // (n, C)
#pragma omp parallel for schedule(static) if (n * C >= kElementwiseMin)
    for (int64_t i = 0; i < n * C; ++i) x_[sz(i)] += o_[sz(i)];
    rmsnorm(h_.data(), x_.data(), L.ffn_norm.data(), n, C, eps);
    linear(gate_.data(), h_.data(), n, l, Linear::kGate, nullptr);  // (n, F)
    linear(up_.data(), h_.data(), n, l, Linear::kUp, nullptr);
#pragma omp parallel for schedule(static) if (n * F >= kElementwiseMin)
    for (int64_t i = 0; i < n * F; ++i) {
      const float g = gate_[sz(i)];
      gate_[sz(i)] = g / (1.0f + std::exp(-g)) * up_[sz(i)];
    }
    linear(o_.data(), gate_.data(), n, l, Linear::kDown, nullptr);  // (n, C)
#pragma omp parallel for schedule(static) if (n * C >= kElementwiseMin)
    for (int64_t i = 0; i < n * C; ++i) x_[sz(i)] += o_[sz(i)];
  }
  n_past_ += n;
  const int64_t rows = all_logits ? n : 1;
  const float* last = x_.data() + (n - rows) * C;
  rmsnorm(h_.data(), last, model_->output_norm().data(), rows, C, eps);
  logits_.resize(sz(rows * c.vocab_size));
  linear(logits_.data(), h_.data(), rows, -1, Linear::kQ, nullptr);  // (rows, V)
  return logits_.data();
}

}  // namespace nnpipe::engine
