// What the CPU backend runs on this machine: the CPU, the SIMD features that choose the kernels,
// the kernel sets in use and the BLAS library. `nnpipe --version` prints it; `infer` logs it.
#pragma once
#include <string>

namespace nnpipe::cpu {

// Several lines, no trailing newline.
std::string kernel_report();

}  // namespace nnpipe::cpu
