// CUDA backend: the process-wide device state, error checking, memory, the residual and
// optimizer ops, and the cuBLAS GEMM every product goes through.
#include "backend/cuda/cuda_backend.h"

#include <climits>
#include <mutex>
#include <new>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/device.h"
#include "core/error.h"

namespace nnpipe {
namespace cuda {

void check_cuda(int err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  const auto e = static_cast<cudaError_t>(err);
  fail(ErrorCode::kInternal, "CUDA: {} failed at {}:{}: {} ({})", call, file, line,
       cudaGetErrorName(e), cudaGetErrorString(e));
}

void check_cublas(int status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const auto s = static_cast<cublasStatus_t>(status);
  fail(ErrorCode::kInternal, "cuBLAS: {} failed at {}:{}: {} ({})", call, file, line,
       cublasGetStatusName(s), cublasGetStatusString(s));
}

namespace {

// Out of device memory: a bad_alloc (KvCache::reserve turns those into its own message) that
// says how much was asked for.
class DeviceOutOfMemory : public std::bad_alloc {
 public:
  explicit DeviceOutOfMemory(size_t bytes)
      : msg_("CUDA: out of device memory allocating " + std::to_string(bytes >> 20) + " MiB") {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

// The stream, cuBLAS handle and error word every CudaBackend shares. Created on first use and
// never destroyed: tensors held by statics may be freed after any static destructor has run.
struct Shared {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int* err = nullptr;
};

Shared& shared() {
  static Shared* s = [] {
    if (!cuda_available())
      fail(ErrorCode::kUnsupported,
           "CUDA backend: no CUDA device is visible (cudaGetDeviceCount "
           "found none, or the driver is missing)");
    auto* sh = new Shared;
    NNPIPE_CUDA_CHECK(cudaSetDevice(0));
    NNPIPE_CUDA_CHECK(cudaStreamCreateWithFlags(&sh->stream, cudaStreamNonBlocking));
    NNPIPE_CUBLAS_CHECK(cublasCreate(&sh->blas));
    NNPIPE_CUBLAS_CHECK(cublasSetStream(sh->blas, sh->stream));
    // Exact f32 products (TF32 off): the CPU reference's numbers to ~1e-6.
    NNPIPE_CUBLAS_CHECK(cublasSetMathMode(sh->blas, CUBLAS_PEDANTIC_MATH));
    NNPIPE_CUDA_CHECK(cudaMalloc(&sh->err, sizeof(int)));
    NNPIPE_CUDA_CHECK(cudaMemset(sh->err, 0, sizeof(int)));
    return sh;
  }();
  return *s;
}

size_t bytes_of(DType dtype, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(ErrorCode::kInvalidArgument, "CUDA zeros: negative dimension {}", d);
    n *= d;
  }
  if (!dtype_is_block(dtype)) return static_cast<size_t>(n) * dtype_size(dtype);
  const int64_t last = shape.empty() ? 1 : shape.back();
  if (last % dtype_block_size(dtype) != 0) return 0;  // adopt() names the problem
  return dtype_row_bytes(dtype, last) * static_cast<size_t>(last ? n / last : 0);
}

// Reads and clears the device error word (the stream must be synchronised).
void check_device_errors(int* err) {
  int host = 0;
  NNPIPE_CUDA_CHECK(cudaMemcpy(&host, err, sizeof(int), cudaMemcpyDeviceToHost));
  if (!host) return;
  NNPIPE_CUDA_CHECK(cudaMemset(err, 0, sizeof(int)));
  std::string what;
  if (host & kErrEmbeddingId) what += " embedding: a token id out of range;";
  if (host & kErrTarget) what += " cross_entropy: a target out of range;";
  if (host & kErrLength) what += " attention: a row length not in [1, T];";
  fail(ErrorCode::kInvalidArgument,
       "CUDA backend: invalid data seen by the device since the last "
       "synchronisation:{}",
       what);
}

}  // namespace

CudaBackend::CudaBackend() {
  const Shared& s = shared();
  stream_ = s.stream;
  blas_ = s.blas;
  err_ = s.err;
}

// --- checked views ---

void on_device(const Tensor& t, const char* what) {
  if (!t.defined() || t.device() != Device::kCUDA)
    fail(ErrorCode::kInvalidArgument, "{}: expected a CUDA tensor, got {}", what,
         t.defined() ? t.describe() : std::string("an undefined tensor"));
}
float* f32(Tensor& t, const char* what) {
  on_device(t, what);
  if (t.dtype() != DType::kF32)
    fail(ErrorCode::kInvalidArgument, "{}: expected a CUDA f32 tensor, got {}", what, t.describe());
  return reinterpret_cast<float*>(t.raw());
}
const float* f32(const Tensor& t, const char* what) {
  on_device(t, what);
  if (t.dtype() != DType::kF32)
    fail(ErrorCode::kInvalidArgument, "{}: expected a CUDA f32 tensor, got {}", what, t.describe());
  return reinterpret_cast<const float*>(t.raw());
}
const int32_t* i32(const Tensor& t, const char* what) {
  on_device(t, what);
  if (t.dtype() != DType::kI32)
    fail(ErrorCode::kInvalidArgument, "{}: expected a CUDA i32 tensor, got {}", what, t.describe());
  return reinterpret_cast<const int32_t*>(t.raw());
}
void same_shape(const Tensor& a, const Tensor& b, const char* what) {
  if (a.shape() != b.shape())
    fail(ErrorCode::kInvalidArgument, "{}: shape mismatch {} vs {}", what, a.describe(),
         b.describe());
}
bool is_ktype(DType d) {
  switch (d) {
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
KType ktype(DType d, const char* what) {
  switch (d) {
    case DType::kF32:
      return KType::kF32;
    case DType::kF16:
      return KType::kF16;
    case DType::kBF16:
      return KType::kBF16;
    case DType::kQ8_0:
      return KType::kQ8_0;
    case DType::kQ4_0:
      return KType::kQ4_0;
    case DType::kQ4_1:
      return KType::kQ4_1;
    case DType::kQ5_0:
      return KType::kQ5_0;
    case DType::kQ5_1:
      return KType::kQ5_1;
    case DType::kQ4_K:
      return KType::kQ4_K;
    case DType::kQ5_K:
      return KType::kQ5_K;
    case DType::kQ6_K:
      return KType::kQ6_K;
    default:
      fail(ErrorCode::kUnsupported, "{}: the CUDA backend does not read {} weights", what,
           dtype_name(d));
  }
}

// --- memory ---

Tensor CudaBackend::zeros(DType dtype, std::vector<int64_t> shape) {
  // Whole 256-byte units (cudaMalloc's alignment; views keep 64-byte alignment), never 0 bytes.
  const size_t bytes = std::max<size_t>(256, (bytes_of(dtype, shape) + 255) / 256 * 256);
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, bytes, stream_);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it and let the caller recover
    throw DeviceOutOfMemory(bytes);
  }
  NNPIPE_CUDA_CHECK(e);
  const cudaStream_t s = stream_;
  // Freed in stream order: work queued on the stream before the last handle went still runs.
  std::shared_ptr<uint8_t> owner(static_cast<uint8_t*>(p),
                                 [s](uint8_t* q) { (void)cudaFreeAsync(q, s); });
  NNPIPE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  return Tensor::adopt(dtype, std::move(shape), Device::kCUDA, std::move(owner), bytes);
}

Tensor CudaBackend::scratch(DType dtype, std::vector<int64_t> shape) {
  return zeros(dtype, std::move(shape));
}

void CudaBackend::zero(Tensor& t) {
  on_device(t, "zero");
  NNPIPE_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream_));
}

Tensor CudaBackend::to_f32(const Tensor& src) {
  if (src.defined() && src.device() == Device::kCPU)  // a host tensor (e.g. borrowed from a
    return upload(cpu_backend().to_f32(src));         // file): converted there, then uploaded
  on_device(src, "to_f32");
  Tensor out = zeros(DType::kF32, src.shape());
  const KType t = ktype(src.dtype(), "to_f32");
  const int64_t n = src.numel();
  if (dtype_is_block(src.dtype())) {
    const int64_t cols = src.dim(src.ndim() - 1);
    dequant_rows(stream_, t, src.raw(), static_cast<int64_t>(dtype_row_bytes(src.dtype(), cols)),
                 cols, nullptr, 0, 0, cols ? n / cols : 0, f32(out, "to_f32 out"), err_);
  } else {
    half_to_f32(stream_, t, src.raw(), f32(out, "to_f32 out"), n);
  }
  return out;
}

void CudaBackend::copy_bytes(Tensor& dst, const Tensor& src, size_t bytes) {
  on_device(dst, "copy_bytes dst");
  on_device(src, "copy_bytes src");
  if (bytes > dst.nbytes() || bytes > src.nbytes())
    fail(ErrorCode::kInvalidArgument, "copy_bytes: {} bytes from {} to {}", bytes, src.describe(),
         dst.describe());
  if (bytes)
    NNPIPE_CUDA_CHECK(
        cudaMemcpyAsync(dst.raw(), src.raw(), bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::upload(Tensor& dst, std::span<const uint8_t> host) {
  on_device(dst, "upload");
  if (host.size() != dst.nbytes())
    fail(ErrorCode::kInvalidArgument, "upload: {} bytes into {}", host.size(), dst.describe());
  // From pageable memory the call returns once the bytes are staged: `host` may go right after.
  if (!host.empty())
    NNPIPE_CUDA_CHECK(
        cudaMemcpyAsync(dst.raw(), host.data(), host.size(), cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::download(std::span<uint8_t> host, const Tensor& t) {
  on_device(t, "download");
  if (host.size() != t.nbytes())
    fail(ErrorCode::kInvalidArgument, "download: {} bytes into {} bytes", t.describe(),
         host.size());
  if (!host.empty())
    NNPIPE_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), t.raw(), host.size(), cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

void CudaBackend::synchronize() {
  NNPIPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  check_device_errors(err_);
}

bool CudaBackend::supports(std::string_view op, DType dtype) const {
  if (op == "matmul" || op == "lora_apply" || op == "embedding") return is_ktype(dtype);
  if (op == "matmul_backward") return dtype == DType::kF32 || is_half(dtype);
  return dtype == DType::kF32;
}

// --- GEMM ---

void CudaBackend::gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                       const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta C
    if (beta != 1.0f)
      fail(ErrorCode::kInternal, "CUDA gemm: an empty inner dimension with beta {}", beta);
    return;
  }
  for (int64_t d : {m, n, k, lda, ldb, ldc})
    if (d > INT_MAX) fail(ErrorCode::kUnsupported, "CUDA gemm: dimension {} exceeds int", d);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap.
  NNPIPE_CUBLAS_CHECK(
      cublasGemmEx(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                   static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b,
                   CUDA_R_32F, static_cast<int>(ldb), a, CUDA_R_32F, static_cast<int>(lda), &beta,
                   c, CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// --- residual ---

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  same_shape(out, a, "add");
  same_shape(a, b, "add");
  add_f32(stream_, f32(out, "add out"), f32(a, "add a"), f32(b, "add b"), a.numel());
}

void CudaBackend::accumulate(Tensor& dst, const Tensor& src) {
  same_shape(dst, src, "accumulate");
  accumulate_f32(stream_, f32(dst, "accumulate dst"), f32(src, "accumulate src"), src.numel());
}

// --- optimizer ---

void CudaBackend::axpy(Tensor& y, float a, const Tensor& x) {
  same_shape(y, x, "axpy");
  axpy_f32(stream_, f32(y, "axpy y"), a, f32(x, "axpy x"), x.numel());
}

void CudaBackend::scale(Tensor& x, float a) {
  scale_f32(stream_, f32(x, "scale x"), a, x.numel());
}

double CudaBackend::sq_norm(const Tensor& x) {
  const float* px = f32(x, "sq_norm x");
  const int64_t n = x.numel(), chunks = (n + kSqNormChunk - 1) / kSqNormChunk;
  Tensor part = zeros(DType::kF64, {std::max<int64_t>(chunks, 1) + 1});  // chunk sums, total
  double* pp = reinterpret_cast<double*>(part.raw());
  nnpipe::cuda::sq_norm(stream_, px, n, kSqNormChunk, pp + 1, pp);
  double host = 0;  // the one copy (and sync) of the op
  NNPIPE_CUDA_CHECK(cudaMemcpyAsync(&host, pp, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  NNPIPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return host;
}

void CudaBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                             const AdamWStep& s) {
  same_shape(param, grad, "adamw_step grad");
  same_shape(param, exp_avg, "adamw_step exp_avg");
  same_shape(param, exp_avg_sq, "adamw_step exp_avg_sq");
  if (s.step < 1) fail(ErrorCode::kInvalidArgument, "adamw_step: step {} (must be >= 1)", s.step);
  const AdamWConsts k = adamw_consts(s);
  adamw(stream_, f32(param, "adamw_step param"), f32(grad, "adamw_step grad"),
        f32(exp_avg, "adamw_step exp_avg"), f32(exp_avg_sq, "adamw_step exp_avg_sq"), param.numel(),
        k);
}

void CudaBackend::dropout_mask(Tensor& keep, double p, uint64_t seed, uint64_t offset) {
  on_device(keep, "dropout_mask");
  if (keep.dtype() != DType::kU8)
    fail(ErrorCode::kInvalidArgument, "dropout_mask: expected a CUDA u8 tensor, got {}",
         keep.describe());
  if (!(p >= 0 && p <= 1))
    fail(ErrorCode::kInvalidArgument, "dropout_mask: probability {} is not in [0, 1]", p);
  nnpipe::cuda::dropout_mask(stream_, keep.raw(), keep.numel(), dropout_threshold(p), seed, offset);
}

}  // namespace cuda

// --- the entry points of backend/device.h ---

bool cuda_built() {
  return true;
}

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

Backend& cuda_backend() {
  static cuda::CudaBackend* backend = new cuda::CudaBackend;  // never destroyed (see Shared)
  return *backend;
}

std::unique_ptr<Backend> make_cuda_backend() {
  return std::make_unique<cuda::CudaBackend>();
}

}  // namespace nnpipe
