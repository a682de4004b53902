#include "pipeline/pipeline.h"

#include <chrono>
#include <ctime>

#include "core/embedded.h"
#include "core/error.h"
#include "core/log.h"
#include "model/init_model.h"
#include "pipeline/session.h"
#include "tokenizer/chat_assets.h"
#include "train/dataset.h"

namespace nnpipe {
namespace {

std::string default_session_id() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return std::string("pipeline-") + buf;
}

}  // namespace

PipelineResult run_pipeline(const PipelineOptions& opt) {
  PipelineResult res;
  res.session_id = opt.session_id.value_or(default_session_id());
  Session session(opt.runs_dir, res.session_id);
  res.session_dir = session.dir();
  log::info("session {}: {}", res.session_id, session.dir().string());

  // 1. The model: a tiny random Qwen2 with nnpipe's own tokenizer, unless one was given.
  fs::path model_dir;
  if (opt.model) {
    model_dir = *opt.model;
  } else {
    res.steps.push_back(run_step(session, "init_model", {{"preset", "tiny"}, {"seed", opt.seed}},
                                 [&](StepContext& c) {
                                   InitModelOptions io;
                                   io.preset = "tiny";
                                   io.seed = opt.seed;
                                   io.out = c.dir() / "model";
                                   InitModelResult r = init_model(io);
                                   c.set_output("model", io.out.string());
                                   c.set_metric("parameters", r.parameters);
                                   c.set_metric("bytes", r.bytes);
                                 }));
    model_dir = session.dir() / "init_model" / "model";
  }

  // 2. The dataset: validated, rendered with the model's template, tokenized with label masks.
  std::optional<ChatAssets> assets;
  json data_params = {{"dataset", opt.dataset ? opt.dataset->string() : "embedded:sample.json"},
                      {"model", model_dir.string()},
                      {"max_seq_len", opt.max_seq_len}};
  std::vector<Conversation> convs;
  res.steps.push_back(run_step(session, "prepare_data", data_params, [&](StepContext& c) {
    assets.emplace(load_chat_assets(model_dir));
    fs::path data_path = c.dir() / "dataset.json";
    if (opt.dataset) {
      convs = load_conversations(*opt.dataset);
      data_path = *opt.dataset;
    } else {
      write_file_atomic(data_path, embedded::find("sample.json"));
      convs = load_conversations(data_path);
    }
    Dataset ds =
        tokenize_dataset(convs, assets->tokenizer, *assets->chat_template, assets->template_vars,
                         DatasetOptions{opt.max_seq_len, false}, data_path.string());
    std::string dump;
    for (const Example& ex : ds.examples)
      dump +=
          json{
              {"conversation", ex.conversation}, {"input_ids", ex.input_ids}, {"labels", ex.labels}}
              .dump() +
          "\n";
    write_file_atomic(c.dir() / "tokenized.jsonl", dump);
    c.set_output("dataset", data_path.string());
    c.set_output("tokenized", (c.dir() / "tokenized.jsonl").string());
    c.set_metric("stats", ds.stats.to_json());
    log::info("{} conversations, {} tokens, {} trained", ds.stats.conversations, ds.stats.tokens,
              ds.stats.trained_tokens);
  }));

  // 3. A chat prompt as the model will see it at inference: the first conversation's turns up to
  // its first user message, rendered with the generation prompt.
  res.steps.push_back(
      run_step(session, "render_chat", {{"model", model_dir.string()}}, [&](StepContext& c) {
        ordered_json messages = ordered_json::array();
        for (const ChatMessage& m : convs.at(0).messages) {
          messages.push_back({{"role", m.role}, {"content", m.content}});
          if (m.role == "user") break;
        }
        std::string prompt =
            apply_chat_template(*assets->chat_template, messages, true, assets->template_vars);
        std::vector<int32_t> ids = assets->tokenizer.encode(prompt);
        write_file_atomic(c.dir() / "prompt.txt", prompt);
        c.set_output("prompt", (c.dir() / "prompt.txt").string());
        c.set_metric("prompt_tokens", ids.size());
        log::info("rendered prompt ({} tokens):\n{}", ids.size(), prompt);
      }));
  return res;
}

}  // namespace nnpipe
