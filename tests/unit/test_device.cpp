// Choosing a backend by device name, and the CUDA entry points where they cannot work: a build
// without CUDA (the stub) or a machine without a GPU must fail with a clear message, never crash.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "backend/device.h"
#include "core/error.h"

namespace nnpipe {
namespace {

// The message of the Error `f` throws (empty, and a test failure, if it throws none).
template <typename F>
std::string error_of(F&& f, ErrorCode want) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), want) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no nnpipe::Error thrown";
  return {};
}

TEST(BackendFor, NamesTheChoices) {
  EXPECT_EQ(&backend_for("cpu"), &cpu_backend());
  const std::string m = error_of([] { backend_for("tpu"); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(m.find("cpu, cuda or auto"), std::string::npos) << m;
}

TEST(BackendFor, CudaFailsCleanlyWithoutAGpu) {
  if (cuda_available()) {
    EXPECT_EQ(backend_for("auto").device(), Device::kCUDA);
    EXPECT_EQ(backend_for("cuda").device(), Device::kCUDA);
    GTEST_SKIP() << "a GPU is present: the failure paths cannot be seen here";
  }
  EXPECT_EQ(&backend_for("auto"), &cpu_backend()) << "auto falls back to the CPU";
  const char* want = cuda_built() ? "no CUDA device" : "built without CUDA";
  for (const std::string& m :
       {error_of([] { backend_for("cuda"); }, ErrorCode::kUnsupported),
        error_of([] { cuda_backend(); }, ErrorCode::kUnsupported),
        error_of([] { (void)make_cuda_backend(); }, ErrorCode::kUnsupported)})
    EXPECT_NE(m.find(want), std::string::npos) << m;
}

// A device tensor's bytes are not host memory: the element accessors refuse it (here a host
// buffer stands in for device memory; nothing reads it).
TEST(Tensor, DeviceTensorsRefuseHostAccess) {
  auto fake = std::shared_ptr<uint8_t>(new uint8_t[64], [](uint8_t* p) { delete[] p; });
  Tensor t = Tensor::adopt(DType::kF32, {2, 3}, Device::kCUDA, fake, 64);
  EXPECT_EQ(t.device(), Device::kCUDA);
  EXPECT_EQ(t.describe(), "F32[2, 3] cuda");
  EXPECT_EQ(t.rows(1, 1).device(), Device::kCUDA) << "views keep the device";
  error_of([&] { (void)t.get(0); }, ErrorCode::kInvalidArgument);
  error_of([&] { t.set(0, 1.0f); }, ErrorCode::kInvalidArgument);
  error_of([&] { (void)t.to_f32(); }, ErrorCode::kInvalidArgument);
  error_of([] { Tensor::zeros(DType::kF32, {2}, Device::kCUDA); }, ErrorCode::kInvalidArgument);
  error_of(
      [&] {
        Tensor::adopt(DType::kF32, {4, 5}, Device::kCUDA, fake, 64);
      },
      ErrorCode::kInvalidArgument);  // 80 bytes do not fit 64
}

}  // namespace
}  // namespace nnpipe
