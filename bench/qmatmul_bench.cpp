// qmatmul kernels on the Qwen1.5-0.5B shapes: GB/s of weights streamed at n = 1 (decode) and
// GFLOP/s at n = 512 (prompt), per ggml type, for the dot kernels, dequantize + sgemm and (Q8_0,
// Q4_0 on AVX-512 VNNI) the integer GEMM, next
// to the machine's read bandwidth (a streaming sum and memcpy over 512 MiB). Prints JSON lines.
// usage: qmatmul_bench [THREADS=2] [TYPES=all, comma-separated] [N_PROMPT=512]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "core/sysinfo.h"
#include "quant/ggml_quants.h"

using namespace nnpipe;
using clk = std::chrono::steady_clock;

namespace {

double seconds_since(clk::time_point t0) {
  return std::chrono::duration<double>(clk::now() - t0).count();
}

// Best of `reps` runs (at least `min_s` seconds in total) of f.
template <typename F>
double best_time(F&& f, double min_s = 0.3, int min_reps = 3) {
  double best = 1e30, total = 0;
  for (int r = 0; r < min_reps || total < min_s; ++r) {
    const auto t0 = clk::now();
    f();
    const double s = seconds_since(t0);
    best = std::min(best, s);
    total += s;
    if (r > 200) break;
  }
  return best;
}

void memory_bandwidth() {
  const size_t n = size_t{512} << 20;
  std::vector<uint8_t> a(n, 1), b(n, 2);
  const int64_t words = static_cast<int64_t>(n / 8);
  const uint64_t* p = reinterpret_cast<const uint64_t*>(a.data());
  uint64_t sink = 0;
  const double t_read = best_time([&] {
    uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < words; ++i) s += p[i];
    sink += s;
  });
  const double t_copy = best_time([&] {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < 64; ++c)
      std::memcpy(b.data() + c * (n / 64), a.data() + c * (n / 64), n / 64);
  });
  std::printf(
      "{\"bench\": \"memory\", \"threads\": %d, \"read_GBps\": %.2f, \"memcpy_GBps\": %.2f, "
      "\"sink\": %llu}\n",
      omp_get_max_threads(), n / t_read / 1e9, 2.0 * n / t_copy / 1e9,
      static_cast<unsigned long long>(sink % 10));
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const std::string types_arg = argc > 2 ? argv[2] : "all";
  const int64_t n_prompt = argc > 3 ? std::atoll(argv[3]) : 512;
  omp_set_num_threads(threads);
  memory_bandwidth();

  std::vector<DType> types;
  if (types_arg == "all") {
    for (const char* t :
         {"Q8_0", "Q4_0", "F16", "Q4_K", "Q6_K", "Q5_0", "Q5_K", "Q4_1", "Q5_1", "BF16", "F32"})
      types.push_back(*dtype_of_ggml(*ggml_type_from_name(t)));
  } else {
    std::stringstream ss(types_arg);
    for (std::string t; std::getline(ss, t, ',');)
      types.push_back(*dtype_of_ggml(*ggml_type_from_name(t)));
  }
  struct Shape {
    int64_t rows, cols;
    bool prompt;
  };
  const Shape shapes[] = {
      {1024, 1024, true}, {2816, 1024, true}, {1024, 2816, true}, {151936, 1024, false}};
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::vector<float> x(static_cast<size_t>(n_prompt * 2816));
  for (float& v : x) v = dist(rng);

  for (DType t : types) {
    for (const Shape& s : shapes) {
      std::vector<float> wf(static_cast<size_t>(s.rows * s.cols));
      for (float& v : wf) v = dist(rng) * 0.02f;
      const std::vector<uint8_t> wq = quantize_rows(t, wf, s.cols);
      wf = {};
      const Tensor w = Tensor::borrow(t, {s.rows, s.cols}, wq);
      std::vector<float> y(static_cast<size_t>(std::max<int64_t>(n_prompt, 1) * s.rows));
      const double bytes = static_cast<double>(wq.size());
      const double t1 = best_time([&] { cpu::qmatmul(y.data(), x.data(), 1, w); });
      double tp_dot = 0, tp_sgemm = 0, tp_vnni = 0, tp_inv = 0;
      if (s.prompt &&
          t == DType::kF16)  // the batch-invariant path: AVX-512 F16 tiles where present
        tp_inv = best_time(
            [&] {
              cpu::qk::qmatmul_path(y.data(), x.data(), n_prompt, w, cpu::qk::Path::kNoSgemm);
            },
            0.5, 2);
      const bool vnni = cpu_has_avx512vnni() && cpu::qk::vnni_gemm_supported(t);
      if (s.prompt && vnni)
        tp_vnni = best_time(
            [&] { cpu::qk::qmatmul_path(y.data(), x.data(), n_prompt, w, cpu::qk::Path::kVnni); },
            0.5, 2);
      if (s.prompt) {
        tp_dot = best_time(
            [&] { cpu::qk::qmatmul_path(y.data(), x.data(), n_prompt, w, cpu::qk::Path::kDot); },
            0.5, 2);
        tp_sgemm = best_time(
            [&] { cpu::qk::qmatmul_path(y.data(), x.data(), n_prompt, w, cpu::qk::Path::kSgemm); },
            0.5, 2);
      }
      const double flop = 2.0 * s.rows * s.cols * n_prompt;
      std::printf(
          "{\"type\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"threads\": %d, \"weight_MB\": "
          "%.2f, \"n1_us\": %.1f, \"n1_GBps\": %.2f",
          dtype_name(t).data(), static_cast<long long>(s.rows), static_cast<long long>(s.cols),
          threads, bytes / 1e6, t1 * 1e6, bytes / t1 / 1e9);
      if (s.prompt)
        std::printf(", \"n%lld_dot_GFLOPs\": %.2f, \"n%lld_sgemm_GFLOPs\": %.2f",
                    static_cast<long long>(n_prompt), flop / tp_dot / 1e9,
                    static_cast<long long>(n_prompt), flop / tp_sgemm / 1e9);
      if (tp_inv > 0)
        std::printf(", \"n%lld_invariant_GFLOPs\": %.2f", static_cast<long long>(n_prompt),
                    flop / tp_inv / 1e9);
      if (tp_vnni > 0)
        std::printf(", \"n%lld_vnni_GFLOPs\": %.2f", static_cast<long long>(n_prompt),
                    flop / tp_vnni / 1e9);
      if (!s.prompt) {  // embedding lookups: qmatmul_row over scattered rows of the table
        std::vector<float> out(static_cast<size_t>(s.cols));
        const double tr = best_time([&] {
          for (int i = 0; i < 1000; ++i) cpu::qmatmul_row(w, (i * 7919) % s.rows, out.data());
        });
        std::printf(", \"row_lookup_us\": %.2f", tr / 1000 * 1e6);
      }
      std::printf("}\n");
      std::fflush(stdout);
    }
  }
  return 0;
}
