// Linear layers: out = x W^T + b via OpenBLAS sgemm (row-major, W stored [out, in] as in HF).
// A half-precision W (frozen LoRA base) is converted a chunk of output rows at a time into a
// scratch f32 buffer and multiplied chunk by chunk: a 151936x1024 lm_head never exists as f32.
// Numerics::kTorchBf16 on a bf16 W: the AVX-512 BF16 kernels of matmul_bf16.cpp, or (CPUs
// without them) the f32 operand rounded to bf16 and then the path above.
#include <cblas.h>

#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/matmul_bf16.h"
#include "backend/cpu/qmatmul.h"
#include "core/half.h"

namespace nnpipe::cpu {

namespace {

// Rows per chunk: ~1M f32 values (4 MiB scratch), at least 64 rows. With 128-row chunks sgemm ran
// on thin panels and backward re-read/re-wrote all of dx (N, I) per chunk: bf16 was 2-5x slower
// than f32 on a 151936x896 lm_head; with 4 MiB chunks it is within ~10-30% (the row conversion).
int64_t half_rows_per_chunk(int64_t in, int64_t o) {
  constexpr int64_t kChunkFloats = int64_t{1} << 20;
  return std::min(o, std::max<int64_t>(64, kChunkFloats / std::max<int64_t>(in, 1)));
}

void check_weight(const Tensor& w, const char* what) {
  if (w.device() != Device::kCPU || w.borrowed() ||
      (w.dtype() != DType::kF32 && !is_half(w.dtype())))
    fail(ErrorCode::kInvalidArgument, "{}: expected an owned CPU f32/f16/bf16 weight, got {}", what,
         w.describe());
}

// Rows [r0, r0 + rows) of the half weight w (O, I) as f32 in `buf` (rows, I).
const float* half_rows(const Tensor& w, int64_t r0, int64_t rows, std::vector<float>& buf) {
  const int64_t in = w.dim(1);
  buf.resize(static_cast<size_t>(rows * in));
  half_to_f32(w, r0 * in, rows * in, buf.data());
  return buf.data();
}

// a (rows, cols) rounded to bf16 and back (round to nearest even) into `buf`.
const float* bf16_rounded(const float* a, int64_t rows, int64_t cols, std::vector<float>& buf) {
  const int64_t count = rows * cols;
  buf.resize(static_cast<size_t>(count));
  float* d = buf.data();
#pragma omp parallel for if (count >= kParallelMin)
  for (int64_t i = 0; i < count; ++i) d[i] = bf16_to_f32(f32_to_bf16(a[i]));
  return d;
}

const uint16_t* bf16_bits(const Tensor& w) {
  return reinterpret_cast<const uint16_t*>(w.raw());
}

}  // namespace

void CpuBackend::matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias,
                        Numerics num) {
  if (x.ndim() != 2 || w.ndim() != 2 || x.dim(1) != w.dim(1))
    fail(ErrorCode::kInvalidArgument, "matmul: x {} vs w {}", x.describe(), w.describe());
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(out, DType::kF32, {n, o}, "matmul out");
  float* y = f32(out, "matmul out");  // (N, O)
  const float* xp = f32(x, "matmul x");
  const bool torch = num == Numerics::kTorch || num == Numerics::kTorchBf16;
  if (torch) check_weight(w, "matmul w");
  const bool bf16 = num == Numerics::kTorchBf16 && w.dtype() == DType::kBF16;
  const bool bf16_kernel = bf16 && bf16_gemm_available();
  thread_local std::vector<float> xr;
  if (bf16 && !bf16_kernel) xp = bf16_rounded(xp, n, in, xr);  // then the f32 path below
  if (!torch) {
    qmatmul(y, xp, n, w, "matmul w", num == Numerics::kGgmlInvariant);
  } else if (bf16_kernel) {
    bf16_matmul(y, xp, n, bf16_bits(w), o, in);
  } else if (w.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(o),
                static_cast<int>(in), 1.0f, xp, static_cast<int>(in), f32(w, "matmul w"),
                static_cast<int>(in), 0.0f, y, static_cast<int>(o));
  } else {
    thread_local std::vector<float> buf;
    const int64_t chunk = half_rows_per_chunk(in, o);
    for (int64_t r0 = 0; r0 < o; r0 += chunk) {
      const int64_t rows = std::min(chunk, o - r0);
      // y[:, r0:r0+rows] (N, rows) = x (N, I) Wc^T (rows, I)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                  static_cast<int>(rows), static_cast<int>(in), 1.0f, xp, static_cast<int>(in),
                  half_rows(w, r0, rows, buf), static_cast<int>(in), 0.0f, y + r0,
                  static_cast<int>(o));
    }
  }
  if (bias && bias->defined()) add_bias(out, *bias);
}

void CpuBackend::add_bias(Tensor& out, const Tensor& bias) {
  const int64_t n = out.dim(0), o = out.dim(1);
  check_tensor(bias, DType::kF32, {o}, "bias");
  const float* b = f32(bias, "bias");
  float* y = f32(out, "bias out");  // (N, O)
#pragma omp parallel for if (n * o >= kParallelMin)
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < o; ++c) y[r * o + c] += b[c];
}

void CpuBackend::matmul_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dout,
                                 const Tensor& x, const Tensor& w, Numerics num) {
  if (num != Numerics::kTorch && num != Numerics::kTorchBf16)
    fail(ErrorCode::kInvalidArgument, "matmul_backward: takes kTorch or kTorchBf16 numerics");
  check_weight(w, "matmul_backward w");
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(dout, DType::kF32, {n, o}, "matmul_backward dout");
  const float* g = f32(dout, "dout");
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), oi = static_cast<int>(o);
  if (dx) {  // dx (N, I) += dout (N, O) W (O, I)
    check_tensor(*dx, DType::kF32, {n, in}, "matmul_backward dx");
    float* dxp = f32(*dx, "dx");
    const bool bf16 = num == Numerics::kTorchBf16 && w.dtype() == DType::kBF16;
    thread_local std::vector<float> gr;
    if (bf16 && bf16_gemm_available()) {
      bf16_matmul_dx(dxp, g, n, bf16_bits(w), o, in);
    } else if (w.dtype() == DType::kF32) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, oi, 1.0f, g, oi, f32(w, "w"),
                  ii, 1.0f, dxp, ii);
    } else {
      thread_local std::vector<float> buf;
      const float* gx = bf16 ? bf16_rounded(g, n, o, gr) : g;
      const int64_t chunk = half_rows_per_chunk(in, o);
      for (int64_t r0 = 0; r0 < o; r0 += chunk) {
        const int64_t rows = std::min(chunk, o - r0);
        // dx (N, I) += dout[:, r0:r0+rows] (N, rows) Wc (rows, I)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, static_cast<int>(rows), 1.0f,
                    gx + r0, oi, half_rows(w, r0, rows, buf), ii, 1.0f, dxp, ii);
      }
    }
  }
  if (dw) {  // dW (O, I) += dout^T (O, N) x (N, I)
    check_tensor(*dw, DType::kF32, {o, in}, "matmul_backward dw");
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oi, ii, ni, 1.0f, g, oi, f32(x, "x"), ii,
                1.0f, f32(*dw, "dw"), ii);
  }
  if (db) {
    check_tensor(*db, DType::kF32, {o}, "matmul_backward db");
    float* b = f32(*db, "db");
#pragma omp parallel for if (n * o >= kParallelMin)
    for (int64_t c = 0; c < o; ++c) {
      float s = 0;
      for (int64_t r = 0; r < n; ++r) s += g[r * o + c];
      b[c] += s;
    }
  }
}

}  // namespace nnpipe::cpu
