#include <gtest/gtest.h>
#include <unistd.h>

#include <set>

#include "core/error.h"
#include "train/batching.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using namespace nnpipe;

TEST(Batching, EveryEpochVisitsEveryExampleOnce) {
  TrainSchedule s;
  s.num_examples = 11;
  s.batch_size = 2;
  s.grad_accum = 3;
  s.num_epochs = 3;
  s.seed = 5;
  EXPECT_EQ(s.micro_batches_per_epoch(), 6);
  EXPECT_EQ(s.steps_per_epoch(), 2);
  EXPECT_EQ(s.total_steps(), 6);
  std::vector<size_t> first_epoch;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::multiset<size_t> seen;
    std::vector<size_t> order;
    for (int64_t k = 0; k < s.steps_per_epoch(); ++k) {
      StepPlan p = plan_step(s, epoch * s.steps_per_epoch() + k);
      EXPECT_EQ(p.epoch, epoch);
      EXPECT_EQ(p.micro_batches.size(), 3u);
      for (const auto& mb : p.micro_batches)
        for (size_t i : mb) {
          seen.insert(i);
          order.push_back(i);
        }
    }
    EXPECT_EQ(seen.size(), 11u);
    EXPECT_EQ(std::set<size_t>(seen.begin(), seen.end()).size(), 11u);
    if (epoch == 0) first_epoch = order;
    if (epoch == 1) {
      EXPECT_NE(order, first_epoch);  // reshuffled
    }
  }
  // Pure function of (seed, step): the same plan again, and another seed differs.
  EXPECT_EQ(plan_step(s, 3).micro_batches, plan_step(s, 3).micro_batches);
  TrainSchedule t = s;
  t.seed = 6;
  EXPECT_NE(plan_step(t, 0).micro_batches, plan_step(s, 0).micro_batches);
  s.shuffle = false;
  EXPECT_EQ(plan_step(s, 0).micro_batches[0], (std::vector<size_t>{0, 1}));
  s.max_steps = 9;  // beyond the epochs: more epochs
  EXPECT_EQ(s.total_steps(), 9);
  EXPECT_EQ(plan_step(s, 8).epoch, 4);
}

TEST(Batching, CollatePadsRightAndCountsShiftedLabels) {
  std::vector<Example> ex(2);
  ex[0].input_ids = {5, 6, 7};
  ex[0].labels = {-100, 6, 7};
  ex[1].input_ids = {8};
  ex[1].labels = {8};  // position 0 is never a target after the shift
  const std::vector<size_t> idx = {0, 1};
  Qwen2Batch b = collate(ex, idx);
  EXPECT_EQ(b.batch, 2);
  EXPECT_EQ(b.seq, 3);
  EXPECT_EQ(b.input_ids, (std::vector<int32_t>{5, 6, 7, 8, 0, 0}));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-100, 6, 7, 8, -100, -100}));
  EXPECT_EQ(b.lengths, (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(count_loss_tokens(b), 2);
}

TEST(Trainer, WeightDecayExemptionsLikeHfTrainer) {
  EXPECT_TRUE(decays("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(decays("model.embed_tokens.weight"));
  EXPECT_TRUE(decays("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(decays("model.layers.3.input_layernorm.weight"));
  EXPECT_FALSE(decays("model.layers.3.post_attention_layernorm.weight"));
  EXPECT_FALSE(decays("model.norm.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.q_norm.weight"));  // Qwen3
  EXPECT_FALSE(decays("norm.weight"));
  EXPECT_TRUE(decays("model.normal.weight"));  // "norm" must be a whole name part
  EXPECT_TRUE(decays("model.layers.0.enorm.weight"));
}

TEST(Trainer, ContinualConfigCheckpointShapeWinsWithWarnings) {
  LoraConfig ck;
  ck.r = 4;
  ck.lora_alpha = 8;
  ck.target_modules = {"q_proj", "v_proj"};
  FinetuneLoraParams p;
  p.lora_rank = 16;
  p.lora_alpha = 32;
  p.lora_dropout = 0.1;
  p.model_path = "base";
  p.checkpoint_lora = "prev";
  std::vector<std::string> warnings;
  LoraConfig c = resolve_continual_config(ck, p, warnings);
  EXPECT_EQ(c.r, 4);
  EXPECT_EQ(c.lora_alpha, 8);
  EXPECT_EQ(c.target_modules, ck.target_modules);
  EXPECT_EQ(c.lora_dropout, 0.1);
  ASSERT_EQ(warnings.size(), 3u);  // rank, alpha, targets
  EXPECT_NE(warnings[0].find("r=4"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[2].find("target_modules"), std::string::npos) << warnings[2];
  warnings.clear();
  p.lora_rank = 4;
  p.lora_alpha = 8;
  p.target_modules = {"v_proj", "q_proj"};  // order does not matter
  resolve_continual_config(ck, p, warnings);
  EXPECT_TRUE(warnings.empty());
}

TEST(Checkpoint, StateRoundTripsExactlyAndOldOnesArePruned) {
  fs::path dir = fs::temp_directory_path() / fmt::format("nnpipe_ckpt_{}", ::getpid());
  fs::remove_all(dir);
  TrainerState st;
  st.mode = "lora";
  st.total_steps = 10;
  st.last_loss = 0.1 + 0.2;  // not representable exactly in decimal: bits must survive
  st.rng = {0xfedcba9876543210ull, (uint64_t{1} << 60) + 3};  // beyond a double's 53 bits
  st.params = {{"learning_rate", 1e-4}};
  st.data_fingerprint = fingerprint_tokens({{1, 2, 3}});
  AdamW opt(cpu_backend());
  Tensor p = Tensor::from_f32(std::vector<float>{1, 2}, {2});
  const Tensor g = Tensor::from_f32(std::vector<float>{0.5f, -0.5f}, {2});
  opt.step("w", p, g);
  for (int64_t step : {2, 4, 6}) {
    st.step = step;
    save_checkpoint(
        dir, st, opt, [](const fs::path& d) { write_file_atomic(d / "w", "x"); }, 2);
  }
  ASSERT_TRUE(latest_checkpoint(dir));
  EXPECT_EQ(latest_checkpoint(dir)->filename(), "checkpoint-6");
  EXPECT_FALSE(fs::exists(checkpoints_dir(dir) / "checkpoint-2"));
  EXPECT_TRUE(fs::exists(checkpoints_dir(dir) / "checkpoint-4" / "w"));
  TrainerState back = load_trainer_state(*latest_checkpoint(dir));
  EXPECT_EQ(back.step, 6);
  EXPECT_EQ(back.last_loss, st.last_loss);
  EXPECT_EQ(back.rng.seed, st.rng.seed);
  EXPECT_EQ(back.rng.counter, st.rng.counter);
  EXPECT_EQ(back.params, st.params);
  EXPECT_NE(fingerprint_tokens({{1, 2, 3}}), fingerprint_tokens({{1, 2}, {3}}));
  // A half-written checkpoint (no trainer_state.json) is never picked.
  fs::create_directories(checkpoints_dir(dir) / "checkpoint-9");
  EXPECT_EQ(latest_checkpoint(dir)->filename(), "checkpoint-6");
  write_file_atomic(checkpoints_dir(dir) / "checkpoint-6" / "trainer_state.json", "{\"x\": 1}");
  EXPECT_THROW(load_trainer_state(checkpoints_dir(dir) / "checkpoint-6"), Error);
  fs::remove_all(dir);
}
