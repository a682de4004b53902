// Linear layers and LoRA on the GPU: every product is a cuBLAS f32 GEMM (TF32 off), so kTorch
// results match the CPU's sgemm to f32 rounding. Half weights (a frozen f16/bf16 base) are
// converted a chunk of rows at a time into f32 scratch, never as a whole matrix (the CPU's
// scheme). kGgml: the activations are converted to the weight type's vec_dot type and back
// (quant.cu), the weight rows dequantized chunk by chunk, then the GEMM: the products of
// ggml's dot kernels up to f32 summation order, as the CPU's long-prompt path computes them.
// kGgmlInvariant and decode-sized calls (<= kRowdotRows rows) take one fixed-order warp dot per
// output instead (quant.cu rowdot): a row's result then does not depend on the batch, and a
// kGgmlInvariant row equals the same row computed alone under kGgml. A bf16 tensor-core path and
// quantized dot kernels that read the blocks in place are not written yet.
#include <algorithm>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace nnpipe::cuda {
namespace {

// Up to this many rows a kGgml product is a matrix-vector product: rowdot, not cuBLAS.
constexpr int64_t kRowdotRows = 8;

// Weight rows per converted chunk: ~16M f32 values (64 MiB of scratch), at least 64 rows.
int64_t rows_per_chunk(int64_t in, int64_t o) {
  constexpr int64_t kChunkFloats = int64_t{1} << 24;
  return std::max<int64_t>(
      1, std::min(o, std::max<int64_t>(64, kChunkFloats / std::max<int64_t>(in, 1))));
}

void check_weight_2d(const Tensor& w, const char* what) {
  on_device(w, what);
  if (w.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "{}: expected a matrix, got {}", what, w.describe());
}

// Rows [r0, r0 + rows) of w (any KType) as f32 (rows, I) into buf.
void weight_rows(CudaBackend& be, const Tensor& w, KType t, int64_t r0, int64_t rows, float* buf) {
  const int64_t in = w.dim(1);
  const int64_t row_bytes = static_cast<int64_t>(dtype_row_bytes(w.dtype(), in));
  if (dtype_is_block(w.dtype()))
    dequant_rows(be.stream(), t, w.raw(), row_bytes, in, nullptr, 0, r0, rows, buf, be.err());
  else
    half_to_f32(be.stream(), t, w.raw() + r0 * row_bytes, buf, rows * in);
}

// y (n, o) [row stride ldy] = x (n, I) W^T with ggml's numerics (see the file comment).
void ggml_matmul(CudaBackend& be, float* y, int64_t ldy, const float* x, int64_t n, const Tensor& w,
                 bool invariant, const char* what) {
  check_weight_2d(w, what);
  const KType t = ktype(w.dtype(), what);
  const int64_t in = w.dim(1), o = w.dim(0);
  if (n <= 0 || o <= 0) return;
  Tensor xr = be.scratch(DType::kF32, {n, in});  // x in the activation type, as f32
  round_activations(be.stream(), t, x, f32(xr, "activations"), n, in);
  const float* xp = f32(xr, "activations");
  const bool rowwise = invariant || n <= kRowdotRows;
  if (t == KType::kF32 && !rowwise) {
    be.gemm(false, true, n, o, in, 1.0f, xp, in, reinterpret_cast<const float*>(w.raw()), in, 0.0f,
            y, ldy);
    return;
  }
  const int64_t chunk = rows_per_chunk(in, o);
  Tensor buf = be.scratch(DType::kF32, {chunk, in});
  float* bp = f32(buf, "weight chunk");
  for (int64_t r0 = 0; r0 < o; r0 += chunk) {
    const int64_t rows = std::min(chunk, o - r0);
    weight_rows(be, w, t, r0, rows, bp);
    if (rowwise)
      rowdot(be.stream(), xp, bp, y + r0, n, rows, in, ldy);
    else
      be.gemm(false, true, n, rows, in, 1.0f, xp, in, bp, in, 0.0f, y + r0, ldy);
  }
}

void check_lora(const Tensor& x, const Tensor& a, const Tensor& b, int64_t o) {
  if (x.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || a.dim(1) != x.dim(1) ||
      b.dim(1) != a.dim(0) || b.dim(0) != o)
    fail(ErrorCode::kInvalidArgument, "lora: x {}, A {}, B {} for {} outputs", x.describe(),
         a.describe(), b.describe(), o);
}

const uint8_t* keep_bits(const Tensor& keep, const Tensor& x) {
  on_device(keep, "lora keep mask");
  if (keep.dtype() != DType::kU8 || keep.shape() != x.shape())
    fail(ErrorCode::kInvalidArgument, "lora: dropout keep mask {} for x {} (expected u8)",
         keep.describe(), x.describe());
  return keep.raw();
}

// x * mask into scratch, or x itself without a mask.
Tensor dropped(CudaBackend& be, const Tensor& x, const Tensor* keep, float keep_scale) {
  if (!keep) return x;
  const uint8_t* k = keep_bits(*keep, x);
  Tensor out = be.scratch(DType::kF32, x.shape());
  apply_keep(be.stream(), f32(out, "lora x*mask"), f32(x, "lora x"), k, keep_scale, x.numel());
  return out;
}

}  // namespace

void CudaBackend::matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias,
                         Numerics num) {
  check_weight_2d(w, "matmul w");
  if (x.ndim() != 2 || x.dim(1) != w.dim(1))
    fail(ErrorCode::kInvalidArgument, "matmul: x {} vs w {}", x.describe(), w.describe());
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(out, DType::kF32, {n, o}, "matmul out");
  float* y = f32(out, "matmul out");  // (N, O)
  const float* xp = f32(x, "matmul x");
  Tensor xr;
  if (num == Numerics::kTorchBf16) {
    // bf16 weights: x rounded to bf16, then the f32 products (no bf16 GEMM here yet).
    if (w.dtype() == DType::kBF16) {
      xr = scratch(DType::kF32, {n, in});
      round_activations(stream(), KType::kBF16, xp, f32(xr, "matmul x bf16"), n, in);
      xp = f32(xr, "matmul x bf16");
    }
    num = Numerics::kTorch;
  }
  if (num != Numerics::kTorch) {
    ggml_matmul(*this, y, o, xp, n, w, num == Numerics::kGgmlInvariant, "matmul w");
  } else if (w.dtype() == DType::kF32) {
    gemm(false, true, n, o, in, 1.0f, xp, in, f32(w, "matmul w"), in, 0.0f, y, o);
  } else if (is_half(w.dtype())) {
    const int64_t chunk = rows_per_chunk(in, o);
    Tensor buf = scratch(DType::kF32, {chunk, in});
    float* bp = f32(buf, "matmul chunk");
    for (int64_t r0 = 0; r0 < o; r0 += chunk) {
      const int64_t rows = std::min(chunk, o - r0);
      weight_rows(*this, w, ktype(w.dtype(), "matmul w"), r0, rows, bp);
      // y[:, r0:r0+rows] (N, rows) = x (N, I) Wc^T (rows, I)
      gemm(false, true, n, rows, in, 1.0f, xp, in, bp, in, 0.0f, y + r0, o);
    }
  } else {
    fail(ErrorCode::kInvalidArgument, "matmul: kTorch takes f32/f16/bf16 weights, got {}",
         w.describe());
  }
  if (bias && bias->defined()) add_bias(out, *bias);
}

void CudaBackend::add_bias(Tensor& y, const Tensor& b) {
  if (y.ndim() != 2) fail(ErrorCode::kInvalidArgument, "add_bias: y {}", y.describe());
  const int64_t n = y.dim(0), o = y.dim(1);
  check_tensor(b, DType::kF32, {o}, "bias");
  add_bias_f32(stream_, f32(y, "bias out"), f32(b, "bias"), n, o);
}

void CudaBackend::matmul_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dout,
                                  const Tensor& x, const Tensor& w, Numerics num) {
  check_weight_2d(w, "matmul_backward w");
  if (w.dtype() != DType::kF32 && !is_half(w.dtype()))
    fail(ErrorCode::kInvalidArgument, "matmul_backward: expected an f32/f16/bf16 weight, got {}",
         w.describe());
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(dout, DType::kF32, {n, o}, "matmul_backward dout");
  const float* g = f32(dout, "dout");
  if (dx) {  // dx (N, I) += dout (N, O) W (O, I)
    check_tensor(*dx, DType::kF32, {n, in}, "matmul_backward dx");
    float* dxp = f32(*dx, "dx");
    Tensor gr;
    const float* gx = g;  // dout, rounded to bf16 for kTorchBf16 on a bf16 weight
    if (num == Numerics::kTorchBf16 && w.dtype() == DType::kBF16) {
      gr = scratch(DType::kF32, {n, o});
      round_activations(stream(), KType::kBF16, g, f32(gr, "dout bf16"), n, o);
      gx = f32(gr, "dout bf16");
    }
    if (w.dtype() == DType::kF32) {
      gemm(false, false, n, in, o, 1.0f, g, o, f32(w, "w"), in, 1.0f, dxp, in);
    } else {
      const int64_t chunk = rows_per_chunk(in, o);
      Tensor buf = scratch(DType::kF32, {chunk, in});
      float* bp = f32(buf, "matmul_backward chunk");
      for (int64_t r0 = 0; r0 < o; r0 += chunk) {
        const int64_t rows = std::min(chunk, o - r0);
        weight_rows(*this, w, ktype(w.dtype(), "matmul_backward w"), r0, rows, bp);
        // dx (N, I) += dout[:, r0:r0+rows] (N, rows) Wc (rows, I)
        gemm(false, false, n, in, rows, 1.0f, gx + r0, o, bp, in, 1.0f, dxp, in);
      }
    }
  }
  if (dw) {  // dW (O, I) += dout^T (O, N) x (N, I)
    check_tensor(*dw, DType::kF32, {o, in}, "matmul_backward dw");
    gemm(true, false, o, in, n, 1.0f, g, o, f32(x, "x"), in, 1.0f, f32(*dw, "dw"), in);
  }
  if (db) {
    check_tensor(*db, DType::kF32, {o}, "matmul_backward db");
    bias_grad_f32(stream_, f32(*db, "db"), g, n, o);
  }
}

void CudaBackend::lora_forward(Tensor& y, Tensor& xa, const Tensor& x, const Tensor* keep,
                               float keep_scale, const Tensor& a, const Tensor& b, float scale) {
  if (y.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_forward: y {}", y.describe());
  check_lora(x, a, b, y.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(y, DType::kF32, {n, o}, "lora_forward y");
  check_tensor(xa, DType::kF32, {n, r}, "lora_forward xa");
  const Tensor xd = dropped(*this, x, keep, keep_scale);  // (N, I)
  // xa (N, r) = xd (N, I) A^T (I, r)
  gemm(false, true, n, r, in, 1.0f, f32(xd, "lora xd"), in, f32(a, "lora A"), in, 0.0f,
       f32(xa, "lora xa"), r);
  // y (N, O) += scale * xa (N, r) B^T (r, O)
  gemm(false, true, n, o, r, scale, f32(xa, "lora xa"), r, f32(b, "lora B"), r, 1.0f,
       f32(y, "lora y"), o);
}

void CudaBackend::lora_backward(Tensor* dx, Tensor& da, Tensor& db, const Tensor& dy,
                                const Tensor& x, const Tensor* keep, float keep_scale,
                                const Tensor& xa, const Tensor& a, const Tensor& b, float scale) {
  if (dy.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_backward: dy {}", dy.describe());
  check_lora(x, a, b, dy.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(xa, DType::kF32, {n, r}, "lora_backward xa");
  check_tensor(da, DType::kF32, {r, in}, "lora_backward dA");
  check_tensor(db, DType::kF32, {o, r}, "lora_backward dB");
  const float* g = f32(dy, "lora dy");
  // dB (O, r) += scale * dy^T (O, N) xa (N, r)
  gemm(true, false, o, r, n, scale, g, o, f32(xa, "lora xa"), r, 1.0f, f32(db, "lora dB"), r);
  // dxa (N, r) = scale * dy (N, O) B (O, r)
  Tensor dxa = scratch(DType::kF32, {n, r});
  float* pdxa = f32(dxa, "lora dxa");
  gemm(false, false, n, r, o, scale, g, o, f32(b, "lora B"), r, 0.0f, pdxa, r);
  // dA (r, I) += dxa^T (r, N) xd (N, I)
  const Tensor xd = dropped(*this, x, keep, keep_scale);
  gemm(true, false, r, in, n, 1.0f, pdxa, r, f32(xd, "lora xd"), in, 1.0f, f32(da, "lora dA"), in);
  if (!dx) return;
  check_tensor(*dx, DType::kF32, {n, in}, "lora_backward dx");
  if (!keep) {  // dx (N, I) += dxa (N, r) A (r, I)
    gemm(false, false, n, in, r, 1.0f, pdxa, r, f32(a, "lora A"), in, 1.0f, f32(*dx, "lora dx"),
         in);
    return;
  }
  // With dropout the mask multiplies the gradient too: dx += mask * (dxa A).
  Tensor dxd = scratch(DType::kF32, {n, in});
  gemm(false, false, n, in, r, 1.0f, pdxa, r, f32(a, "lora A"), in, 0.0f, f32(dxd, "lora dxd"), in);
  accumulate_keep(stream_, f32(*dx, "lora dx"), f32(dxd, "lora dxd"), keep_bits(*keep, x),
                  keep_scale, n * in);
}

// llama.cpp's build_lora_mm: t = x A^T as a ggml matmul of A's type, u = t B^T with t converted
// for B's type, y += u * scale. bt (B transposed, a CPU speed-up) gives the same products as B
// and is not needed here.
void CudaBackend::lora_apply(Tensor& y, Tensor& xa, const Tensor& x, const Tensor& a,
                             const Tensor& b, const Tensor* /*bt*/, float scale, Numerics num) {
  check_weight_2d(a, "lora A");
  check_weight_2d(b, "lora B");
  check_lora(x, a, b, y.dim(1));
  const int64_t n = x.dim(0), r = a.dim(0), out = b.dim(0);
  check_tensor(y, DType::kF32, {n, out}, "lora y");
  on_device(xa, "lora_apply scratch");
  if (xa.dtype() != DType::kF32 || xa.capacity() < static_cast<size_t>(n * r) * sizeof(float))
    fail(ErrorCode::kInvalidArgument, "lora_apply: scratch {} for ({}, {})", xa.describe(), n, r);
  const bool invariant = num == Numerics::kGgmlInvariant;
  float* t = reinterpret_cast<float*>(xa.raw());  // (n, r)
  ggml_matmul(*this, t, r, f32(x, "lora x"), n, a, invariant, "lora A");
  Tensor u = scratch(DType::kF32, {n, out});
  ggml_matmul(*this, f32(u, "lora u"), out, t, n, b, invariant, "lora B");
  axpy_f32(stream_, f32(y, "lora y"), scale, f32(u, "lora u"), n * out);
}

// Each item as lora_apply on its rows, in order on the one stream (so one scratch serves all).
// A gathered kernel over all items (Punica's BGMV/SGMV) is the GPU's next step.
void CudaBackend::lora_apply_rows(Tensor& y, Tensor& xa, const Tensor& x,
                                  std::span<const LoraRows> items, Numerics num) {
  for (size_t i = 0; i < items.size(); ++i) {
    const LoraRows& it = items[i];
    if (!it.a || !it.b || it.n <= 0 || it.row0 < 0 || it.row0 + it.n > x.dim(0) ||
        y.ndim() != 2 || y.dim(0) != x.dim(0))
      fail(ErrorCode::kInvalidArgument, "lora_apply_rows: item {} rows [{}, +{}) of x {}, y {}",
           i, it.row0, it.n, x.describe(), y.describe());
    Tensor ys = y.rows(it.row0, it.n);
    lora_apply(ys, xa, x.rows(it.row0, it.n), *it.a, *it.b, it.bt, it.scale, num);
  }
}

}  // namespace nnpipe::cuda
