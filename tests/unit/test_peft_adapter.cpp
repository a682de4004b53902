#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace nnpipe;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_peft_{}_{}", name, ::getpid());
  fs::remove_all(d);
  return d;
}

ModelConfig tiny() {
  return ModelConfig::preset("tiny", 100);
}

LoraConfig all_seven(int64_t r = 4) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 8;
  c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return c;
}

using test::error_of;

}  // namespace

TEST(PeftAdapter, InitShapesAndBounds) {
  const ModelConfig m = tiny();
  PeftAdapter a = PeftAdapter::init(m, all_seven(), 7);
  ASSERT_EQ(a.modules.size(), static_cast<size_t>(7 * m.num_hidden_layers));
  a.validate(m, "init");
  for (const auto& mod : a.modules) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(mod.in));
    double maxabs = 0;
    for (float x : mod.A) maxabs = std::max(maxabs, std::fabs(static_cast<double>(x)));
    EXPECT_LE(maxabs, bound);
    EXPECT_GT(maxabs, 0.8 * bound);
    for (float x : mod.B) EXPECT_EQ(x, 0.0f);
  }
  EXPECT_DOUBLE_EQ(a.config.scaling(), 2.0);
  a.config.use_rslora = true;
  EXPECT_DOUBLE_EQ(a.config.scaling(), 4.0);
  // Same seed, same adapter.
  EXPECT_EQ(PeftAdapter::init(m, all_seven(), 7).modules[3].A, a.modules[3].A);
}

TEST(PeftAdapter, RoundTrip) {
  const ModelConfig m = tiny();
  PeftAdapter a = PeftAdapter::init(m, all_seven(), 1);
  for (auto& mod : a.modules)
    for (size_t i = 0; i < mod.B.size(); ++i) mod.B[i] = 0.01f * static_cast<float>(i % 7);
  const fs::path dir = temp_dir("rt");
  a.save(dir);
  PeftAdapter b = PeftAdapter::load(dir);
  b.validate(m, dir.string());
  ASSERT_EQ(b.modules.size(), a.modules.size());
  for (size_t i = 0; i < a.modules.size(); ++i) {
    EXPECT_EQ(b.modules[i].module, a.modules[i].module);
    EXPECT_EQ(b.modules[i].A, a.modules[i].A);
    EXPECT_EQ(b.modules[i].B, a.modules[i].B);
  }
  const json cfg = read_json_file(dir / "adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 8);
  EXPECT_EQ(cfg["rank_pattern"], json::object());
  // bf16 is kept as bf16.
  b.dtype = DType::kBF16;
  b.save(dir);
  PeftAdapter c = PeftAdapter::load(dir);
  EXPECT_EQ(c.dtype, DType::kBF16);
  fs::remove_all(dir);
}

TEST(PeftAdapter, WrongModelIsRejected) {
  ModelConfig big = tiny();
  big.hidden_size = 128;
  big.head_dim = big.hidden_size / big.num_attention_heads;
  PeftAdapter a = PeftAdapter::init(big, all_seven(), 1);
  const std::string e = error_of([&] { a.validate(tiny(), "ad"); });
  EXPECT_NE(e.find("another model"), std::string::npos) << e;
  EXPECT_NE(e.find("lora_A.weight"), std::string::npos) << e;

  ModelConfig deep = tiny();
  deep.num_hidden_layers += 1;
  PeftAdapter d = PeftAdapter::init(deep, all_seven(), 1);
  const std::string e2 = error_of([&] { d.validate(tiny(), "ad"); });
  EXPECT_NE(e2.find("out of range"), std::string::npos) << e2;

  // Missing a module of a layer.
  PeftAdapter s = PeftAdapter::init(tiny(), all_seven(), 1);
  s.modules.pop_back();
  const std::string e3 = error_of([&] { s.validate(tiny(), "ad"); });
  EXPECT_NE(e3.find("missing"), std::string::npos) << e3;
}

TEST(PeftAdapter, CorruptFilesAreRejected) {
  const fs::path dir = temp_dir("bad");
  PeftAdapter::init(tiny(), all_seven(), 1).save(dir);
  const fs::path cfg = dir / "adapter_config.json";
  const json good = read_json_file(cfg);

  auto with = [&](const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    write_json_file(cfg, j);
    return error_of([&] { PeftAdapter::load(dir); });
  };
  EXPECT_NE(with([](json& j) { j["target_modules"].push_back("lm_head"); }).find("lm_head"),
            std::string::npos);
  EXPECT_NE(with([](json& j) {
              j["rank_pattern"] = {{"q_proj", 2}};
            }).find("rank_pattern"),
            std::string::npos);
  EXPECT_NE(with([](json& j) { j["use_dora"] = true; }).find("use_dora"), std::string::npos);
  EXPECT_NE(with([](json& j) { j["r"] = 8; }).find("rank r = 8"), std::string::npos);
  EXPECT_NE(with([](json& j) { j["r"] = "4"; }).find("\"r\""), std::string::npos);
  EXPECT_NE(with([](json& j) { j.erase("peft_type"); }).find("peft_type"), std::string::npos);
  EXPECT_NE(with([](json& j) {
              j["target_modules"] = json::array({"q_proj"});
            }).find("not in target_modules"),
            std::string::npos);
  write_file_atomic(cfg, "{\"peft_type\": ");
  EXPECT_NE(error_of([&] { PeftAdapter::load(dir); }).find("adapter_config.json"),
            std::string::npos);
  write_json_file(cfg, good);

  // An unexpected tensor name.
  std::vector<float> x(4, 0.0f);
  TensorRef t{"base_model.model.lm_head.lora_A.weight",
              DType::kF32,
              {4, 1},
              {reinterpret_cast<const uint8_t*>(x.data()), 16}};
  write_safetensors(dir / "adapter_model.safetensors", std::span<const TensorRef>(&t, 1));
  EXPECT_NE(error_of([&] { PeftAdapter::load(dir); }).find("unexpected tensor"), std::string::npos);
  fs::remove_all(dir);
}
