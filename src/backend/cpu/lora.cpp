// LoRA branch (PEFT's Linear.forward): y += scale * B(A(dropout(x))), with the dropout mask given
// as u8 keep bits and the 1/(1-p) scale. The rank r is small (4..64), so four thin sgemms dominate;
// x*mask is recomputed in backward rather than saved (one (N, I) buffer per adapted module would
// double activation memory).
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"

namespace nnpipe::cpu {

namespace {

const uint8_t* keep_bits(const Tensor& keep, const Tensor& x) {
  if (keep.dtype() != DType::kU8 || keep.device() != Device::kCPU || keep.borrowed() ||
      keep.shape() != x.shape())
    fail(ErrorCode::kInvalidArgument, "lora: dropout keep mask {} for x {} (expected u8)",
         keep.describe(), x.describe());
  return keep.raw();
}

// x (N, I) * mask (N, I) -> owned copy; without a mask, x itself.
Tensor dropped(const Tensor& x, const Tensor* keep, float keep_scale) {
  if (!keep) return x;
  const uint8_t* k = keep_bits(*keep, x);
  Tensor out = Tensor::zeros(DType::kF32, x.shape());
  float* o = f32(out, "lora x*mask");
  const float* px = f32(x, "lora x");
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? px[i] * keep_scale : 0.0f;
  return out;
}

void check_lora(const Tensor& x, const Tensor& a, const Tensor& b, int64_t o) {
  if (x.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || a.dim(1) != x.dim(1) ||
      b.dim(1) != a.dim(0) || b.dim(0) != o)
    fail(ErrorCode::kInvalidArgument, "lora: x {}, A {}, B {} for {} outputs", x.describe(),
         a.describe(), b.describe(), o);
}

}  // namespace

void CpuBackend::lora_forward(Tensor& y, Tensor& xa, const Tensor& x, const Tensor* keep,
                              float keep_scale, const Tensor& a, const Tensor& b, float scale) {
  if (y.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_forward: y {}", y.describe());
  check_lora(x, a, b, y.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(y, DType::kF32, {n, o}, "lora_forward y");
  check_tensor(xa, DType::kF32, {n, r}, "lora_forward xa");
  const Tensor xd = dropped(x, keep, keep_scale);  // (N, I)
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), ri = static_cast<int>(r),
            oi = static_cast<int>(o);
  // xa (N, r) = xd (N, I) A^T (I, r)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, ri, ii, 1.0f, f32(xd, "lora xd"), ii,
              f32(a, "lora A"), ii, 0.0f, f32(xa, "lora xa"), ri);
  // y (N, O) += scale * xa (N, r) B^T (r, O)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, oi, ri, scale, f32(xa, "lora xa"), ri,
              f32(b, "lora B"), ri, 1.0f, f32(y, "lora y"), oi);
}

void CpuBackend::lora_backward(Tensor* dx, Tensor& da, Tensor& db, const Tensor& dy,
                               const Tensor& x, const Tensor* keep, float keep_scale,
                               const Tensor& xa, const Tensor& a, const Tensor& b, float scale) {
  if (dy.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_backward: dy {}", dy.describe());
  check_lora(x, a, b, dy.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(xa, DType::kF32, {n, r}, "lora_backward xa");
  check_tensor(da, DType::kF32, {r, in}, "lora_backward dA");
  check_tensor(db, DType::kF32, {o, r}, "lora_backward dB");
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), ri = static_cast<int>(r),
            oi = static_cast<int>(o);
  const float* g = f32(dy, "lora dy");
  // dB (O, r) += scale * dy^T (O, N) xa (N, r)
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oi, ri, ni, scale, g, oi, f32(xa, "lora xa"),
              ri, 1.0f, f32(db, "lora dB"), ri);
  // dxa (N, r) = scale * dy (N, O) B (O, r)
  Tensor dxa = Tensor::zeros(DType::kF32, {n, r});
  float* pdxa = f32(dxa, "lora dxa");
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ri, oi, scale, g, oi, f32(b, "lora B"),
              ri, 0.0f, pdxa, ri);
  // dA (r, I) += dxa^T (r, N) xd (N, I)
  const Tensor xd = dropped(x, keep, keep_scale);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ri, ii, ni, 1.0f, pdxa, ri,
              f32(xd, "lora xd"), ii, 1.0f, f32(da, "lora dA"), ii);
  if (!dx) return;
  check_tensor(*dx, DType::kF32, {n, in}, "lora_backward dx");
  if (!keep) {  // dx (N, I) += dxa (N, r) A (r, I)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, ri, 1.0f, pdxa, ri,
                f32(a, "lora A"), ii, 1.0f, f32(*dx, "lora dx"), ii);
    return;
  }
  // With dropout the mask multiplies the gradient too: dx += mask * (dxa A).
  Tensor dxd = Tensor::zeros(DType::kF32, {n, in});
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, ri, 1.0f, pdxa, ri,
              f32(a, "lora A"), ii, 0.0f, f32(dxd, "lora dxd"), ii);
  float* pdx = f32(*dx, "lora dx");
  const float* pd = f32(dxd, "lora dxd");
  const uint8_t* k = keep_bits(*keep, x);
  const int64_t total = n * in;
#pragma omp parallel for simd if (total >= kParallelMin)
  for (int64_t i = 0; i < total; ++i) pdx[i] += k[i] ? keep_scale * pd[i] : 0.0f;
}

}  // namespace nnpipe::cpu

namespace nnpipe::cpu {

// Inference LoRA with ggml's numerics (llama.cpp's build_lora_mm): t = x A^T as a ggml matmul of
// A's type, then u = t B^T with t converted for B's type, y += u * scale.
void CpuBackend::lora_apply(Tensor& y, Tensor& xa, const Tensor& x, const Tensor& a,
                            const Tensor& b, const Tensor* bt, float scale, Numerics num) {
  const int64_t n = x.dim(0), r = a.dim(0), out = b.dim(0);
  check_lora(x, a, b, y.dim(1));
  check_tensor(y, DType::kF32, {n, out}, "lora y");
  if (xa.dtype() != DType::kF32 || xa.capacity() < static_cast<size_t>(n * r) * sizeof(float))
    fail(ErrorCode::kInvalidArgument, "lora_apply: scratch {} for ({}, {})", xa.describe(), n, r);
  float* t = reinterpret_cast<float*>(xa.raw());  // (n, r)
  const float* px = f32(x, "lora x");
  float* py = f32(y, "lora y");
  const bool invariant = num == Numerics::kGgmlInvariant;
  qmatmul(t, px, n, a, "lora A", invariant);
  thread_local std::vector<float> u_buf, t16_buf;
  u_buf.resize(static_cast<size_t>(n * out));
  float* u = u_buf.data();  // (n, out)
  if (!bt || !bt->defined()) {
    qmatmul(u, t, n, b, "lora B", invariant);
  } else {
    if (!qmatmul_supported(b.dtype()))
      fail(ErrorCode::kUnsupported, "lora B: {} is not a supported weight type", b.describe());
    check_tensor(*bt, DType::kF32, {r, out}, "lora B^T");
    // t rounded as ggml converts activations for B's type (f16/bf16), then u = t B^T.
    t16_buf.resize(static_cast<size_t>(n * r));
    float* t16 = t16_buf.data();
    for (int64_t i = 0; i < n; ++i)
      qk::convert_activations(b.dtype(), t + i * r, r, reinterpret_cast<uint8_t*>(t16 + i * r));
    const float* pbt = f32(*bt, "lora B^T");
    if (n >= 8 && !invariant) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n),
                  static_cast<int>(out), static_cast<int>(r), 1.0f, t16, static_cast<int>(r), pbt,
                  static_cast<int>(out), 0.0f, u, static_cast<int>(out));
    } else {
      for (int64_t i = 0; i < n; ++i) {
        float* ui = u + i * out;
        std::fill(ui, ui + out, 0.0f);
        for (int64_t k = 0; k < r; ++k) {
          const float c = t16[i * r + k];
          const float* bk = pbt + k * out;
          for (int64_t o = 0; o < out; ++o) ui[o] += c * bk[o];  // (out) axpy
        }
      }
    }
  }
  for (int64_t i = 0; i < n * out; ++i) py[i] += u[i] * scale;
}

// Ranges of a few rows (decoding sequences) each run on one thread, several at once: one
// parallel region per call instead of two per range and adapter, whose thread wake-ups cost more
// than these thin products. Longer ranges (prompt chunks) take every thread, one after another.
void CpuBackend::lora_apply_rows(Tensor& y, Tensor& xa, const Tensor& x,
                                 std::span<const LoraRows> items, Numerics num) {
  constexpr int64_t kSmallRows = 8;
  struct Range {
    size_t i0, i1;  // items [i0, i1)
    size_t xa_off;  // bytes into xa
  };
  std::vector<Range> ranges;
  size_t off = 0;
  int64_t end = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const LoraRows& it = items[i];
    if (!it.a || !it.b || it.n <= 0 || it.row0 < 0 || it.row0 + it.n > x.dim(0) || y.ndim() != 2 ||
        y.dim(0) != x.dim(0))
      fail(ErrorCode::kInvalidArgument, "lora_apply_rows: item {} rows [{}, +{}) of x {}, y {}", i,
           it.row0, it.n, x.describe(), y.describe());
    check_lora(x, *it.a, *it.b, y.dim(1));
    if (!qmatmul_supported(it.a->dtype()) || !qmatmul_supported(it.b->dtype()))
      fail(ErrorCode::kUnsupported, "lora_apply_rows: A {} / B {}", it.a->describe(),
           it.b->describe());
    if (it.bt && it.bt->defined())
      check_tensor(*it.bt, DType::kF32, {it.a->dim(0), y.dim(1)}, "lora B^T");
    const bool same = !ranges.empty() && items[ranges.back().i0].row0 == it.row0 &&
                      items[ranges.back().i0].n == it.n;
    if (same) {
      ranges.back().i1 = i + 1;
      continue;
    }
    if (it.row0 < end)
      fail(ErrorCode::kInvalidArgument, "lora_apply_rows: rows [{}, +{}) overlap or go back",
           it.row0, it.n);
    end = it.row0 + it.n;
    ranges.push_back({i, i + 1, off});
    int64_t r = 0;  // this range's largest rank, over the items that follow with its rows
    for (size_t j = i; j < items.size() && items[j].row0 == it.row0 && items[j].n == it.n; ++j)
      r = std::max(r, items[j].a->dim(0));
    off += (static_cast<size_t>(it.n * r) * sizeof(float) + 63) / 64 * 64;
  }
  if (xa.dtype() != DType::kF32 || xa.borrowed() || xa.capacity() < off)
    fail(ErrorCode::kInvalidArgument, "lora_apply_rows: scratch {} for {} bytes", xa.describe(),
         off);
  auto run = [&](const Range& g) {
    const LoraRows& h = items[g.i0];
    Tensor ys = y.rows(h.row0, h.n);
    const Tensor xs = x.rows(h.row0, h.n);
    for (size_t i = g.i0; i < g.i1; ++i) {
      const LoraRows& it = items[i];
      Tensor xg = xa.view(g.xa_off, DType::kF32, {h.n, it.a->dim(0)});
      lora_apply(ys, xg, xs, *it.a, *it.b, it.bt, it.scale, num);
    }
  };
  std::vector<const Range*> small;
  for (const Range& g : ranges)
    if (items[g.i0].n <= kSmallRows) small.push_back(&g);
  // Inside the region each lora_apply's own OpenMP loops are nested, hence one thread each.
  // One range alone keeps lora_apply's own threads (an if(false) region would make them nested
  // teams, which libgomp starts afresh each time).
  const int64_t ns = static_cast<int64_t>(small.size());
  if (ns == 1) run(*small[0]);
  if (ns > 1) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t k = 0; k < ns; ++k) run(*small[static_cast<size_t>(k)]);
  }
  for (const Range& g : ranges)
    if (items[g.i0].n > kSmallRows) run(g);
}

}  // namespace nnpipe::cpu
