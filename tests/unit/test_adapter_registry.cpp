// The adapter registry of `nnpipe serve` on a tiny random model with GGUF LoRA files and PEFT
// directories: --lora stacks, ids in load order (never reused), content digests (a new file under
// the same name is a different stack key), resolution of `model` and `lora`, unloading while a
// request holds a stack, LRU eviction under max_loras, and bad adapters refused by path.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "engine/session.h"
#include "export/lora_gguf_export.h"
#include "io/peft_adapter.h"
#include "model/init_model.h"
#include "server/adapter_registry.h"
#include "test_util.h"

using namespace nnpipe;
using namespace nnpipe::server;
using test::error_of;

namespace {

struct Fixture {
  fs::path dir, model_dir;
  fs::path gguf1, gguf2, gguf3, peft1, other_model_lora;
  std::shared_ptr<const engine::Model> model;
};

fs::path make_peft(const fs::path& out, const ModelConfig& c, uint64_t seed, int64_t r) {
  LoraConfig lc;
  lc.r = r;
  lc.lora_alpha = 2.0 * static_cast<double>(r);
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  PeftAdapter a = PeftAdapter::init(c, lc, seed);
  Rng rng(seed + 100);
  for (LoraModule& m : a.modules)
    for (float& b : m.B) b = 0.2f * (static_cast<float>(rng.uniform()) - 0.5f);
  a.save(out);
  return out;
}

const Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = fs::temp_directory_path() / fmt::format("nnpipe_adapter_registry_{}", ::getpid());
    fs::remove_all(f.dir);
    fs::create_directories(f.dir);
    f.model_dir = f.dir / "model";
    InitModelOptions o;
    o.seed = 5;
    o.out = f.model_dir;
    const ModelConfig c = init_model(o).config;
    f.model = engine::Model::load(f.model_dir);
    auto gguf = [&](const char* name, uint64_t seed) {
      const fs::path peft = make_peft(f.dir / (std::string(name) + "_peft"), c, seed, 4);
      const fs::path out = f.dir / (std::string(name) + ".gguf");
      export_lora_gguf(peft, f.model_dir, GgmlType::kF16, out);
      return out;
    };
    f.gguf1 = gguf("a1", 1);
    f.gguf2 = gguf("a2", 2);
    f.gguf3 = gguf("a3", 3);
    f.peft1 = f.dir / "a1_peft";
    ModelConfig other = c;
    other.hidden_size = 32;
    other.head_dim = 8;
    f.other_model_lora = make_peft(f.dir / "other_model_lora", other, 4, 4);
    return f;
  }();
  return f;
}

std::string s(const fs::path& p) {
  return p.string();
}

std::vector<std::string> names(const AdapterRegistry& r) {
  std::vector<std::string> v;
  for (const AdapterInfo& a : r.adapters()) v.push_back(a.name);
  return v;
}

// Logits of a short prompt under a stack: the adapters' weights are really there.
std::vector<float> logits(const Fixture& f, const AdapterStack& st) {
  engine::Session sess(f.model, {32, 256});
  sess.set_adapters(st.set());
  return sess.all_logits({3, 17, 29, 41, 5});
}

}  // namespace

TEST(AdapterRegistry, StacksGetIdsInLoadOrderNeverReused) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 0);
  r.add_stack("one=" + s(f.gguf1));
  r.add_stack("two=" + s(f.gguf2) + ":0.5+" + s(f.peft1) + ":-2");
  const std::vector<AdapterInfo> a = r.adapters();
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0].id, 0);
  EXPECT_EQ(a[0].name, "one");
  EXPECT_EQ(a[0].path, s(f.gguf1));
  EXPECT_EQ(a[0].scale, 0.0f);  // no global scale: the base stays the base
  EXPECT_EQ(a[0].rank, 4);
  EXPECT_GT(a[0].bytes, 0u);
  EXPECT_EQ(a[0].digest.size(), 32u);
  EXPECT_EQ(a[0].digest.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(a[1].id, 1);
  EXPECT_EQ(a[1].name, "two/1");
  EXPECT_EQ(a[2].id, 2);
  EXPECT_EQ(a[2].name, "two/2");
  EXPECT_EQ(a[2].path, s(f.peft1));
  // The PEFT directory and the GGUF made from it hold the same weights but are different bytes.
  EXPECT_NE(a[0].digest, a[2].digest);

  const std::vector<StackInfo> st = r.stacks();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].name, "one");
  EXPECT_EQ(st[0].adapters, (std::vector<std::pair<std::string, float>>{{"one", 1.0f}}));
  EXPECT_EQ(st[1].name, "two");
  EXPECT_EQ(st[1].adapters,
            (std::vector<std::pair<std::string, float>>{{"two/1", 0.5f}, {"two/2", -2.0f}}));

  EXPECT_TRUE(r.unload("one"));
  EXPECT_FALSE(r.unload("one"));
  EXPECT_EQ(r.stacks().size(), 1u);  // its one-file stack went with it
  EXPECT_EQ(r.load("again", s(f.gguf1)).id, 3);
  EXPECT_EQ(r.load("again", s(f.gguf3)).id, 4);  // a reload is a new load
  EXPECT_EQ(names(r), (std::vector<std::string>{"two/1", "two/2", "again"}));
  // Unloading a stack of several files unloads its adapters.
  EXPECT_TRUE(r.unload("two"));
  EXPECT_EQ(names(r), (std::vector<std::string>{"again"}));
  EXPECT_TRUE(r.stacks().empty());
}

TEST(AdapterRegistry, DigestIsTheContentNotTheNameOrPath) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 0);
  const fs::path p = f.dir / "swapped.gguf";
  fs::copy_file(f.gguf1, p, fs::copy_options::overwrite_existing);
  const AdapterInfo first = r.load("x", s(p));
  const AdapterStack held = *r.resolve("x");
  // Same bytes elsewhere: same digest.
  EXPECT_EQ(r.load("y", s(f.gguf1)).digest, first.digest);
  EXPECT_EQ(r.resolve("y")->key(), held.key());
  // Other bytes under the same name and path (replaced by rename, as atomic writers do; the
  // loaded GGUF is a mapping of the old file): another digest, another stack key.
  fs::copy_file(f.gguf2, f.dir / "swapped.tmp", fs::copy_options::overwrite_existing);
  fs::rename(f.dir / "swapped.tmp", p);
  const AdapterInfo second = r.load("x", s(p));
  EXPECT_NE(second.digest, first.digest);
  const AdapterStack now = *r.resolve("x");
  EXPECT_FALSE(now.key().empty());
  EXPECT_NE(now.key(), held.key());
  EXPECT_NE(logits(f, now), logits(f, held));
  // The scale is part of the key.
  EXPECT_NE(r.from_lora({{std::nullopt, "x", 0.5f}}).key(), now.key());

  // PEFT: the config is content too (alpha changes what the weights do).
  const fs::path d = f.dir / "peft_copy";
  fs::remove_all(d);
  fs::copy(f.peft1, d);
  const std::string before = r.load("p", s(d)).digest;
  EXPECT_EQ(before, r.load("p", s(d)).digest);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(d / "adapter_config.json"));
  cfg["lora_alpha"] = 2 * cfg["lora_alpha"].get<double>();
  std::ofstream(d / "adapter_config.json") << cfg.dump();
  EXPECT_NE(r.load("p", s(d)).digest, before);
}

TEST(AdapterRegistry, ResolvesBaseStacksAdaptersAndUnknownNames) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "qwen-tiny", 0);
  r.add_stack("one=" + s(f.gguf1) + ":0.75");
  r.add_stack("two=" + s(f.gguf2) + "+" + s(f.gguf3) + ":2");
  EXPECT_EQ(r.base_name(), "qwen-tiny");
  for (const char* base : {"", "qwen-tiny"}) {
    std::optional<AdapterStack> b = r.resolve(base);
    ASSERT_TRUE(b) << base;
    EXPECT_TRUE(b->empty());
    EXPECT_EQ(b->key(), "");
  }
  std::optional<AdapterStack> one = r.resolve("one");
  ASSERT_TRUE(one);
  ASSERT_EQ(one->entries.size(), 1u);
  EXPECT_EQ(one->entries[0].scale, 0.75f);
  EXPECT_EQ(one->entries[0].name, "one");
  EXPECT_EQ(one->entries[0].digest, r.adapters()[0].digest);
  EXPECT_EQ(one->entries[0].adapter->origin(), s(f.gguf1));
  std::optional<AdapterStack> two = r.resolve("two");
  ASSERT_TRUE(two);
  ASSERT_EQ(two->entries.size(), 2u);
  EXPECT_EQ(two->entries[0].name, "two/1");
  EXPECT_EQ(two->entries[1].scale, 2.0f);
  // A member adapter by its own name: scale 1.
  std::optional<AdapterStack> member = r.resolve("two/2");
  ASSERT_TRUE(member);
  ASSERT_EQ(member->entries.size(), 1u);
  EXPECT_EQ(member->entries[0].scale, 1.0f);
  EXPECT_FALSE(r.resolve("three"));
  EXPECT_FALSE(r.resolve("ONE"));

  // Global scales (POST /lora-adapters) apply to the base; unlisted adapters go back to 0.
  r.set_global_scales({{0, 0.25f}, {2, 1.5f}});
  std::optional<AdapterStack> b = r.resolve("");
  ASSERT_TRUE(b);
  ASSERT_EQ(b->entries.size(), 2u);
  EXPECT_EQ(b->entries[0].name, "one");
  EXPECT_EQ(b->entries[0].scale, 0.25f);
  EXPECT_EQ(b->entries[1].name, "two/2");
  EXPECT_EQ(r.adapters()[2].scale, 1.5f);
  r.set_global_scales({{1, 1.0f}});
  b = r.resolve("qwen-tiny");
  ASSERT_EQ(b->entries.size(), 1u);
  EXPECT_EQ(b->entries[0].name, "two/1");
  ErrorCode code{};
  EXPECT_NE(error_of(
                [&] {
                  r.set_global_scales({{1, 0.5f}, {9, 1.0f}});
                },
                &code)
                .find("id 9"),
            std::string::npos);
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_NE(error_of([&] { r.set_global_scales({{0, 1e9f}}); }).find("scale"), std::string::npos);
  EXPECT_EQ(r.resolve("")->entries.size(), 1u);  // a refused request changes nothing
  r.set_global_scales({});
  EXPECT_TRUE(r.resolve("")->empty());
}

TEST(AdapterRegistry, LoraFieldByIdOrNameAndItsErrors) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 0);
  r.add_stack("one=" + s(f.gguf1));
  r.add_stack("two=" + s(f.gguf2) + "+" + s(f.gguf3));
  AdapterStack st = r.from_lora({{1, std::nullopt, 0.5f}, {std::nullopt, "one", 2.0f}});
  ASSERT_EQ(st.entries.size(), 2u);
  EXPECT_EQ(st.entries[0].name, "two/1");
  EXPECT_EQ(st.entries[0].scale, 0.5f);
  EXPECT_EQ(st.entries[1].name, "one");
  EXPECT_EQ(st.entries[1].scale, 2.0f);
  EXPECT_TRUE(r.from_lora({}).empty());
  // Scale 0 everywhere is the base: the same key as no adapters (the same KV applies).
  EXPECT_EQ(r.from_lora({{0, std::nullopt, 0.0f}}).key(), "");

  auto err = [&](std::vector<LoraSelection> sel) {
    ErrorCode code{};
    std::string m = error_of([&] { r.from_lora(sel); }, &code);
    EXPECT_EQ(code, ErrorCode::kInvalidArgument) << m;
    return m;
  };
  EXPECT_NE(err({{0, std::nullopt, 1.0f}, {7, std::nullopt, 1.0f}})
                .find("lora[1]: no loaded "
                      "adapter has id 7"),
            std::string::npos);
  EXPECT_NE(err({{std::nullopt, "nope", 1.0f}}).find("'nope'"), std::string::npos);
  EXPECT_NE(err({{std::nullopt, "two", 1.0f}}).find("stack"), std::string::npos);
  EXPECT_NE(err({{std::nullopt, std::nullopt, 1.0f}}).find("either"), std::string::npos);
  EXPECT_NE(err({{0, "one", 1.0f}}).find("either"), std::string::npos);
  EXPECT_NE(err({{0, std::nullopt, std::nanf("")}}).find("lora[0]"), std::string::npos);
  EXPECT_NE(err({{0, std::nullopt, 1e5f}}).find("scale"), std::string::npos);
}

TEST(AdapterRegistry, UnloadWhileAStackIsHeld) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 0);
  r.add_stack("one=" + s(f.gguf1));
  const AdapterStack held = *r.resolve("one");
  const std::vector<float> want = logits(f, held);
  EXPECT_NE(want, logits(f, AdapterStack{}));
  EXPECT_TRUE(r.unload("one"));
  EXPECT_FALSE(r.resolve("one"));
  EXPECT_TRUE(r.adapters().empty());
  // The request's shared_ptr keeps the adapter (and its file mapping) alive.
  EXPECT_EQ(logits(f, held), want);
  // Loading the same file again gives the same key: KV computed under it is still valid.
  r.load("one", s(f.gguf1));
  EXPECT_EQ(r.resolve("one")->key(), held.key());
}

TEST(AdapterRegistry, LruEvictsOnlyWhatNoRequestOrStackHolds) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 2);
  r.load("a", s(f.gguf1));
  r.load("b", s(f.gguf2));
  r.resolve("a");  // b is now the least recently used
  r.load("c", s(f.gguf3));
  EXPECT_EQ(names(r), (std::vector<std::string>{"a", "c"}));
  EXPECT_FALSE(r.resolve("b"));

  // a is the least recently used but a request holds it: c goes.
  AdapterStack held = r.from_lora({{std::nullopt, "a", 1.0f}});
  r.resolve("c");
  r.load("d", s(f.gguf2));
  EXPECT_EQ(names(r), (std::vector<std::string>{"a", "d"}));
  const std::vector<float> want = logits(f, held);
  held = AdapterStack{};  // the request ends: a is the LRU and free
  r.load("e", s(f.gguf3));
  EXPECT_EQ(names(r), (std::vector<std::string>{"d", "e"}));

  // Replacing a name needs no room.
  r.load("e", s(f.gguf1));
  EXPECT_EQ(names(r), (std::vector<std::string>{"d", "e"}));
  EXPECT_EQ(logits(f, *r.resolve("e")), want);  // e is now gguf1, as a was

  // Named stacks and global scales pin their adapters; when all are pinned, a load is refused
  // and nothing changes.
  AdapterRegistry p(f.model, "model", 2);
  p.add_stack("s=" + s(f.gguf1));
  p.load("free", s(f.gguf2));
  p.set_global_scales({{1, 0.5f}});
  ErrorCode code{};
  const std::string m = error_of([&] { p.load("more", s(f.gguf3)); }, &code);
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_NE(m.find("--max-loras 2"), std::string::npos) << m;
  EXPECT_EQ(names(p), (std::vector<std::string>{"s", "free"}));
  p.set_global_scales({});
  p.load("more", s(f.gguf3));
  EXPECT_EQ(names(p), (std::vector<std::string>{"s", "more"}));
  // A stack of more files than the bound never fits.
  EXPECT_NE(error_of([&] {
              p.add_stack("big=" + s(f.gguf1) + "+" + s(f.gguf2) + "+" + s(f.gguf3));
            }).find("--max-loras"),
            std::string::npos);
  EXPECT_EQ(p.stacks().size(), 1u);
}

TEST(AdapterRegistry, BadAdaptersAndArgumentsAreRefusedByName) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 0);
  const fs::path missing = f.dir / "missing.gguf";
  const fs::path junk = f.dir / "junk.bin";
  std::ofstream(junk) << "this is not an adapter";
  const fs::path model_gguf = f.dir / "model_as_lora";
  fs::create_directories(model_gguf);  // a directory without adapter_config.json
  for (const fs::path& p : {missing, junk, model_gguf, f.other_model_lora}) {
    const std::string m = error_of([&] { r.load("bad", s(p)); });
    EXPECT_NE(m.find(s(p)), std::string::npos) << m;
    const std::string m2 = error_of([&] { r.add_stack("bad=" + s(f.gguf1) + "+" + s(p)); });
    EXPECT_NE(m2.find(s(p)), std::string::npos) << m2;
  }
  EXPECT_TRUE(r.adapters().empty());
  EXPECT_TRUE(r.stacks().empty());

  auto arg_err = [&](const std::string& arg) {
    ErrorCode code{};
    std::string m = error_of([&] { r.add_stack(arg); }, &code);
    EXPECT_EQ(code, ErrorCode::kInvalidArgument) << arg << ": " << m;
    return m;
  };
  EXPECT_NE(arg_err(s(f.gguf1)).find("NAME=FILE"), std::string::npos);
  EXPECT_NE(arg_err("=" + s(f.gguf1)).find("NAME=FILE"), std::string::npos);
  EXPECT_NE(arg_err("x=").find("NAME=FILE"), std::string::npos);
  EXPECT_NE(arg_err("x=" + s(f.gguf1) + "++" + s(f.gguf2)).find("empty"), std::string::npos);
  EXPECT_NE(arg_err("x=" + s(f.gguf1) + ":nan").find("scale"), std::string::npos);
  EXPECT_NE(arg_err("a b=" + s(f.gguf1)).find("space"), std::string::npos);
  EXPECT_NE(arg_err("model=" + s(f.gguf1)).find("already used"), std::string::npos);
  r.add_stack("x=" + s(f.gguf1));
  EXPECT_NE(arg_err("x=" + s(f.gguf2)).find("already used"), std::string::npos);
  r.add_stack("y=" + s(f.gguf1) + "+" + s(f.gguf2));
  EXPECT_NE(error_of([&] { r.load("y", s(f.gguf3)); }).find("stack of 2"), std::string::npos);
  r.load("z", s(f.gguf3));  // an adapter's name is not free for a stack of several either
  EXPECT_NE(arg_err("z=" + s(f.gguf1) + "+" + s(f.gguf2)).find("already used"), std::string::npos);
  EXPECT_NE(error_of([&] { r.load("model", s(f.gguf3)); }).find("base model"), std::string::npos);
  EXPECT_NE(error_of([&] { AdapterRegistry(f.model, "m", -1); }).find("--max-loras"),
            std::string::npos);
  EXPECT_EQ(names(r), (std::vector<std::string>{"x", "y/1", "y/2", "z"}));
}

TEST(AdapterRegistry, RequestsOnThreadsWhileAdaptersComeAndGo) {
  const Fixture& f = fixture();
  AdapterRegistry r(f.model, "model", 2);
  r.load("a", s(f.gguf1));
  std::atomic<bool> stop{false};
  std::atomic<int> served{0};
  std::vector<std::thread> requests;
  for (int t = 0; t < 3; ++t)
    requests.emplace_back([&, t] {
      while (!stop) {
        std::optional<AdapterStack> st = r.resolve(t == 0 ? "a" : t == 1 ? "b" : "c");
        if (!st) continue;  // unloaded or evicted meanwhile: a 404
        // What a request got stays whole until it lets go.
        for (const StackEntry& e : st->entries) ASSERT_GT(e.adapter->num_pairs(), 0u);
        ++served;
      }
    });
  // Each load evicts the least recently used free adapter; when requests hold both at that
  // moment it is refused (the registry unchanged) and tried again.
  auto load = [&](const char* name, const fs::path& p) {
    for (;;) {
      const std::string m = error_of([&] { r.load(name, s(p)); });
      if (m == "(no error)") return;
      ASSERT_NE(m.find("--max-loras"), std::string::npos) << m;
      EXPECT_LE(r.adapters().size(), 2u);
    }
  };
  while (served < 3) std::this_thread::yield();  // the requests are running
  for (int i = 0; i < 30; ++i) {
    load(i % 2 ? "b" : "c", i % 3 ? f.gguf2 : f.gguf3);
    if (i % 5 == 0) r.unload("a");
    if (i % 5 == 2) load("a", f.gguf1);
  }
  stop = true;
  for (std::thread& t : requests) t.join();
  EXPECT_LE(r.adapters().size(), 2u);
}
