#include "train/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "io/safetensors.h"

namespace nnpipe {

void adamw_step(Backend& be, Tensor& param, const Tensor& grad, AdamWState& st,
                const AdamWHyper& h) {
  const int64_t n = param.numel();
  if (grad.numel() != n)
    fail(ErrorCode::kInvalidArgument, "adamw: param has {} elements, grad {}", n, grad.numel());
  if (!st.exp_avg.defined() && !st.exp_avg_sq.defined() && st.step == 0) {
    st.exp_avg = be.zeros(DType::kF32, {n});
    st.exp_avg_sq = be.zeros(DType::kF32, {n});
  }
  if (!st.exp_avg.defined() || !st.exp_avg_sq.defined() || st.exp_avg.numel() != n ||
      st.exp_avg_sq.numel() != n)
    fail(ErrorCode::kInvalidArgument, "adamw: state has {} elements, param {}",
         st.exp_avg.defined() ? st.exp_avg.numel() : 0, n);
  st.step += 1;
  Tensor p = param.reshaped({n});  // views sharing storage: the moments are kept flat
  const Tensor g = grad.reshaped({n});
  be.adamw_step(p, g, st.exp_avg, st.exp_avg_sq, AdamWStep{h, st.step});
}

void AdamW::step(const std::string& name, Tensor& param, const Tensor& grad) {
  adamw_step(*be_, param, grad, states_[name], h_);
}

void AdamW::step(const std::string& name, Tensor& param, const Tensor& grad, double weight_decay) {
  AdamWHyper h = h_;
  h.weight_decay = weight_decay;
  adamw_step(*be_, param, grad, states_[name], h);
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
    // The moments' bytes are read in place: CPU storage (a device backend downloads them here).
    const int64_t n = st.exp_avg.numel();
    refs.push_back({"exp_avg." + name, DType::kF32, {n}, st.exp_avg.bytes()});
    refs.push_back({"exp_avg_sq." + name, DType::kF32, {n}, st.exp_avg_sq.bytes()});
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
      // to_f32 copies the mapped (possibly unaligned) bytes into an owned backend tensor.
      (sq ? st.exp_avg_sq : st.exp_avg) = be_->to_f32(Tensor::borrow(t.dtype, t.shape, t.data));
    }
    if (st.exp_avg.numel() != st.exp_avg_sq.numel())
      fail(ErrorCode::kFormat, "{}: exp_avg.{} and exp_avg_sq.{} differ in size", origin, name,
           name);
    states.emplace(name, std::move(st));
  }
  if (f.tensors().size() != 2 * states.size())
    fail(ErrorCode::kFormat, "{}: {} tensors for {} parameters in \"steps\"", origin,
         f.tensors().size(), states.size());
  states_ = std::move(states);
}

float grad_total_norm(Backend& be, std::span<const Tensor> grads) {
  // torch: per-tensor norms (float32), then the norm of the stacked norms.
  double total = 0;
  for (const Tensor& g : grads) {
    const float norm = static_cast<float>(std::sqrt(be.sq_norm(g)));
    total += static_cast<double>(norm) * norm;
  }
  return static_cast<float>(std::sqrt(total));
}

float clip_grad_norm(Backend& be, std::span<Tensor> grads, double max_norm) {
  const float total = grad_total_norm(be, grads);
  float coef = static_cast<float>(max_norm) / (total + 1e-6f);
  if (coef > 1.0f) coef = 1.0f;
  for (Tensor& g : grads) be.scale(g, coef);
  return total;
}

}  // namespace nnpipe
