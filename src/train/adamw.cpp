#include "train/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "io/safetensors.h"
#include "tensor/convert.h"

namespace nnpipe {
namespace {

constexpr size_t kParallelMin = 1 << 16;  // elements; below this threads cost more than they save
constexpr size_t kNormChunk = 1 << 16;

// Sum of squares in double over fixed chunks, added in chunk order: parallel, yet the same result
// for any thread count (a resumed run must reproduce the uninterrupted one bit for bit).
double sum_squares(std::span<const float> g) {
  const size_t chunks = (g.size() + kNormChunk - 1) / kNormChunk;
  std::vector<double> part(chunks, 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    double s = 0;
    const size_t end = std::min(g.size(), (c + 1) * kNormChunk);
    for (size_t i = c * kNormChunk; i < end; ++i) s += static_cast<double>(g[i]) * g[i];
    part[c] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return s;
}

struct AdamWConsts {
  float decay, w1, b2, w2, neg_step_size, bc2_sqrt, eps;
  bool small_w1;
};

// One AdamW update of n elements in torch's operation order. Compiled for AVX-512, AVX2+FMA and
// baseline x86-64 and picked at load time: std::fma is exactly rounded everywhere, so every version
// gives the same bits; without the clones each fma is a libm call (17% of a 0.5B full step).
__attribute__((target_clones("avx512f", "arch=haswell", "default"))) void adamw_kernel(
    float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
    size_t n, const AdamWConsts& k) {
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i];
    if (k.decay != 1.0f) pi = pi * k.decay;
    // torch's vectorised lerp: fmadd(coeff, end - start, base).
    const float mi =
        k.small_w1 ? std::fma(k.w1, gi - m[i], m[i]) : std::fma(k.w1 - 1.0f, gi - m[i], gi);
    // addcmul (torch CPU kernel, checked bit for bit): fma(value * t1, t2, self).
    const float vi = std::fma(k.w2 * gi, gi, v[i] * k.b2);
    // torch's CPU sqrt (MKL/Sleef) is not always correctly rounded (1 ulp off for ~0.6% of
    // inputs on AVX512 builds); ours is IEEE, so results agree to about an ulp, not bit for bit.
    const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
    // addcdiv (torch CPU kernel, checked bit for bit): self + (value * t1) / t2.
    p[i] = pi + (k.neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_step(std::span<float> param, std::span<const float> grad, AdamWState& st,
                const AdamWHyper& h) {
  const size_t n = param.size();
  if (grad.size() != n)
    fail(ErrorCode::kInvalidArgument, "adamw: param has {} elements, grad {}", n, grad.size());
  if (st.exp_avg.empty() && st.exp_avg_sq.empty() && st.step == 0) {
    st.exp_avg.assign(n, 0.0f);
    st.exp_avg_sq.assign(n, 0.0f);
  }
  if (st.exp_avg.size() != n || st.exp_avg_sq.size() != n)
    fail(ErrorCode::kInvalidArgument, "adamw: state has {} elements, param {}", st.exp_avg.size(),
         n);
  st.step += 1;
  // Python scalars are doubles; torch casts them to float when applied to a float tensor.
  AdamWConsts k;
  k.decay = h.weight_decay != 0 ? static_cast<float>(1.0 - h.lr * h.weight_decay) : 1.0f;
  k.w1 = static_cast<float>(1.0 - h.beta1);
  k.b2 = static_cast<float>(h.beta2);
  k.w2 = static_cast<float>(1.0 - h.beta2);
  const double step = static_cast<double>(st.step);
  const double bc1 = 1.0 - std::pow(h.beta1, step);
  const double bc2 = 1.0 - std::pow(h.beta2, step);
  k.neg_step_size = static_cast<float>(-(h.lr / bc1));
  k.bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));
  k.eps = static_cast<float>(h.eps);
  k.small_w1 = std::fabs(k.w1) < 0.5f;
  float* p = param.data();
  const float* g = grad.data();
  float* m = st.exp_avg.data();
  float* v = st.exp_avg_sq.data();
  // Element-wise over fixed chunks: the same bits with any thread count.
  const size_t chunks = (n + kParallelMin - 1) / kParallelMin;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t b = c * kParallelMin, e = std::min(n, b + kParallelMin);
    adamw_kernel(p + b, g + b, m + b, v + b, e - b, k);
  }
}

void AdamW::step(const std::string& name, std::span<float> param, std::span<const float> grad) {
  adamw_step(param, grad, states_[name], h_);
}

void AdamW::step(const std::string& name, std::span<float> param, std::span<const float> grad,
                 double weight_decay) {
  AdamWHyper h = h_;
  h.weight_decay = weight_decay;
  adamw_step(param, grad, states_[name], h);
}

const AdamWState* AdamW::state(std::string_view name) const {
  auto it = states_.find(std::string(name));
  return it == states_.end() ? nullptr : &it->second;
}

void AdamW::save(const fs::path& path) const {
  std::vector<TensorRef> refs;
  json steps = json::object();
  int64_t max_step = 0;
  for (const auto& [name, st] : states_) {
    auto bytes = [](const std::vector<float>& v) {
      return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                      v.size() * sizeof(float));
    };
    const int64_t n = static_cast<int64_t>(st.exp_avg.size());
    refs.push_back({"exp_avg." + name, DType::kF32, {n}, bytes(st.exp_avg)});
    refs.push_back({"exp_avg_sq." + name, DType::kF32, {n}, bytes(st.exp_avg_sq)});
    steps[name] = st.step;
    max_step = std::max(max_step, st.step);
  }
  write_safetensors(
      path, refs, {{"format", "pt"}, {"step", std::to_string(max_step)}, {"steps", steps.dump()}});
}

void AdamW::load(const fs::path& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const std::string origin = path.string();
  auto it = f.metadata().find("steps");
  if (it == f.metadata().end())
    fail(ErrorCode::kFormat, "{}: not an optimizer state (no \"steps\" metadata)", origin);
  const json steps = parse_json(it->second, origin + ": metadata \"steps\"");
  if (!steps.is_object())
    fail(ErrorCode::kFormat, "{}: metadata \"steps\" is not a JSON object", origin);
  std::map<std::string, AdamWState> states;
  for (const auto& [name, sv] : steps.items()) {
    if (!sv.is_number_integer() || sv.get<int64_t>() < 0)
      fail(ErrorCode::kFormat, "{}: step of \"{}\" is not a non-negative integer", origin, name);
    AdamWState st;
    st.step = sv.get<int64_t>();
    for (bool sq : {false, true}) {
      const TensorView& t = f.get((sq ? "exp_avg_sq." : "exp_avg.") + name);
      if (t.dtype != DType::kF32 || t.shape.size() != 1)
        fail(ErrorCode::kFormat, "{}: tensor {} must be 1-D F32", origin, t.name);
      (sq ? st.exp_avg_sq : st.exp_avg) = to_f32(t.dtype, t.data);
    }
    if (st.exp_avg.size() != st.exp_avg_sq.size())
      fail(ErrorCode::kFormat, "{}: exp_avg.{} and exp_avg_sq.{} differ in size", origin, name,
           name);
    states.emplace(name, std::move(st));
  }
  if (f.tensors().size() != 2 * states.size())
    fail(ErrorCode::kFormat, "{}: {} tensors for {} parameters in \"steps\"", origin,
         f.tensors().size(), states.size());
  states_ = std::move(states);
}

float grad_total_norm(std::span<const std::span<float>> grads) {
  // torch: per-tensor norms (float32), then the norm of the stacked norms.
  double total = 0;
  for (const auto& g : grads) {
    const double s = sum_squares(g);
    const float norm = static_cast<float>(std::sqrt(s));
    total += static_cast<double>(norm) * norm;
  }
  return static_cast<float>(std::sqrt(total));
}

float clip_grad_norm(std::span<const std::span<float>> grads, double max_norm) {
  const float total = grad_total_norm(grads);
  float coef = static_cast<float>(max_norm) / (total + 1e-6f);
  if (coef > 1.0f) coef = 1.0f;
  for (const auto& g : grads) {
    float* x = g.data();
    const size_t n = g.size();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (size_t i = 0; i < n; ++i) x[i] *= coef;
  }
  return total;
}

}  // namespace nnpipe
