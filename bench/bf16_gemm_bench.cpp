// The frozen-base products of LoRA training on bf16 weights: GFLOP/s of the AVX-512 BF16 kernels
// (matmul_bf16.cpp: forward y = x W^T and input gradient dx += dout W) against OpenBLAS sgemm on
// the same weight widened to f32, and against the default path (Numerics::kTorch: bf16 rows
// widened in chunks, then sgemm), on the Qwen2.5-0.5B and Qwen1.5-0.5B shapes. JSON lines.
// usage: bf16_gemm_bench [THREADS=2] [N=256]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/matmul_bf16.h"
#include "core/half.h"

using namespace nnpipe;
using clk = std::chrono::steady_clock;

namespace {

// Best of at least 3 runs and 0.3 s.
template <typename F>
double best_time(F&& f) {
  double best = 1e30, total = 0;
  for (int r = 0; r < 3 || total < 0.3; ++r) {
    const auto t0 = clk::now();
    f();
    const double s = std::chrono::duration<double>(clk::now() - t0).count();
    best = std::min(best, s);
    total += s;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int64_t n = argc > 2 ? std::atoll(argv[2]) : 256;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  if (!cpu::bf16_gemm_available()) {
    std::printf("{\"bench\": \"bf16_gemm\", \"skipped\": \"no AVX-512 BF16 on this CPU\"}\n");
    return 0;
  }
  struct Shape {
    const char* name;
    int64_t o, in;
  };
  const Shape shapes[] = {
      {"q2.5 q/o 896x896", 896, 896},         {"q2.5 gate/up 4864x896", 4864, 896},
      {"q2.5 down 896x4864", 896, 4864},      {"q2.5 lm_head 151936x896", 151936, 896},
      {"q1.5 q/k/v/o 1024x1024", 1024, 1024}, {"q1.5 gate/up 2816x1024", 2816, 1024},
      {"q1.5 down 1024x2816", 1024, 2816},    {"q1.5 lm_head 151936x1024", 151936, 1024}};
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  Backend& be = cpu_backend();
  for (const Shape& s : shapes) {
    std::vector<float> wf(static_cast<size_t>(s.o * s.in));
    Tensor wb = Tensor::zeros(DType::kBF16, {s.o, s.in});
    auto* wp = reinterpret_cast<uint16_t*>(wb.raw());
    for (size_t i = 0; i < wf.size(); ++i) {
      wp[i] = f32_to_bf16(dist(rng) * 0.02f);
      wf[i] = bf16_to_f32(wp[i]);
    }
    Tensor x = Tensor::zeros(DType::kF32, {n, s.in}), g = Tensor::zeros(DType::kF32, {n, s.o});
    for (float* p : {reinterpret_cast<float*>(x.raw()), reinterpret_cast<float*>(g.raw())}) {
      const int64_t cnt = p == reinterpret_cast<float*>(x.raw()) ? n * s.in : n * s.o;
      for (int64_t i = 0; i < cnt; ++i) p[i] = dist(rng);
    }
    Tensor y = Tensor::zeros(DType::kF32, {n, s.o}), dx = Tensor::zeros(DType::kF32, {n, s.in});
    const float* xp = reinterpret_cast<const float*>(x.raw());
    const float* gp = reinterpret_cast<const float*>(g.raw());
    float* yp = reinterpret_cast<float*>(y.raw());
    float* dxp = reinterpret_cast<float*>(dx.raw());
    const int ni = static_cast<int>(n), oi = static_cast<int>(s.o), ii = static_cast<int>(s.in);
    const double flop = 2.0 * static_cast<double>(n) * static_cast<double>(s.o * s.in);
    const double f_bf16 = best_time([&] { cpu::bf16_matmul(yp, xp, n, wp, s.o, s.in); });
    const double f_sgemm = best_time([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, oi, ii, 1.0f, xp, ii, wf.data(), ii,
                  0.0f, yp, oi);
    });
    const double f_half = best_time([&] { be.matmul(y, x, wb, nullptr, Numerics::kTorch); });
    const double b_bf16 = best_time([&] { cpu::bf16_matmul_dx(dxp, gp, n, wp, s.o, s.in); });
    const double b_sgemm = best_time([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, oi, 1.0f, gp, oi, wf.data(),
                  ii, 1.0f, dxp, ii);
    });
    const double b_half =
        best_time([&] { be.matmul_backward(&dx, nullptr, nullptr, g, x, wb, Numerics::kTorch); });
    std::printf(
        "{\"bench\": \"bf16_gemm\", \"shape\": \"%s\", \"n\": %lld, \"threads\": %d, "
        "\"fwd_GFLOPs\": {\"bf16\": %.1f, \"sgemm_f32w\": %.1f, \"default_bf16w\": %.1f}, "
        "\"dx_GFLOPs\": {\"bf16\": %.1f, \"sgemm_f32w\": %.1f, \"default_bf16w\": %.1f}}\n",
        s.name, static_cast<long long>(n), threads, flop / f_bf16 / 1e9, flop / f_sgemm / 1e9,
        flop / f_half / 1e9, flop / b_bf16 / 1e9, flop / b_sgemm / 1e9, flop / b_half / 1e9);
    std::fflush(stdout);
  }
  return 0;
}
