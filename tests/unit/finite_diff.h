// Central finite differences for gradient checks shared by the unit tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>

#include "tensor/tensor.h"

namespace nnpipe::test_models {

// ||analytic - numeric|| / ||numeric|| over every stride-th element of `input` (a handle sharing
// the parameter's storage), the numeric derivative being the central difference of `objective`
// with step h. Returns -1 if every sampled numeric derivative is 0 (a vacuous check).
inline double fd_relative_error(Tensor input, const Tensor& grad, double h, int64_t stride,
                                const std::function<double()>& objective) {
  double diff2 = 0, ref2 = 0;
  for (int64_t i = 0; i < input.numel(); i += stride) {
    const float x0 = input.get(i);
    input.set(i, x0 + static_cast<float>(h));
    const double lp = objective();
    input.set(i, x0 - static_cast<float>(h));
    const double lm = objective();
    input.set(i, x0);
    const double num = (lp - lm) / (2 * h);
    diff2 += (grad.get(i) - num) * (grad.get(i) - num);
    ref2 += num * num;
  }
  return ref2 > 0 ? std::sqrt(diff2 / ref2) : -1.0;
}

}  // namespace nnpipe::test_models
