// Tensor: dtype + shape (up to 4-D) + device + storage. Storage is either owned (64-byte aligned,
// shared between copies of the handle, like torch's storage) or borrowed read-only bytes (a mapped
// file's tensor data, kept alive by the caller). Compute goes through a Backend
// (backend/backend.h): model code passes Tensors, never raw pointers, so a CUDA backend can own
// device memory later.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace nnpipe {

// kCUDA storage is device memory allocated by the CUDA backend (backend/cuda/); only backends
// touch its bytes.
enum class Device { kCPU, kCUDA };
const char* device_name(Device d);  // "cpu", "cuda"

class Tensor {
 public:
  static constexpr size_t kMaxDims = 4;

  Tensor() = default;
  // Owned, zero-filled storage.
  static Tensor zeros(DType dtype, std::vector<int64_t> shape, Device device = Device::kCPU);
  // Owned f32 copy of `values` (numel must match the shape).
  static Tensor from_f32(std::span<const float> values, std::vector<int64_t> shape);
  // Owned i32 copy (token ids, positions, lengths).
  static Tensor from_i32(std::span<const int32_t> values, std::vector<int64_t> shape);
  // Read-only view of bytes the caller keeps alive (e.g. a SafetensorsFile mapping). The bytes may
  // be unaligned; backends copy/convert them rather than computing in place.
  static Tensor borrow(DType dtype, std::vector<int64_t> shape, std::span<const uint8_t> bytes);
  // Storage a backend allocated itself (device memory): `owner` points at `capacity` bytes
  // (>= nbytes) and its deleter frees them.
  static Tensor adopt(DType dtype, std::vector<int64_t> shape, Device device,
                      std::shared_ptr<uint8_t> owner, size_t capacity);

  bool defined() const { return data_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t ndim() const { return shape_.size(); }
  int64_t numel() const;
  // Bytes of the elements (block types: whole blocks per row of the last dimension).
  size_t nbytes() const;
  bool borrowed() const { return owner_ == nullptr && data_ != nullptr; }
  // Same storage, new shape with the same numel (a view, like torch's view()).
  Tensor reshaped(std::vector<int64_t> shape) const;
  // A view of the first numel(shape) elements of the same storage (<= its capacity): scratch
  // buffers allocated once at their largest size and used at smaller sizes per call.
  Tensor narrowed(std::vector<int64_t> shape) const;
  size_t capacity() const { return cap_; }  // bytes of the storage from data
  // A `dtype` view of `shape` at byte `offset` of the same owned storage (an arena's pieces);
  // offset must keep 64-byte alignment and the view must fit the capacity.
  Tensor view(size_t offset, DType dtype, std::vector<int64_t> shape) const;
  // Rows [r0, r0 + n) along the first dimension: a view into the same storage.
  Tensor rows(int64_t r0, int64_t n) const;
  std::string describe() const;  // "f32[2, 3] cpu", "f16[4] cuda"

  // Raw storage, for backends only (model code must not use these).
  uint8_t* raw();  // throws kInvalidArgument on borrowed (read-only) storage
  const uint8_t* raw() const { return data_; }
  std::span<const uint8_t> bytes() const { return {data_, nbytes()}; }

  // Element access for tests and I/O (any float dtype, converted; CPU only: a device tensor
  // throws, download it through its backend).
  float get(int64_t i) const;
  void set(int64_t i, float v);
  std::vector<float> to_f32() const;

 private:
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
  std::vector<int64_t> shape_;
  std::shared_ptr<uint8_t> owner_;  // null when borrowed
  uint8_t* data_ = nullptr;
  size_t cap_ = 0;
};

// Throws kInvalidArgument "<what>: expected dtype[shape], got ..." unless `t` matches.
void check_tensor(const Tensor& t, DType dtype, const std::vector<int64_t>& shape,
                  const char* what);

}  // namespace nnpipe
