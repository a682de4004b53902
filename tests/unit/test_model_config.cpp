#include <gtest/gtest.h>

#include <set>

#include "arch/config.h"
#include "arch/qwen2_arch.h"
#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/file.h"
#include "io/hf_model_dir.h"
#include "model/gguf_model.h"

using namespace nnpipe;

namespace {

// Qwen2.5-0.5B-Instruct's published config.json (values from the Hugging Face hub).
json qwen25_config() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
    "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

std::string config_error(const json& j) {
  try {
    ModelConfig::from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ModelConfig, ParsesRealConfigAndRoundTrips) {
  json j = qwen25_config();
  ModelConfig c = ModelConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.hidden_size, 896);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{151645});
  EXPECT_FALSE(c.eos_is_list);
  EXPECT_EQ(c.extra["transformers_version"], "4.43.1");
  EXPECT_FALSE(c.extra.contains("hidden_size"));
  json out = c.to_json();
  j["rope_scaling"] = nullptr;  // always written explicitly
  EXPECT_EQ(out, j);
  EXPECT_EQ(ModelConfig::from_json(out, "again").to_json(), out);
}

TEST(ModelConfig, DefaultsAndNewerSpellings) {
  json j = qwen25_config();
  j.erase("num_key_value_heads");
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  j["eos_token_id"] = {151645, 151643};
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5000.0}};
  j["head_dim"] = 128;
  ModelConfig c = ModelConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.num_key_value_heads, 14);
  EXPECT_EQ(c.torch_dtype, DType::kF16);
  EXPECT_EQ(c.eos_token_id, (std::vector<int64_t>{151645, 151643}));
  EXPECT_EQ(c.rope_theta, 5000.0);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 14 * 128);
  json out = c.to_json();
  EXPECT_EQ(out["head_dim"], 128);
  EXPECT_EQ(out["eos_token_id"], json({151645, 151643}));
  EXPECT_EQ(out["torch_dtype"], "float16");
  EXPECT_EQ(out["rope_parameters"]["rope_theta"], 5000.0);
}

TEST(ModelConfig, ValidationErrorsNameTheProblem) {
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"architectures", {"LlamaForCausalLM"}, "architecture \"LlamaForCausalLM\" is not supported"},
      {"model_type", "llama", "model_type \"llama\" is not supported"},
      {"num_attention_heads", 15, "num_attention_heads 15 does not divide hidden_size 896"},
      {"num_key_value_heads", 3, "num_key_value_heads 3 does not divide num_attention_heads 14"},
      {"hidden_size", 0, "\"hidden_size\" must be positive"},
      {"vocab_size", -5, "\"vocab_size\" must be positive"},
      {"intermediate_size", "big", "\"intermediate_size\" must be an integer, got a string"},
      {"tie_word_embeddings", 1, "\"tie_word_embeddings\" must be true or false"},
      {"torch_dtype", "int8", "\"torch_dtype\" \"int8\" is not supported"},
      {"rope_scaling", {{"type", "yarn"}}, "rope_scaling"},
      {"hidden_act", "gelu", "hidden_act \"gelu\""},
      // Errors inside the nested object name it (the nested reader once kept a dangling
      // reference to its origin; found by fuzz_config_json under ASan).
      {"rope_parameters",
       {{"rope_type", 5}},
       "cfg.json: rope_parameters: \"rope_type\" must be a string"},
      {"rope_parameters",
       {{"rope_theta", "x"}},
       "cfg.json: rope_parameters: \"rope_theta\" must be a number"},
  };
  for (const Case& c : cases) {
    json j = qwen25_config();
    j[c.key] = c.value;
    std::string err = config_error(j);
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.key << ": " << err;
    EXPECT_EQ(err.rfind("cfg.json: ", 0), 0u) << err;
  }
  json j = qwen25_config();
  j.erase("vocab_size");
  EXPECT_NE(config_error(j).find("missing \"vocab_size\""), std::string::npos);
  j = qwen25_config();
  j.erase("model_type");
  EXPECT_NE(config_error(j).find("missing \"model_type\""), std::string::npos);
  EXPECT_NE(config_error(json::array()).find("expected a JSON object"), std::string::npos);
}

TEST(ModelConfig, Presets) {
  ModelConfig t = ModelConfig::preset("tiny", 1000);
  EXPECT_EQ(t.vocab_size, 1024);
  EXPECT_EQ(ModelConfig::preset("tiny", 1024).vocab_size, 1024);
  EXPECT_EQ(ModelConfig::preset("tiny", 1025).vocab_size, 1088);
  EXPECT_EQ(t.hidden_size, 64);
  EXPECT_EQ(t.intermediate_size, 176);
  EXPECT_EQ(t.num_hidden_layers, 2);
  EXPECT_EQ(t.num_attention_heads, 4);
  EXPECT_EQ(t.num_key_value_heads, 2);
  EXPECT_EQ(t.max_position_embeddings, 2048);
  EXPECT_TRUE(t.tie_word_embeddings);
  // QWEN.md table.
  ModelConfig q15 = ModelConfig::preset("qwen1.5-0.5b", 151646);
  EXPECT_EQ(q15.hidden_size, 1024);
  EXPECT_EQ(q15.intermediate_size, 2816);
  EXPECT_EQ(q15.num_attention_heads, 16);
  EXPECT_EQ(q15.num_key_value_heads, 16);
  EXPECT_EQ(q15.vocab_size, 151936);
  ModelConfig q25 = ModelConfig::preset("qwen2.5-0.5b", 1000);
  EXPECT_EQ(q25.hidden_size, 896);
  EXPECT_EQ(q25.intermediate_size, 4864);
  EXPECT_EQ(q25.num_attention_heads, 14);
  EXPECT_EQ(q25.num_key_value_heads, 2);
  EXPECT_EQ(q25.head_dim, 64);
  EXPECT_EQ(q25.num_hidden_layers, 24);
  EXPECT_EQ(q25.torch_dtype, DType::kBF16);
  EXPECT_EQ(q25.vocab_size, 151936);
  EXPECT_THROW(ModelConfig::preset("qwen2.5-0.5b", 200000), Error);
  EXPECT_THROW(ModelConfig::preset("huge", 10), Error);
  // The preset's config survives a JSON round trip.
  EXPECT_EQ(ModelConfig::from_json(q25.to_json(), "x").to_json(), q25.to_json());
}

TEST(Qwen2Weights, SpecsAndCheck) {
  ModelConfig c = ModelConfig::preset("tiny", 100);  // V 128, H 64, I 176, heads 4, kv 2, hd 16
  auto specs = qwen2_weight_specs(c);
  EXPECT_EQ(specs.size(), 1u + 2 * 12 + 1);  // tied: no lm_head
  std::map<std::string, std::vector<int64_t>> stored;
  for (const auto& s : specs) stored[s.name] = s.shape;
  EXPECT_EQ(stored["model.layers.1.self_attn.k_proj.weight"], (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(stored["model.layers.0.self_attn.o_proj.weight"], (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(stored["model.layers.0.mlp.down_proj.weight"], (std::vector<int64_t>{64, 176}));
  EXPECT_NO_THROW(check_qwen2_weights(c, stored, "m"));
  stored["lm_head.weight"] = {128, 64};  // tied models may store it
  EXPECT_NO_THROW(check_qwen2_weights(c, stored, "m"));

  auto bad = stored;
  bad.erase("model.layers.1.self_attn.q_proj.bias");
  bad["model.layers.2.mlp.up_proj.weight"] = {1};
  bad["model.norm.weight"] = {65};
  try {
    check_qwen2_weights(c, bad, "m");
    FAIL();
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("1 missing: model.layers.1.self_attn.q_proj.bias [64]"), std::string::npos)
        << w;
    EXPECT_NE(w.find("1 unexpected: model.layers.2.mlp.up_proj.weight [1]"), std::string::npos)
        << w;
    EXPECT_NE(w.find("model.norm.weight is [65], expected [64]"), std::string::npos) << w;
  }
  c.tie_word_embeddings = false;
  stored.erase("lm_head.weight");
  EXPECT_THROW(check_qwen2_weights(c, stored, "m"), Error);
}

// Every tensor of an untied model is named by the architecture table, and its HF <-> GGUF mapping
// (what export-gguf writes and the GGUF import reads) round-trips.
TEST(Qwen2Arch, TableNamesEveryTensorBothWays) {
  ModelConfig c = ModelConfig::preset("tiny", 100);
  c.num_hidden_layers = 2;
  c.tie_word_embeddings = false;
  std::set<std::string> names, gguf_names;
  for (const auto& s : qwen2_weight_specs(c)) names.insert(s.name);
  for (const std::string& hf : names) {
    const size_t last = hf.rfind('.');
    const std::string module = hf.substr(0, last), suffix = hf.substr(last);
    std::optional<std::string_view> g = qwen2::gguf_module_of_hf(module, false);
    std::string gguf = g ? std::string(*g) + suffix : "";
    if (!g) {
      const std::string layer = module.substr(13, 1);  // "model.layers.N."
      ASSERT_EQ(module.substr(0, 15), "model.layers." + layer + ".") << hf;
      g = qwen2::gguf_module_of_hf(module.substr(15), true);
      ASSERT_TRUE(g) << hf;
      gguf = "blk." + layer + "." + std::string(*g) + suffix;
    }
    gguf_names.insert(gguf);
    EXPECT_EQ(qwen2_hf_name_from_gguf(gguf), hf) << gguf;
  }
  EXPECT_TRUE(gguf_names.contains("blk.1.attn_output.weight"));
  EXPECT_TRUE(gguf_names.contains("blk.0.ffn_down.weight"));
  EXPECT_TRUE(gguf_names.contains("output.weight"));
  EXPECT_TRUE(gguf_names.contains("token_embd.weight"));
  // Bias flags: a bias tensor exactly for q/k/v_proj; shapes from the table's dimensions.
  for (const qwen2::LinearInfo& i : qwen2::kLinears) {
    const std::string m = qwen2_hf_module(1, i.id);
    EXPECT_TRUE(names.contains(m + ".weight")) << m;
    EXPECT_EQ(names.contains(m + ".bias"), i.bias) << m;
    EXPECT_EQ(i.bias,
              i.id == qwen2::Linear::kQ || i.id == qwen2::Linear::kK || i.id == qwen2::Linear::kV);
  }
  EXPECT_EQ(qwen2_hf_module(1, qwen2::Linear::kGate), "model.layers.1.mlp.gate_proj");
  EXPECT_EQ(qwen2_linear_shape(c, qwen2::Linear::kK), std::make_pair(c.kv_dim(), c.hidden_size));
  EXPECT_EQ(qwen2_linear_shape(c, qwen2::Linear::kLmHead),
            std::make_pair(c.vocab_size, c.hidden_size));
  EXPECT_EQ(qwen2::linear_from_gguf("ffn_up"), qwen2::Linear::kUp);
  EXPECT_FALSE(qwen2_hf_name_from_gguf("output.bias"));
}

TEST(HfModelDir, WriteAndOpen) {
  fs::path out = fs::temp_directory_path() / fmt::format("nnpipe_hfdir_{}", ::getpid());
  fs::remove_all(out);
  ModelConfig c = ModelConfig::preset("tiny", 100);
  std::vector<std::vector<uint8_t>> bufs;
  HfModelFiles files;
  files.config = c;
  files.generation_config = {{"do_sample", true}};
  files.tokenizer_json = "{}";
  files.tokenizer_config = {
      {"chat_template",
       {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}};
  files.max_shard_bytes = 20000;  // several shards
  auto specs = qwen2_weight_specs(c);
  bufs.reserve(specs.size());
  for (const auto& s : specs) {
    size_t n = 4;
    for (int64_t d : s.shape) n *= static_cast<size_t>(d);
    bufs.emplace_back(n, static_cast<uint8_t>(bufs.size()));
    files.tensors.push_back({s.name, DType::kF32, s.shape, bufs.back()});
  }
  write_hf_model_dir(out, files);
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  HfModelDir m = HfModelDir::open(out);
  EXPECT_EQ(m.config().to_json(), c.to_json());
  EXPECT_EQ(m.chat_template(), std::optional<std::string>("D"));
  EXPECT_EQ(m.generation_config()["do_sample"], true);
  EXPECT_EQ(&m.tensor("lm_head.weight"), &m.tensor("model.embed_tokens.weight"));
  EXPECT_EQ(m.tensor("model.norm.weight").data[0], bufs[specs.size() - 1][0]);

  // A failed write leaves the previous directory untouched.
  files.tensors.pop_back();
  EXPECT_THROW(write_hf_model_dir(out, files), Error);
  EXPECT_NO_THROW(HfModelDir::open(out));
  // A missing tensor on disk is reported by name.
  fs::remove(out / "model.safetensors.index.json");
  EXPECT_THROW(HfModelDir::open(out), Error);
  fs::remove_all(out);
}
