// CPU backend ops: every backward is checked against central finite differences of its forward.
// Objective L = sum(out * R) for a fixed random R (so dout = R). The forward runs in fp32, so with
// step h = 1e-2 the numeric derivative carries ~1e-7 * |L| / h rounding noise plus O(h^2)
// truncation; a relative error (||analytic - numeric|| / ||numeric||) of 1e-2 separates that noise
// from a wrong formula (which gives errors of order 1). Ops linear in an input are exact up to
// noise.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "backend/backend.h"
#include "finite_diff.h"

namespace nnpipe {
namespace {

Backend& be() {
  return cpu_backend();
}

Tensor randn(std::vector<int64_t> shape, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::zeros(DType::kF32, std::move(shape));
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, d(rng));
  return t;
}

double dot(const Tensor& a, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.get(i)) * r.get(i);
  return s;
}

// Checks `grad` (analytic dL/d input) against central differences of `objective` w.r.t. `input`.
// `stride` > 1 samples every stride-th element (large shapes).
void expect_grad(const char* what, Tensor input, const Tensor& grad,
                 const std::function<double()>& objective, double h = 1e-2, double tol = 1e-2,
                 int64_t stride = 1) {
  ASSERT_EQ(input.shape(), grad.shape()) << what;
  const double rel = test_models::fd_relative_error(input, grad, h, stride, objective);
  ASSERT_GE(rel, 0) << what << ": zero reference gradient (test would be vacuous)";
  EXPECT_LE(rel, tol) << what << ": relative error " << rel;
}

Tensor zeros_like(const Tensor& t) {
  return Tensor::zeros(DType::kF32, t.shape());
}

TEST(BackendCpu, MatmulBackward) {
  std::mt19937 rng(1);
  Tensor x = randn({3, 5}, rng), w = randn({4, 5}, rng), b = randn({4}, rng),
         r = randn({3, 4}, rng);
  Tensor out = Tensor::zeros(DType::kF32, {3, 4});
  auto obj = [&] {
    be().matmul(out, x, w, &b);
    return dot(out, r);
  };
  // Reference value: out = x W^T + b, computed directly.
  obj();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t o = 0; o < 4; ++o) {
      double s = b.get(o);
      for (int64_t k = 0; k < 5; ++k) s += static_cast<double>(x.get(i * 5 + k)) * w.get(o * 5 + k);
      EXPECT_NEAR(out.get(i * 4 + o), s, 1e-5);
    }
  Tensor dx = zeros_like(x), dw = zeros_like(w), db = zeros_like(b);
  be().matmul_backward(&dx, &dw, &db, r, x, w);
  expect_grad("matmul dx", x, dx, obj);
  expect_grad("matmul dw", w, dw, obj);
  expect_grad("matmul db", b, db, obj);
}

// Half-precision weights (frozen LoRA base): the result must equal the f32 formula on the decoded
// weights. 300 x 4096 spans two of the backend's conversion chunks (256 + 44 rows of ~1M floats).
void check_half_matmul(DType dtype) {
  std::mt19937 rng(11);
  const int64_t n = 3, in = 4096, o = 300;
  Tensor x = randn({n, in}, rng, 0.02f), b = randn({o}, rng), r = randn({n, o}, rng);
  Tensor w = Tensor::zeros(dtype, {o, in});
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < w.numel(); ++i) w.set(i, d(rng));
  const std::vector<float> wf = w.to_f32(), xf = x.to_f32(), rf = r.to_f32();  // decoded values
  Tensor out = Tensor::zeros(DType::kF32, {n, o});
  be().matmul(out, x, w, &b);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < o; ++c) {
      double s = b.get(c);
      for (int64_t k = 0; k < in; ++k) s += static_cast<double>(xf[i * in + k]) * wf[c * in + k];
      EXPECT_NEAR(out.get(i * o + c), s, 1e-4) << i << "," << c;
    }
  // Frozen weight: dw == nullptr, only dx (and db) are computed.
  Tensor dx = zeros_like(x), db = zeros_like(b);
  be().matmul_backward(&dx, nullptr, &db, r, x, w);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < in; ++k) {
      double s = 0;
      for (int64_t c = 0; c < o; ++c) s += static_cast<double>(rf[i * o + c]) * wf[c * in + k];
      EXPECT_NEAR(dx.get(i * in + k), s, 1e-3) << i << "," << k;
    }
  expect_grad(
      "half matmul db", b, db,
      [&] {
        be().matmul(out, x, w, &b);
        return dot(out, r);
      },
      1e-2, 1e-2, /*stride=*/13);
}

TEST(BackendCpu, MatmulBf16Weight) {
  check_half_matmul(DType::kBF16);
}
TEST(BackendCpu, MatmulF16Weight) {
  check_half_matmul(DType::kF16);
}

TEST(BackendCpu, EmbeddingHalfTable) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    Tensor table = Tensor::zeros(dtype, {4, 3});
    for (int64_t i = 0; i < table.numel(); ++i) table.set(i, 0.37f * static_cast<float>(i) - 1.0f);
    const std::vector<int32_t> id{2, 0, 2};
    Tensor ids = Tensor::from_i32(id, {3});
    Tensor out = Tensor::zeros(DType::kF32, {3, 3});
    be().embedding(out, ids, table);
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(out.get(r * 3 + c), table.get(id[r] * 3 + c));
  }
}

// y (N, O) += s * (x*mask) A^T B^T, with and without a dropout mask.
void check_lora(bool with_mask) {
  std::mt19937 rng(12);
  const int64_t n = 3, in = 6, r = 2, o = 5;
  const float s = 1.5f;
  Tensor x = randn({n, in}, rng), a = randn({r, in}, rng), b = randn({o, r}, rng),
         base = randn({n, o}, rng), rr = randn({n, o}, rng);
  Tensor keep = Tensor::zeros(DType::kU8, {n, in});
  for (int64_t i = 0; i < keep.numel(); ++i) keep.raw()[i] = i % 3 == 1 ? 0 : 1;
  const float keep_scale = 2.0f;  // p = 0.5
  const Tensor* m = with_mask ? &keep : nullptr;
  Tensor y = Tensor::zeros(DType::kF32, {n, o}), xa = Tensor::zeros(DType::kF32, {n, r});
  auto obj = [&] {
    for (int64_t i = 0; i < y.numel(); ++i) y.set(i, base.get(i));
    be().lora_forward(y, xa, x, m, keep_scale, a, b, s);
    return dot(y, rr);
  };
  obj();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < o; ++c) {
      double want = base.get(i * o + c);
      for (int64_t j = 0; j < r; ++j) {
        double t = 0;
        for (int64_t k = 0; k < in; ++k)
          t += static_cast<double>(x.get(i * in + k)) *
               (m ? keep_scale * keep.raw()[i * in + k] : 1.0f) * a.get(j * in + k);
        want += s * t * b.get(c * r + j);
      }
      EXPECT_NEAR(y.get(i * o + c), want, 1e-4);
    }
  Tensor dx = zeros_like(x), da = zeros_like(a), db = zeros_like(b);
  be().lora_backward(&dx, da, db, rr, x, m, keep_scale, xa, a, b, s);
  expect_grad("lora dx", x, dx, obj);
  expect_grad("lora dA", a, da, obj);
  expect_grad("lora dB", b, db, obj);
}

TEST(BackendCpu, LoraBackward) {
  check_lora(false);
}
TEST(BackendCpu, LoraBackwardWithDropoutMask) {
  check_lora(true);
}

TEST(BackendCpu, RmsnormBackward) {
  std::mt19937 rng(2);
  Tensor x = randn({3, 8}, rng), w = randn({8}, rng), r = randn({3, 8}, rng);
  Tensor out = zeros_like(x), rstd = Tensor::zeros(DType::kF32, {3});
  auto obj = [&] {
    be().rmsnorm(out, rstd, x, w, 1e-6f);
    return dot(out, r);
  };
  obj();
  double ss = 0;
  for (int64_t i = 0; i < 8; ++i) ss += static_cast<double>(x.get(i)) * x.get(i);
  EXPECT_NEAR(out.get(3), w.get(3) * x.get(3) / std::sqrt(ss / 8 + 1e-6), 1e-5);
  Tensor dx = zeros_like(x), dw = zeros_like(w);
  be().rmsnorm_backward(dx, dw, r, x, w, rstd);
  expect_grad("rmsnorm dx", x, dx, obj);
  expect_grad("rmsnorm dw", w, dw, obj);
}

TEST(BackendCpu, RopeForwardAndBackward) {
  std::mt19937 rng(3);
  Tensor x = randn({2, 3, 2, 4}, rng), r = randn({2, 3, 2, 4}, rng);
  const std::vector<int32_t> pos{0, 1, 2, 5, 7, 11};
  Tensor p = Tensor::from_i32(pos, {2, 3});
  Tensor out = zeros_like(x);
  auto obj = [&] {
    be().rope(out, x, p, 10000.0);
    return dot(out, r);
  };
  obj();
  for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(out.get(i), x.get(i)) << "position 0 is identity";
  // Row 1, token 2 (position 11), head 1, pair i = 1: inv_freq = 10000^(-2/4) = 0.01.
  const int64_t base = ((1 * 3 + 2) * 2 + 1) * 4;
  const double ang = 11 * 0.01;
  EXPECT_NEAR(out.get(base + 1), x.get(base + 1) * std::cos(ang) - x.get(base + 3) * std::sin(ang),
              1e-5);
  EXPECT_NEAR(out.get(base + 3), x.get(base + 3) * std::cos(ang) + x.get(base + 1) * std::sin(ang),
              1e-5);
  Tensor dx = zeros_like(x);
  be().rope_backward(dx, r, p, 10000.0);
  expect_grad("rope dx", x, dx, obj);
}

TEST(BackendCpu, AttentionBackwardGqaPadded) {
  std::mt19937 rng(4);
  const int64_t b = 2, t = 4, h = 4, kv = 2, d = 4;
  Tensor q = randn({b, t, h, d}, rng), k = randn({b, t, kv, d}, rng), v = randn({b, t, kv, d}, rng);
  Tensor r = randn({b, t, h, d}, rng);
  const std::vector<int32_t> len{4, 2};  // row 1 is right-padded after 2 tokens
  Tensor lengths = Tensor::from_i32(len, {b});
  Tensor out = zeros_like(q), att = Tensor::zeros(DType::kF32, {b, h, t, t});
  auto obj = [&] {
    be().attention(out, att, q, k, v, lengths);
    return dot(out, r);
  };
  obj();
  for (int64_t hh = 0; hh < h; ++hh)
    for (int64_t i = 0; i < t; ++i) {
      double s = 0;
      for (int64_t j = 0; j < t; ++j) {
        const float p = att.get(((1 * h + hh) * t + i) * t + j);
        if (j > i || j >= 2) {
          EXPECT_EQ(p, 0.0f) << "masked key " << j << " of query " << i;
        }
        s += p;
      }
      EXPECT_NEAR(s, 1.0, 1e-6);
    }
  Tensor dq = zeros_like(q), dk = zeros_like(k), dv = zeros_like(v);
  be().attention_backward(dq, dk, dv, r, att, q, k, v);
  expect_grad("attention dq", q, dq, obj);
  expect_grad("attention dk", k, dk, obj);
  expect_grad("attention dv", v, dv, obj);
}

TEST(BackendCpu, SwigluBackward) {
  std::mt19937 rng(5);
  Tensor g = randn({3, 6}, rng), u = randn({3, 6}, rng), r = randn({3, 6}, rng);
  Tensor out = zeros_like(g);
  auto obj = [&] {
    be().swiglu(out, g, u);
    return dot(out, r);
  };
  obj();
  EXPECT_NEAR(out.get(0), g.get(0) / (1 + std::exp(-g.get(0))) * u.get(0), 1e-6);
  Tensor dg = zeros_like(g), du = zeros_like(u);
  be().swiglu_backward(dg, du, r, g, u);
  expect_grad("swiglu dgate", g, dg, obj);
  expect_grad("swiglu dup", u, du, obj);
}

TEST(BackendCpu, EmbeddingBackwardRepeatedIds) {
  std::mt19937 rng(6);
  Tensor table = randn({5, 3}, rng), r = randn({4, 3}, rng);
  const std::vector<int32_t> idv{1, 3, 1, 0};  // id 1 twice: its gradient rows must add up
  Tensor ids = Tensor::from_i32(idv, {4});
  Tensor out = Tensor::zeros(DType::kF32, {4, 3});
  auto obj = [&] {
    be().embedding(out, ids, table);
    return dot(out, r);
  };
  obj();
  EXPECT_EQ(out.get(2 * 3 + 1), table.get(1 * 3 + 1));
  Tensor dt = zeros_like(table);
  be().embedding_backward(dt, r, ids);
  expect_grad("embedding dtable", table, dt, obj);
  const std::vector<int32_t> bad{5};
  Tensor bad_ids = Tensor::from_i32(bad, {1});
  Tensor out1 = Tensor::zeros(DType::kF32, {1, 3});
  EXPECT_ANY_THROW(be().embedding(out1, bad_ids, table));
}

TEST(BackendCpu, CrossEntropyIgnoreIndexMean) {
  std::mt19937 rng(7);
  Tensor logits = randn({4, 6}, rng, 2.0f);
  const std::vector<int32_t> tv{2, kIgnoreIndex, 5, 0};
  Tensor targets = Tensor::from_i32(tv, {4});
  int64_t count = 0;
  auto obj = [&] { return be().cross_entropy(logits, targets, &count); };
  const double loss = obj();
  EXPECT_EQ(count, 3);
  double ref = 0;  // mean of -log softmax over the 3 non-ignored rows, in double
  for (int64_t i : {0, 2, 3}) {
    double s = 0;
    for (int64_t j = 0; j < 6; ++j) s += std::exp(static_cast<double>(logits.get(i * 6 + j)));
    ref += std::log(s) - logits.get(i * 6 + tv[static_cast<size_t>(i)]);
  }
  EXPECT_NEAR(loss, ref / 3, 1e-6);
  Tensor dl = zeros_like(logits);
  be().cross_entropy_backward(dl, logits, targets, 1.0f);
  for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(dl.get(6 + j), 0.0f) << "ignored row has no gradient";
  expect_grad("cross_entropy dlogits", logits, dl, obj, 1e-3, 1e-3);
  const std::vector<int32_t> none{kIgnoreIndex, kIgnoreIndex, kIgnoreIndex, kIgnoreIndex};
  Tensor all_ignored = Tensor::from_i32(none, {4});
  EXPECT_EQ(be().cross_entropy(logits, all_ignored, &count), 0.0);
  EXPECT_EQ(count, 0);
}

TEST(BackendCpu, ResidualAddBackward) {
  std::mt19937 rng(8);
  Tensor a = randn({2, 3}, rng), b = randn({2, 3}, rng), r = randn({2, 3}, rng);
  Tensor out = zeros_like(a);
  auto obj = [&] {
    be().add(out, a, b);
    return dot(out, r);
  };
  obj();
  Tensor da = zeros_like(a), db = zeros_like(b);
  be().accumulate(da, r);
  be().accumulate(db, r);
  expect_grad("add da", a, da, obj);
  expect_grad("add db", b, db, obj);
}

// Shapes above kParallelMin, so that the OpenMP paths (per-thread dK/dV and dW ownership) run.
TEST(BackendCpu, LargeShapesTakeTheThreadedPaths) {
  std::mt19937 rng(9);
  const int64_t b = 2, t = 16, h = 4, kv = 2, d = 64;
  Tensor q = randn({b, t, h, d}, rng, 0.3f), k = randn({b, t, kv, d}, rng, 0.3f);
  Tensor v = randn({b, t, kv, d}, rng), r = randn({b, t, h, d}, rng);
  const std::vector<int32_t> len{16, 9};
  const std::vector<int32_t> posv = [&] {
    std::vector<int32_t> p;
    for (int64_t i = 0; i < b * t; ++i) p.push_back(static_cast<int32_t>(i % t));
    return p;
  }();
  Tensor lengths = Tensor::from_i32(len, {b}), pos = Tensor::from_i32(posv, {b, t});
  Tensor qr = zeros_like(q), out = zeros_like(q), att = Tensor::zeros(DType::kF32, {b, h, t, t});
  auto obj = [&] {
    be().rope(qr, q, pos, 10000.0);
    be().attention(out, att, qr, k, v, lengths);
    return dot(out, r);
  };
  obj();
  Tensor dqr = zeros_like(q), dq = zeros_like(q), dk = zeros_like(k), dv = zeros_like(v);
  be().attention_backward(dqr, dk, dv, r, att, qr, k, v);
  be().rope_backward(dq, dqr, pos, 10000.0);
  expect_grad("large rope+attention dq", q, dq, obj, 1e-2, 1e-2, 97);
  expect_grad("large attention dk", k, dk, obj, 1e-2, 1e-2, 53);
  expect_grad("large attention dv", v, dv, obj, 1e-2, 1e-2, 53);

  Tensor x = randn({64, 512}, rng), w = randn({512}, rng), rr = randn({64, 512}, rng);
  Tensor y = zeros_like(x), rstd = Tensor::zeros(DType::kF32, {64});
  auto obj2 = [&] {
    be().rmsnorm(y, rstd, x, w, 1e-6f);
    return dot(y, rr);
  };
  obj2();
  Tensor dx = zeros_like(x), dw = zeros_like(w);
  be().rmsnorm_backward(dx, dw, rr, x, w, rstd);
  expect_grad("large rmsnorm dx", x, dx, obj2, 1e-2, 1e-2, 331);
  expect_grad("large rmsnorm dw", w, dw, obj2, 1e-2, 1e-2, 7);

  Tensor g = randn({64, 640}, rng), u = randn({64, 640}, rng), rs = randn({64, 640}, rng);
  Tensor a = zeros_like(g);
  auto obj3 = [&] {
    be().swiglu(a, g, u);
    return dot(a, rs);
  };
  obj3();
  Tensor dg = zeros_like(g), du = zeros_like(u);
  be().swiglu_backward(dg, du, rs, g, u);
  expect_grad("large swiglu dgate", g, dg, obj3, 1e-2, 1e-2, 401);
  expect_grad("large swiglu dup", u, du, obj3, 1e-2, 1e-2, 401);
}

TEST(BackendCpu, TensorBasics) {
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
  Tensor f = be().to_f32(b);
  EXPECT_EQ(f.get(0), 1.0f);
  EXPECT_EQ(f.get(1), -2.0f);
}

}  // namespace
}  // namespace nnpipe
