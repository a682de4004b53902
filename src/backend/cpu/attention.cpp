// Causal grouped-query attention (transformers eager_attention_forward): scores = q k^T / sqrt(D),
// masked (causal and padding), softmax in fp32, times v. Query head h reads KV head h / (H / KV).
#include <cblas.h>

#include <algorithm>
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
  const int qs = static_cast<int>(h * d), ks = static_cast<int>(kv * d), ti = static_cast<int>(t),
            di = static_cast<int>(d);
  // Per (row, head) two GEMMs with strided views of the (B, T, H, D) tensors: S = scale Q K^T
  // (T, T), then P = masked softmax(S) in place, O = P V. Full T x T products (the causal upper
  // half is zeroed after) keep BLAS on its fast path; attention is ~2% of the model's FLOPs.
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t kh = hh / rep;
      const float* qb = pq + (bi * t * h + hh) * d;   // (T, D), row stride H*D
      const float* kb = pk + (bi * t * kv + kh) * d;  // (T, D), row stride KV*D
      const float* vb = pv + (bi * t * kv + kh) * d;
      float* ab = pa + (bi * h + hh) * t * t;  // (T, T)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ti, ti, di, scale, qb, qs, kb, ks, 0.0f,
                  ab, ti);
#pragma omp parallel for if (t * t >= kParallelMin)
      for (int64_t i = 0; i < t; ++i) {
        float* arow = ab + i * t;
        const int64_t last = std::min<int64_t>(i, len[bi] - 1);  // keys 0..last are visible
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= last; ++j) mx = std::max(mx, arow[j]);
        float sum = 0;
        for (int64_t j = 0; j <= last; ++j) {
          arow[j] = std::exp(arow[j] - mx);
          sum += arow[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j <= last; ++j) arow[j] *= inv;
        for (int64_t j = last + 1; j < t; ++j) arow[j] = 0;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ti, di, ti, 1.0f, ab, ti, vb, ks, 0.0f,
                  po + (bi * t * h + hh) * d, qs);
    }
  }
}

// With P = softmax(S): dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
// dQ += dS K / sqrt(D), dK += dS^T Q / sqrt(D).
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
  const int qs = static_cast<int>(h * d), ks = static_cast<int>(kv * d), ti = static_cast<int>(t),
            di = static_cast<int>(d);
  std::vector<float> ds(static_cast<size_t>(t * t));  // (T, T): dP, then dS in place
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t kh = hh / rep;
      const int64_t qoff = (bi * t * h + hh) * d, koff = (bi * t * kv + kh) * d;
      const float* ab = pa + (bi * h + hh) * t * t;  // P (T, T)
      // dP = dO V^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ti, ti, di, 1.0f, pg + qoff, qs,
                  pv + koff, ks, 0.0f, ds.data(), ti);
      // dS = P * (dP - rowsum(dP * P)) * scale; masked entries have P = 0, hence dS = 0.
#pragma omp parallel for if (t * t >= kParallelMin)
      for (int64_t i = 0; i < t; ++i) {
        float* row = ds.data() + i * t;
        const float* prow = ab + i * t;
        float dot = 0;
        for (int64_t j = 0; j < t; ++j) dot += row[j] * prow[j];
        for (int64_t j = 0; j < t; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
      }
      // dQ += dS K; dK += dS^T Q; dV += P^T dO (query heads sharing a KV head add up in turn).
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ti, di, ti, 1.0f, ds.data(), ti,
                  pk + koff, ks, 1.0f, pdq + qoff, qs);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ti, di, ti, 1.0f, ds.data(), ti,
                  pq + qoff, qs, 1.0f, pdk + koff, ks);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ti, di, ti, 1.0f, ab, ti, pg + qoff, qs,
                  1.0f, pdv + koff, ks);
    }
  }
}

}  // namespace nnpipe::cpu
