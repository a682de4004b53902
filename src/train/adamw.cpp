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
  if (h.weight_decay != 0) {
    const float decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (size_t i = 0; i < n; ++i) param[i] = param[i] * decay;
  }
  const float w1 = static_cast<float>(1.0 - h.beta1);
  const float b2 = static_cast<float>(h.beta2);
  const float w2 = static_cast<float>(1.0 - h.beta2);
  const double step = static_cast<double>(st.step);
  const double bc1 = 1.0 - std::pow(h.beta1, step);
  const double bc2 = 1.0 - std::pow(h.beta2, step);
  const float neg_step_size = static_cast<float>(-(h.lr / bc1));
  const float bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));
  const float eps = static_cast<float>(h.eps);
  const bool small_w1 = std::fabs(w1) < 0.5f;
  float* exp_avg = st.exp_avg.data();
  float* exp_avg_sq = st.exp_avg_sq.data();
  // Element-wise: the same bits with any thread count.
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float g = grad[i];
    float& m = exp_avg[i];
    float& v = exp_avg_sq[i];
    // torch's vectorised lerp: fmadd(coeff, end - start, base).
    m = small_w1 ? std::fma(w1, g - m, m) : std::fma(w1 - 1.0f, g - m, g);
    // addcmul (torch CPU kernel, checked bit for bit): fma(value * t1, t2, self).
    v = std::fma(w2 * g, g, v * b2);
    // torch's CPU sqrt (MKL/Sleef) is not always correctly rounded (1 ulp off for ~0.6% of
    // inputs on AVX512 builds); ours is IEEE, so results agree to about an ulp, not bit for bit.
    const float denom = std::sqrt(v) / bc2_sqrt + eps;
    // addcdiv (torch CPU kernel, checked bit for bit): self + (value * t1) / t2.
    param[i] = param[i] + (neg_step_size * m) / denom;
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
