// Rotary position embedding, non-interleaved (NEOX / transformers rotate_half). Angles are computed
// in float32 the way transformers does (inv_freq = 1 / theta^(2i/d) in f32, angle = pos *
// inv_freq), so cos/sin match its tables to the last bit or two.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {
namespace {

std::vector<float> inv_freq(int64_t d, double theta) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)
    f[i] = 1.0f /
           std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(d));
  return f;
}

// sign +1: forward rotation; -1: its transpose (the backward of an orthogonal map).
void rotate(float* out, const float* in, const Tensor& x, const Tensor& positions, double theta,
            float sign, bool accumulate) {
  if (x.ndim() != 4 || x.dim(3) % 2 != 0)
    fail(ErrorCode::kInvalidArgument, "rope: expected (B, T, H, D) with even D, got {}",
         x.describe());
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3), half = d / 2;
  check_tensor(positions, DType::kI32, {b, t}, "rope positions");
  const int32_t* pos = i32(positions, "positions");
  const std::vector<float> inv = inv_freq(d, theta);
#pragma omp parallel for if (b * t * h * d >= kParallelMin)
  for (int64_t bt = 0; bt < b * t; ++bt) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      float ang = static_cast<float>(pos[bt]) * inv[i];
      cs[i] = std::cos(ang);
      sn[i] = sign * std::sin(ang);
    }
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* xi = in + (bt * h + hh) * d;  // (D)
      float* yo = out + (bt * h + hh) * d;
      for (int64_t i = 0; i < half; ++i) {
        float a = xi[i], c = xi[i + half];
        float y0 = a * cs[i] - c * sn[i];
        float y1 = c * cs[i] + a * sn[i];
        if (accumulate) {
          yo[i] += y0;
          yo[i + half] += y1;
        } else {
          yo[i] = y0;
          yo[i + half] = y1;
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta) {
  same_shape(out, x, "rope out");
  rotate(f32(out, "rope out"), f32(x, "rope x"), x, positions, theta, 1.0f, false);
}

void CpuBackend::rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions,
                               double theta) {
  same_shape(dx, dout, "rope_backward dx");
  rotate(f32(dx, "rope dx"), f32(dout, "rope dout"), dout, positions, theta, -1.0f, true);
}

}  // namespace nnpipe::cpu
