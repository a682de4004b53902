// nnpipe init-model: write a randomly initialised Qwen2 model (HF directory) of a named shape.
#include "command.h"
#include "core/error.h"
#include "model/init_model.h"

namespace {

struct InitArgs {
  nnpipe::InitModelOptions opt;
  std::string out, tokenizer, dtype;
  int64_t vocab_size = 0;
};

int run_init(InitArgs& a) {
  using namespace nnpipe;
  a.opt.out = a.out;
  if (!a.tokenizer.empty()) a.opt.tokenizer = a.tokenizer;
  if (!a.dtype.empty()) {
    auto d = dtype_from_torch_name(a.dtype);
    if (!d) fail(ErrorCode::kInvalidArgument, "--dtype: unknown dtype \"{}\"", a.dtype);
    a.opt.dtype = *d;
  }
  if (a.vocab_size > 0) a.opt.vocab_size = a.vocab_size;
  init_model(a.opt);
  return 0;
}

NNPIPE_COMMAND(
    "init-model",
    "Write a randomly initialised Qwen2 model of a named shape as a Hugging Face directory",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<InitArgs>();
      app.add_option("--preset", a->opt.preset,
                     "Model shape: tiny (hidden 64, 2 layers, vocab from the tokenizer), small "
                     "(hidden 256, FFN 768: whole K-quant blocks), qwen1.5-0.5b or qwen2.5-0.5b "
                     "(the published 0.5B shapes)")
          ->check(CLI::IsMember({"tiny", "small", "qwen1.5-0.5b", "qwen2.5-0.5b"}))
          ->required();
      app.add_option("--seed", a->opt.seed, "Random seed: the same seed gives identical files")
          ->required();
      app.add_option("--out", a->out, "Output directory (replaced atomically if it exists)")
          ->required();
      app.add_option(
          "--tokenizer", a->tokenizer,
          "tokenizer.json, or a directory with one; a tokenizer_config.json beside it is "
          "copied too. Default: nnpipe's small built-in BPE tokenizer");
      app.add_option("--dtype", a->dtype,
                     "Weight dtype: float32, bfloat16 or float16 (default: float32 for tiny, "
                     "bfloat16 for the 0.5B presets)")
          ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
      app.add_option("--vocab-size", a->vocab_size,
                     "Embedding rows (>= the tokenizer's size; default: tiny rounds the tokenizer "
                     "size up to a multiple of 64, the 0.5B presets use 151936)");
      app.add_option(
          "--max-shard-size", a->opt.max_shard_bytes,
          "Split the weights into shards of at most this many bytes (default 5000000000)");
      return [a] { return run_init(*a); };
    });

}  // namespace
