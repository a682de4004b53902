// Process facts the trainer reports (peak RSS) and the compute thread count shared by OpenMP and
// OpenBLAS, so that `--threads N` means N everywhere.
#pragma once
#include <cstdint>

namespace nnpipe {

// Peak resident set size of this process so far, in bytes (getrusage ru_maxrss).
int64_t peak_rss_bytes();
// Sets the OpenMP and OpenBLAS thread counts; n <= 0 keeps the defaults.
void set_num_threads(int n);
// The OpenMP thread count ops will use.
int num_threads();
// True when the CPU and OS support AVX2 + FMA + F16C (the SIMD kernels' requirement). Read once
// from cpuid: clang 14's __builtin_cpu_supports does not know "f16c".
bool cpu_has_avx2_fma_f16c();
// AVX-512F (with the above), and AVX-512F/BW/VL/VNNI: the CPU's and the OS's (XCR0's ZMM state)
// support, which libgcc's and compiler-rt's checks include.
bool cpu_has_avx512f();
bool cpu_has_avx512vnni();
// AVX-512F/BW/VL and AVX512_BF16 (vdpbf16ps): the frozen-base bf16 GEMMs.
bool cpu_has_avx512bf16();

}  // namespace nnpipe
