// Inference attention over the f16 KV cache (kGgml numerics: llama.cpp's CPU graph with flash
// attention off): K/V stored as f16, q rounded to f16 for Q K^T, softmax in f32 with a double sum
// and a vectorised exp (softmax_f16_*, prefill_attention.h, as ggml's soft_max uses its own
// vector exp), probabilities rounded to f16 for P V. Decode (one query) takes a per-key path with
// F16C/AVX2 row helpers; prompts take the tiled kernels of prefill_attention.h (the same roundings,
// another f32 summation order of the dot products).
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

void CpuBackend::kv_write(std::span<const KvSeq> seqs, int64_t layer, const Tensor& k,
                          const Tensor& v) {
  const int64_t N = k.dim(0);
  for (const KvSeq& s : seqs) {
    if (!s.cache || s.n < 0 || s.row0 < 0 || s.row0 + s.n > N || s.pos0 < 0)
      fail(ErrorCode::kInvalidArgument, "kv_write: sequence rows [{}, {}) of {}", s.row0,
           s.row0 + s.n, N);
    const int64_t kvd = s.cache->kv_dim();
    check_tensor(k, DType::kF32, {N, kvd}, "kv_write k");
    check_tensor(v, DType::kF32, {N, kvd}, "kv_write v");
    check_cache(*s.cache, layer, s.pos0 + s.n, "kv_write");
  }
  const float* pk = f32(k, "kv_write k");
  const float* pv = f32(v, "kv_write v");
  for (const KvSeq& s : seqs) {
    const int64_t kvd = s.cache->kv_dim(), n = s.n;
    uint16_t* K = reinterpret_cast<uint16_t*>(s.cache->k(layer).raw()) + s.pos0 * kvd;
    uint16_t* V = reinterpret_cast<uint16_t*>(s.cache->v(layer).raw()) + s.pos0 * kvd;
    const float* sk = pk + s.row0 * kvd;
    const float* sv = pv + s.row0 * kvd;
#pragma omp parallel for schedule(static) if (n * kvd >= kElementwiseMin)
    for (int64_t i = 0; i < n * kvd; ++i) {
      K[i] = f32_to_f16(sk[i]);
      V[i] = f32_to_f16(sv[i]);
    }
  }
}

namespace {

struct KvShape {
  int64_t H, KV, D, kvd, group;
  float scale;
};

// One query row of one head (the decode path): o (D) from q (D) over cache rows [0, len).
void attend_row(float* o, const float* qi, const uint16_t* K, const uint16_t* V, int64_t len,
                int64_t kh, const KvShape& sh) {
  const int64_t D = sh.D, kvd = sh.kvd;
  thread_local std::vector<float> s, q16;
  s.resize(static_cast<size_t>(len));
  q16.resize(static_cast<size_t>(D));
  for (int64_t d = 0; d < D; ++d) q16[d] = f16_to_f32(f32_to_f16(qi[d]));
  for (int64_t j = 0; j < len; ++j)
    s[j] = dot_f32_f16(q16.data(), K + j * kvd + kh * D, D) * sh.scale;
  kHasAvx2 ? softmax_f16_avx2(s.data(), len) : softmax_f16_ref(s.data(), len);
  std::fill(o, o + D, 0.0f);
  for (int64_t j = 0; j < len; ++j)
    if (s[j] != 0.0f) axpy_f16(o, s[j], V + j * kvd + kh * D, D);
}

// A sequence's n > 1 new rows with the prompt tiles (prefill_attention.h).
void attend_prompt(float* po, const float* pq, const uint16_t* K, const uint16_t* V, int64_t past,
                   int64_t n, const KvShape& sh) {
  const int64_t H = sh.H, KV = sh.KV, D = sh.D, kvd = sh.kvd;
  PrefillShape s;
  s.past = past, s.n = n, s.H = H, s.KV = KV, s.D = D, s.L = past + n;
  s.Lp = (s.L + 15) / 16 * 16, s.scale = sh.scale;
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
  const auto group_fn = prefill_attention_avx512_available(D) ? prefill_attention_group_avx512
                                                              : prefill_attention_group;
#pragma omp parallel for schedule(dynamic, 1) if (n * H * s.L >= 4096)
  for (int64_t task = 0; task < groups * H; ++task) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(4 * (s.Lp + D)));
    const int64_t g = task / H, h = task % H;
    group_fn(po, pq, kt, vf, s, h, 4 * g, static_cast<int>(std::min<int64_t>(4, n - 4 * g)),
             scratch.data());
  }
}

}  // namespace

// out (N, H*D) from q (N, H*D): query i of a sequence over its cache rows [0, pos0 + i].
void CpuBackend::attention_kv(Tensor& out, const Tensor& q, std::span<const KvSeq> seqs,
                              int64_t layer, int64_t heads) {
  const int64_t N = q.dim(0), H = heads;
  if (H <= 0 || q.ndim() != 2 || q.dim(1) % H != 0)
    fail(ErrorCode::kInvalidArgument, "attention_kv: q {} with {} heads", q.describe(), H);
  const int64_t D = q.dim(1) / H;
  check_tensor(out, DType::kF32, {N, H * D}, "attention_kv out");
  int64_t kvd = 0, work = 0;
  for (const KvSeq& s : seqs) {
    if (!s.cache || s.n < 0 || s.row0 < 0 || s.row0 + s.n > N || s.pos0 < 0)
      fail(ErrorCode::kInvalidArgument, "attention_kv: sequence rows [{}, {}) of {}", s.row0,
           s.row0 + s.n, N);
    kvd = s.cache->kv_dim();
    if (kvd % D != 0 || H % (kvd / D) != 0 || (&s != seqs.data() && kvd != seqs[0].cache->kv_dim()))
      fail(ErrorCode::kInvalidArgument, "attention_kv: {} heads of {} vs a cache of {} values", H,
           D, kvd);
    check_cache(*s.cache, layer, s.pos0 + s.n, "attention_kv");
    work += s.n * H * (s.pos0 + s.n);
  }
  if (seqs.empty()) return;
  const KvShape sh{H, kvd / D, D, kvd, H / (kvd / D), 1.0f / std::sqrt(static_cast<float>(D))};
  const float* pq = f32(q, "attention_kv q");
  float* po = f32(out, "attention_kv out");
  auto cache_k = [&](const KvSeq& s) {
    return reinterpret_cast<const uint16_t*>(s.cache->k(layer).raw());
  };
  auto cache_v = [&](const KvSeq& s) {
    return reinterpret_cast<const uint16_t*>(s.cache->v(layer).raw());
  };
  // Sequences with several new rows take the prompt tiles (parallel inside); the single-row
  // ones (decodes) share one parallel loop over (sequence, head).
  std::vector<int64_t> single;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const KvSeq& s = seqs[i];
    if (s.n > 1 && prefill_attention_available(D))
      attend_prompt(po + s.row0 * H * D, pq + s.row0 * H * D, cache_k(s), cache_v(s), s.pos0, s.n,
                    sh);
    else
      for (int64_t r = 0; r < s.n; ++r) single.push_back(static_cast<int64_t>(i) << 32 | r);
  }
  const int64_t tasks = static_cast<int64_t>(single.size()) * H;
#pragma omp parallel for schedule(dynamic, 1) if (work >= 4096 && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t sr = single[static_cast<size_t>(t / H)], h = t % H;
    const KvSeq& s = seqs[static_cast<size_t>(sr >> 32)];
    const int64_t i = sr & 0xffffffff, row = s.row0 + i;
    attend_row(po + (row * H + h) * D, pq + (row * H + h) * D, cache_k(s), cache_v(s),
               s.pos0 + i + 1, h / sh.group, sh);
  }
}

}  // namespace nnpipe::cpu
