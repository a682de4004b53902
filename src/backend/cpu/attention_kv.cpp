// Inference attention over the f16 KV cache (kGgml numerics: llama.cpp's CPU graph with flash
// attention off): K/V stored as f16, q rounded to f16 for Q K^T, softmax in f32 with a double sum,
// probabilities rounded to f16 for P V. Decode (one query) takes a per-key path with F16C/AVX2
// row helpers; prompts take the tiled kernels of prefill_attention.h (the same roundings, another
// f32 summation order of the dot products).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/prefill_attention.h"
#include "core/half.h"
#include "core/sysinfo.h"

namespace nnpipe::cpu {
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

void check_cache(const KvCache& cache, int64_t layer, int64_t rows, const char* what) {
  if (layer < 0 || layer >= cache.layers() || rows > cache.rows())
    fail(ErrorCode::kInvalidArgument, "{}: layer {} rows {} of a {}-layer cache of {} rows", what,
         layer, rows, cache.layers(), cache.rows());
}

}  // namespace

void CpuBackend::kv_write(KvCache& cache, int64_t layer, int64_t pos0, const Tensor& k,
                          const Tensor& v) {
  const int64_t kvd = cache.kv_dim(), n = k.dim(0);
  check_tensor(k, DType::kF32, {n, kvd}, "kv_write k");
  check_tensor(v, DType::kF32, {n, kvd}, "kv_write v");
  check_cache(cache, layer, pos0 + n, "kv_write");
  uint16_t* K = reinterpret_cast<uint16_t*>(cache.k(layer).raw()) + pos0 * kvd;
  uint16_t* V = reinterpret_cast<uint16_t*>(cache.v(layer).raw()) + pos0 * kvd;
  const float* pk = f32(k, "kv_write k");
  const float* pv = f32(v, "kv_write v");
#pragma omp parallel for schedule(static) if (n * kvd >= kElementwiseMin)
  for (int64_t i = 0; i < n * kvd; ++i) {
    K[i] = f32_to_f16(pk[i]);
    V[i] = f32_to_f16(pv[i]);
  }
}

// out (n, H*D) from q (n, H*D) and the cache rows [0, past + i] for query i.
void CpuBackend::attention_kv(Tensor& out, const Tensor& q, const KvCache& cache, int64_t layer,
                              int64_t pos0, int64_t heads) {
  const int64_t n = q.dim(0), kvd = cache.kv_dim(), H = heads;
  if (H <= 0 || q.ndim() != 2 || q.dim(1) % H != 0)
    fail(ErrorCode::kInvalidArgument, "attention_kv: q {} with {} heads", q.describe(), H);
  const int64_t D = q.dim(1) / H;
  if (kvd % D != 0 || H % (kvd / D) != 0)
    fail(ErrorCode::kInvalidArgument, "attention_kv: {} heads of {} vs a cache of {} values", H, D,
         kvd);
  const int64_t KV = kvd / D, group = H / KV;
  check_tensor(out, DType::kF32, {n, H * D}, "attention_kv out");
  check_cache(cache, layer, pos0 + n, "attention_kv");
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const uint16_t* K = reinterpret_cast<const uint16_t*>(cache.k(layer).raw());
  const uint16_t* V = reinterpret_cast<const uint16_t*>(cache.v(layer).raw());
  const float* pq = f32(q, "attention_kv q");
  float* po = f32(out, "attention_kv out");
  const int64_t past = pos0;
  if (n > 1 && prefill_attention_available(D)) {
    PrefillShape s;
    s.past = past, s.n = n, s.H = H, s.KV = KV, s.D = D, s.L = past + n;
    s.Lp = (s.L + 15) / 16 * 16, s.scale = scale;
    thread_local std::vector<float> kt_buf, vf_buf;
    kt_buf.resize(static_cast<size_t>(KV * D * s.Lp));  // (KV, D, Lp)
    vf_buf.resize(static_cast<size_t>(s.L * kvd));      // (L, KV*D)
    float* kt = kt_buf.data();
    float* vf = vf_buf.data();
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
      prefill_attention_group(po, pq, kt, vf, s, h, 4 * g,
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
    const float* qi = pq + (i * H + h) * D;
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
    float* o = po + (i * H + h) * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float p = f16_to_f32(f32_to_f16(s[j] * inv));
      if (p != 0.0f) axpy_f16(o, p, V + j * kvd + kh * D, D);
    }
  }
}

}  // namespace nnpipe::cpu
