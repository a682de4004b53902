// Rotary position embedding, non-interleaved (NEOX / transformers rotate_half). kTorch angles are
// computed in float32 the way transformers does (inv_freq = 1 / theta^(2i/d) in f32, angle = pos *
// inv_freq), so cos/sin match its tables to the last bit or two; kGgml angles as llama.cpp does.
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

// llama.cpp's NEOX rope: angle_i = p * theta_scale^i by repeated f32 multiplication (its rope
// cache), theta_scale = theta^(-2/d) in f32. out may be x (each pair is read before written).
static void rope_ggml(float* out, const float* in, const Tensor& x, const Tensor& positions,
                      double theta) {
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3), half = d / 2;
  check_tensor(positions, DType::kI32, {b, t}, "rope positions");
  const int32_t* pos = i32(positions, "positions");
  const float theta_scale = std::pow(static_cast<float>(theta), -2.0f / static_cast<float>(d));
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t bt = 0; bt < b * t; ++bt) {
    float ang = static_cast<float>(pos[bt]);
    for (int64_t i = 0; i < half; ++i) {
      cs[i] = std::cos(ang);
      sn[i] = std::sin(ang);
      ang *= theta_scale;
    }
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* xi = in + (bt * h + hh) * d;  // (D)
      float* yo = out + (bt * h + hh) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = xi[i], x1 = xi[i + half];
        yo[i] = x0 * cs[i] - x1 * sn[i];
        yo[i + half] = x0 * sn[i] + x1 * cs[i];
      }
    }
  }
}

void CpuBackend::rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta,
                      Numerics num) {
  same_shape(out, x, "rope out");
  if (x.ndim() != 4 || x.dim(3) % 2 != 0)
    fail(ErrorCode::kInvalidArgument, "rope: expected (B, T, H, D) with even D, got {}",
         x.describe());
  if (num != Numerics::kTorch)
    return rope_ggml(f32(out, "rope out"), f32(x, "rope x"), x, positions, theta);
  rotate(f32(out, "rope out"), f32(x, "rope x"), x, positions, theta, 1.0f, false);
}

void CpuBackend::rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions,
                               double theta) {
  same_shape(dx, dout, "rope_backward dx");
  rotate(f32(dx, "rope dx"), f32(dout, "rope dout"), dout, positions, theta, -1.0f, true);
}

}  // namespace nnpipe::cpu
