// `nnpipe render-chat`: renders a Hugging Face chat template exactly as transformers'
// apply_chat_template(tokenize=False) does; --jsonl renders many conversations in one run.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include "command.h"
#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "core/log.h"
#include "tokenizer/chat_assets.h"
#include "tokenizer/chat_template.h"

namespace nnpipe::cli {
namespace {

struct Options {
  std::string template_file, model_dir, messages_file, vars, jsonl_file;
  bool add_generation_prompt = false;
};

int run(const Options& o) {
  if (o.template_file.empty() == o.model_dir.empty())
    fail(ErrorCode::kInvalidArgument, "render-chat: give exactly one of --template and --model");
  if (o.messages_file.empty() == o.jsonl_file.empty())
    fail(ErrorCode::kInvalidArgument, "render-chat: give exactly one of --messages and --jsonl");
  ordered_json vars = ordered_json::object();
  if (!o.vars.empty()) vars = parse_ordered_json(o.vars, "--vars");
  if (!vars.is_object()) fail(ErrorCode::kInvalidArgument, "--vars must be a JSON object");

  // Templates are cached per tools/no-tools choice (it only matters for named templates).
  std::optional<ChatTemplate> tmpl[2];
  ordered_json special = ordered_json::object();
  auto get_template = [&](bool has_tools) -> const ChatTemplate& {
    auto& slot = tmpl[has_tools ? 1 : 0];
    if (!slot) {
      if (!o.template_file.empty()) {
        slot.emplace(read_file(o.template_file), o.template_file);
      } else {
        ModelChatTemplate mt = load_model_chat_template(o.model_dir, has_tools);
        special = mt.special_tokens;
        slot.emplace(mt.source, mt.origin);
      }
    }
    return *slot;
  };
  auto render_one = [&](const ordered_json& messages, bool agp, const ordered_json& extra) {
    bool has_tools = extra.contains("tools") && !extra["tools"].is_null();
    const ChatTemplate& t = get_template(has_tools);
    ordered_json all = special;  // special tokens first; explicit variables override them
    for (auto it = vars.begin(); it != vars.end(); ++it) all[it.key()] = it.value();
    for (auto it = extra.begin(); it != extra.end(); ++it) all[it.key()] = it.value();
    return apply_chat_template(t, messages, agp, all);
  };

  if (!o.messages_file.empty()) {
    ordered_json messages = parse_ordered_json(read_file(o.messages_file), o.messages_file);
    std::string out = render_one(messages, o.add_generation_prompt, ordered_json::object());
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    return 0;
  }

  get_template(false);  // a template that does not parse fails the whole run
  // Batch: one JSON object per line in, one JSON string (or {"error": ...}) per line out.
  std::ifstream in(o.jsonl_file);
  if (!in) fail(ErrorCode::kIo, "{}: cannot open", o.jsonl_file);
  std::string line;
  size_t lineno = 0, failures = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string origin = fmt::format("{}:{}", o.jsonl_file, lineno);
    ordered_json out;
    try {
      ordered_json rec = parse_ordered_json(line, origin);
      if (!rec.is_object()) fail(ErrorCode::kFormat, "{}: expected a JSON object", origin);
      ordered_json extra = ordered_json::object();
      for (auto it = rec.begin(); it != rec.end(); ++it)
        if (it.key() != "messages" && it.key() != "add_generation_prompt")
          extra[it.key()] = it.value();
      bool agp = rec.contains("add_generation_prompt") &&
                 rec["add_generation_prompt"].is_boolean() &&
                 rec["add_generation_prompt"].get<bool>();
      if (!rec.contains("messages"))
        fail(ErrorCode::kFormat, "{}: missing field \"messages\"", origin);
      out = render_one(rec["messages"], agp, extra);
    } catch (const Error& e) {
      ++failures;
      out = ordered_json{{"error", e.what()}};
    }
    std::string s = out.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
    s += '\n';
    std::fwrite(s.data(), 1, s.size(), stdout);
  }
  std::fflush(stdout);
  if (failures)
    log::error("{}: {} of {} conversations failed to render", o.jsonl_file, failures, lineno);
  return failures ? 1 : 0;
}

NNPIPE_COMMAND(
    "render-chat",
    "Render a chat template (Jinja) exactly as transformers' apply_chat_template does",
    [](CLI::App& app) -> RunFn {
      auto o = std::make_shared<Options>();
      app.add_option("--template", o->template_file, "Jinja chat template file to render");
      app.add_option(
          "--model", o->model_dir,
          "Model directory: its chat_template.jinja or tokenizer_config.json chat_template "
          "(ChatML fallback with a warning) and special tokens");
      app.add_option("--messages", o->messages_file, "JSON file with the list of chat messages");
      app.add_flag("--add-generation-prompt", o->add_generation_prompt,
                   "Append the assistant turn header (add_generation_prompt=True)");
      app.add_option(
          "--vars", o->vars,
          "JSON object of extra template variables (tools, enable_thinking, bos_token, ...)");
      app.add_option(
          "--jsonl", o->jsonl_file,
          "Batch mode: each line is {\"messages\": [...], \"add_generation_prompt\": bool, "
          "...extra variables}; prints one JSON string per line ({\"error\": ...} on failure)");
      return [o] { return run(*o); };
    });

}  // namespace
}  // namespace nnpipe::cli
