// Issue 13 (hostile and careless input), the engine/CLI side: the context-size policy and the KV
// cache that grows as it fills (item 4), finite and bounded numbers from users and files (item 5),
// LoRA ranks and training lengths checked against the model (item 10). The command-line side of
// the same items is tests/conformance/test_hostile_cli.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "engine/context.h"
#include "engine/lora.h"
#include "engine/sampler.h"
#include "io/peft_adapter.h"
#include "model/init_model.h"
#include "test_util.h"
#include "train/params.h"

using namespace nnpipe;
using test::error_of;

namespace {

const fs::path& tiny_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_hostile_cli_{}", ::getpid());
    fs::remove_all(d);
    InitModelOptions o;
    o.preset = "tiny";
    o.seed = 3;
    o.out = d / "model";
    init_model(o);
    return d;
  }();
  return dir;
}

std::shared_ptr<const engine::Model> tiny_model() {
  static const auto m = engine::Model::load(tiny_dir() / "model");
  return m;
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

// Item 4: -c N is checked and capped once, for infer, chat and eval alike.
TEST(HostileCli, Item4ContextSizeNegativeIsAnErrorLargeIsCapped) {
  ModelConfig c = tiny_model()->config();
  ASSERT_EQ(c.max_position_embeddings, 2048);
  const std::string e = error_of([&] { engine::context_size_for(c, -5, "--ctx-size"); });
  EXPECT_TRUE(has(e, "--ctx-size -5")) << e;
  EXPECT_EQ(engine::context_size_for(c, 0, "--ctx-size"), 2048);
  EXPECT_EQ(engine::context_size_for(c, 1000000000, "--ctx-size"), 2048);
  EXPECT_EQ(engine::context_size_for(c, 100, "--ctx-size"), 100);
  c.max_position_embeddings = 32768;
  EXPECT_EQ(engine::context_size_for(c, 0, "--ctx"), 4096);
}

// Item 4: the KV cache is allocated as it fills (doubling), not for the whole context up front,
// and the results stay bit-identical to a context sized exactly.
TEST(HostileCli, Item4KvCacheGrowsAsItFillsWithIdenticalLogits) {
  auto model = tiny_model();
  const ModelConfig& c = model->config();
  const size_t row_bytes = static_cast<size_t>(c.kv_dim()) * 2 /*f16*/ * 2 /*K and V*/ *
                           static_cast<size_t>(c.num_hidden_layers);
  engine::Context big(model, 20000000);  // was 5 GB of KV for this model
  EXPECT_EQ(big.kv_bytes(), 0u);
  engine::Context small(model, 700);
  std::vector<int32_t> toks;
  for (int i = 0; i < 700; ++i) toks.push_back((11 + 7 * i) % 500 + 3);
  const int64_t V = c.vocab_size;
  int64_t done = 0;
  // Batches of several sizes cross the 256 -> 512 -> 1024 growth points.
  for (int64_t n : {5, 1, 250, 1, 1, 300, 142}) {
    const float* a = big.forward(toks.data() + done, n);
    std::vector<float> la(a, a + V);
    const float* b = small.forward(toks.data() + done, n);
    done += n;
    ASSERT_EQ(std::memcmp(la.data(), b, static_cast<size_t>(V) * sizeof(float)), 0)
        << "logits differ after " << done << " tokens";
    const int64_t rows = static_cast<int64_t>(big.kv_bytes() / row_bytes);
    EXPECT_GE(rows, done);
    EXPECT_LE(rows, std::max<int64_t>(256, 2 * done)) << "after " << done << " tokens";
  }
  EXPECT_LE(small.kv_bytes(), 700 * row_bytes);  // never beyond n_ctx
  big.truncate(3);  // truncation keeps the rows; the next tokens overwrite them
  const float* a = big.forward(toks.data() + 3, 4);
  std::vector<float> la(a, a + V);
  small.truncate(3);
  EXPECT_EQ(std::memcmp(la.data(), small.forward(toks.data() + 3, 4), V * sizeof(float)), 0);
}

// Item 5: every sampling float finite and in range, the parameter named.
TEST(HostileCli, Item5SamplerRefusesNonFiniteAndOutOfRange) {
  struct Case {
    const char* key;
    void (*set)(engine::SamplingParams&);
  };
  const Case cases[] = {
      {"temperature", [](engine::SamplingParams& p) { p.temperature = kInf; }},
      {"temperature", [](engine::SamplingParams& p) { p.temperature = kNaN; }},
      {"top_p", [](engine::SamplingParams& p) { p.top_p = kNaN; }},
      {"top_p", [](engine::SamplingParams& p) { p.top_p = 2; }},
      {"min_p", [](engine::SamplingParams& p) { p.min_p = kNaN; }},
      {"repeat_penalty", [](engine::SamplingParams& p) { p.repeat_penalty = kNaN; }},
      {"repeat_penalty", [](engine::SamplingParams& p) { p.repeat_penalty = 0; }},
      {"presence_penalty", [](engine::SamplingParams& p) { p.presence_penalty = kNaN; }},
      {"frequency_penalty", [](engine::SamplingParams& p) { p.frequency_penalty = -kInf; }},
      {"top_k", [](engine::SamplingParams& p) { p.top_k = -5; }},
      {"penalty_last_n", [](engine::SamplingParams& p) { p.penalty_last_n = -100; }},
  };
  for (const Case& k : cases) {
    engine::SamplingParams p;
    k.set(p);
    const std::string e = error_of([&] { engine::Sampler s(p); });
    EXPECT_TRUE(has(e, std::string("sampling: ") + k.key)) << k.key << ": " << e;
  }
  engine::SamplingParams ok;
  ok.temperature = 0.7f;
  ok.penalty_last_n = -1;
  EXPECT_EQ(error_of([&] { engine::Sampler s(ok); }), "(no error)");
}

// Item 5: --lora FILE:SCALE with a non-finite or absurd scale.
TEST(HostileCli, Item5LoraScaleMustBeFinite) {
  for (const char* bad : {"a.gguf:nan", "a.gguf:inf", "a.gguf:-inf", "a.gguf:1e39", "a.gguf:2e4"}) {
    const std::string e = error_of([&] { engine::parse_lora_arg(bad); });
    EXPECT_TRUE(has(e, std::string("--lora ") + bad) && has(e, "scale")) << e;
  }
  EXPECT_EQ(engine::parse_lora_arg("a.gguf:-0.5"),
            (std::pair<std::string, float>{"a.gguf", -0.5f}));
  EXPECT_EQ(engine::parse_lora_arg("we:ird.gguf"),
            (std::pair<std::string, float>{"we:ird.gguf", 1.0f}));
  EXPECT_TRUE(has(error_of([] { engine::check_lora_scale(1e39, "x.gguf"); }), "x.gguf"));
}

// Item 5: a PEFT adapter_config.json lora_alpha of 1e308 (finite in JSON, inf as alpha / r in f32)
// is refused by name; a trained lora_alpha has the same bound.
TEST(HostileCli, Item5PeftLoraAlphaOutOfRange) {
  json j = {{"peft_type", "LORA"}, {"r", 8}, {"target_modules", {"q_proj"}}};
  for (double alpha : {1e308, -1e7}) {
    j["lora_alpha"] = alpha;
    const std::string e = error_of([&] { LoraConfig::from_json(j, "cfg.json"); });
    EXPECT_TRUE(has(e, "cfg.json") && has(e, "lora_alpha")) << e;
  }
  j["lora_alpha"] = -16;  // negative: accepted, as llama.cpp does
  EXPECT_EQ(LoraConfig::from_json(j, "cfg.json").lora_alpha, -16);
  FinetuneLoraParams p;
  p.dataset_path = "d.json";
  p.lora_alpha = 1e308;
  EXPECT_TRUE(has(error_of([&] { p.validate("params"); }), "lora_alpha"));
}

// Item 10d: a LoRA rank above min(in, out) of an adapted matrix is refused with the numbers.
TEST(HostileCli, Item10dLoraRankAboveMatrixDims) {
  const ModelConfig& c = tiny_model()->config();
  LoraConfig lc;
  lc.r = 100000;
  lc.target_modules = {"q_proj", "down_proj"};
  const std::string e = error_of([&] { PeftAdapter::init(c, lc, 1); });
  EXPECT_TRUE(has(e, "100000") && has(e, "q_proj") && has(e, std::to_string(c.hidden_size))) << e;
  lc.r = std::min(c.hidden_size, c.q_dim());
  lc.target_modules = {"q_proj"};
  EXPECT_EQ(error_of([&] { PeftAdapter::init(c, lc, 1); }), "(no error)");
}

// Item 10c: training with max_seq_len past the model's context warns (the trainer logs it and
// puts it into summary.json's warnings).
TEST(HostileCli, Item10cMaxSeqLenPastTheContextWarns) {
  FinetuneFullParams p;
  p.max_seq_len = 100000;
  auto w = p.context_warning(2048);
  ASSERT_TRUE(w.has_value());
  EXPECT_TRUE(has(*w, "100000") && has(*w, "2048")) << *w;
  p.max_seq_len = 2048;
  EXPECT_FALSE(p.context_warning(2048).has_value());
}
