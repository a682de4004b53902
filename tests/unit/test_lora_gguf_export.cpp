// export_lora_gguf on nnpipe-made adapters: names, order, types and dims of the GGUF tensors, the
// KVs llama.cpp reads, and the errors (nothing written). Byte equality with llama.cpp's
// convert_lora_to_gguf.py is proven in tests/conformance/test_export_lora_gguf.py.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>

#include "core/error.h"
#include "export/lora_gguf_export.h"
#include "io/gguf.h"
#include "io/peft_adapter.h"
#include "model/init_model.h"
#include "test_util.h"

using namespace nnpipe;

namespace {

struct Fixture {
  fs::path dir, base, adapter;
};

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_lora_gguf_{}_{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A tiny base (hidden 64, intermediate 176, 2 layers) and an adapter on `targets` with B != 0.
Fixture make(const std::string& name, std::vector<std::string> targets, int64_t r, bool rslora) {
  Fixture f;
  f.dir = temp_dir(name);
  f.base = f.dir / "base";
  InitModelOptions o;
  o.seed = 3;
  o.out = f.base;
  const ModelConfig c = init_model(o).config;
  LoraConfig lc;
  lc.r = r;
  lc.lora_alpha = 8;
  lc.use_rslora = rslora;
  lc.target_modules = std::move(targets);
  PeftAdapter a = PeftAdapter::init(c, lc, 5);
  for (auto& m : a.modules)
    for (size_t i = 0; i < m.B.size(); ++i) m.B[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
  f.adapter = f.dir / "adapter";
  a.save(f.adapter);
  return f;
}

using test::error_of;

}  // namespace

TEST(LoraGgufExport, TensorsInConverterOrderWithQ8Fallback) {
  const Fixture f = make("order", {"q_proj", "down_proj"}, 8, false);
  const fs::path out = f.dir / "a.gguf";
  const auto s = export_lora_gguf(f.adapter, f.base, GgmlType::kQ8_0, out);
  EXPECT_EQ(s.tensors, 8u);
  const GgufFile g = GgufFile::open(out);
  EXPECT_EQ(g.get_string("general.architecture"), "qwen2");
  EXPECT_EQ(g.get_string("general.type"), "adapter");
  EXPECT_EQ(g.get_string("adapter.type"), "lora");
  EXPECT_EQ(g.get_string("general.name"), "Adapter");
  EXPECT_EQ(g.get_f32("adapter.lora.alpha"), 8.0f);
  EXPECT_EQ(g.get_u32("general.quantization_version"), 2u);
  ASSERT_EQ(g.metadata().size(), 6u);
  EXPECT_EQ(g.metadata()[0].key, "general.architecture");
  // Sorted as PEFT names: "mlp" before "self_attn". Q8_0 needs rows of 32: `in` = 176 (down_proj
  // lora_a) and r = 8 (every lora_b) fall back to F16.
  struct Want {
    const char* name;
    GgmlType type;
    std::vector<int64_t> ne;
  };
  const Want want[] = {
      {"blk.0.ffn_down.weight.lora_a", GgmlType::kF16, {176, 8}},
      {"blk.0.ffn_down.weight.lora_b", GgmlType::kF16, {8, 64}},
      {"blk.0.attn_q.weight.lora_a", GgmlType::kQ8_0, {64, 8}},
      {"blk.0.attn_q.weight.lora_b", GgmlType::kF16, {8, 64}},
      {"blk.1.ffn_down.weight.lora_a", GgmlType::kF16, {176, 8}},
      {"blk.1.ffn_down.weight.lora_b", GgmlType::kF16, {8, 64}},
      {"blk.1.attn_q.weight.lora_a", GgmlType::kQ8_0, {64, 8}},
      {"blk.1.attn_q.weight.lora_b", GgmlType::kF16, {8, 64}},
  };
  ASSERT_EQ(g.tensors().size(), std::size(want));
  for (size_t i = 0; i < std::size(want); ++i) {
    EXPECT_EQ(g.tensors()[i].name, want[i].name);
    EXPECT_EQ(g.tensors()[i].type, want[i].type) << want[i].name;
    EXPECT_EQ(g.tensors()[i].ne, want[i].ne) << want[i].name;
  }
  fs::remove_all(f.dir);
}

TEST(LoraGgufExport, RsLoraAlphaTimesSqrtR) {
  const Fixture f = make("rslora", {"v_proj"}, 16, true);
  const fs::path out = f.dir / "a.gguf";
  const auto s = export_lora_gguf(f.adapter, f.base, GgmlType::kF32, out);
  // llama.cpp: scale = alpha / r must equal PEFT's lora_alpha / sqrt(r) = 8 / 4.
  const float alpha = GgufFile::open(out).get_f32("adapter.lora.alpha");
  EXPECT_EQ(alpha, 32.0f);
  EXPECT_EQ(s.alpha, alpha);
  EXPECT_EQ(alpha / 16.0f, 2.0f);
  fs::remove_all(f.dir);
}

TEST(LoraGgufExport, ErrorsWriteNothing) {
  const Fixture f = make("errors", {"k_proj"}, 4, false);
  const fs::path out = f.dir / "a.gguf";
  ErrorCode code{};
  EXPECT_NE(error_of([&] { export_lora_gguf(f.adapter, f.base, GgmlType::kQ4_0, out); }, &code)
                .find("f32, f16, bf16, q8_0"),
            std::string::npos);
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  // The adapter's layer 1 renamed to layer 9: the base has 2 layers.
  PeftAdapter a = PeftAdapter::load(f.adapter);
  a.modules[1].layer = 9;
  a.save(f.dir / "bad");
  const std::string e =
      error_of([&] { export_lora_gguf(f.dir / "bad", f.base, GgmlType::kF16, out); }, &code);
  EXPECT_EQ(code, ErrorCode::kFormat);
  EXPECT_NE(e.find("adapter_model.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("layers.9.self_attn.k_proj.lora_A.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));
  fs::remove_all(f.dir);
}
