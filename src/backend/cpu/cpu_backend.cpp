// CPU backend: memory, conversion and the residual ops.
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/qmatmul.h"

#include "core/half.h"
#include "quant/ggml_quants.h"
#include "tensor/convert.h"

namespace nnpipe {

Backend& cpu_backend() {
  static cpu::CpuBackend backend;
  return backend;
}

namespace cpu {

void half_to_f32(const Tensor& t, int64_t offset, int64_t count, float* dst) {
  if (!is_half(t.dtype()) || t.device() != Device::kCPU || t.borrowed() || offset < 0 ||
      offset + count > t.numel())
    fail(ErrorCode::kInvalidArgument, "half_to_f32: [{}, +{}) of {}", offset, count, t.describe());
  const uint16_t* h = reinterpret_cast<const uint16_t*>(t.raw()) + offset;
  if (t.dtype() == DType::kBF16) {
#pragma omp parallel for simd if (count >= kParallelMin)
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(h[i]);
  } else {
#pragma omp parallel for if (count >= kParallelMin)
    for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(h[i]);
  }
}

void same_shape(const Tensor& a, const Tensor& b, const char* what) {
  if (a.shape() != b.shape())
    fail(ErrorCode::kInvalidArgument, "{}: shape mismatch {} vs {}", what, a.describe(),
         b.describe());
}

Tensor CpuBackend::zeros(DType dtype, std::vector<int64_t> shape) {
  return Tensor::zeros(dtype, std::move(shape), Device::kCPU);
}

void CpuBackend::zero(Tensor& t) {
  std::memset(t.raw(), 0, t.nbytes());
}

Tensor CpuBackend::to_f32(const Tensor& src) {
  Tensor out = Tensor::zeros(DType::kF32, src.shape());
  if (dtype_is_block(src.dtype())) {  // GGML blocks: dequantized (gguf-py's values)
    dequantize_rows(
        src.dtype(), src.bytes(),
        std::span<float>(reinterpret_cast<float*>(out.raw()), static_cast<size_t>(src.numel())));
    return out;
  }
  std::vector<float> v = nnpipe::to_f32(src.dtype(), src.bytes());  // memcpy reads: unaligned ok
  std::memcpy(out.raw(), v.data(), out.nbytes());
  return out;
}

void CpuBackend::copy_bytes(Tensor& dst, const Tensor& src, size_t bytes) {
  if (bytes > dst.nbytes() || bytes > src.nbytes())
    fail(ErrorCode::kInvalidArgument, "copy_bytes: {} bytes from {} to {}", bytes, src.describe(),
         dst.describe());
  if (bytes) std::memcpy(dst.raw(), src.raw(), bytes);
}

void CpuBackend::upload(Tensor& dst, std::span<const uint8_t> host) {
  if (host.size() != dst.nbytes())
    fail(ErrorCode::kInvalidArgument, "upload: {} bytes into {}", host.size(), dst.describe());
  if (!host.empty()) std::memcpy(dst.raw(), host.data(), host.size());
}

void CpuBackend::download(std::span<uint8_t> host, const Tensor& t) {
  if (host.size() != t.nbytes())
    fail(ErrorCode::kInvalidArgument, "download: {} bytes into {} bytes", t.describe(),
         host.size());
  if (!host.empty()) std::memcpy(host.data(), t.raw(), host.size());
}

bool CpuBackend::supports(std::string_view op, DType dtype) const {
  const bool ggml_weight = qmatmul_supported(dtype);
  if (op == "matmul" || op == "lora_apply" || op == "embedding") return ggml_weight;
  if (op == "matmul_backward") return dtype == DType::kF32 || is_half(dtype);
  return dtype == DType::kF32;
}

void CpuBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  same_shape(out, a, "add");
  same_shape(a, b, "add");
  float* o = f32(out, "add out");
  const float* pa = f32(a, "add a");
  const float* pb = f32(b, "add b");
  const int64_t n = a.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = pa[i] + pb[i];
}

void CpuBackend::accumulate(Tensor& dst, const Tensor& src) {
  same_shape(dst, src, "accumulate");
  float* d = f32(dst, "accumulate dst");
  const float* s = f32(src, "accumulate src");
  const int64_t n = src.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) d[i] += s[i];
}

}  // namespace cpu
}  // namespace nnpipe
