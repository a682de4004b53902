// Loads and tokenizes a generated 100k-conversation JSONL file with a model's tokenizer and chat
// template (default: the built-in tokenizer + ChatML) and prints the timings as JSON.
// usage: dataset_bench [N_CONVERSATIONS] [MODEL_DIR]
#include <chrono>
#include <cstdio>
#include <string>

#include "core/embedded.h"
#include "core/rng.h"
#include "tokenizer/chat_assets.h"
#include "train/dataset.h"

using namespace nnpipe;

int main(int argc, char** argv) {
  size_t n = argc > 1 ? std::stoul(argv[1]) : 100000;
  Rng rng(1);
  const char* words[] = {"hello",    "world", "model", "train", "the",  "a",  "LoRA",
                         "quantize", "Arpit", "naïve", "日本",  "🦙", "is", "fast",
                         "tokens",   "nice",  "to",    "meet",  "you",  "!"};
  auto text = [&](int k) {
    std::string s;
    for (int i = 0; i < k; ++i) s += std::string(i ? " " : "") + words[rng.below(20)];
    return s;
  };
  std::string data;
  for (size_t i = 0; i < n; ++i) {
    json c = {{"messages",
               {{{"role", "system"}, {"content", "You are a helpful assistant."}},
                {{"role", "user"}, {"content", text(12)}},
                {{"role", "assistant"}, {"content", text(30)}}}}};
    data += c.dump() + "\n";
  }
  fs::path path = fs::temp_directory_path() / "nnpipe_dataset_bench.jsonl";
  write_file_atomic(path, data);

  std::optional<ChatAssets> assets;
  if (argc > 2) {
    assets.emplace(load_chat_assets(argv[2]));
  } else {
    assets.emplace(ChatAssets{Tokenizer::from_json(default_tokenizer_json(), "default tokenizer")});
    assets->chat_template.emplace(chatml_template_source(), "ChatML");
  }
  using clk = std::chrono::steady_clock;
  auto t0 = clk::now();
  auto convs = load_conversations(path);
  auto t1 = clk::now();
  Dataset ds = tokenize_dataset(convs, assets->tokenizer, *assets->chat_template,
                                assets->template_vars, DatasetOptions{}, path.string());
  auto t2 = clk::now();
  std::printf(
      "{\"conversations\": %zu, \"bytes\": %zu, \"parse_s\": %.3f, \"tokenize_s\": %.3f, "
      "\"tokens\": %zu}\n",
      convs.size(), data.size(), std::chrono::duration<double>(t1 - t0).count(),
      std::chrono::duration<double>(t2 - t1).count(), ds.stats.tokens);
  fs::remove(path);
  return 0;
}
