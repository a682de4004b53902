// qmatmul: activations converted once to the weight type's vec_dot type (qmatmul_act.cpp), then
// either the integer / f16 dot-product kernels of the active ISA (qmatmul_avx2.cpp,
// qmatmul_scalar.cpp) over tiles of one weight row x up to 4 tokens, or, for long prompts where
// it measured faster, OpenBLAS sgemm on the dequantized weights and the *converted* activations
// expanded back to f32 (the same products as ggml's up to f32 rounding and summation order).
#include "backend/cpu/qmatmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <span>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "core/error.h"
#include "core/sysinfo.h"
#include "quant/ggml_quants.h"

namespace nnpipe::cpu {

namespace qk {

bool cpu_has_avx2() {
  return cpu_has_avx2_fma_f16c();
}

namespace {
std::atomic<int> g_forced{-1};
}

Isa active_isa() {
  const int f = g_forced.load(std::memory_order_relaxed);
  if (f >= 0) return static_cast<Isa>(f);
  return cpu_has_avx2() ? Isa::kAvx2 : Isa::kScalar;
}

void force_isa(Isa isa) {
  if (isa == Isa::kAvx2 && !cpu_has_avx2())
    fail(ErrorCode::kUnsupported, "qmatmul: this CPU has no AVX2+FMA+F16C");
  g_forced.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void reset_isa() {
  g_forced.store(-1, std::memory_order_relaxed);
}

}  // namespace qk

namespace {

// What the kernels need of a weight tensor W (rows = out features, cols = in features), from the
// DType traits.
struct Weight {
  DType type;
  int64_t rows, cols;
  const uint8_t* data;
  size_t row_bytes;  // dtype_row_bytes(type, cols)
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

// Throws naming `what` unless w is a 2-D CPU tensor of a qmatmul dtype with whole-block rows.
Weight weight_of(const Tensor& w, const char* what) {
  if (w.ndim() != 2 || w.device() != Device::kCPU || !qmatmul_supported(w.dtype()))
    fail(ErrorCode::kUnsupported, "{}: {} is not a CPU weight matrix of a supported type", what,
         w.describe());
  const int64_t rows = w.dim(0), cols = w.dim(1), bs = dtype_block_size(w.dtype());
  if (cols <= 0 || cols % bs != 0 || (rows > 0 && !w.raw()))
    fail(ErrorCode::kInvalidArgument,
         "{}: bad {} matrix {}x{} (row length must be whole blocks of {})", what,
         dtype_name(w.dtype()), rows, cols, bs);
  return Weight{w.dtype(), rows, cols, w.raw(), dtype_row_bytes(w.dtype(), cols)};
}

// Never for Q4_1/Q5_1: ggml adds m * s per block with s = f16(d * sum(q)) of the Q8_1
// activations, which f32 activations cannot reproduce (a relative 2^-11 of the min term).
bool sgemm_exact(DType t) {
  return t != DType::kQ4_1 && t != DType::kQ5_1;
}

// From this many tokens on, dequantize + sgemm beat the dot kernels (bench/qmatmul_bench.cpp, Qwen
// 0.5B shapes, 1 thread, AMD EPYC AVX2, n = 64 and 512): the float types' dot kernels are ~2x
// slower than OpenBLAS from n = 8; Q8_0/Q4_0/Q5_0/Q4_K/Q5_K lose 10-40% at n = 64..512; Q6_K's
// dot kernel wins (its dequantization is slow) and Q4_1/Q5_1 must stay exact.
int64_t sgemm_min_tokens(DType t, qk::Isa isa) {
  constexpr int64_t kNever = int64_t{1} << 62;
  if (!sgemm_exact(t)) return kNever;
  if (isa == qk::Isa::kScalar) return 8;  // the portable kernels are far slower than OpenBLAS
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 8;
    case DType::kQ6_K:
      return kNever;
    default:
      return 32;
  }
}

// From this many tokens on, the VNNI GEMM beats the dot kernels (bench/qmatmul_bench).
constexpr int64_t kVnniMinTokens = 8;

qk::DotFn dot_fn(DType t, qk::Isa isa) {
  return isa == qk::Isa::kAvx2 ? qk::avx2_dot(t) : qk::scalar_dot(t);
}

int threads_for(int64_t madds) {
  return madds < kParallelMin ? 1 : omp_get_max_threads();
}

// y (n, o) = expand(act) (n, in) W^T, W dequantized ~4 MiB of rows at a time.
void sgemm_path(float* y, const uint8_t* act, size_t ab, int64_t n, const Weight& w, bool avx2) {
  const int64_t in = w.cols, o = w.rows;
  thread_local std::vector<float> xf, buf;
  xf.resize(static_cast<size_t>(n * in));
  float* xp = xf.data();  // not xf inside the parallel region: each thread has its own xf
#pragma omp parallel for schedule(static) if (n * in >= kParallelMin)
  for (int64_t t = 0; t < n; ++t) qk::expand_activations(w.type, act + t * ab, in, xp + t * in);
  if (w.type == DType::kF32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(o),
                static_cast<int>(in), 1.0f, xp, static_cast<int>(in),
                reinterpret_cast<const float*>(w.data), static_cast<int>(in), 0.0f, y,
                static_cast<int>(o));
    return;
  }
  const int64_t chunk = std::min<int64_t>(o, std::max<int64_t>(16, (int64_t{1} << 20) / in));
  buf.resize(static_cast<size_t>(chunk * in));
  for (int64_t r0 = 0; r0 < o; r0 += chunk) {
    const int64_t rows = std::min(chunk, o - r0);
    // Dequantized on every thread (OpenBLAS's own threads are idle meanwhile).
    float* bp = buf.data();
    constexpr int64_t kSub = 16;
#pragma omp parallel for schedule(static) if (rows * in >= kParallelMin)
    for (int64_t s0 = 0; s0 < rows; s0 += kSub) {
      const int64_t sr = std::min(kSub, rows - s0);
      if (avx2 && qk::avx2_dequantize(w.type, w.row(r0 + s0), sr * in, bp + s0 * in)) continue;
      dequantize_rows(
          w.type, std::span<const uint8_t>(w.row(r0 + s0), static_cast<size_t>(sr) * w.row_bytes),
          std::span<float>(bp + s0 * in, static_cast<size_t>(sr * in)));
    }
    // y[:, r0:r0+rows] (n, rows) = xf (n, in) Wc^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                static_cast<int>(rows), static_cast<int>(in), 1.0f, xp, static_cast<int>(in),
                buf.data(), static_cast<int>(in), 0.0f, y + r0, static_cast<int>(o));
  }
}

void qmatmul_impl(float* y, const float* x, int64_t n, const Weight& w, qk::Path path) {
  using qk::Path;
  if (n < 0) fail(ErrorCode::kInvalidArgument, "qmatmul: {} tokens", n);
  if (n == 0 || w.rows == 0) return;
  const int64_t in = w.cols, o = w.rows;
  const qk::Isa isa = qk::active_isa();
  const size_t ab = qk::act_row_bytes(w.type, in);

  // x (n, in) -> act (n, ab bytes): once per call, shared by all rows.
  thread_local std::vector<uint8_t> act_buf;
  act_buf.resize(static_cast<size_t>(n) * ab + 64);
  uint8_t* act = act_buf.data();
#pragma omp parallel for schedule(static) if (n * in >= kParallelMin && n > 1)
  for (int64_t t = 0; t < n; ++t) qk::convert_activations(w.type, x + t * in, in, act + t * ab);

  // Prompts over Q8_0/Q4_0 on AVX-512 VNNI: integer GEMM, no f32 dequantization pass
  // (bench/qmatmul_bench: Q4_0 n = 512 ~2x dequantize + sgemm, see bench/RESULTS.md issue 17).
  const bool vnni =
      isa == qk::Isa::kAvx2 && qk::vnni_gemm_supported(w.type) && cpu_has_avx512vnni();
  if (path == Path::kVnni && !vnni)
    fail(ErrorCode::kUnsupported, "qmatmul: no AVX-512 VNNI kernel for {} on this CPU",
         dtype_name(w.type));
  if (path == Path::kVnni || (path == Path::kAuto && vnni && n >= kVnniMinTokens))
    return qk::vnni_gemm(w.type, w.data, w.row_bytes, o, in, act, ab, n, y,
                         threads_for(n * in * o));

  if ((path == Path::kSgemm && sgemm_exact(w.type)) ||
      (path == Path::kAuto && n >= sgemm_min_tokens(w.type, isa)))
    return sgemm_path(y, act, ab, n, w, isa == qk::Isa::kAvx2);

  qk::DotFn dot = dot_fn(w.type, isa);
  const int threads = threads_for(n * in * o);
  constexpr int kT = qk::kMaxTokens;
  const qk::DotRowsFn dot_rows = isa == qk::Isa::kAvx2 ? qk::avx2_dot_rows(w.type) : nullptr;
  if (n == 1 && dot_rows && path != Path::kDot) {
    // Decode: groups of kMaxRows rows against the one token, each thread a contiguous range.
    constexpr int kR = qk::kMaxRows;
    const size_t rb = w.row_bytes;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r0 = 0; r0 < o; r0 += kR)
      dot_rows(in, w.data + static_cast<size_t>(r0) * rb, rb, act,
               static_cast<int>(std::min<int64_t>(kR, o - r0)), y + r0);
    return;
  }
  // Batch-invariant rows (kNoSgemm): a token's products must have the bits of the one-token
  // path above. F16 has a multi-token kernel in dot_rows' order; F32's several-token kernel sums
  // in another order than its one-token one, so each token goes alone (every row of W read
  // from L1 again); the block types' kernels give each token the same bits for any count.
  const qk::DotFn like_rows =
      path == Path::kNoSgemm && dot_rows ? qk::avx2_dot_like_rows(w.type) : nullptr;
  const bool one_by_one = path == Path::kNoSgemm && w.type == DType::kF32;
  if (like_rows) dot = like_rows;
  auto dots = [&](const uint8_t* row, const uint8_t* a, int nt, float* out) {
    if (!one_by_one) return dot(in, row, a, ab, nt, out);
    for (int t = 0; t < nt; ++t) dot(in, row, a + t * ab, ab, 1, out + t);
  };
  if (like_rows && w.type == DType::kF16 && in % 16 == 0 && cpu_has_avx512f()) {
    // Batch-invariant F16 on AVX-512: 4-row x 4-token register tiles (the same bits as the
    // decode kernel) over blocks of rows that stay in L1 while the token groups pass.
    const qk::F16TileFn tile = qk::avx512_f16_tile();
    const size_t rbytes = w.row_bytes;
    const int64_t rb =
        std::clamp<int64_t>(static_cast<int64_t>((24 << 10) / rbytes), 4, 64) / 4 * 4;
    // Token chunks whose activations (~128 KiB) stay in L2 while a thread walks its blocks.
    const int64_t tc =
        std::clamp<int64_t>(static_cast<int64_t>((128 << 10) / ab) / kT * kT, kT, 256);
    const int64_t nblocks = (o + rb - 1) / rb, nchunks = (n + tc - 1) / tc;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t tile_i = 0; tile_i < nchunks * nblocks; ++tile_i) {
      const int64_t c = tile_i / nblocks, b = tile_i % nblocks;
      const int64_t r0 = b * rb, r1 = std::min(o, r0 + rb), c1 = std::min(n, (c + 1) * tc);
      for (int64_t t0 = c * tc; t0 < c1; t0 += kT) {
        const int nt = static_cast<int>(std::min<int64_t>(kT, c1 - t0));
        for (int64_t r = r0; r < r1; r += 4)
          tile(in, w.data + static_cast<size_t>(r) * rbytes, rbytes,
               static_cast<int>(std::min<int64_t>(4, r1 - r)), act + t0 * ab, ab, nt,
               y + t0 * o + r, static_cast<size_t>(o));
      }
    }
    return;
  }
  if (n <= kT) {
    // Decode: stream W once, each thread a contiguous range of rows. For the block types the
    // row ~2 KiB ahead is prefetched before each row's dot: their kernels' sparse loads leave
    // DRAM latency exposed (bench/qmatmul_bench, Q6_K lm_head at 2 threads: 13-15 -> 16-17
    // GB/s); the float kernels' dense loads stream well without (F16 loses ~10% with it).
    const size_t rb = w.row_bytes;
    const bool prefetch = dtype_is_block(w.type);
    const int64_t ahead = std::max<int64_t>(1, static_cast<int64_t>((2048 + rb - 1) / rb));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < o; ++r) {
      float out[kT] = {};
      if (prefetch && r + ahead < o) {
        const uint8_t* next = w.data + static_cast<size_t>(r + ahead) * rb;
        for (size_t off = 0; off < rb; off += 64) __builtin_prefetch(next + off, 0, 3);
      }
      dots(w.data + static_cast<size_t>(r) * rb, act, static_cast<int>(n), out);
      for (int64_t t = 0; t < n; ++t) y[t * o + r] = out[t];
    }
    return;
  }
  // Prompt: tiles of (token chunk x row block). A chunk's converted activations (~128 KiB) stay
  // in L2 while the thread walks its row blocks; a block's rows (~24 KiB) stay in L1 while every
  // 4-token group of the chunk passes over them. Each thread takes a contiguous range of tiles.
  const int64_t rb = std::clamp<int64_t>(static_cast<int64_t>((24 << 10) / w.row_bytes), 4, 64);
  const int64_t tc = std::clamp<int64_t>(static_cast<int64_t>((128 << 10) / ab) / kT * kT, kT, 256);
  const int64_t nblocks = (o + rb - 1) / rb, nchunks = (n + tc - 1) / tc;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t tile = 0; tile < nchunks * nblocks; ++tile) {
    const int64_t c = tile / nblocks, b = tile % nblocks;
    const int64_t r0 = b * rb, r1 = std::min(o, r0 + rb);
    const int64_t c1 = std::min(n, (c + 1) * tc);
    for (int64_t t0 = c * tc; t0 < c1; t0 += kT) {
      const int nt = static_cast<int>(std::min<int64_t>(kT, c1 - t0));
      const uint8_t* a = act + t0 * ab;
      for (int64_t r = r0; r < r1; ++r) {
        float out[kT] = {};
        dots(w.row(r), a, nt, out);
        for (int t = 0; t < nt; ++t) y[(t0 + t) * o + r] = out[t];
      }
    }
  }
}

}  // namespace

bool qmatmul_supported(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void qmatmul_row(const Tensor& t, int64_t r, float* out, const char* what) {
  const Weight w = weight_of(t, what);
  if (r < 0 || r >= w.rows) fail(ErrorCode::kInvalidArgument, "{}: row {} of {}", what, r, w.rows);
  dequantize_rows(w.type, std::span<const uint8_t>(w.row(r), w.row_bytes),
                  std::span<float>(out, static_cast<size_t>(w.cols)));
}

void qmatmul(float* y, const float* x, int64_t n, const Tensor& w, const char* what,
             bool invariant) {
  qmatmul_impl(y, x, n, weight_of(w, what), invariant ? qk::Path::kNoSgemm : qk::Path::kAuto);
}

void qk::qmatmul_path(float* y, const float* x, int64_t n, const Tensor& w, Path path) {
  qmatmul_impl(y, x, n, weight_of(w, "qmatmul"), path);
}

}  // namespace nnpipe::cpu
