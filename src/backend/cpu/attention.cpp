// Causal grouped-query attention (transformers eager_attention_forward): scores = q k^T / sqrt(D),
// masked (causal and padding), softmax in fp32, times v. Query head h reads KV head h / (H / KV).
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {

void CpuBackend::attention(Tensor& out, Tensor& att, const Tensor& q, const Tensor& k,
                           const Tensor& v, const Tensor& lengths) {
  if (q.ndim() != 4 || k.ndim() != 4)
    fail(ErrorCode::kInvalidArgument, "attention: q {} k {}", q.describe(), k.describe());
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), d = q.dim(3), kv = k.dim(2);
  if (kv <= 0 || h % kv != 0)
    fail(ErrorCode::kInvalidArgument, "attention: {} heads not a multiple of {} kv heads", h, kv);
  check_tensor(k, DType::kF32, {b, t, kv, d}, "attention k");
  check_tensor(v, DType::kF32, {b, t, kv, d}, "attention v");
  check_tensor(out, DType::kF32, {b, t, h, d}, "attention out");
  check_tensor(att, DType::kF32, {b, h, t, t}, "attention att");
  check_tensor(lengths, DType::kI32, {b}, "attention lengths");
  const float* pq = f32(q, "q");
  const float* pk = f32(k, "k");
  const float* pv = f32(v, "v");
  const int32_t* len = i32(lengths, "lengths");
  for (int64_t bi = 0; bi < b; ++bi)
    if (len[bi] < 1 || len[bi] > t)
      fail(ErrorCode::kInvalidArgument, "attention: row {} length {} not in [1, {}]", bi, len[bi],
           t);
  float* po = f32(out, "out");
  float* pa = f32(att, "att");
  const int64_t rep = h / kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
#pragma omp parallel for collapse(2) if (b * h * t * t * d >= kParallelMin)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t kh = hh / rep;
      for (int64_t i = 0; i < t; ++i) {
        const float* qi = pq + ((bi * t + i) * h + hh) * d;      // (D)
        float* arow = pa + ((bi * h + hh) * t + i) * t;          // (T)
        const int64_t last = std::min<int64_t>(i, len[bi] - 1);  // keys 0..last are visible
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= last; ++j) {
          const float* kj = pk + ((bi * t + j) * kv + kh) * d;
          float s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t e = 0; e < d; ++e) s += qi[e] * kj[e];
          arow[j] = s * scale;
          mx = std::max(mx, arow[j]);
        }
        float sum = 0;
        for (int64_t j = 0; j <= last; ++j) {
          arow[j] = std::exp(arow[j] - mx);
          sum += arow[j];
        }
        for (int64_t j = 0; j <= last; ++j) arow[j] /= sum;
        for (int64_t j = last + 1; j < t; ++j) arow[j] = 0;
        float* oi = po + ((bi * t + i) * h + hh) * d;
        for (int64_t e = 0; e < d; ++e) oi[e] = 0;
        for (int64_t j = 0; j <= last; ++j) {
          const float* vj = pv + ((bi * t + j) * kv + kh) * d;
          const float pj = arow[j];
#pragma omp simd
          for (int64_t e = 0; e < d; ++e) oi[e] += pj * vj[e];
        }
      }
    }
  }
}

// With P = softmax(S): dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
// dQ += dS K / sqrt(D), dK += dS^T Q / sqrt(D). Masked entries have P = 0, hence dS = 0.
void CpuBackend::attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                    const Tensor& att, const Tensor& q, const Tensor& k,
                                    const Tensor& v) {
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), d = q.dim(3), kv = k.dim(2);
  same_shape(dq, q, "attention_backward dq");
  same_shape(dk, k, "attention_backward dk");
  same_shape(dv, v, "attention_backward dv");
  same_shape(dout, q, "attention_backward dout");
  check_tensor(att, DType::kF32, {b, h, t, t}, "attention_backward att");
  const float* pq = f32(q, "q");
  const float* pk = f32(k, "k");
  const float* pv = f32(v, "v");
  const float* pa = f32(att, "att");
  const float* pg = f32(dout, "dout");
  float* pdq = f32(dq, "dq");
  float* pdk = f32(dk, "dk");
  float* pdv = f32(dv, "dv");
  const int64_t rep = h / kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Parallel over (batch, kv head): the query heads sharing a KV head run in one thread, so the
  // dK/dV accumulation never races.
#pragma omp parallel for collapse(2) if (b * h * t * t * d >= kParallelMin)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t kh = 0; kh < kv; ++kh) {
      std::vector<float> ds(static_cast<size_t>(t));
      for (int64_t hh = kh * rep; hh < (kh + 1) * rep; ++hh) {
        for (int64_t i = 0; i < t; ++i) {
          const float* arow = pa + ((bi * h + hh) * t + i) * t;
          const float* gi = pg + ((bi * t + i) * h + hh) * d;
          const float* qi = pq + ((bi * t + i) * h + hh) * d;
          float* dqi = pdq + ((bi * t + i) * h + hh) * d;
          float dot = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const float* vj = pv + ((bi * t + j) * kv + kh) * d;
            float dp = 0;
#pragma omp simd reduction(+ : dp)
            for (int64_t e = 0; e < d; ++e) dp += gi[e] * vj[e];
            ds[j] = dp;
            dot += dp * arow[j];
          }
          for (int64_t j = 0; j <= i; ++j) {
            const float p = arow[j];
            if (p == 0) continue;
            const float s = p * (ds[j] - dot) * scale;
            const float* kj = pk + ((bi * t + j) * kv + kh) * d;
            float* dkj = pdk + ((bi * t + j) * kv + kh) * d;
            float* dvj = pdv + ((bi * t + j) * kv + kh) * d;
            // Distinct rows of distinct tensors: no aliasing, so the lanes are independent.
#pragma omp simd
            for (int64_t e = 0; e < d; ++e) {
              dqi[e] += s * kj[e];
              dkj[e] += s * qi[e];
              dvj[e] += p * gi[e];
            }
          }
        }
      }
    }
  }
}

}  // namespace nnpipe::cpu
