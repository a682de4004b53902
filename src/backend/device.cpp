#include "backend/device.h"

#include "core/error.h"

namespace nnpipe {

Backend& backend_for(std::string_view device) {
  if (device == "cpu") return cpu_backend();
  if (device == "cuda") return cuda_backend();
  if (device == "auto") return cuda_available() ? cuda_backend() : cpu_backend();
  fail(ErrorCode::kInvalidArgument, "device '{}': expected cpu, cuda or auto", device);
}

}  // namespace nnpipe
