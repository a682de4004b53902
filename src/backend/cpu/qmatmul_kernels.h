// Internals of qmatmul (backend/cpu/qmatmul.h): activation conversion to the weight type's vec_dot
// type and the per-ISA dot-product kernels. Only qmatmul*.cpp, the unit tests and the benchmark
// include this.
//
// A kernel computes one weight row against up to kMaxTokens converted activation rows:
//   out[t] = dot(W row, x_t)   for t < nt
// in the block order and f32 accumulation of ggml's ggml_vec_dot_<type>_<vec_dot type>; the
// AVX2 kernels follow ggml's AVX2 code lane for lane (8 f32 lane accumulators, fmadd per block,
// the same horizontal sum), the scalar ones ggml's generic code (one f32 sum per row). Integer
// block sums are exact in both, so the two differ only in f32 summation order.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cpu/qmatmul.h"
#include "tensor/dtype.h"

namespace nnpipe::cpu::qk {

inline constexpr int kMaxTokens = 4;

enum class Isa { kScalar, kAvx2 };

// A weight's activations are converted to dtype_activation(weight) (ggml's vec_dot_type); F16 and
// BF16 activations are rounded to f16/bf16 but stored as the f32 value.
// Bytes of one converted activation row of `cols` values (F16/BF16 rows are f32: 4 bytes each).
size_t act_row_bytes(DType weight, int64_t cols);

// x (cols) -> one converted row as ggml-cpu's from_float on an AVX2 build does it
// (quantize_row_q8_0 / _q8_1 of ggml-cpu/arch/x86/quants.c: d = amax / 127, id = 127 / amax,
// round half to even; quantize_row_q8_K = quantize_row_q8_K_ref; f16/bf16 round to nearest even).
// The same bytes on every ISA.
void convert_activations(DType weight, const float* x, int64_t cols, uint8_t* out);
// The f32 values a converted row stands for (d * q per element): the sgemm path's activations.
void expand_activations(DType weight, const uint8_t* act, int64_t cols, float* out);

// out[t] = W row . act row t (t < nt <= kMaxTokens); act rows `act_stride` bytes apart.
using DotFn = void (*)(int64_t cols, const uint8_t* w, const uint8_t* act, size_t act_stride,
                       int nt, float* out);

DotFn scalar_dot(DType weight);  // nullptr if unsupported
DotFn avx2_dot(DType weight);    // nullptr if unsupported or not built

// Decode: out[r] = W row r . act (one token) for nr <= kMaxRows consecutive rows, `row_stride`
// bytes apart. The activation block is loaded and converted once for all rows, and the rows'
// independent accumulators overlap. For Q8_0/Q4_0/Q5_0 each row's result is the DotFn's bit for
// bit; F16 sums in another f32 order (dot_f16_rows).
inline constexpr int kMaxRows = 4;
using DotRowsFn = void (*)(int64_t cols, const uint8_t* w, size_t row_stride, const uint8_t* act,
                           int nr, float* out);
DotRowsFn avx2_dot_rows(DType weight);  // nullptr: no multi-row kernel for this type
// A DotFn whose result for each token is dot_rows' bit for bit (F16), for batch-invariant
// multi-token products (Path::kNoSgemm); nullptr where the DotFn already is.
DotFn avx2_dot_like_rows(DType weight);
// n values of F16/BF16/Q8_0/Q4_0 (whole blocks) -> f32, the same values as dequantize_rows;
// false for other types.
bool avx2_dequantize(DType weight, const uint8_t* src, int64_t n, float* dst);
// The AVX2 versions of convert_activations for `act` = Q8_0, Q8_1 and F16 (false for others).
bool avx2_convert_activations(DType act, const float* x, int64_t cols, uint8_t* out);

bool cpu_has_avx2();  // AVX2 + FMA + F16C at run time

// AVX-512F F16 tiles (qmatmul_avx512.cpp): out[t * out_stride + r] = W row r . act row t for
// r < nr <= 4, t < nt <= 4, cols % 16 == 0, each result bit-identical to dot_f16_rows' (the
// one-token decode kernel), so batch-invariant matmuls can read a weight row once for 4 tokens.
using F16TileFn = void (*)(int64_t cols, const uint8_t* w, size_t row_stride, int nr,
                           const uint8_t* act, size_t act_stride, int nt, float* out,
                           size_t out_stride);
F16TileFn avx512_f16_tile();
// AVX-512 VNNI int8 GEMM (qmatmul_vnni.cpp) for Q8_0/Q4_0/Q4_K/Q6_K weights: y (n, rows) =
// W (rows, cols) times the n converted Q8_0 (K-quants: Q8_K) activation rows, `act_stride`
// bytes apart; ggml's integer block dots and f32 scales, summed over blocks in another order.
bool vnni_gemm_supported(DType weight);
void vnni_gemm(DType weight, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t cols,
               const uint8_t* act, size_t act_stride, int64_t n, float* y, int threads);
// The ISA qmatmul uses: AVX2 when the CPU has it, unless forced (tests, benchmarks).
Isa active_isa();
void force_isa(Isa isa);  // kAvx2 on a CPU without it throws kUnsupported
void reset_isa();

// qmatmul with the path chosen by the caller (tests, benchmarks): kDot = the one-row dot kernels of
// the active ISA, kSgemm = dequantize W + OpenBLAS sgemm on the converted activations expanded to
// f32 (Q4_1/Q5_1: kDot, see qmatmul.cpp), kAuto = what qmatmul picks for (type, n).
// kNoSgemm: kAuto without the sgemm path (batch-invariant rows: Numerics::kGgmlInvariant).
// kVnni: the AVX-512 VNNI GEMM (throws kUnsupported where the CPU or the type has none).
enum class Path { kAuto, kDot, kSgemm, kNoSgemm, kVnni };
void qmatmul_path(float* y, const float* x, int64_t n, const Tensor& w, Path path);

}  // namespace nnpipe::cpu::qk
