// Issue 13 (hostile and careless input), the items about model files, errors and sessions: sizes
// in a config.json or GGUF header bounded by limits and by the tensors present before anything is
// allocated (item 2), errors that name the input (item 9) and the session lock (item 7). The
// end-to-end checks through the CLI are tests/conformance/test_hostile_files.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "arch/config.h"
#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/json.h"
#include "io/gguf.h"
#include "model/gguf_model.h"
#include "pipeline/session.h"
#include "pipeline/status.h"
#include "test_util.h"

using namespace nnpipe;
using test::error_of;

namespace {

bool has(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

json tiny_config_json() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 64,
    "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128})");
}

// A small Qwen2 GGUF: hidden 8, 2 heads (1 KV), ffn 12, vocab 4 tokens, `blocks` blocks of f32
// tensors; `edit` may change the KVs before the file is written.
std::string qwen2_gguf(int blocks, const std::function<void(std::vector<GgufKv>&)>& edit = {}) {
  const int64_t H = 8, I = 12, Q = 8, KV = 4, V = 4;
  std::vector<GgufKv> kv = {
      {"general.architecture", std::string("qwen2")},
      {"qwen2.block_count", uint32_t(blocks)},
      {"qwen2.context_length", uint32_t(128)},
      {"qwen2.embedding_length", uint32_t(H)},
      {"qwen2.feed_forward_length", uint32_t(I)},
      {"qwen2.attention.head_count", uint32_t(2)},
      {"qwen2.attention.head_count_kv", uint32_t(1)},
      {"qwen2.attention.layer_norm_rms_epsilon", 1e-6f},
      {"tokenizer.ggml.model", std::string("gpt2")},
      {"tokenizer.ggml.tokens", GgufArray{GgufType::kString, {"a", "b", "ab", "<|im_end|>"}}},
      {"tokenizer.ggml.token_type",
       GgufArray{GgufType::kI32, {int32_t(1), int32_t(1), int32_t(1), int32_t(3)}}},
      {"tokenizer.ggml.merges", GgufArray{GgufType::kString, {"a b"}}},
  };
  if (edit) edit(kv);
  GgufWriter w;
  for (GgufKv& k : kv) w.add(k.key, k.value);
  static std::vector<std::vector<uint8_t>> keep;  // tensor bytes outlive the writer's spans
  auto t = [&](const std::string& name, std::vector<int64_t> ne) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    keep.emplace_back(static_cast<size_t>(n) * 4, 0);
    w.add_tensor(name, GgmlType::kF32, ne, keep.back());
  };
  t("token_embd.weight", {H, V});
  t("output_norm.weight", {H});
  for (int b = 0; b < blocks; ++b) {
    const std::string p = fmt::format("blk.{}.", b);
    t(p + "attn_norm.weight", {H});
    t(p + "attn_q.weight", {H, Q});
    t(p + "attn_q.bias", {Q});
    t(p + "attn_k.weight", {H, KV});
    t(p + "attn_k.bias", {KV});
    t(p + "attn_v.weight", {H, KV});
    t(p + "attn_v.bias", {KV});
    t(p + "attn_output.weight", {Q, H});
    t(p + "ffn_norm.weight", {H});
    t(p + "ffn_gate.weight", {H, I});
    t(p + "ffn_up.weight", {H, I});
    t(p + "ffn_down.weight", {I, H});
  }
  return w.to_bytes();
}

GgufFile parse(const std::string& bytes) {
  return GgufFile::parse({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "m.gguf");
}

void set_kv(std::vector<GgufKv>& kv, const std::string& key, GgufValue v) {
  for (GgufKv& k : kv)
    if (k.key == key) {
      k.value = std::move(v);
      return;
    }
  kv.push_back({key, std::move(v)});
}

fs::path fresh_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_hostile_{}_{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

// ---- item 2: sizes from a model file ------------------------------------------------------------

TEST(HostileFiles, Item2ConfigSizesAboveLimitsAreRefused) {
  struct Case {
    const char* key;
    int64_t value;
  };
  for (Case c : {Case{"num_hidden_layers", 1000000000000}, Case{"num_hidden_layers", 1025},
                 Case{"vocab_size", int64_t{1} << 40}, Case{"hidden_size", 1 << 20},
                 Case{"intermediate_size", int64_t{1} << 62},
                 Case{"max_position_embeddings", int64_t{1} << 31}}) {
    json j = tiny_config_json();
    j[c.key] = c.value;
    const auto t0 = std::chrono::steady_clock::now();
    const std::string e = error_of([&] { ModelConfig::from_json(j, "x/config.json"); });
    EXPECT_TRUE(has(e, "x/config.json") && has(e, c.key) && has(e, "limit")) << e;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  }
  json heads = tiny_config_json();
  heads["num_attention_heads"] = 2048;
  heads["num_key_value_heads"] = 2048;
  heads["head_dim"] = 4;
  EXPECT_TRUE(has(error_of([&] { ModelConfig::from_json(heads, "c"); }), "num_attention_heads"));
  EXPECT_EQ(error_of([&] { ModelConfig::from_json(tiny_config_json(), "c"); }), "(no error)");
}

TEST(HostileFiles, Item2ConfigLayersCheckedAgainstTensorsPresent) {
  // A config validated on its own (within the limits) but claiming more layers than the weights
  // hold: refused before a spec is built per claimed layer, naming the layers without tensors.
  ModelConfig c = ModelConfig::from_json(tiny_config_json(), "c");
  std::map<std::string, std::vector<int64_t>> stored;
  for (const WeightSpec& s : qwen2_weight_specs(c)) stored[s.name] = s.shape;
  c.num_hidden_layers = 1000;
  const std::string e = error_of([&] { check_qwen2_weights(c, stored, "w.safetensors"); });
  EXPECT_TRUE(has(e, "w.safetensors") && has(e, "num_hidden_layers is 1000") &&
              has(e, "only 2 of those layers") && has(e, "model.layers.2"))
      << e;
  c.num_hidden_layers = int64_t{1} << 40;  // unvalidated: still bounded by the names present
  EXPECT_TRUE(has(error_of([&] { check_qwen2_weights(c, stored, "w"); }), "only 2"));
}

TEST(HostileFiles, Item2GgufBlockCountCheckedAgainstTensorsPresent) {
  EXPECT_EQ(error_of([&] { qwen2_config_from_gguf(parse(qwen2_gguf(2))); }), "(no error)");
  for (uint32_t blocks : {4294967295u, 1000000u, 3u}) {
    const std::string bytes =
        qwen2_gguf(2, [&](std::vector<GgufKv>& kv) { set_kv(kv, "qwen2.block_count", blocks); });
    const GgufFile f = parse(bytes);
    const std::string e = error_of([&] { qwen2_config_from_gguf(f); });
    EXPECT_TRUE(has(e, "m.gguf") && has(e, "qwen2.block_count") &&
                has(e, fmt::format("is {}", blocks)) && has(e, "blk.2"))
        << e;
    EXPECT_TRUE(has(error_of([&] { load_qwen2_gguf(f); }), "qwen2.block_count"));
  }
  // Within the tensors but above the limit cannot happen without 1025 blocks of tensors; a
  // header below the limit with the tensors present loads (2 blocks above).
}

TEST(HostileFiles, Item2GgufSpecialIdsOutsideVocabAreIgnored) {
  const std::string bytes = qwen2_gguf(2, [](std::vector<GgufKv>& kv) {
    set_kv(kv, "tokenizer.ggml.bos_token_id", uint32_t(1000000000));
    set_kv(kv, "tokenizer.ggml.eos_token_id", uint32_t(4));  // == vocab size: outside
  });
  const GgufFile f = parse(bytes);
  ModelConfig c;
  ASSERT_EQ(error_of([&] { c = qwen2_config_from_gguf(f); }), "(no error)");
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_TRUE(c.eos_token_id.empty());
  const std::string ok = qwen2_gguf(
      2, [](std::vector<GgufKv>& kv) { set_kv(kv, "tokenizer.ggml.eos_token_id", uint32_t(3)); });
  EXPECT_EQ(qwen2_config_from_gguf(parse(ok)).eos_token_id, std::vector<int64_t>{3});
}

TEST(HostileFiles, Item2GgufEmptyOrBinaryKeyAndBoolTwoAreRefused) {
  auto with_key = [](const std::string& key) {
    GgufWriter w;
    w.add("general.architecture", std::string("qwen2"));
    w.add(key, uint32_t(1));
    return w.to_bytes();
  };
  std::string e = error_of([&] { parse(with_key("")); });
  EXPECT_TRUE(has(e, "m.gguf") && has(e, "key 1 is empty")) << e;
  e = error_of([&] { parse(with_key(std::string("\xff\xfe\0x", 4))); });
  EXPECT_TRUE(has(e, "key 1 is not valid UTF-8")) << e;
  e = error_of([&] { parse(with_key("a\tb")); });
  EXPECT_TRUE(has(e, "control character")) << e;

  GgufWriter w;
  w.add("flag", true);
  std::string bytes = w.to_bytes();
  // header 24 + key (8 + 4) + type 4: the bool byte.
  ASSERT_EQ(bytes[40], 1);
  bytes[40] = 2;
  e = error_of([&] { parse(bytes); });
  EXPECT_TRUE(has(e, "m.gguf") && has(e, "'flag'") && has(e, "bool byte is 2")) << e;
}

// ---- item 9: errors that name the input ---------------------------------------------------------

TEST(HostileFiles, Item9aGgufTokenWithInvalidUtf8IsNamed) {
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"}) {
    const std::string bytes = qwen2_gguf(2, [&](std::vector<GgufKv>& kv) {
      if (std::string(key) == "tokenizer.ggml.tokens")
        set_kv(kv, key, GgufArray{GgufType::kString, {"a", "\xA0z", "ab", "<|im_end|>"}});
      else
        set_kv(kv, key, GgufArray{GgufType::kString, {"a b", "b \xC3"}});
    });
    const GgufFile f = parse(bytes);
    for (auto* call : {+[](const GgufFile& g) { (void)tokenizer_json_from_gguf(g); },
                       +[](const GgufFile& g) { (void)chat_assets_from_gguf(g); }}) {
      ErrorCode code{};
      const std::string e = error_of([&] { call(f); }, &code);
      EXPECT_EQ(code, ErrorCode::kFormat);
      EXPECT_TRUE(has(e, "m.gguf") && has(e, std::string(key) + "[1]") && has(e, "UTF-8")) << e;
    }
  }
  const std::string empty = qwen2_gguf(2, [](std::vector<GgufKv>& kv) {
    set_kv(kv, "tokenizer.ggml.tokens", GgufArray{GgufType::kString, {}});
  });
  EXPECT_TRUE(has(error_of([&] { tokenizer_json_from_gguf(parse(empty)); }),
                  "tokenizer.ggml.tokens is empty"));
}

TEST(HostileFiles, Item9aJsonDumpNeverThrowsOnInvalidUtf8) {
  const json j = {{"text", std::string("ok \xff\xfe end")}, {"k", {std::string("\xC3")}}};
  std::string out;
  ASSERT_NO_THROW(out = dump_json(j, 2));
  EXPECT_TRUE(has(out, "ok \xEF\xBF\xBD")) << out;  // U+FFFD
  const fs::path d = fresh_dir("dump");
  ASSERT_NO_THROW(write_json_file(d / "summary.json", j));
  EXPECT_NO_THROW(read_json_file(d / "summary.json"));
  fs::remove_all(d);
}

TEST(HostileFiles, Item9bSessionIdNotUtf8IsRefused) {
  ErrorCode code{};
  const std::string e = error_of([] { validate_session_id("\xff\xfe"); }, &code);
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(has(e, "session id") && has(e, "UTF-8") && has(e, "0xff")) << e;
  EXPECT_EQ(error_of([] { validate_session_id("caf\xC3\xA9"); }), "(no error)");
  const fs::path runs = fresh_dir("utf8");
  EXPECT_TRUE(has(error_of([&] { RunSession s(runs, "\xff\xfe"); }), "UTF-8"));
  EXPECT_TRUE(fs::is_empty(runs));
  fs::remove_all(runs);
}

TEST(HostileFiles, Item9dStepFailureIsLoggedEvenIfSummaryCannotBeWritten) {
  const fs::path runs = fresh_dir("summary");
  std::string e;
  {
    RunSession s(runs, "s");
    // summary.json is a folder: the step's summary cannot be written after the body fails.
    fs::create_directories(runs / "s" / "step" / "summary.json" / "x");
    e = error_of([&] {
      run_step(s, "step", json::object(),
               [](StepContext&) { fail(ErrorCode::kIo, "out.bin: cannot create: root cause"); });
    });
  }
  EXPECT_TRUE(has(e, "out.bin: cannot create: root cause") && has(e, "summary.json")) << e;
  const std::string log = read_file(runs / "s" / "pipeline.log");
  EXPECT_TRUE(has(log, "step step failed: out.bin: cannot create: root cause")) << log;
  EXPECT_TRUE(has(log, "cannot write its summary.json")) << log;
  fs::remove_all(runs);
}

// ---- item 7: one writer per session -------------------------------------------------------------

TEST(HostileFiles, Item7SessionLockRefusesASecondWriter) {
  const fs::path runs = fresh_dir("lock");
  {
    RunSession first(runs, "busy");
    ErrorCode code{};
    // flock() locks belong to an open file description: a second Session of the same process
    // conflicts like another process's would.
    const std::string e = error_of([&] { RunSession second(runs, "busy"); }, &code);
    EXPECT_EQ(code, ErrorCode::kInvalidArgument);
    EXPECT_TRUE(has(e, "session busy is in use by pid " + std::to_string(::getpid()))) << e;
    EXPECT_TRUE(has(e, "command: ")) << e;
    // Readers do not take the lock.
    EXPECT_EQ(error_of([&] { get_status(runs, "busy", 5); }), "(no error)");
    // Another session is independent.
    EXPECT_EQ(error_of([&] { RunSession other(runs, "other"); }), "(no error)");
  }
  // Released with the first writer.
  EXPECT_EQ(error_of([&] { RunSession again(runs, "busy"); }), "(no error)");
  fs::remove_all(runs);
}
