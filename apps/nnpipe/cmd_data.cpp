// nnpipe data check: validate and tokenize a chat dataset with a model's template, print stats.
#include <iostream>
#include <limits>

#include "cli_checks.h"
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "tokenizer/chat_assets.h"
#include "train/dataset.h"

namespace {

struct DataArgs {
  std::string file, model, dump;
  size_t max_seq_len = 2048;
  bool reject_long = false, as_json = false;
};

int run_check(const DataArgs& a) {
  using namespace nnpipe;
  ChatAssets assets = load_chat_assets(a.model);
  auto convs = load_conversations(a.file);
  DatasetOptions opt{a.max_seq_len, a.reject_long};
  Dataset ds = tokenize_dataset(convs, assets.tokenizer, *assets.chat_template,
                                assets.template_vars, opt, a.file);
  if (!a.dump.empty()) {
    std::string out;
    for (const Example& ex : ds.examples)
      out += json{{"conversation", ex.conversation},
                  {"input_ids", ex.input_ids},
                  {"labels", ex.labels},
                  {"truncated", ex.truncated}}
                 .dump() +
             "\n";
    write_file_atomic(a.dump, out);
  }
  json stats = ds.stats.to_json();
  if (a.as_json) {
    std::cout << stats.dump(2) << "\n";
  } else {
    std::cout << fmt::format(
        "{}: {} conversations, {} examples, {} tokens, {} trained tokens ({:.1f}%), longest {} "
        "tokens, {} truncated, "
        "{} dropped\n",
        a.file, ds.stats.conversations, ds.stats.examples, ds.stats.tokens, ds.stats.trained_tokens,
        ds.stats.tokens ? 100.0 * static_cast<double>(ds.stats.trained_tokens) /
                              static_cast<double>(ds.stats.tokens)
                        : 0.0,
        ds.stats.longest, ds.stats.truncated, ds.stats.dropped);
  }
  // Training refuses such a set (trainer.cpp): the check must not pass it.
  if (ds.examples.empty())
    fail(ErrorCode::kInvalidArgument,
         "{}: no usable example: no conversation has a trained token left (max_seq_len {} "
         "truncates every reply away?)",
         a.file, a.max_seq_len);
  return 0;
}

NNPIPE_COMMAND(
    "data", "Chat datasets: validate, tokenize with a model's chat template, report statistics",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<DataArgs>();
      app.require_subcommand(1);
      CLI::App* check = app.add_subcommand(
          "check",
          "Validate FILE (JSON list or JSONL of {\"messages\": [...]}) and print statistics");
      check->add_option("file", a->file, "Dataset file (.json or .jsonl)")->required();
      check
          ->add_option("--model", a->model,
                       "Model directory (tokenizer.json, tokenizer_config.json)")
          ->required();
      check
          ->add_option("--max-seq-len", a->max_seq_len,
                       "Truncate conversations to this many tokens (default 2048)")
          ->check(nnpipe::cli::int_in(2, std::numeric_limits<int64_t>::max()));
      check->add_flag("--reject-long", a->reject_long,
                      "Fail on a conversation longer than --max-seq-len instead of truncating");
      check->add_flag("--json", a->as_json, "Print the statistics as JSON");
      check->add_option("--dump", a->dump,
                        "Write the tokenized examples (input_ids, labels) as JSONL to this file");
      return [a] { return run_check(*a); };
    });

}  // namespace
