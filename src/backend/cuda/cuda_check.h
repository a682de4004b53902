// Every CUDA runtime and cuBLAS call goes through one of these macros: a failure throws
// nnpipe::Error naming the call, the file and CUDA's message. The throwing half lives in
// cuda_backend.cpp (host C++): nvcc does not compile fmt's consteval format strings, so .cu files
// include only this header and kernels.h.
#pragma once

namespace nnpipe::cuda {

void check_cuda(int err, const char* call, const char* file, int line);
void check_cublas(int status, const char* call, const char* file, int line);

}  // namespace nnpipe::cuda

#define NNPIPE_CUDA_CHECK(call) \
  ::nnpipe::cuda::check_cuda(static_cast<int>(call), #call, __FILE__, __LINE__)
#define NNPIPE_CUBLAS_CHECK(call) \
  ::nnpipe::cuda::check_cublas(static_cast<int>(call), #call, __FILE__, __LINE__)
// After a kernel launch: launch errors (bad configuration) surface here, not at the next sync.
#define NNPIPE_CUDA_LAUNCHED(name) \
  ::nnpipe::cuda::check_cuda(static_cast<int>(cudaGetLastError()), name, __FILE__, __LINE__)
