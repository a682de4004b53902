// Included after a file's other includes: every function defined from here on is compiled for
// AVX2+FMA+F16C (up to core/avx2_end.h). Such a file must not instantiate templates or inline
// functions of shared headers after this point, or the linker could pick the AVX2 copy for code
// that runs on CPUs without AVX2. No include guard: each use pushes once.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
