// The backend op harness (after llama.cpp's test-backend-ops): every op of backend.h, for every
// dtype it supports, runs on every backend that is built and is compared with a scalar reference
// written here (normalised error ||out - ref|| / ||ref||, tolerance stated per case), and every
// backward op is checked against central finite differences of its forward on each backend
// (and, for a backend other than the CPU, against the CPU's gradients).
//
// Adding a backend: one line in backends(). Adding an op: an OpCase in op_cases() (inputs, the
// call, the reference) and, for a backward, a GradCase in grad_cases(); BackendOps.EveryOpHasACase
// fails until every virtual op in backend.h has one.
//
// Finite differences: L = sum(out * R) for a fixed random R (so dout = R). The forward runs in
// fp32, so with step h = 1e-2 the numeric derivative carries ~1e-7 * |L| / h rounding noise plus
// O(h^2) truncation; a relative error of 1e-2 separates that noise from a wrong formula (errors
// of order 1).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <string>

#include "backend/arena.h"
#include "backend/backend.h"
#include "backend/device.h"
#include "core/error.h"
#include "core/file.h"
#include "core/half.h"
#include "finite_diff.h"
#include "quant/ggml_quants.h"

namespace nnpipe {
namespace {

// --- the backends under test ---
struct BuiltBackend {
  const char* name;
  Backend& (*get)();
};
// The CUDA backend joins when it is built and a device is present (BackendOps.CudaBackend says
// when it was skipped).
const std::vector<BuiltBackend>& backends() {
  static const std::vector<BuiltBackend> v = [] {
    std::vector<BuiltBackend> b = {
        {"cpu", &cpu_backend},  // first: the reference for the others' gradients
    };
    if (cuda_available()) b.push_back({"cuda", &cuda_backend});
    return b;
  }();
  return v;
}

// Host <-> backend copies through the backend's memory API (a deep copy on the CPU, which keeps
// an op from touching the reference's inputs).
Tensor upload(Backend& be, const Tensor& host) {
  return be.upload(host);
}
Tensor download(Backend& be, const Tensor& t) {
  if (t.device() == Device::kCPU && be.device() != Device::kCPU) return t;  // a host result
  Tensor host = Tensor::zeros(t.dtype(), t.shape());
  be.synchronize();
  be.download(std::span<uint8_t>(host.raw(), host.nbytes()), t);
  return host;
}

using Tensors = std::vector<Tensor>;
using Values = std::vector<double>;

// Any dtype a case uses, as doubles.
Values values(const Tensor& t) {
  Values v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    const size_t k = static_cast<size_t>(i);
    switch (t.dtype()) {
      case DType::kU8:
        v[k] = t.raw()[i];
        break;
      case DType::kI32:
        v[k] = reinterpret_cast<const int32_t*>(t.raw())[i];
        break;
      case DType::kF64:
        v[k] = reinterpret_cast<const double*>(t.raw())[i];
        break;
      default:
        v[k] = t.get(i);
    }
  }
  return v;
}

// ||a - b|| / ||b||; ||a - b|| when b is all zeros.
double normalised_error(const Values& a, const Values& b) {
  double d2 = 0, b2 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d2 += (a[i] - b[i]) * (a[i] - b[i]);
    b2 += b[i] * b[i];
  }
  return b2 > 0 ? std::sqrt(d2 / b2) : std::sqrt(d2);
}

// Deterministic inputs: seeded normal values in any float dtype, ids, scalars.
Tensor randn(std::vector<int64_t> shape, uint32_t seed, float scale = 1.0f,
             DType dtype = DType::kF32) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, d(rng));
  return t;
}
Tensor ints(std::vector<int32_t> v, std::vector<int64_t> shape) {
  return Tensor::from_i32(v, std::move(shape));
}
Tensor f64(std::vector<double> v) {
  Tensor t = Tensor::zeros(DType::kF64, {static_cast<int64_t>(v.size())});
  std::memcpy(t.raw(), v.data(), v.size() * sizeof(double));
  return t;
}
Tensor like(Backend& be, const Tensor& t, DType dtype = DType::kF32) {
  return be.zeros(dtype, t.shape());
}
std::string dtype_tag(DType d) {
  std::string s(dtype_name(d));
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// --- forward cases: the op on each backend against a scalar reference ---
struct OpCase {
  std::string op;                                          // the Backend method (coverage check)
  std::string name;                                        // unique, [a-z0-9_]
  double tol;                                              // max normalised error of every output
  std::function<Tensors()> inputs;                         // host inputs
  std::function<Tensors(Backend&, Tensors&)> run;          // backend inputs -> backend outputs
  std::function<std::vector<Values>(const Tensors&)> ref;  // host inputs -> expected outputs
};

// --- backward cases: finite differences of L = sum(forward * R) ---
struct GradCase {
  std::string op;  // the backward Backend method
  std::string name;
  std::function<Tensors()> inputs;
  std::vector<size_t> wrt;                            // inputs whose gradients are checked
  std::function<Tensor(Backend&, Tensors&)> forward;  // backend output
  // Accumulates dL/d inputs[wrt[k]] into grads[k] (pre-filled: checks the += convention).
  std::function<void(Backend&, Tensors&, const Tensor& dout, Tensors& grads)> backward;
  double h = 1e-2, tol = 1e-2;
  int64_t stride = 1;  // >1: every stride-th element (large shapes)
};

// --- scalar references ---
double val(const Tensor& t, int64_t i) {
  return t.get(i);
}

Values ref_matmul(const Tensor& x, const Tensor& w, const Tensor* b) {
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  const std::vector<float> xf = x.to_f32(), wf = w.to_f32();
  Values out(static_cast<size_t>(n * o));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < o; ++c) {
      double s = b ? val(*b, c) : 0.0;
      for (int64_t k = 0; k < in; ++k)
        s += static_cast<double>(xf[static_cast<size_t>(i * in + k)]) *
             wf[static_cast<size_t>(c * in + k)];
      out[static_cast<size_t>(i * o + c)] = s;
    }
  return out;
}

// y + s * (x*mask) A^T B^T and xa = (x*mask) A^T.
std::vector<Values> ref_lora(const Tensor& y, const Tensor& x, const Tensor* keep, float ks,
                             const Tensor& a, const Tensor& b, float s) {
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  Values out = values(y), xa(static_cast<size_t>(n * r));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double t = 0;
      for (int64_t k = 0; k < in; ++k)
        t += val(x, i * in + k) * (keep ? ks * keep->raw()[i * in + k] : 1.0) * val(a, j * in + k);
      xa[static_cast<size_t>(i * r + j)] = t;
      for (int64_t c = 0; c < o; ++c)
        out[static_cast<size_t>(i * o + c)] += s * t * val(b, c * r + j);
    }
  return {out, xa};
}

std::vector<Values> ref_rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  const int64_t n = x.dim(0), c = x.dim(1);
  Values out(static_cast<size_t>(n * c)), rstd(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t k = 0; k < c; ++k) ss += val(x, i * c + k) * val(x, i * c + k);
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(c) + eps);
    rstd[static_cast<size_t>(i)] = r;
    for (int64_t k = 0; k < c; ++k)
      out[static_cast<size_t>(i * c + k)] = val(w, k) * val(x, i * c + k) * r;
  }
  return {out, rstd};
}

// NEOX rotate_half: pair (i, i + D/2) rotated by pos * theta^(-2i/D).
Values ref_rope(const Tensor& x, const Tensor& pos, double theta) {
  const int64_t bt = x.dim(0) * x.dim(1), h = x.dim(2), d = x.dim(3), half = d / 2;
  const Values p = values(pos);
  Values out(static_cast<size_t>(x.numel()));
  for (int64_t r = 0; r < bt; ++r)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t i = 0; i < half; ++i) {
        const double ang = p[static_cast<size_t>(r)] *
                           std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
        const int64_t base = (r * h + hh) * d;
        const double x1 = val(x, base + i), x2 = val(x, base + i + half);
        out[static_cast<size_t>(base + i)] = x1 * std::cos(ang) - x2 * std::sin(ang);
        out[static_cast<size_t>(base + i + half)] = x2 * std::cos(ang) + x1 * std::sin(ang);
      }
  return out;
}

// Causal GQA attention with row lengths: softmax(q k^T / sqrt(D)) over keys j <= t, j < len.
std::vector<Values> ref_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& lengths) {
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), d = q.dim(3), kv = k.dim(2);
  const Values len = values(lengths);
  Values out(static_cast<size_t>(q.numel())), att(static_cast<size_t>(b * h * t * t), 0.0);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hh = 0; hh < h; ++hh) {
      const int64_t kh = hh / (h / kv);
      for (int64_t i = 0; i < t; ++i) {
        const int64_t last =
            std::min<int64_t>(i, static_cast<int64_t>(len[static_cast<size_t>(bi)]) - 1);
        Values s(static_cast<size_t>(last + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot +=
                val(q, ((bi * t + i) * h + hh) * d + e) * val(k, ((bi * t + j) * kv + kh) * d + e);
          s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t j = 0; j <= last; ++j)
          att[static_cast<size_t>(((bi * h + hh) * t + i) * t + j)] =
              s[static_cast<size_t>(j)] / sum;
        for (int64_t e = 0; e < d; ++e) {
          double o = 0;
          for (int64_t j = 0; j <= last; ++j)
            o += s[static_cast<size_t>(j)] / sum * val(v, ((bi * t + j) * kv + kh) * d + e);
          out[static_cast<size_t>(((bi * t + i) * h + hh) * d + e)] = o;
        }
      }
    }
  return {out, att};
}

// torch.optim.AdamW in double, textbook form.
std::vector<Values> ref_adamw(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                              const AdamWStep& s) {
  Values po = values(p), mo = values(m), vo = values(v);
  const double bc1 = 1 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bc2 = 1 - std::pow(s.beta2, static_cast<double>(s.step));
  for (size_t i = 0; i < po.size(); ++i) {
    const double gi = val(g, static_cast<int64_t>(i));
    po[i] *= 1 - s.lr * s.weight_decay;
    mo[i] = s.beta1 * mo[i] + (1 - s.beta1) * gi;
    vo[i] = s.beta2 * vo[i] + (1 - s.beta2) * gi * gi;
    po[i] -= s.lr / bc1 * mo[i] / (std::sqrt(vo[i]) / std::sqrt(bc2) + s.eps);
  }
  return {po, mo, vo};
}

// The dropout stream as documented in backend.h / backend/optim.h, written out independently:
// SplitMix64 with state splitmix64(seed), output number counter+1; dropped iff the top 53 bits
// as a uniform in [0, 1) are < p.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
Values ref_dropout(int64_t n, double p, uint64_t seed, uint64_t offset) {
  Values out(static_cast<size_t>(n));
  const uint64_t state = mix64(seed);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t z =
        mix64(state + (offset + static_cast<uint64_t>(i) + 1) * 0x9e3779b97f4a7c15ull);
    out[static_cast<size_t>(i)] = static_cast<double>(z >> 11) * 0x1.0p-53 < p ? 0.0 : 1.0;
  }
  return out;
}

Tensor mask_pattern(int64_t n, int64_t in) {  // (n, in) u8, every third input dropped
  Tensor keep = Tensor::zeros(DType::kU8, {n, in});
  for (int64_t i = 0; i < keep.numel(); ++i) keep.raw()[i] = i % 3 == 1 ? 0 : 1;
  return keep;
}

constexpr std::array<DType, 3> kFloatDtypes = {DType::kF32, DType::kF16, DType::kBF16};

// --- GGML-typed weights (the engine's) ---
constexpr std::array<DType, 11> kEngineDtypes = {
    DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1,
    DType::kQ5_0, DType::kQ5_1, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

// A (rows, cols) weight of dtype d: normal values quantized by the GGML quantizers.
Tensor weight(DType d, std::vector<int64_t> shape, uint32_t seed, float scale = 1.0f) {
  const Tensor f = randn(shape, seed, scale);
  const std::vector<uint8_t> q = quantize_rows(d, f.to_f32(), shape.back());
  Tensor t = Tensor::zeros(d, std::move(shape));
  std::memcpy(t.raw(), q.data(), q.size());
  return t;
}
// The values a weight stands for (dequantized; gguf-py's, see test_quants.py).
Values deq(const Tensor& w) {
  std::vector<float> f(static_cast<size_t>(w.numel()));
  dequantize_rows(w.dtype(), w.bytes(), f);
  return Values(f.begin(), f.end());
}
// x (n, in) times w^T with w given as values (o, in).
Values ref_matmul_values(const Tensor& x, const Values& w, int64_t o) {
  const int64_t n = x.dim(0), in = x.dim(1);
  Values out(static_cast<size_t>(n * o));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < o; ++c) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += val(x, i * in + k) * w[static_cast<size_t>(c * in + k)];
      out[static_cast<size_t>(i * o + c)] = s;
    }
  return out;
}
// kGgml matmul tolerance by weight type: the activation rounding (see the cases).
double ggml_tol(DType d) {
  switch (d) {
    case DType::kF32:
      return 2e-6;
    case DType::kF16:
      return 1e-3;
    case DType::kBF16:
      return 8e-3;
    default:
      return 2e-2;
  }
}

std::vector<OpCase> make_op_cases() {
  std::vector<OpCase> c;
  // memory
  for (DType d : {DType::kF32, DType::kU8, DType::kI32})
    c.push_back({"zeros", "zeros_" + dtype_tag(d), 0, [] { return Tensors{}; },
                 [d](Backend& be, Tensors&) {
                   return Tensors{be.zeros(d, {3, 5})};
                 },
                 [](const Tensors&) { return std::vector<Values>{Values(15, 0.0)}; }});
  for (DType d : {DType::kF32, DType::kU8})
    c.push_back({"zero", "zero_" + dtype_tag(d), 0,
                 [d] {
                   Tensor t = Tensor::zeros(d, {4, 3});
                   std::memset(t.raw(), 0x3c, t.nbytes());
                   return Tensors{t};
                 },
                 [](Backend& be, Tensors& in) {
                   be.zero(in[0]);
                   return Tensors{in[0]};
                 },
                 [](const Tensors&) { return std::vector<Values>{Values(12, 0.0)}; }});
  for (DType d : kFloatDtypes)
    c.push_back({"to_f32", "to_f32_" + dtype_tag(d), 0,
                 [d] {
                   return Tensors{randn({5, 7}, 1, 1, d)};
                 },
                 [](Backend& be, Tensors& in) { return Tensors{be.to_f32(in[0])}; },
                 [](const Tensors& in) { return std::vector<Values>{values(in[0])}; }});
  // matmul: every weight dtype; 300 x 4096 spans two of the half-weight conversion chunks.
  for (DType d : kFloatDtypes)
    for (bool big : {false, true})
      c.push_back({"matmul", fmt::format("matmul_{}_{}", dtype_tag(d), big ? "chunked" : "small"),
                   2e-6,
                   [d, big] {
                     const int64_t n = 3, in = big ? 4096 : 5, o = big ? 300 : 4;
                     return Tensors{randn({n, in}, 1, big ? 0.02f : 1.0f), randn({o, in}, 2, 1, d),
                                    randn({o}, 3)};
                   },
                   [](Backend& be, Tensors& in) {
                     Tensor out = be.zeros(DType::kF32, {in[0].dim(0), in[1].dim(0)});
                     be.matmul(out, in[0], in[1], &in[2]);
                     return Tensors{out};
                   },
                   [](const Tensors& in) {
                     return std::vector<Values>{ref_matmul(in[0], in[1], &in[2])};
                   }});
  c.push_back(
      {"matmul", "matmul_f32_nobias", 2e-6,
       [] {
         return Tensors{randn({6, 9}, 4), randn({7, 9}, 5)};
       },
       [](Backend& be, Tensors& in) {
         Tensor out = be.zeros(DType::kF32, {6, 7});
         be.matmul(out, in[0], in[1], nullptr);
         return Tensors{out};
       },
       [](const Tensors& in) { return std::vector<Values>{ref_matmul(in[0], in[1], nullptr)}; }});
  // matmul_backward on the chunked shapes (too large for finite differences): dx (N, I) = dout W,
  // dw (O, I) = dout^T x (f32 weights only: half ones are a frozen base), db = sum_n dout.
  for (DType d : kFloatDtypes)
    c.push_back(
        {"matmul_backward", "matmul_backward_chunked_" + dtype_tag(d), 2e-6,
         [d] {
           return Tensors{randn({3, 4096}, 1, 0.02f), randn({300, 4096}, 2, 1, d),
                          randn({3, 300}, 3)};
         },
         [d](Backend& be, Tensors& in) {
           Tensor dx = like(be, in[0]), dw = be.zeros(DType::kF32, in[1].shape()),
                  db = be.zeros(DType::kF32, {300});
           be.matmul_backward(&dx, d == DType::kF32 ? &dw : nullptr, &db, in[2], in[0], in[1]);
           return d == DType::kF32 ? Tensors{dx, dw, db} : Tensors{dx, db};
         },
         [d](const Tensors& in) {
           const std::vector<float> x = in[0].to_f32(), w = in[1].to_f32(), g = in[2].to_f32();
           Values dx(3 * 4096, 0.0), dw(300 * 4096, 0.0), db(300, 0.0);
           for (size_t i = 0; i < 3; ++i)
             for (size_t o = 0; o < 300; ++o) {
               const double go = g[i * 300 + o];
               db[o] += go;
               for (size_t k = 0; k < 4096; ++k) {
                 dx[i * 4096 + k] += go * w[o * 4096 + k];
                 dw[o * 4096 + k] += go * x[i * 4096 + k];
               }
             }
           return d == DType::kF32 ? std::vector<Values>{dx, dw, db} : std::vector<Values>{dx, db};
         }});
  // kTorchBf16 on a bf16 weight (opt-in LoRA base): the f32 operand rounded to bf16 (nearest
  // even), f32 accumulation; the reference is double on the rounded operand, so 2e-6 leaves room
  // for f32 summation only (the unrounded operand is ~1e-3 away). I = 1100 crosses a K block.
  auto bf16_round = [](const Tensor& t) {
    Tensor r = Tensor::zeros(DType::kF32, t.shape());
    for (int64_t i = 0; i < t.numel(); ++i) r.set(i, bf16_to_f32(f32_to_bf16(t.get(i))));
    return r;
  };
  c.push_back({"matmul", "matmul_bf16_torchbf16", 2e-6,
               [] {
                 return Tensors{randn({19, 1100}, 1), randn({70, 1100}, 2, 0.05f, DType::kBF16),
                                randn({70}, 3)};
               },
               [](Backend& be, Tensors& in) {
                 Tensor out = be.zeros(DType::kF32, {19, 70});
                 be.matmul(out, in[0], in[1], &in[2], Numerics::kTorchBf16);
                 return Tensors{out};
               },
               [bf16_round](const Tensors& in) {
                 return std::vector<Values>{ref_matmul(bf16_round(in[0]), in[1], &in[2])};
               }});
  c.push_back(
      {"matmul_backward", "matmul_backward_bf16_torchbf16", 2e-6,
       [] {
         return Tensors{randn({19, 70}, 1), randn({1100, 70}, 2, 0.05f, DType::kBF16),
                        randn({19, 1100}, 3)};
       },
       [](Backend& be, Tensors& in) {
         Tensor dx = like(be, in[0]);
         be.matmul_backward(&dx, nullptr, nullptr, in[2], in[0], in[1], Numerics::kTorchBf16);
         return Tensors{dx};
       },
       [bf16_round](const Tensors& in) {
         // dx (N, I) = bf16(dout) (N, O) W (O, I) = bf16(dout) (W^T)^T
         const Tensor g = bf16_round(in[2]);
         const int64_t n = 19, o = 1100, i = 70;
         Values dx(static_cast<size_t>(n * i), 0.0);
         for (int64_t r = 0; r < n; ++r)
           for (int64_t k = 0; k < o; ++k)
             for (int64_t c2 = 0; c2 < i; ++c2)
               dx[static_cast<size_t>(r * i + c2)] += g.get(r * o + k) * in[1].get(k * i + c2);
         return std::vector<Values>{dx};
       }});
  for (bool masked : {false, true})
    c.push_back(
        {"lora_forward", masked ? "lora_forward_dropout" : "lora_forward", 2e-6,
         [] {
           return Tensors{randn({3, 5}, 6), randn({3, 6}, 7), randn({2, 6}, 8), randn({5, 2}, 9),
                          mask_pattern(3, 6)};
         },
         [masked](Backend& be, Tensors& in) {
           Tensor xa = be.zeros(DType::kF32, {3, 2});
           be.lora_forward(in[0], xa, in[1], masked ? &in[4] : nullptr, 2.0f, in[2], in[3], 1.5f);
           return Tensors{in[0], xa};
         },
         [masked](const Tensors& in) {
           return ref_lora(in[0], in[1], masked ? &in[4] : nullptr, 2.0f, in[2], in[3], 1.5f);
         }});
  c.push_back({"rmsnorm", "rmsnorm", 2e-6,
               [] {
                 return Tensors{randn({4, 64}, 10), randn({64}, 11)};
               },
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]), rstd = be.zeros(DType::kF32, {4});
                 be.rmsnorm(out, rstd, in[0], in[1], 1e-6f);
                 return Tensors{out, rstd};
               },
               [](const Tensors& in) { return ref_rmsnorm(in[0], in[1], 1e-6); }});
  // f32 angles (transformers' inv_freq) against double ones: ~1e-6 at these positions.
  c.push_back(
      {"rope", "rope", 1e-5,
       [] {
         return Tensors{randn({2, 3, 2, 8}, 12), ints({0, 1, 2, 5, 17, 40}, {2, 3})};
       },
       [](Backend& be, Tensors& in) {
         Tensor out = like(be, in[0]);
         be.rope(out, in[0], in[1], 10000.0);
         return Tensors{out};
       },
       [](const Tensors& in) { return std::vector<Values>{ref_rope(in[0], in[1], 10000.0)}; }});
  c.push_back({"attention", "attention_gqa_padded", 2e-6,
               [] {
                 return Tensors{randn({2, 5, 4, 8}, 13), randn({2, 5, 2, 8}, 14),
                                randn({2, 5, 2, 8}, 15), ints({5, 3}, {2})};
               },
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]), att = be.zeros(DType::kF32, {2, 4, 5, 5});
                 be.attention(out, att, in[0], in[1], in[2], in[3]);
                 return Tensors{out, att};
               },
               [](const Tensors& in) { return ref_attention(in[0], in[1], in[2], in[3]); }});
  c.push_back({"swiglu", "swiglu", 2e-6,
               [] {
                 return Tensors{randn({3, 10}, 16, 2), randn({3, 10}, 17)};
               },
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]);
                 be.swiglu(out, in[0], in[1]);
                 return Tensors{out};
               },
               [](const Tensors& in) {
                 Values o(30);
                 for (int64_t i = 0; i < 30; ++i)
                   o[static_cast<size_t>(i)] =
                       val(in[0], i) / (1 + std::exp(-val(in[0], i))) * val(in[1], i);
                 return std::vector<Values>{o};
               }});
  for (DType d : kFloatDtypes)
    c.push_back({"embedding", "embedding_" + dtype_tag(d), 0,
                 [d] {
                   return Tensors{randn({6, 4}, 18, 1, d), ints({2, 0, 5, 2}, {4})};
                 },
                 [](Backend& be, Tensors& in) {
                   Tensor out = be.zeros(DType::kF32, {4, 4});
                   be.embedding(out, in[1], in[0]);
                   return Tensors{out};
                 },
                 [](const Tensors& in) {
                   Values o;
                   for (int32_t id : {2, 0, 5, 2})
                     for (int64_t k = 0; k < 4; ++k) o.push_back(val(in[0], id * 4 + k));
                   return std::vector<Values>{o};
                 }});
  c.push_back({"cross_entropy", "cross_entropy_ignore_index", 1e-9,
               [] {
                 return Tensors{randn({4, 6}, 19, 2), ints({2, kIgnoreIndex, 5, 0}, {4})};
               },
               [](Backend& be, Tensors& in) {
                 Tensor loss = be.zeros(DType::kF64, {2});
                 be.cross_entropy(loss, in[0], in[1]);
                 return Tensors{loss};
               },
               [](const Tensors& in) {
                 double s = 0;
                 for (int64_t i : {0, 2, 3}) {
                   double z = 0;
                   for (int64_t j = 0; j < 6; ++j) z += std::exp(val(in[0], i * 6 + j));
                   s += std::log(z) -
                        val(in[0],
                            i * 6 + static_cast<int64_t>(values(in[1])[static_cast<size_t>(i)]));
                 }
                 return std::vector<Values>{{s / 3, 3}};
               }});
  c.push_back({"cross_entropy", "cross_entropy_all_ignored", 0,
               [] {
                 return Tensors{randn({2, 6}, 19), ints({kIgnoreIndex, kIgnoreIndex}, {2})};
               },
               [](Backend& be, Tensors& in) {
                 Tensor loss = be.zeros(DType::kF64, {2});
                 be.cross_entropy(loss, in[0], in[1]);
                 return Tensors{loss};
               },
               [](const Tensors&) {
                 return std::vector<Values>{{0, 0}};
               }});
  c.push_back({"add", "add", 0,
               [] {
                 return Tensors{randn({3, 7}, 20), randn({3, 7}, 21)};
               },
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]);
                 be.add(out, in[0], in[1]);
                 return Tensors{out};
               },
               [](const Tensors& in) {
                 Values a = values(in[0]), b = values(in[1]);
                 for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(a[i] + b[i]);
                 return std::vector<Values>{a};
               }});
  c.push_back({"accumulate", "accumulate", 0,
               [] {
                 return Tensors{randn({3, 7}, 22), randn({3, 7}, 23)};
               },
               [](Backend& be, Tensors& in) {
                 be.accumulate(in[0], in[1]);
                 return Tensors{in[0]};
               },
               [](const Tensors& in) {
                 Values a = values(in[0]), b = values(in[1]);
                 for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(a[i] + b[i]);
                 return std::vector<Values>{a};
               }});
  // Optimizer ops. 200,000 elements: several sq_norm / parallel chunks.
  c.push_back({"axpy", "axpy", 0,
               [] {
                 return Tensors{randn({200000}, 24), randn({200000}, 25)};
               },
               [](Backend& be, Tensors& in) {
                 be.axpy(in[0], 0.37f, in[1]);
                 return Tensors{in[0]};
               },
               [](const Tensors& in) {  // float product and float sum: exact
                 Values y = values(in[0]), x = values(in[1]);
                 for (size_t i = 0; i < y.size(); ++i)
                   y[i] = static_cast<float>(y[i] + static_cast<float>(0.37f * x[i]));
                 return std::vector<Values>{y};
               }});
  c.push_back({"scale", "scale", 0, [] { return Tensors{randn({200000}, 26)}; },
               [](Backend& be, Tensors& in) {
                 be.scale(in[0], -0.61f);
                 return Tensors{in[0]};
               },
               [](const Tensors& in) {
                 Values y = values(in[0]);
                 for (double& v : y) v = static_cast<float>(v * -0.61f);
                 return std::vector<Values>{y};
               }});
  c.push_back({"sq_norm", "sq_norm", 1e-13, [] { return Tensors{randn({200001}, 27)}; },
               [](Backend& be, Tensors& in) { return Tensors{f64({be.sq_norm(in[0])})}; },
               [](const Tensors& in) {
                 double s = 0;
                 for (double v : values(in[0])) s += v * v;
                 return std::vector<Values>{{s}};
               }});
  // Both lerp branches of torch's kernel (beta1 0.9: w1 < 0.5; beta1 0.3: w1 >= 0.5), weight
  // decay on and off, first and later steps. f32 against the double textbook formula.
  for (const AdamWStep s :
       {AdamWStep{{1e-2, 0.9, 0.999, 1e-8, 0.1}, 1}, AdamWStep{{3e-3, 0.3, 0.99, 1e-6, 0.0}, 7}})
    c.push_back(
        {"adamw_step", fmt::format("adamw_step_beta1_{}", s.beta1 == 0.9 ? "09" : "03"), 2e-6,
         [] {
           Tensor v = randn({70000}, 31, 0.1f);
           for (int64_t i = 0; i < v.numel(); ++i) v.set(i, v.get(i) * v.get(i));
           return Tensors{randn({70000}, 28), randn({70000}, 29), randn({70000}, 30, 0.1f), v};
         },
         [s](Backend& be, Tensors& in) {
           be.adamw_step(in[0], in[1], in[2], in[3], s);
           return Tensors{in[0], in[2], in[3]};
         },
         [s](const Tensors& in) { return ref_adamw(in[0], in[1], in[2], in[3], s); }});
  // Masks: exactly the documented stream, for several p, seeds and counter offsets.
  struct MaskDraw {
    double p;
    uint64_t seed, offset;
  };
  for (const MaskDraw m :
       {MaskDraw{0.2, 1, 0}, MaskDraw{0.5, 0xd5a3c1e7b9f24681ull, 123456789},
        MaskDraw{0.9, 7, uint64_t{1} << 40}, MaskDraw{0.0, 3, 5}, MaskDraw{1.0, 3, 5}}) {
    const double p = m.p;
    const uint64_t seed = m.seed, offset = m.offset;
    c.push_back({"dropout_mask",
                 fmt::format("dropout_mask_p{}_{}", static_cast<int>(p * 10), seed % 100), 0,
                 [] { return Tensors{}; },
                 [p, seed, offset](Backend& be, Tensors&) {
                   Tensor keep = be.zeros(DType::kU8, {37, 101});
                   be.dropout_mask(keep, p, seed, offset);
                   return Tensors{keep};
                 },
                 [p, seed, offset](const Tensors&) {
                   return std::vector<Values>{ref_dropout(37 * 101, p, seed, offset)};
                 }});
  }
  // --- inference ops (Numerics::kGgml) ---
  // matmul on every engine weight type: x is converted to W's activation type first (f16, bf16,
  // Q8_0, Q8_1 or Q8_K), so against the exact product of x and the dequantized W the error is
  // that rounding: 2^-11 (f16), 2^-8 (bf16), ~1/127 per block (8-bit activations). A wrong
  // kernel is off by O(1). n = 1 (decode rows), 3 (dot tiles), 40 (prompt: sgemm or tiles).
  for (DType d : kEngineDtypes)
    for (int64_t n : {1, 3, 40})
      c.push_back({"matmul", fmt::format("matmul_ggml_{}_n{}", dtype_tag(d), n), ggml_tol(d),
                   [d, n] {
                     return Tensors{randn({n, 256}, 20), weight(d, {9, 256}, 21)};
                   },
                   [](Backend& be, Tensors& in) {
                     Tensor out = be.zeros(DType::kF32, {in[0].dim(0), 9});
                     be.matmul(out, in[0], in[1], nullptr, Numerics::kGgml);
                     return Tensors{out};
                   },
                   [](const Tensors& in) {
                     return std::vector<Values>{ref_matmul_values(in[0], deq(in[1]), 9)};
                   }});
  c.push_back({"add_bias", "add_bias", 1e-7,
               [] {
                 return Tensors{randn({3, 5}, 22), randn({5}, 23)};
               },
               [](Backend& be, Tensors& in) {
                 be.add_bias(in[0], in[1]);
                 return Tensors{in[0]};
               },
               [](const Tensors& in) {
                 Values o = values(in[0]);
                 for (size_t i = 0; i < o.size(); ++i) o[i] += val(in[1], int64_t(i % 5));
                 return std::vector<Values>{o};
               }});
  // lora_apply: A and B of the adapter types (F32/F16/Q8_0 A; B with or without B^T).
  for (DType da : {DType::kF32, DType::kF16, DType::kQ8_0})
    for (bool with_bt : {false, true})
      for (int64_t n : {2, 9})  // 9: the B^T product as one sgemm
        c.push_back(
            {"lora_apply",
             fmt::format("lora_apply_{}_{}_n{}", dtype_tag(da), with_bt ? "bt" : "b", n),
             std::max(ggml_tol(da), 2e-3),
             [da, n] {
               return Tensors{randn({n, 7}, 24), randn({n, 256}, 25), weight(da, {4, 256}, 26),
                              weight(DType::kF16, {7, 4}, 27, 0.1f)};
             },
             [with_bt](Backend& be, Tensors& in) {
               const int64_t n = in[1].dim(0);
               Tensor xa = be.zeros(DType::kF32, {n, 4});
               Tensor bt;  // (4, 7) f32
               if (with_bt) {
                 const Values b = deq(download(be, in[3]));
                 std::vector<float> t(28);
                 for (int64_t o = 0; o < 7; ++o)
                   for (int64_t k = 0; k < 4; ++k)
                     t[size_t(k * 7 + o)] = float(b[size_t(o * 4 + k)]);
                 bt = upload(be, Tensor::from_f32(t, {4, 7}));
               }
               be.lora_apply(in[0], xa, in[1], in[2], in[3], with_bt ? &bt : nullptr, 0.75f);
               return Tensors{in[0]};
             },
             [](const Tensors& in) {
               const int64_t n = in[1].dim(0);
               const Values t = ref_matmul_values(in[1], deq(in[2]), 4);  // (n, 4)
               const Values b = deq(in[3]);                               // (7, 4)
               Values y = values(in[0]);
               for (int64_t i = 0; i < n; ++i)
                 for (int64_t o = 0; o < 7; ++o)
                   for (int64_t k = 0; k < 4; ++k)
                     y[size_t(i * 7 + o)] += 0.75 * t[size_t(i * 4 + k)] * b[size_t(o * 4 + k)];
               return std::vector<Values>{y};
             }});
  // lora_apply_rows: three row ranges of a 9-row batch, one with a stack of two adapters of
  // different ranks, rows 3-4 without any; both numerics of the engine.
  for (DType da : {DType::kF16, DType::kQ8_0})
    for (Numerics num : {Numerics::kGgml, Numerics::kGgmlInvariant})
      c.push_back(
          {"lora_apply_rows",
           fmt::format("lora_apply_rows_{}{}", dtype_tag(da),
                       num == Numerics::kGgmlInvariant ? "_invariant" : ""),
           std::max(ggml_tol(da), 2e-3),
           [da] {
             return Tensors{randn({9, 7}, 90),        randn({9, 256}, 91),
                            weight(da, {4, 256}, 92), weight(DType::kF16, {7, 4}, 93, 0.1f),
                            weight(da, {6, 256}, 94), weight(DType::kF16, {7, 6}, 95, 0.1f)};
           },
           [num](Backend& be, Tensors& in) {
             Tensor xa = be.zeros(DType::kF32, {9 * 6 + 16 * 3});
             const LoraRows items[] = {{0, 2, &in[2], &in[3], nullptr, 0.5f},
                                       {2, 1, &in[2], &in[3], nullptr, 0.75f},
                                       {2, 1, &in[4], &in[5], nullptr, -1.25f},
                                       {5, 4, &in[4], &in[5], nullptr, 2.0f}};
             be.lora_apply_rows(in[0], xa, in[1], items, num);
             return Tensors{in[0]};
           },
           [](const Tensors& in) {
             Values y = values(in[0]);
             auto add = [&](int64_t r0, int64_t n, const Tensor& a, const Tensor& b, double s) {
               const int64_t r = a.dim(0);
               const Values t = ref_matmul_values(in[1], deq(a), r);  // (9, r)
               const Values bv = deq(b);                              // (7, r)
               for (int64_t i = r0; i < r0 + n; ++i)
                 for (int64_t o = 0; o < 7; ++o)
                   for (int64_t k = 0; k < r; ++k)
                     y[size_t(i * 7 + o)] += s * t[size_t(i * r + k)] * bv[size_t(o * r + k)];
             };
             add(0, 2, in[2], in[3], 0.5);
             add(2, 1, in[2], in[3], 0.75);
             add(2, 1, in[4], in[5], -1.25);
             add(5, 4, in[4], in[5], 2.0);
             return std::vector<Values>{y};
           }});
  c.push_back(
      {"rmsnorm", "rmsnorm_ggml", 2e-6,
       [] {
         return Tensors{randn({4, 64}, 28), randn({64}, 29)};
       },
       [](Backend& be, Tensors& in) {
         Tensor out = like(be, in[0]), none;
         be.rmsnorm(out, none, in[0], in[1], 1e-6f, Numerics::kGgml);
         return Tensors{out};
       },
       [](const Tensors& in) { return std::vector<Values>{ref_rmsnorm(in[0], in[1], 1e-6)[0]}; }});
  // llama.cpp's angles (repeated f32 multiplication) against double ones, in place (out == x).
  c.push_back(
      {"rope", "rope_ggml_in_place", 2e-5,
       [] {
         return Tensors{randn({1, 6, 2, 16}, 30), ints({0, 1, 2, 5, 17, 40}, {1, 6})};
       },
       [](Backend& be, Tensors& in) {
         be.rope(in[0], in[0], in[1], 1000000.0, Numerics::kGgml);
         return Tensors{in[0]};
       },
       [](const Tensors& in) { return std::vector<Values>{ref_rope(in[0], in[1], 1000000.0)}; }});
  c.push_back({"copy_bytes", "copy_bytes_prefix", 0,
               [] {
                 return Tensors{randn({4, 3}, 31), randn({2, 3}, 32)};
               },
               [](Backend& be, Tensors& in) {
                 be.copy_bytes(in[0], in[1], 6 * sizeof(float));
                 return Tensors{in[0]};
               },
               [](const Tensors& in) {
                 Values o = values(in[0]), src = values(in[1]);
                 std::copy(src.begin(), src.end(), o.begin());
                 return std::vector<Values>{o};
               }});
  // The memory API: upload of a borrowed (unaligned) block-type tensor and download of it give
  // the same bytes; synchronize returns with the work done.
  c.push_back({"upload", "upload_download_roundtrip", 0,
               [] {
                 return Tensors{weight(DType::kQ4_K, {3, 256}, 33)};
               },
               [](Backend& be, Tensors& in) {
                 const Tensor h = download(be, in[0]);  // in[0] may be on the device
                 std::vector<uint8_t> odd(h.nbytes() + 1);
                 std::memcpy(odd.data() + 1, h.raw(), h.nbytes());
                 const Tensor borrowed = Tensor::borrow(in[0].dtype(), in[0].shape(),
                                                        std::span<const uint8_t>(odd).subspan(1));
                 const Tensor dev = be.upload(borrowed);
                 std::vector<uint8_t> back(dev.nbytes());
                 be.download(back, dev);
                 be.synchronize();
                 Tensor u = Tensor::zeros(DType::kU8, {static_cast<int64_t>(back.size())});
                 std::memcpy(u.raw(), back.data(), back.size());
                 return Tensors{u};
               },
               [](const Tensors& in) {
                 const std::span<const uint8_t> b = in[0].bytes();
                 return std::vector<Values>{Values(b.begin(), b.end())};
               }});
  for (const char* op : {"download", "synchronize"})
    c.push_back({op, fmt::format("{}_roundtrip", op), 0,
                 [] {
                   return Tensors{randn({5, 7}, 34)};
                 },
                 [](Backend& be, Tensors& in) {
                   const Tensor dev = be.upload(in[0]);
                   be.synchronize();
                   return Tensors{download(be, dev)};
                 },
                 [](const Tensors& in) { return std::vector<Values>{values(in[0])}; }});
  c.push_back({"supports", "supports_table", 0, [] { return Tensors{}; },
               [](Backend& be, Tensors&) {
                 Values v;
                 for (DType d : kEngineDtypes) v.push_back(be.supports("matmul", d));
                 v.push_back(be.supports("matmul_backward", DType::kQ4_K));
                 v.push_back(be.supports("matmul", DType::kI32));
                 return Tensors{
                     Tensor::from_f32(std::vector<float>(v.begin(), v.end()), {int64_t(v.size())})};
               },
               [](const Tensors&) {
                 Values v(kEngineDtypes.size(), 1.0);
                 v.push_back(0.0);
                 v.push_back(0.0);
                 return std::vector<Values>{v};
               }});
  // The KV cache: kv_write rounds to f16; attention_kv over rows [0, pos0 + i] for query i
  // (q and the probabilities rounded to f16: ~1e-3). n = 1 is the decode path, n = 6 the
  // prompt tiles; pos0 = 3 cached rows before the new ones.
  for (int64_t n : {1, 6}) {
    const int64_t H = 4, KV = 2, D = 16, L = 3 + n;
    c.push_back(
        {"kv_write", fmt::format("kv_write_n{}", n), 1e-3,
         [=] {
           return Tensors{randn({L, KV * D}, 33), randn({L, KV * D}, 34)};
         },
         [=](Backend& be, Tensors& in) {
           KvCache cache(be, 2, KV * D, 64);
           cache.reserve(L, 0);
           be.kv_write(cache, 1, 0, in[0], in[1]);
           return Tensors{be.to_f32(cache.k(1).rows(0, L)), be.to_f32(cache.v(1).rows(0, L))};
         },
         [](const Tensors& in) {
           return std::vector<Values>{values(in[0]), values(in[1])};
         }});
    c.push_back(
        {"attention_kv", fmt::format("attention_kv_n{}", n), 3e-3,
         [=] {
           return Tensors{randn({n, H * D}, 35), randn({L, KV * D}, 36), randn({L, KV * D}, 37)};
         },
         [=](Backend& be, Tensors& in) {
           KvCache cache(be, 1, KV * D, 64);
           cache.reserve(L, 0);
           be.kv_write(cache, 0, 0, in[1], in[2]);
           Tensor out = be.zeros(DType::kF32, {n, H * D});
           be.attention_kv(out, in[0], cache, 0, L - n, H);
           return Tensors{out};
         },
         [=](const Tensors& in) {
           Values out(size_t(n * H * D));
           for (int64_t i = 0; i < n; ++i)
             for (int64_t h = 0; h < H; ++h) {
               const int64_t kh = h / (H / KV), len = L - n + i + 1;
               Values sc(static_cast<size_t>(len));
               double mx = -1e300, sum = 0;
               for (int64_t j = 0; j < len; ++j) {
                 double dot = 0;
                 for (int64_t e = 0; e < D; ++e)
                   dot += val(in[0], (i * H + h) * D + e) * val(in[1], j * KV * D + kh * D + e);
                 sc[size_t(j)] = dot / std::sqrt(double(D));
                 mx = std::max(mx, sc[size_t(j)]);
               }
               for (double& x : sc) sum += (x = std::exp(x - mx));
               for (int64_t e = 0; e < D; ++e) {
                 double o = 0;
                 for (int64_t j = 0; j < len; ++j)
                   o += sc[size_t(j)] / sum * val(in[2], j * KV * D + kh * D + e);
                 out[size_t((i * H + h) * D + e)] = o;
               }
             }
           return std::vector<Values>{out};
         }});
  }
  return c;
}

double dot(const Tensor& out, const Tensor& r) {
  const Values a = values(out), b = values(r);
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// A GradCase of L = sum(op(inputs) * R) whose forward writes a fresh f32 output.
std::vector<GradCase> make_grad_cases() {
  std::vector<GradCase> c;
  for (DType d : kFloatDtypes) {
    const bool frozen = d != DType::kF32;  // half weights are a frozen base: dw is not computed
    c.push_back({"matmul_backward", "matmul_backward_" + dtype_tag(d),
                 [d] {
                   return Tensors{randn({3, 5}, 1), randn({4, 5}, 2, 1, d), randn({4}, 3)};
                 },
                 frozen ? std::vector<size_t>{0, 2} : std::vector<size_t>{0, 1, 2},
                 [](Backend& be, Tensors& in) {
                   Tensor out = be.zeros(DType::kF32, {3, 4});
                   be.matmul(out, in[0], in[1], &in[2]);
                   return out;
                 },
                 [frozen](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                   be.matmul_backward(&g[0], frozen ? nullptr : &g[1], &g.back(), dout, in[0],
                                      in[1]);
                 }});
  }
  for (bool masked : {false, true})
    c.push_back(
        {"lora_backward",
         masked ? "lora_backward_dropout" : "lora_backward",
         [] {
           return Tensors{randn({3, 6}, 12), randn({2, 6}, 13), randn({5, 2}, 14),
                          mask_pattern(3, 6)};
         },
         {0, 1, 2},
         [masked](Backend& be, Tensors& in) {
           Tensor y = be.zeros(DType::kF32, {3, 5}), xa = be.zeros(DType::kF32, {3, 2});
           be.lora_forward(y, xa, in[0], masked ? &in[3] : nullptr, 2.0f, in[1], in[2], 1.5f);
           return y;
         },
         [masked](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
           const Tensor* keep = masked ? &in[3] : nullptr;
           Tensor xa = be.zeros(DType::kF32, {3, 2}), y = be.zeros(DType::kF32, {3, 5});
           be.lora_forward(y, xa, in[0], keep, 2.0f, in[1], in[2], 1.5f);
           be.lora_backward(&g[0], g[1], g[2], dout, in[0], keep, 2.0f, xa, in[1], in[2], 1.5f);
         }});
  // Small shapes, then shapes above kParallelMin so that the OpenMP paths run (sampled).
  for (bool big : {false, true}) {
    const int64_t n = big ? 64 : 3, ch = big ? 512 : 8;
    c.push_back({"rmsnorm_backward",
                 big ? "rmsnorm_backward_large" : "rmsnorm_backward",
                 [n, ch] {
                   return Tensors{randn({n, ch}, 2), randn({ch}, 3)};
                 },
                 {0, 1},
                 [n](Backend& be, Tensors& in) {
                   Tensor out = like(be, in[0]), rstd = be.zeros(DType::kF32, {n});
                   be.rmsnorm(out, rstd, in[0], in[1], 1e-6f);
                   return out;
                 },
                 [n](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                   Tensor out = like(be, in[0]), rstd = be.zeros(DType::kF32, {n});
                   be.rmsnorm(out, rstd, in[0], in[1], 1e-6f);
                   be.rmsnorm_backward(g[0], g[1], dout, in[0], in[1], rstd);
                 },
                 1e-2,
                 1e-2,
                 big ? 331 : 1});
    const int64_t f = big ? 640 : 6;
    c.push_back({"swiglu_backward",
                 big ? "swiglu_backward_large" : "swiglu_backward",
                 [n, f] {
                   return Tensors{randn({n, f}, 5), randn({n, f}, 6)};
                 },
                 {0, 1},
                 [](Backend& be, Tensors& in) {
                   Tensor out = like(be, in[0]);
                   be.swiglu(out, in[0], in[1]);
                   return out;
                 },
                 [](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                   be.swiglu_backward(g[0], g[1], dout, in[0], in[1]);
                 },
                 1e-2,
                 1e-2,
                 big ? 401 : 1});
  }
  c.push_back({"rope_backward",
               "rope_backward",
               [] {
                 return Tensors{randn({2, 3, 2, 4}, 3), ints({0, 1, 2, 5, 7, 11}, {2, 3})};
               },
               {0},
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]);
                 be.rope(out, in[0], in[1], 10000.0);
                 return out;
               },
               [](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                 be.rope_backward(g[0], dout, in[1], 10000.0);
               }});
  // Row 1 right-padded after 2 tokens; GQA (4 query heads on 2 KV heads).
  for (bool big : {false, true}) {
    const int64_t t = big ? 16 : 4, d = big ? 64 : 4;
    c.push_back({"attention_backward",
                 big ? "attention_backward_large" : "attention_backward_gqa",
                 [t, d, big] {
                   return Tensors{randn({2, t, 4, d}, 4, big ? 0.3f : 1.0f),
                                  randn({2, t, 2, d}, 5, big ? 0.3f : 1.0f), randn({2, t, 2, d}, 6),
                                  ints({static_cast<int32_t>(t), big ? 9 : 2}, {2})};
                 },
                 {0, 1, 2},
                 [t](Backend& be, Tensors& in) {
                   Tensor out = like(be, in[0]), att = be.zeros(DType::kF32, {2, 4, t, t});
                   be.attention(out, att, in[0], in[1], in[2], in[3]);
                   return out;
                 },
                 [t](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                   Tensor out = like(be, in[0]), att = be.zeros(DType::kF32, {2, 4, t, t});
                   be.attention(out, att, in[0], in[1], in[2], in[3]);
                   be.attention_backward(g[0], g[1], g[2], dout, att, in[0], in[1], in[2]);
                 },
                 1e-2,
                 1e-2,
                 big ? 53 : 1});
  }
  c.push_back({"embedding_backward",
               "embedding_backward_repeated_ids",
               [] {
                 return Tensors{randn({5, 3}, 6), ints({1, 3, 1, 0}, {4})};
               },
               {0},
               [](Backend& be, Tensors& in) {
                 Tensor out = be.zeros(DType::kF32, {4, 3});
                 be.embedding(out, in[1], in[0]);
                 return out;
               },
               [](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                 be.embedding_backward(g[0], dout, in[1]);
               }});
  // The loss is a scalar (f64 output): R is one number, passed as dloss.
  c.push_back({"cross_entropy_backward",
               "cross_entropy_backward",
               [] {
                 return Tensors{randn({4, 6}, 7, 2), ints({2, kIgnoreIndex, 5, 0}, {4})};
               },
               {0},
               [](Backend& be, Tensors& in) {
                 Tensor loss = be.zeros(DType::kF64, {2});
                 be.cross_entropy(loss, in[0], in[1]);
                 return f64({values(download(be, loss))[0]});
               },
               [](Backend& be, Tensors& in, const Tensor& dout, Tensors& g) {
                 // dloss is a host number: dout may live on the device.
                 const float dloss = static_cast<float>(values(download(be, dout))[0]);
                 be.cross_entropy_backward(g[0], in[0], in[1], dloss);
               },
               1e-3,
               1e-3});
  // Residual: out = a + b, whose backward is accumulate(d, dout) for both inputs.
  c.push_back({"accumulate",
               "add_backward",
               [] {
                 return Tensors{randn({2, 3}, 8), randn({2, 3}, 9)};
               },
               {0, 1},
               [](Backend& be, Tensors& in) {
                 Tensor out = like(be, in[0]);
                 be.add(out, in[0], in[1]);
                 return out;
               },
               [](Backend& be, Tensors&, const Tensor& dout, Tensors& g) {
                 be.accumulate(g[0], dout);
                 be.accumulate(g[1], dout);
               }});
  return c;
}

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> c = make_op_cases();
  return c;
}
const std::vector<GradCase>& grad_cases() {
  static const std::vector<GradCase> c = make_grad_cases();
  return c;
}

// gtest parameters: (backend, case) pairs, named "<backend>_<case>".
struct Param {
  size_t backend, index;
};
void PrintTo(const Param& p, std::ostream* os) {  // gtest's failure lines
  *os << backends()[p.backend].name << " case " << p.index;
}
template <typename Case>
std::vector<Param> params_of(const std::vector<Case>& cases) {
  std::vector<Param> p;
  for (size_t b = 0; b < backends().size(); ++b)
    for (size_t i = 0; i < cases.size(); ++i) p.push_back({b, i});
  return p;
}

class BackendOpsForward : public ::testing::TestWithParam<Param> {};
class BackendOpsGrad : public ::testing::TestWithParam<Param> {};

TEST_P(BackendOpsForward, MatchesScalarReference) {
  const OpCase& c = op_cases()[GetParam().index];
  Backend& be = backends()[GetParam().backend].get();
  const Tensors host = c.inputs();
  Tensors in;
  for (const Tensor& t : host) in.push_back(upload(be, t));
  const Tensors out = c.run(be, in);
  const std::vector<Values> want = c.ref(host);
  ASSERT_EQ(out.size(), want.size());
  for (size_t k = 0; k < out.size(); ++k) {
    const Values got = values(download(be, out[k]));
    ASSERT_EQ(got.size(), want[k].size()) << c.name << " output " << k;
    const double err = normalised_error(got, want[k]);
    EXPECT_LE(err, c.tol) << c.name << " output " << k << ": normalised error " << err;
  }
}

TEST_P(BackendOpsGrad, MatchesFiniteDifferences) {
  const GradCase& c = grad_cases()[GetParam().index];
  Backend& be = backends()[GetParam().backend].get();
  Tensors host = c.inputs();
  auto run_forward = [&] {
    Tensors in;
    for (const Tensor& t : host) in.push_back(upload(be, t));
    return download(be, c.forward(be, in));
  };
  const Tensor r = randn(run_forward().shape(), 99);  // dL/dout
  auto objective = [&] { return dot(run_forward(), r); };
  // Analytic gradients, accumulated onto random values that are subtracted afterwards.
  auto gradients = [&](Backend& b) {
    Tensors in, g, g0;
    for (const Tensor& t : host) in.push_back(upload(b, t));
    for (size_t k = 0; k < c.wrt.size(); ++k) {
      g0.push_back(randn(host[c.wrt[k]].shape(), 100 + static_cast<uint32_t>(k)));
      g.push_back(upload(b, g0.back()));
    }
    c.backward(b, in, upload(b, r), g);
    Tensors out;
    for (size_t k = 0; k < g.size(); ++k) {
      Tensor d = download(b, g[k]);
      for (int64_t i = 0; i < d.numel(); ++i) d.set(i, d.get(i) - g0[k].get(i));
      out.push_back(d);
    }
    return out;
  };
  const Tensors grads = gradients(be);
  for (size_t k = 0; k < c.wrt.size(); ++k) {
    const double rel =
        test_models::fd_relative_error(host[c.wrt[k]], grads[k], c.h, c.stride, objective);
    ASSERT_GE(rel, 0) << c.name << " input " << c.wrt[k] << ": zero numeric gradient";
    EXPECT_LE(rel, c.tol) << c.name << " input " << c.wrt[k] << ": relative error " << rel;
  }
  if (GetParam().backend != 0) {  // another backend: its gradients against the CPU's
    const Tensors cpu = gradients(backends()[0].get());
    for (size_t k = 0; k < grads.size(); ++k)
      EXPECT_LE(normalised_error(values(grads[k]), values(cpu[k])), 1e-4) << c.name << " " << k;
  }
}

template <typename Case>
std::string param_name(const ::testing::TestParamInfo<Param>& info,
                       const std::vector<Case>& cases) {
  return std::string(backends()[info.param.backend].name) + "_" + cases[info.param.index].name;
}

INSTANTIATE_TEST_SUITE_P(All, BackendOpsForward, ::testing::ValuesIn(params_of(op_cases())),
                         [](const auto& info) { return param_name(info, op_cases()); });
INSTANTIATE_TEST_SUITE_P(All, BackendOpsGrad, ::testing::ValuesIn(params_of(grad_cases())),
                         [](const auto& info) { return param_name(info, grad_cases()); });

// Every op declared in backend.h has a forward or a gradient case.
TEST(BackendOps, EveryOpHasACase) {
  const std::string header = read_file(fs::path(NNPIPE_SOURCE_DIR) / "src/backend/backend.h");
  std::set<std::string> covered;
  for (const OpCase& c : op_cases()) covered.insert(c.op);
  for (const GradCase& c : grad_cases()) covered.insert(c.op);
  const std::regex decl(R"(virtual\s+[\w:<>]+[\s*&]+(\w+)\s*\()");
  int ops = 0;
  for (std::sregex_iterator it(header.begin(), header.end(), decl), end; it != end; ++it) {
    const std::string op = (*it)[1];
    if (op == "device") continue;  // a property, not an op
    ++ops;
    EXPECT_TRUE(covered.count(op)) << "Backend::" << op << " has no case in test_backend_ops.cpp";
  }
  EXPECT_GT(ops, 20) << "the declaration pattern no longer matches backend.h";
}

// --- properties beyond one call's values ---

// Masks for one stream drawn in pieces equal the mask drawn at once (the trainer's counter
// advances by each mask's size), and the keep rate and neighbour independence are as for
// independent draws.
TEST(BackendOps, DropoutMaskStreamAndStatistics) {
  for (const BuiltBackend& bb : backends()) {
    Backend& be = bb.get();
    const int64_t n = 1 << 20;
    const double p = 0.2;
    Tensor whole = be.zeros(DType::kU8, {n});
    be.dropout_mask(whole, p, 42, 1000);
    const Values w = values(download(be, whole));
    Tensor a = be.zeros(DType::kU8, {300, 7}), b = be.zeros(DType::kU8, {n - 2100});
    be.dropout_mask(a, p, 42, 1000);
    be.dropout_mask(b, p, 42, 1000 + 2100);
    Values pieces = values(download(be, a));
    const Values bv = values(download(be, b));
    pieces.insert(pieces.end(), bv.begin(), bv.end());
    EXPECT_EQ(pieces, w) << bb.name;
    Tensor again = be.zeros(DType::kU8, {n});
    be.dropout_mask(again, p, 42, 1000);
    EXPECT_EQ(values(download(be, again)), w) << bb.name << ": same (seed, offset), same mask";
    Tensor other = be.zeros(DType::kU8, {n});
    be.dropout_mask(other, p, 43, 1000);
    const Values o = values(download(be, other));
    // Keep rate 1-p: the binomial's standard deviation is sqrt(p(1-p)/n) = 3.9e-4; 6 sigma.
    double kept = 0, pairs = 0, agree = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      kept += w[i];
      if (i + 1 < w.size()) pairs += w[i] * w[i + 1];
      agree += w[i] == o[i];
    }
    const double sd = std::sqrt(p * (1 - p) / static_cast<double>(n));
    EXPECT_NEAR(kept / static_cast<double>(n), 1 - p, 6 * sd) << bb.name;
    // Neighbours both kept with probability (1-p)^2; a neighbouring seed agrees as independent
    // draws do, p^2 + (1-p)^2.
    EXPECT_NEAR(pairs / static_cast<double>(n - 1), (1 - p) * (1 - p), 6 * sd) << bb.name;
    EXPECT_NEAR(agree / static_cast<double>(n), p * p + (1 - p) * (1 - p), 6 * sd) << bb.name;
  }
}

// Whether the CUDA backend's op cases ran in this process (they need a build with CUDA and a GPU).
TEST(BackendOps, CudaBackend) {
  if (!cuda_available())
    GTEST_SKIP() << (cuda_built() ? "CUDA backend: skipped (no GPU)"
                                  : "CUDA backend: skipped (no GPU; built without CUDA)");
  ASSERT_EQ(backends().size(), 2u);
  EXPECT_EQ(backends()[1].get().device(), Device::kCUDA);
}

TEST(BackendOps, BadArgumentsThrow) {
  for (const BuiltBackend& bb : backends()) {
    Backend& be = bb.get();
    const Tensor table = upload(be, randn({5, 3}, 1)), ids = upload(be, ints({5}, {1}));
    Tensor out = be.zeros(DType::kF32, {1, 3});
    // A device sees the id only when it runs: its backend throws at the next synchronize().
    EXPECT_ANY_THROW({
      be.embedding(out, ids, table);
      be.synchronize();
    }) << bb.name
       << ": id out of range";
    Tensor keep = be.zeros(DType::kU8, {4});
    EXPECT_ANY_THROW(be.dropout_mask(keep, 1.5, 1, 0));
    Tensor f = be.zeros(DType::kF32, {4});
    EXPECT_ANY_THROW(be.dropout_mask(f, 0.5, 1, 0)) << "the mask is u8";
    Tensor y = be.zeros(DType::kF32, {4}), x = be.zeros(DType::kF32, {5});
    EXPECT_ANY_THROW(be.axpy(y, 1.0f, x));
    Tensor m = be.zeros(DType::kF32, {4}), v = be.zeros(DType::kF32, {4});
    EXPECT_ANY_THROW(be.adamw_step(y, x, m, v, AdamWStep{}));
    EXPECT_ANY_THROW(be.adamw_step(y, y, m, v, AdamWStep{{1e-3, 0.9, 0.999, 1e-8, 0}, 0}));
  }
}

// sq_norm sums fixed chunks in order: its bits do not depend on the thread count.
TEST(BackendOps, SqNormChunksAreFixed) {
  Backend& be = backends()[0].get();
  const Tensor x = randn({3 * kSqNormChunk + 17}, 5);
  const Values v = values(x);
  double want = 0;
  for (int64_t c = 0; c < 4; ++c) {
    double s = 0;
    for (int64_t i = c * kSqNormChunk; i < std::min<int64_t>(x.numel(), (c + 1) * kSqNormChunk);
         ++i)
      s += v[static_cast<size_t>(i)] * v[static_cast<size_t>(i)];
    want += s;
  }
  EXPECT_EQ(be.sq_norm(x), want);
}

// Numerics::kGgmlInvariant: every row of a matmul or an inference LoRA product has the bits it
// has when computed alone (decode, n = 1), whatever the number of rows beside it (continuous
// batching: a request's output must not depend on what else is in the step). n = 40 takes the
// sgemm path under kGgml for most types, which is why the mode exists.
TEST(BackendOps, InvariantRowsEqualRowsAlone) {
  for (const BuiltBackend& bb : backends()) {
    Backend& be = bb.get();
    for (DType d : kEngineDtypes) {
      const int64_t n = 40, in = 256, o = 9, r = 8;
      const Tensor x = upload(be, randn({n, in}, 60)), w = upload(be, weight(d, {o, in}, 61));
      const Tensor a = upload(be, weight(d, {r, in}, 62, 0.1f)),
                   b = upload(be, weight(d == DType::kF32 ? d : DType::kF16, {o, r}, 63, 0.1f));
      const Values bv = values(download(be, be.to_f32(b)));  // (o, r)
      Tensor bth = Tensor::zeros(DType::kF32, {r, o});       // B^T (r, o)
      float* pbt = reinterpret_cast<float*>(bth.raw());
      for (int64_t j = 0; j < o; ++j)
        for (int64_t k = 0; k < r; ++k) pbt[k * o + j] = static_cast<float>(bv[size_t(j * r + k)]);
      const Tensor bt = upload(be, bth);
      for (const Tensor* btp : {static_cast<const Tensor*>(nullptr), &bt}) {
        Tensor all = be.zeros(DType::kF32, {n, o}), xa = be.zeros(DType::kF32, {n, r});
        be.matmul(all, x, w, nullptr, Numerics::kGgmlInvariant);
        be.lora_apply(all, xa, x, a, b, btp, 0.5f, Numerics::kGgmlInvariant);
        const Values va = values(download(be, all));
        // The same products as ranges of one lora_apply_rows call (1-row ranges run several at
        // once, the 30-row one alone): still each row's bits alone.
        Tensor ranged = be.zeros(DType::kF32, {n, o}), xr = be.zeros(DType::kF32, {n * r + 16 * n});
        be.matmul(ranged, x, w, nullptr, Numerics::kGgmlInvariant);
        std::vector<LoraRows> items;
        for (int64_t i = 0; i < 10; ++i) items.push_back({i, 1, &a, &b, btp, 0.5f});
        items.push_back({10, n - 10, &a, &b, btp, 0.5f});
        be.lora_apply_rows(ranged, xr, x, items, Numerics::kGgmlInvariant);
        EXPECT_EQ(values(download(be, ranged)), va) << bb.name << " " << dtype_tag(d);
        for (int64_t i = 0; i < n; ++i) {
          Tensor one = be.zeros(DType::kF32, {1, o}), xa1 = be.zeros(DType::kF32, {1, r});
          const Tensor xi = x.rows(i, 1);
          be.matmul(one, xi, w, nullptr, Numerics::kGgml);
          be.lora_apply(one, xa1, xi, a, b, btp, 0.5f, Numerics::kGgml);
          const Values v1 = values(download(be, one));
          for (int64_t j = 0; j < o; ++j)
            ASSERT_EQ(va[static_cast<size_t>(i * o + j)], v1[static_cast<size_t>(j)])
                << bb.name << " " << dtype_tag(d) << (btp ? " B^T" : "") << " row " << i;
        }
      }
    }
  }
}

// A batched kv_write/attention_kv over sequences of different lengths (a decode, a prompt
// chunk, a fresh prompt) gives each sequence the bits it gets alone.
TEST(BackendOps, AttentionKvBatchEqualsOneByOne) {
  for (const BuiltBackend& bb : backends()) {
    Backend& be = bb.get();
    const int64_t H = 4, KV = 2, D = 64, kvd = KV * D;
    struct Part {
      int64_t past, n;
    };
    const std::vector<Part> parts = {{7, 1}, {5, 6}, {0, 9}, {3, 1}};
    int64_t N = 0;
    for (const Part& p : parts) N += p.n;
    const Tensor q = upload(be, randn({N, H * D}, 70)), k = upload(be, randn({N, kvd}, 71)),
                 v = upload(be, randn({N, kvd}, 72));
    std::vector<std::unique_ptr<KvCache>> batch, alone;
    std::vector<KvSeq> seqs;
    Tensor out = be.zeros(DType::kF32, {N, H * D});
    Values want;
    int64_t row = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const Part& p = parts[i];
      // Both caches get the same earlier rows first.
      for (auto* list : {&batch, &alone}) {
        list->push_back(std::make_unique<KvCache>(be, 2, kvd, 64));
        list->back()->reserve(p.past + p.n, 0);
        if (p.past) {
          const Tensor pk = upload(be, randn({p.past, kvd}, 80 + uint32_t(i))),
                       pv = upload(be, randn({p.past, kvd}, 90 + uint32_t(i)));
          be.kv_write(*list->back(), 1, 0, pk, pv);
        }
      }
      seqs.push_back({batch.back().get(), p.past, row, p.n});
      Tensor o1 = be.zeros(DType::kF32, {p.n, H * D});
      be.kv_write(*alone.back(), 1, p.past, k.rows(row, p.n), v.rows(row, p.n));
      be.attention_kv(o1, q.rows(row, p.n), *alone.back(), 1, p.past, H);
      const Values v1 = values(download(be, o1));
      want.insert(want.end(), v1.begin(), v1.end());
      row += p.n;
    }
    be.kv_write(seqs, 1, k, v);
    be.attention_kv(out, q, seqs, 1, H);
    EXPECT_EQ(values(download(be, out)), want) << bb.name;
    for (size_t i = 0; i < parts.size(); ++i)
      EXPECT_EQ(values(download(be, batch[i]->k(1))), values(download(be, alone[i]->k(1))))
          << bb.name << " cache " << i;
  }
}

// The arena: the first round of a size allocates what did not fit; from the next round on, every
// tensor comes from one block (a forward allocates nothing), 64-byte aligned and not overlapping.
TEST(Arena, SecondRoundAllocatesNothing) {
  Backend& be = backends()[0].get();
  Arena arena(be);
  auto round = [&] {
    arena.reset();
    std::vector<Tensor> ts;
    for (int64_t n : {3, 100, 1, 4096}) ts.push_back(arena.alloc(DType::kF32, {n, 7}));
    ts.push_back(arena.alloc(DType::kI32, {5}));
    for (size_t i = 0; i < ts.size(); ++i) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(ts[i].raw()) % 64, 0u);
      std::memset(ts[i].raw(), int(i + 1), ts[i].nbytes());
    }
    for (size_t i = 0; i < ts.size(); ++i)  // no tensor overwrote another
      EXPECT_EQ(ts[i].raw()[ts[i].nbytes() - 1], uint8_t(i + 1));
    return arena.overflow_allocations();
  };
  EXPECT_GT(round(), 0u);
  EXPECT_EQ(round(), 0u);  // reset() made one block that holds the whole round
  const size_t cap = arena.capacity();
  EXPECT_EQ(round(), 0u);
  EXPECT_EQ(arena.capacity(), cap);
}

// Scopes rewound after use (a backward's layers) share their bytes: the block holds the round's
// high-water mark, not the sum of its scopes, and what lives across scopes is not overwritten.
TEST(Arena, RewoundScopesShareTheirBytes) {
  Backend& be = backends()[0].get();
  Arena arena(be);
  const size_t scope_bytes = 1024 * 4;  // 1024 f32, a multiple of 64
  auto round = [&] {
    arena.reset();
    Tensor keep = arena.alloc(DType::kF32, {16});
    std::memset(keep.raw(), 7, keep.nbytes());
    for (int layer = 0; layer < 24; ++layer) {
      const Arena::Mark m = arena.mark();
      Tensor t = arena.alloc(DType::kF32, {1024});
      std::memset(t.raw(), layer, t.nbytes());
      arena.rewind(m);
    }
    EXPECT_EQ(keep.raw()[keep.nbytes() - 1], 7);
    return arena.overflow_allocations();
  };
  round();
  EXPECT_EQ(round(), 0u);
  EXPECT_EQ(arena.capacity(), 64 + scope_bytes);
  const Arena::Mark stale{1u << 20, 1u << 20, 0};
  EXPECT_THROW(arena.rewind(stale), nnpipe::Error);
}

TEST(Tensor, Basics) {
  const std::vector<float> v{1, 2, 3, 4, 5, 6};
  Tensor t = Tensor::from_f32(v, {2, 3});
  Tensor view = t.reshaped({3, 2});
  view.set(5, 9);
  EXPECT_EQ(t.get(5), 9.0f) << "a view shares storage";
  EXPECT_ANY_THROW(t.reshaped({4}));
  EXPECT_ANY_THROW(Tensor::zeros(DType::kF32, {1, 1, 1, 1, 1}));
  const uint16_t bf[2] = {0x3f80, 0xc000};  // 1.0, -2.0 in bf16
  Tensor b = Tensor::borrow(DType::kBF16, {2}, {reinterpret_cast<const uint8_t*>(bf), 4});
  EXPECT_ANY_THROW(b.raw());
  Tensor f = cpu_backend().to_f32(b);  // a borrowed (read-only) source converts
  EXPECT_EQ(f.get(0), 1.0f);
  EXPECT_EQ(f.get(1), -2.0f);
}

}  // namespace
}  // namespace nnpipe
