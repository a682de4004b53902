#include "tensor/tensor.h"

#include <cstring>
#include <new>

#include "core/error.h"
#include "core/half.h"
#include "tensor/convert.h"

namespace nnpipe {
namespace {

void check_shape(const std::vector<int64_t>& shape, DType dtype = DType::kF32) {
  if (shape.size() > Tensor::kMaxDims)
    fail(ErrorCode::kInvalidArgument, "tensor: {} dimensions (at most {})", shape.size(),
         Tensor::kMaxDims);
  for (int64_t d : shape)
    if (d < 0) fail(ErrorCode::kInvalidArgument, "tensor: negative dimension {}", d);
  if (dtype_is_block(dtype) && (shape.empty() || shape.back() % dtype_block_size(dtype) != 0))
    fail(ErrorCode::kInvalidArgument, "tensor: a {} tensor's rows must be whole blocks of {}",
         dtype_name(dtype), dtype_block_size(dtype));
}

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void check_host(const Tensor& t, const char* what) {
  if (t.device() != Device::kCPU)
    fail(ErrorCode::kInvalidArgument, "tensor: {} on {}: download it through its backend first",
         what, t.describe());
}

}  // namespace

const char* device_name(Device d) {
  return d == Device::kCUDA ? "cuda" : "cpu";
}

int64_t Tensor::numel() const {
  return product(shape_);
}

size_t Tensor::nbytes() const {
  if (!dtype_is_block(dtype_)) return static_cast<size_t>(numel()) * dtype_size(dtype_);
  const int64_t last = shape_.empty() ? 1 : shape_.back();
  return dtype_row_bytes(dtype_, last) * static_cast<size_t>(last ? numel() / last : 0);
}

Tensor Tensor::zeros(DType dtype, std::vector<int64_t> shape, Device device) {
  check_shape(shape, dtype);
  if (device != Device::kCPU)  // this allocates host memory
    fail(ErrorCode::kInvalidArgument, "tensor: zeros() on {}: allocate through its backend",
         device_name(device));
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = std::move(shape);
  // At least 64 bytes so that data_ is never null for an empty tensor.
  size_t n = std::max<size_t>(64, (t.nbytes() + 63) / 64 * 64);
  auto* p = static_cast<uint8_t*>(::operator new (n, std::align_val_t{64}));
  std::memset(p, 0, n);
  t.owner_ =
      std::shared_ptr<uint8_t>(p, [](uint8_t* q) { ::operator delete (q, std::align_val_t{64}); });
  t.data_ = p;
  t.cap_ = n;
  return t;
}

Tensor Tensor::from_f32(std::span<const float> values, std::vector<int64_t> shape) {
  Tensor t = zeros(DType::kF32, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel())
    fail(ErrorCode::kInvalidArgument, "tensor: {} values for shape {}", values.size(),
         shape_str(t.shape_));
  std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_i32(std::span<const int32_t> values, std::vector<int64_t> shape) {
  Tensor t = zeros(DType::kI32, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel())
    fail(ErrorCode::kInvalidArgument, "tensor: {} values for shape {}", values.size(),
         shape_str(t.shape_));
  std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

Tensor Tensor::borrow(DType dtype, std::vector<int64_t> shape, std::span<const uint8_t> bytes) {
  check_shape(shape, dtype);
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  if (bytes.size() != t.nbytes())
    fail(ErrorCode::kInvalidArgument, "tensor: {} bytes for {}{}", bytes.size(), dtype_name(dtype),
         shape_str(t.shape_));
  t.data_ = const_cast<uint8_t*>(bytes.data());  // read-only: raw() refuses to hand it out
  t.cap_ = bytes.size();
  return t;
}

Tensor Tensor::adopt(DType dtype, std::vector<int64_t> shape, Device device,
                     std::shared_ptr<uint8_t> owner, size_t capacity) {
  check_shape(shape, dtype);
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = std::move(shape);
  if (!owner || t.nbytes() > capacity)
    fail(ErrorCode::kInvalidArgument, "tensor: adopting {} bytes for {}", capacity, t.describe());
  t.data_ = owner.get();
  t.owner_ = std::move(owner);
  t.cap_ = capacity;
  return t;
}

Tensor Tensor::narrowed(std::vector<int64_t> shape) const {
  check_shape(shape, dtype_);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  if (t.nbytes() > cap_)
    fail(ErrorCode::kInvalidArgument, "tensor: {} does not fit the {} bytes of {}", t.describe(),
         cap_, describe());
  return t;
}

Tensor Tensor::view(size_t offset, DType dtype, std::vector<int64_t> shape) const {
  check_shape(shape, dtype);
  if (borrowed() || offset % 64 != 0 || offset > cap_)
    fail(ErrorCode::kInvalidArgument, "tensor: a view at byte {} of {}", offset, describe());
  Tensor t = *this;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data_ + offset;
  t.cap_ = cap_ - offset;
  if (t.nbytes() > t.cap_)
    fail(ErrorCode::kInvalidArgument, "tensor: {} at byte {} does not fit the {} bytes of {}",
         t.describe(), offset, cap_, describe());
  return t;
}

Tensor Tensor::rows(int64_t r0, int64_t n) const {
  if (shape_.empty() || r0 < 0 || n < 0 || r0 + n > shape_[0])
    fail(ErrorCode::kInvalidArgument, "tensor: rows [{}, {}) of {}", r0, r0 + n, describe());
  Tensor t = *this;
  t.shape_[0] = 1;
  const size_t row = t.nbytes();
  t.shape_[0] = n;
  t.data_ += static_cast<size_t>(r0) * row;
  t.cap_ -= static_cast<size_t>(r0) * row;
  return t;
}

Tensor Tensor::reshaped(std::vector<int64_t> shape) const {
  check_shape(shape, dtype_);
  if (product(shape) != numel())
    fail(ErrorCode::kInvalidArgument, "tensor: cannot view {} as {}", shape_str(shape_),
         shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device_name(device_);
}

uint8_t* Tensor::raw() {
  if (borrowed()) fail(ErrorCode::kInvalidArgument, "tensor: borrowed storage is read-only");
  return data_;
}

float Tensor::get(int64_t i) const {
  check_host(*this, "get()");
  if (i < 0 || i >= numel()) fail(ErrorCode::kInvalidArgument, "tensor: index {} out of range", i);
  if (dtype_ == DType::kI32) {
    int32_t v;
    std::memcpy(&v, data_ + i * 4, 4);
    return static_cast<float>(v);
  }
  return static_cast<float>(float_element(dtype_, data_, static_cast<size_t>(i)));
}

void Tensor::set(int64_t i, float v) {
  check_host(*this, "set()");
  if (i < 0 || i >= numel()) fail(ErrorCode::kInvalidArgument, "tensor: index {} out of range", i);
  uint8_t* p = raw() + i * static_cast<int64_t>(dtype_size(dtype_));
  switch (dtype_) {
    case DType::kF32:
      std::memcpy(p, &v, 4);
      return;
    case DType::kF16: {
      uint16_t h = f32_to_f16(v);
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kBF16: {
      uint16_t h = f32_to_bf16(v);
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kI32: {
      auto x = static_cast<int32_t>(v);
      std::memcpy(p, &x, 4);
      return;
    }
    default:
      fail(ErrorCode::kUnsupported, "tensor: set() on {}", dtype_name(dtype_));
  }
}

std::vector<float> Tensor::to_f32() const {
  check_host(*this, "to_f32()");
  return nnpipe::to_f32(dtype_, bytes());
}

void check_tensor(const Tensor& t, DType dtype, const std::vector<int64_t>& shape,
                  const char* what) {
  if (!t.defined() || t.dtype() != dtype || t.shape() != shape)
    fail(ErrorCode::kInvalidArgument, "{}: expected {}{}, got {}", what, dtype_name(dtype),
         shape_str(shape), t.defined() ? t.describe() : std::string("an undefined tensor"));
}

}  // namespace nnpipe
