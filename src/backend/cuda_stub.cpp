// The CUDA entry points of a build without the CUDA backend (NNPIPE_CUDA off or no nvcc): the
// same functions as backend/cuda/, failing with one clear message.
#include "backend/device.h"
#include "core/error.h"

namespace nnpipe {

namespace {
[[noreturn]] void no_cuda() {
  fail(ErrorCode::kUnsupported,
       "CUDA backend: nnpipe was built without CUDA (configure with -DNNPIPE_CUDA=ON where nvcc "
       "is installed)");
}
}  // namespace

bool cuda_built() {
  return false;
}

bool cuda_available() {
  return false;
}

Backend& cuda_backend() {
  no_cuda();
}

std::unique_ptr<Backend> make_cuda_backend() {
  no_cuda();
}

}  // namespace nnpipe
