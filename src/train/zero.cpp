#include "train/zero.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace nnpipe {
namespace {

float* f32(Tensor& t) {
  return reinterpret_cast<float*>(t.raw());
}
const float* f32(const Tensor& t) {
  return reinterpret_cast<const float*>(t.raw());
}

// Flat elements gathered per all_gather call (per rank): bounds the staging buffer at
// world x this many floats whatever the model's size.
constexpr int64_t kGatherPiece = int64_t{4} << 20;

}  // namespace

ShardedAdamW::ShardedAdamW(Backend& be, AdamWHyper h, dist::Collective& comm,
                           const std::map<std::string, Tensor>& params)
    : be_(be), h_(h), comm_(comm) {
  for (const auto& [name, t] : params) {
    params_.push_back({name, n_, t.numel(), 0, 0, {}, 0});
    n_ += t.numel();
  }
  const int64_t w = comm.world();
  chunk_ = (n_ + w - 1) / w;
  begin_ = std::min(n_, comm.rank() * chunk_);
  end_ = std::min(n_, begin_ + chunk_);
  for (Param& p : params_) {
    p.lo = std::clamp(begin_ - p.offset, int64_t{0}, p.numel);
    p.hi = std::clamp(end_ - p.offset, int64_t{0}, p.numel);
    if (p.hi > p.lo) {
      p.st.exp_avg = be.zeros(DType::kF32, {p.hi - p.lo});
      p.st.exp_avg_sq = be.zeros(DType::kF32, {p.hi - p.lo});
    }
  }
}

void ShardedAdamW::copy_flat(std::map<std::string, Tensor>& params, int64_t a, int64_t b,
                             float* buf, bool to_buf) {
  // The first parameter that ends after a.
  auto it = std::upper_bound(params_.begin(), params_.end(), a,
                             [](int64_t x, const Param& p) { return x < p.offset + p.numel; });
  for (; it != params_.end() && it->offset < b; ++it) {
    const int64_t lo = std::max(a, it->offset), hi = std::min(b, it->offset + it->numel);
    if (hi <= lo) continue;
    float* prm = f32(params.at(it->name)) + (lo - it->offset);
    float* at = buf + (lo - a);
    const size_t bytes = static_cast<size_t>(hi - lo) * sizeof(float);
    if (to_buf)
      std::memcpy(at, prm, bytes);
    else
      std::memcpy(prm, at, bytes);
  }
}

void ShardedAdamW::step(std::map<std::string, Tensor>& params, std::span<const Tensor> grads,
                        std::span<const double> weight_decay) {
  if (grads.size() != params_.size() || weight_decay.size() != params_.size())
    fail(ErrorCode::kInternal, "zero-1: {} gradients for {} parameters", grads.size(),
         params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    ++p.steps;
    if (p.hi <= p.lo) continue;
    // Views of the owned elements: AdamW is element-wise, so a slice updates exactly as the whole.
    Tensor prm = params.at(p.name).reshaped({p.numel}).rows(p.lo, p.hi - p.lo);
    const Tensor g = grads[i].reshaped({p.numel}).rows(p.lo, p.hi - p.lo);
    AdamWHyper h = h_;
    h.weight_decay = weight_decay[i];
    p.st.step = p.steps - 1;  // adamw_step counts this update
    adamw_step(be_, prm, g, p.st, h);
  }
  // Every rank's updated elements to every rank, kGatherPiece per rank at a time.
  const int w = comm_.world();
  const int64_t piece = std::min(chunk_, kGatherPiece);
  std::vector<float> buf(static_cast<size_t>(piece * w));
  for (int64_t k = 0; k < chunk_; k += piece) {
    const int64_t len = std::min(piece, chunk_ - k);
    // Rank r's part of this round is flat [r*chunk + k, r*chunk + k + len) (clipped to N).
    auto range = [&](int r) {
      const int64_t a = std::min(n_, r * chunk_ + k);
      return std::pair<int64_t, int64_t>(a, std::min(n_, a + len));
    };
    std::fill(buf.begin(), buf.end(), 0.0f);
    const auto [a, b] = range(comm_.rank());
    copy_flat(params, a, b, buf.data() + comm_.rank() * piece, true);
    comm_.all_gather(std::span<float>(buf.data(), static_cast<size_t>(piece * w)));
    for (int r = 0; r < w; ++r)
      if (r != comm_.rank()) {
        const auto [ra, rb] = range(r);
        copy_flat(params, ra, rb, buf.data() + r * piece, false);
      }
  }
}

void ShardedAdamW::gather(AdamW& full) {
  const bool root = comm_.rank() == 0;
  std::vector<AdamWState> states(params_.size());
  if (root)
    for (size_t i = 0; i < params_.size(); ++i) {
      states[i].exp_avg = be_.zeros(DType::kF32, {params_[i].numel});
      states[i].exp_avg_sq = be_.zeros(DType::kF32, {params_[i].numel});
      states[i].step = params_[i].steps;
    }
  // Rank r's moments [m..., v...] of flat [r*chunk, ...) to everyone (rank 0 keeps them).
  std::vector<float> buf(static_cast<size_t>(2 * chunk_));
  for (int r = 0; r < comm_.world(); ++r) {
    const int64_t a = std::min(n_, r * chunk_), b = std::min(n_, a + chunk_), len = b - a;
    if (r == comm_.rank())
      for (const Param& p : params_)
        if (p.hi > p.lo) {
          const int64_t at = p.offset + p.lo - a;
          std::memcpy(buf.data() + at, f32(p.st.exp_avg), (p.hi - p.lo) * sizeof(float));
          std::memcpy(buf.data() + len + at, f32(p.st.exp_avg_sq), (p.hi - p.lo) * sizeof(float));
        }
    if (r != 0)
      comm_.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()),
                                         static_cast<size_t>(2 * len) * sizeof(float)),
                      r);
    if (!root) continue;
    for (size_t i = 0; i < params_.size(); ++i) {
      const Param& p = params_[i];
      const int64_t lo = std::max(a, p.offset), hi = std::min(b, p.offset + p.numel);
      if (hi <= lo) continue;
      std::memcpy(f32(states[i].exp_avg) + (lo - p.offset), buf.data() + (lo - a),
                  (hi - lo) * sizeof(float));
      std::memcpy(f32(states[i].exp_avg_sq) + (lo - p.offset), buf.data() + len + (lo - a),
                  (hi - lo) * sizeof(float));
    }
  }
  if (root)
    for (size_t i = 0; i < params_.size(); ++i) full.set_state(params_[i].name, states[i]);
}

void ShardedAdamW::scatter(const AdamW& full) {
  const bool root = comm_.rank() == 0;
  // Steps first (rank 0's), as JSON-free int64s in parameter order.
  std::vector<int64_t> steps(params_.size(), 0);
  if (root)
    for (size_t i = 0; i < params_.size(); ++i) {
      const AdamWState* st = full.state(params_[i].name);
      if (!st || st->exp_avg.numel() != params_[i].numel)
        fail(ErrorCode::kFormat, "optimizer state: no state of {} elements for {}",
             params_[i].numel, params_[i].name);
      steps[i] = st->step;
    }
  comm_.broadcast(
      std::span<uint8_t>(reinterpret_cast<uint8_t*>(steps.data()), steps.size() * sizeof(int64_t)),
      0);
  for (size_t i = 0; i < params_.size(); ++i) params_[i].steps = steps[i];
  std::vector<float> buf(static_cast<size_t>(2 * chunk_));
  for (int r = 0; r < comm_.world(); ++r) {
    const int64_t a = std::min(n_, r * chunk_), b = std::min(n_, a + chunk_), len = b - a;
    if (root)
      for (const Param& p : params_) {
        const int64_t lo = std::max(a, p.offset), hi = std::min(b, p.offset + p.numel);
        if (hi <= lo) continue;
        const AdamWState* st = full.state(p.name);
        std::memcpy(buf.data() + (lo - a), f32(st->exp_avg) + (lo - p.offset),
                    (hi - lo) * sizeof(float));
        std::memcpy(buf.data() + len + (lo - a), f32(st->exp_avg_sq) + (lo - p.offset),
                    (hi - lo) * sizeof(float));
      }
    if (r != 0)
      comm_.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()),
                                         static_cast<size_t>(2 * len) * sizeof(float)),
                      0);
    if (r != comm_.rank()) continue;
    for (Param& p : params_)
      if (p.hi > p.lo) {
        const int64_t at = p.offset + p.lo - a;
        std::memcpy(f32(p.st.exp_avg), buf.data() + at, (p.hi - p.lo) * sizeof(float));
        std::memcpy(f32(p.st.exp_avg_sq), buf.data() + len + at, (p.hi - p.lo) * sizeof(float));
      }
  }
}

}  // namespace nnpipe
