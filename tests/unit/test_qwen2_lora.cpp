// Qwen2Model with a LoRA adapter: A/B gradients against central finite differences of the model's
// own loss (PEFT equality is the conformance test's job), dropout masks reproducible from (seed,
// counter), the frozen half-precision base, lora_adapter() and attach errors. Tolerances as in
// test_qwen2_model.cpp (per-tensor relative error <= 2e-2) with a smaller step (see below).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <random>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "model/init_model.h"
#include "model/qwen2.h"
#include "qwen2_micro.h"

namespace nnpipe {
namespace {

using test_models::micro_batch;
using test_models::micro_config;
using test_models::micro_model;

// PEFT-initialised A, and a random B (PEFT's B = 0 would hide the branch and zero dA).
PeftAdapter micro_adapter(const ModelConfig& c, double dropout,
                          std::vector<std::string> modules = {"q_proj", "k_proj", "v_proj",
                                                              "o_proj", "gate_proj", "up_proj",
                                                              "down_proj"}) {
  LoraConfig lc;
  lc.r = 2;
  lc.lora_alpha = 3;
  lc.lora_dropout = dropout;
  lc.target_modules = std::move(modules);
  PeftAdapter a = PeftAdapter::init(c, lc, 7);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (LoraModule& m : a.modules)
    for (float& v : m.B) v = d(rng);
  return a;
}

// With dropout, every forward rewinds the counter so that the finite differences see the same
// masks.
void check_lora_grads(double dropout) {
  Qwen2Model m = micro_model();
  m.attach_lora(micro_adapter(m.config(), dropout), "micro");
  CounterRng rng{5, 0};
  m.set_training(true, &rng);
  const Qwen2Batch batch = micro_batch();
  auto loss = [&] {
    rng.counter = 0;
    return m.forward(batch);
  };
  ASSERT_TRUE(std::isfinite(loss()));
  m.backward();
  EXPECT_TRUE(m.grads().by_name.empty()) << "frozen base must not allocate base gradients";
  ASSERT_EQ(m.trainable().size(), 2u * 7 * 2);
  ASSERT_EQ(m.trainable_grads().size(), m.trainable().size());
  // The B-scaled branch makes the loss strongly curved in A (O(h^2) truncation is 4e-2 at h =
  // 1e-2), so a smaller step; f32 rounding then adds ~1e-7 / h = 3e-5 against gradients of O(1).
  const double h = 3e-3;
  for (auto& [name, param] : m.trainable()) {
    const Tensor& g = m.trainable_grads().at(name);
    ASSERT_EQ(g.shape(), param.shape()) << name;
    const double rel =
        test_models::fd_relative_error(param, g, h, std::max<int64_t>(1, param.numel() / 12), loss);
    ASSERT_GE(rel, 0) << name << ": zero numeric gradient";
    EXPECT_LE(rel, 2e-2) << name;
  }
}

TEST(Qwen2Lora, GradientsMatchFiniteDifferences) {
  check_lora_grads(0.0);
}
TEST(Qwen2Lora, GradientsMatchFiniteDifferencesWithDropout) {
  check_lora_grads(0.5);
}

TEST(Qwen2Lora, DropoutMasksFollowTheRng) {
  Qwen2Model m = micro_model();
  m.attach_lora(micro_adapter(m.config(), 0.5), "micro");
  const Qwen2Batch batch = micro_batch();
  const double eval = m.forward(batch);  // eval mode (default): no dropout
  CounterRng r1{9, 0}, r2{9, 0}, r3{10, 0};
  m.set_training(true, &r1);
  const double l1 = m.forward(batch);
  m.set_training(true, &r2);
  const double l2 = m.forward(batch);
  m.set_training(true, &r3);
  const double l3 = m.forward(batch);
  EXPECT_EQ(l1, l2);  // same seed, same masks: bit-identical
  EXPECT_NE(l1, l3);
  EXPECT_NE(l1, eval);
  // Eval mode leaves the Rng untouched and drops nothing.
  EXPECT_EQ(r1.counter, r2.counter);
  EXPECT_GT(r1.counter, 0u) << "each mask advances the counter by its size";
  const uint64_t before = r1.counter;
  m.set_training(false, &r1);
  EXPECT_EQ(m.forward(batch), eval);
  EXPECT_EQ(r1.counter, before);
  // The same seed further along the stream: other masks.
  CounterRng r5{9, before};
  m.set_training(true, &r5);
  EXPECT_NE(m.forward(batch), l1);
  // p = 0 in training mode: no draws either.
  Qwen2Model m0 = micro_model();
  m0.attach_lora(micro_adapter(m0.config(), 0.0), "micro");
  CounterRng r4{9, 0};
  m0.set_training(true, &r4);
  EXPECT_EQ(m0.forward(batch), eval);
  EXPECT_EQ(r4.counter, 0u);
  // Dropout in training needs an Rng.
  EXPECT_THROW(m.set_training(true, nullptr), Error);
}

TEST(Qwen2Lora, WithoutLoraTrainableIsEveryParameter) {
  Qwen2Model m = micro_model();
  EXPECT_FALSE(m.has_lora());
  m.forward(micro_batch());
  m.backward();
  EXPECT_EQ(m.trainable().size(), m.params().by_name.size());
  EXPECT_EQ(&m.trainable(), &m.params().by_name);
  EXPECT_EQ(&m.trainable_grads(), &m.grads().by_name);
  EXPECT_THROW(m.lora_adapter(), Error);
}

TEST(Qwen2Lora, AdapterRoundTrip) {
  Qwen2Model m = micro_model();
  const PeftAdapter src = micro_adapter(m.config(), 0.1, {"q_proj", "v_proj", "down_proj"});
  m.attach_lora(src, "micro");
  EXPECT_TRUE(m.has_lora());
  EXPECT_EQ(m.trainable().size(), 2u * 3 * 2);
  EXPECT_EQ(m.trainable().at(lora_tensor_name(1, "down_proj", 'A')).shape(),
            (std::vector<int64_t>{2, 12}));
  EXPECT_EQ(m.trainable().at(lora_tensor_name(1, "down_proj", 'B')).shape(),
            (std::vector<int64_t>{8, 2}));
  // An optimizer step writes through trainable(); lora_adapter() must see it.
  m.trainable().at(lora_tensor_name(0, "q_proj", 'B')).set(1, 4.25f);
  const PeftAdapter out = m.lora_adapter();
  EXPECT_EQ(out.dtype, DType::kF32);
  EXPECT_EQ(out.config.r, src.config.r);
  EXPECT_EQ(out.config.lora_alpha, src.config.lora_alpha);
  EXPECT_EQ(out.config.lora_dropout, src.config.lora_dropout);
  EXPECT_EQ(out.config.target_modules, src.config.target_modules);
  ASSERT_EQ(out.modules.size(), src.modules.size());
  for (size_t i = 0; i < src.modules.size(); ++i) {
    EXPECT_EQ(out.modules[i].layer, src.modules[i].layer);
    EXPECT_EQ(out.modules[i].module, src.modules[i].module);
    EXPECT_EQ(out.modules[i].in, src.modules[i].in);
    EXPECT_EQ(out.modules[i].out, src.modules[i].out);
    EXPECT_EQ(out.modules[i].A, src.modules[i].A);
    if (i == 0) {
      EXPECT_EQ(out.modules[i].B[1], 4.25f);
    } else {
      EXPECT_EQ(out.modules[i].B, src.modules[i].B);
    }
  }
  out.validate(m.config(), "round trip");
}

TEST(Qwen2Lora, AttachRejectsAnAdapterForAnotherShape) {
  Qwen2Model m = micro_model();
  ModelConfig other = micro_config();
  other.intermediate_size = 16;
  try {
    m.attach_lora(micro_adapter(other, 0.0), "other-adapter");
    FAIL() << "attached an adapter for another model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("other-adapter"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(m.has_lora());
}

TEST(Qwen2Lora, FrozenBaseKeepsBf16) {
  const fs::path dir =
      fs::temp_directory_path() / ("nnpipe_lora_bf16_" + std::to_string(::getpid()));
  InitModelOptions opt;
  opt.seed = 3;
  opt.out = dir;
  opt.dtype = DType::kBF16;
  init_model(opt);
  Qwen2LoadOptions frozen;
  frozen.frozen_base = true;
  Qwen2Model m = Qwen2Model::load(dir, cpu_backend(), frozen);
  Qwen2Model full = Qwen2Model::load(dir, cpu_backend());
  fs::remove_all(dir);
  for (const WeightSpec& s : qwen2_weight_specs(m.config())) {
    const bool matrix = s.kind == WeightKind::kMatrix || s.kind == WeightKind::kEmbedding;
    EXPECT_EQ(m.params().at(s.name).dtype(), matrix ? DType::kBF16 : DType::kF32) << s.name;
    EXPECT_EQ(full.params().at(s.name).dtype(), DType::kF32) << s.name;
  }
  // The bf16 base computes on the exact f32 widening of its values: same logits as the f32 copy
  // up to summation order.
  m.attach_lora(micro_adapter(m.config(), 0.0), "bf16");
  full.attach_lora(micro_adapter(full.config(), 0.0), "f32");
  Qwen2Batch b = micro_batch();
  const double lm = m.forward(b), lf = full.forward(b);
  EXPECT_NEAR(lm, lf, 1e-5);
  float worst = 0;
  for (int64_t i = 0; i < m.logits().numel(); ++i)
    worst = std::max(worst, std::abs(m.logits().get(i) - full.logits().get(i)));
  EXPECT_LE(worst, 1e-4f);
  m.backward();
  full.backward();
  EXPECT_TRUE(m.grads().by_name.empty());
  for (const auto& [name, g] : m.trainable_grads()) {
    const Tensor& gf = full.trainable_grads().at(name);
    ASSERT_EQ(g.dtype(), DType::kF32);
    double diff2 = 0, ref2 = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      diff2 += (g.get(i) - gf.get(i)) * (g.get(i) - gf.get(i));
      ref2 += gf.get(i) * gf.get(i);
    }
    EXPECT_LE(std::sqrt(diff2), 1e-3 * std::sqrt(ref2) + 1e-12) << name;
  }
}

}  // namespace
}  // namespace nnpipe
