// Choosing a backend by device name. The CUDA backend (backend/cuda/) exists only in builds with
// NNPIPE_CUDA; elsewhere backend/cuda_stub.cpp answers "built without CUDA" (MLX's no_gpu idea),
// so callers never need an #ifdef.
#pragma once
#include <memory>
#include <string_view>

#include "backend/backend.h"

namespace nnpipe {

// Whether this binary contains the CUDA backend.
bool cuda_built();
// Built with CUDA and at least one device visible (cudaGetDeviceCount > 0); never throws.
bool cuda_available();
// The process-wide CUDA backend (device 0, one stream). Throws kUnsupported "built without CUDA"
// in a build without it, and kUnsupported naming the reason when no device is usable.
Backend& cuda_backend();
// A CUDA backend of its own (sharing the process-wide stream and cuBLAS handle); throws as above.
std::unique_ptr<Backend> make_cuda_backend();

// "cpu", "cuda", or "auto" (cuda when available, else cpu); anything else throws
// kInvalidArgument naming the choices.
Backend& backend_for(std::string_view device);

}  // namespace nnpipe
