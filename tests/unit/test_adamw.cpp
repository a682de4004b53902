#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>

#include "core/error.h"
#include "train/adamw.h"
#include "train/params.h"

using namespace nnpipe;

namespace {

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / fmt::format("nnpipe_adamw_{}_{}", name, ::getpid());
}

Tensor vec(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_f32(v, {n});
}

}  // namespace

TEST(AdamW, FirstStepMovesByLrTimesSign) {
  // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
  Tensor p = vec({1.0f, -2.0f, 0.5f});
  const Tensor g = vec({0.3f, -4.0f, 0.0f});
  AdamWState st;
  AdamWHyper h;
  h.lr = 0.1;
  h.weight_decay = 0;
  adamw_step(cpu_backend(), p, g, st, h);
  EXPECT_NEAR(p.get(0), 0.9f, 1e-6);
  EXPECT_NEAR(p.get(1), -1.9f, 1e-6);
  EXPECT_FLOAT_EQ(p.get(2), 0.5f);
  EXPECT_EQ(st.step, 1);
  EXPECT_NEAR(st.exp_avg.get(0), 0.03f, 1e-7);
  EXPECT_NEAR(st.exp_avg_sq.get(1), 0.016f, 1e-7);
}

TEST(AdamW, DecoupledWeightDecayBeforeUpdate) {
  Tensor p = vec({2.0f});
  const Tensor g = vec({0.0f});
  AdamWState st;
  AdamWHyper h;
  h.lr = 0.5;
  h.weight_decay = 0.1;
  adamw_step(cpu_backend(), p, g, st, h);
  EXPECT_FLOAT_EQ(p.get(0), 2.0f * 0.95f);  // zero grad: only the decay acts
}

TEST(AdamW, SizeMismatchIsAnError) {
  Tensor p = vec({1, 2});
  const Tensor g = vec({1});
  AdamWState st;
  EXPECT_THROW(adamw_step(cpu_backend(), p, g, st, {}), Error);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  const fs::path path = temp_path("state.safetensors");
  Tensor a = vec({0.1f, 0.2f, -0.3f}), b = vec({0.1f, 0.2f, -0.3f});
  const std::vector<Tensor> grads = {vec({1, 2, 3}), vec({-1, 0.5f, 2}), vec({0.1f, 0.1f, -3})};
  AdamW o1(cpu_backend()), o2(cpu_backend());
  o1.step("w", a, grads[0]);
  o1.step("w", a, grads[1]);
  o1.save(path);
  o2.step("w", b, grads[0]);  // different history, overwritten by load
  o2.load(path);
  b = vec(a.to_f32());
  o1.step("w", a, grads[2]);
  o2.step("w", b, grads[2]);
  EXPECT_EQ(a.to_f32(), b.to_f32());
  EXPECT_EQ(o2.state("w")->step, 3);
  fs::remove(path);
}

TEST(AdamW, LoadRejectsNonStateFile) {
  const fs::path path = temp_path("bad.safetensors");
  AdamW o(cpu_backend());
  Tensor p = vec({1});
  o.step("w", p, vec({1}));
  o.save(path);
  std::string bytes = read_file(path);
  // Rename the metadata key: no "steps" any more.
  auto pos = bytes.find("\"steps\"");
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos, 7, "\"stepz\"");
  write_file_atomic(path, bytes);
  try {
    o.load(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("steps"), std::string::npos) << e.what();
  }
  fs::remove(path);
}

TEST(AdamW, ClipGradNorm) {
  std::vector<Tensor> gs = {vec({3, 0}), vec({0, 4})};
  const float norm = clip_grad_norm(cpu_backend(), gs, 1.0);
  EXPECT_FLOAT_EQ(norm, 5.0f);
  EXPECT_NEAR(gs[0].get(0), 0.6f, 1e-6);
  EXPECT_NEAR(gs[1].get(1), 0.8f, 1e-6);
  // Below the limit: unchanged.
  std::vector<Tensor> gs2 = {vec({0.1f})};
  EXPECT_FLOAT_EQ(clip_grad_norm(cpu_backend(), gs2, 1.0), 0.1f);
  EXPECT_FLOAT_EQ(gs2[0].get(0), 0.1f);
}

TEST(AdamW, FinetuneParamsJson) {
  FinetuneLoraParams p;
  p.dataset_path = "d.jsonl";
  p.lora_rank = 4;
  p.checkpoint_lora = "ckpt";
  const json j = p.to_json();
  FinetuneLoraParams q = FinetuneLoraParams::from_json(j, "p.json");
  EXPECT_EQ(q.to_json(), j);
  EXPECT_EQ(q.target_modules.size(), 7u);
  q.validate("p.json");

  json bad = j;
  bad["lora_rnak"] = 3;
  try {
    FinetuneLoraParams::from_json(bad, "p.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_rnak"), std::string::npos) << e.what();
  }
  bad = j;
  bad["batch_size"] = "2";
  try {
    FinetuneLoraParams::from_json(bad, "p.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch_size"), std::string::npos) << e.what();
  }
  // LoRA keys are unknown to full fine-tuning.
  EXPECT_THROW(FinetuneFullParams::from_json(j, "p.json"), Error);
  q.lora_rank = 0;
  EXPECT_THROW(q.validate("p.json"), Error);
  q.lora_rank = 4;
  q.target_modules = {"q_proj", "lm_head"};
  EXPECT_THROW(q.validate("p.json"), Error);
  FinetuneFullParams f;
  f.dataset_path = "x";
  f.lr_scheduler = "step";
  EXPECT_THROW(f.validate("f"), Error);
}
