#include "backend/cpu/kernel_report.h"

#include <cblas.h>
#include <fmt/format.h>

#include <cstring>

#include "backend/cpu/prefill_attention.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "core/sysinfo.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace nnpipe::cpu {

namespace {

std::string cpu_brand() {
#if defined(__x86_64__)
  unsigned r[12] = {};
  for (unsigned i = 0; i < 3; ++i)
    if (!__get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]))
      return "unknown CPU";
  char s[49] = {};
  std::memcpy(s, r, 48);
  std::string b(s);
  const size_t a = b.find_first_not_of(' '), e = b.find_last_not_of(' ');
  return a == std::string::npos ? "unknown CPU" : b.substr(a, e - a + 1);
#else
  return "non-x86 CPU";
#endif
}

}  // namespace

std::string kernel_report() {
  std::string features;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  auto add = [&](bool has, const char* name) {
    if (has) features += fmt::format("{}{}", features.empty() ? "" : " ", name);
  };
  add(cpu_has_avx2_fma_f16c(), "avx2+fma+f16c");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
#endif
  if (features.empty()) features = "none used";

  std::string kernels;
  auto kernel = [&](const std::string& k) { kernels += fmt::format("\n  {}", k); };
  if (qk::active_isa() == qk::Isa::kAvx2)
    kernel("AVX2+FMA+F16C: block dot products (decode and short batches), dequantization");
  else
    kernel("scalar: block dot products (this CPU has no AVX2+FMA+F16C)");
  if (cpu_has_avx512vnni())
    kernel("AVX-512 VNNI: int8 GEMM for prompts over Q8_0, Q4_0, Q4_K, Q6_K weights");
  if (cpu_has_avx512f()) kernel("AVX-512F: F16 tiles for batch-invariant products (serve)");
  if (cpu_has_avx512bf16())
    kernel("AVX-512 BF16: frozen-base bf16 GEMMs (finetune-lora --matmul-dtype bf16)");
  if (prefill_attention_avx512_available(64))
    kernel("AVX-512F: prompt attention");
  else if (prefill_attention_available(64))
    kernel("AVX2: prompt attention");

  const char* par = "sequential";
  switch (openblas_get_parallel()) {
    case 1:
      par = "pthreads";
      break;
    case 2:
      par = "OpenMP";
      break;
    default:
      break;
  }
  std::string config = openblas_get_config();
  while (!config.empty() && config.back() == ' ') config.pop_back();
  return fmt::format(
      "CPU: {}\nfeatures: {}\nkernels:{}\nBLAS: {} ({} threads, {} kernels; f32 GEMMs: training, "
      "F16/BF16/F32 prompts)",
      cpu_brand(), features, kernels, config, par, openblas_get_corename());
}

}  // namespace nnpipe::cpu
