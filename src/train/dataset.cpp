#include "train/dataset.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {
namespace {

constexpr std::string_view kAssistantHeader = "<|im_start|>assistant\n";
constexpr std::string_view kImEnd = "<|im_end|>";

std::string where(const std::string& origin, size_t index, size_t line) {
  return line ? fmt::format("{}: line {}: conversation {}", origin, line, index)
              : fmt::format("{}: conversation {}", origin, index);
}

Conversation parse_one(const json& j, const std::string& at) {
  if (!j.is_object())
    fail(ErrorCode::kFormat, "{}: expected an object with \"messages\", got {}", at,
         json_type_name(j));
  for (auto& [k, v] : j.items())
    if (k != "messages")
      fail(ErrorCode::kFormat, "{}: unexpected field \"{}\" (only \"messages\" is allowed)", at, k);
  auto it = j.find("messages");
  if (it == j.end()) fail(ErrorCode::kFormat, "{}: missing field \"messages\"", at);
  if (!it->is_array())
    fail(ErrorCode::kFormat, "{}: \"messages\" must be an array, got {}", at, json_type_name(*it));
  if (it->empty()) fail(ErrorCode::kFormat, "{}: \"messages\" is empty", at);
  Conversation c;
  bool has_assistant = false;
  for (size_t m = 0; m < it->size(); ++m) {
    const json& msg = (*it)[m];
    std::string mat = fmt::format("{}: messages[{}]", at, m);
    if (!msg.is_object())
      fail(ErrorCode::kFormat, "{}: expected an object, got {}", mat, json_type_name(msg));
    for (auto& [k, v] : msg.items())
      if (k != "role" && k != "content")
        fail(ErrorCode::kFormat, "{}: unexpected field \"{}\" (allowed: \"role\", \"content\")",
             mat, k);
    auto r = msg.find("role");
    if (r == msg.end()) fail(ErrorCode::kFormat, "{}: missing field \"role\"", mat);
    if (!r->is_string())
      fail(ErrorCode::kFormat, "{}.role: must be a string, got {}", mat, json_type_name(*r));
    auto ct = msg.find("content");
    if (ct == msg.end()) fail(ErrorCode::kFormat, "{}: missing field \"content\"", mat);
    if (!ct->is_string())
      fail(ErrorCode::kFormat, "{}.content: must be a string, got {}", mat, json_type_name(*ct));
    std::string role = r->get<std::string>();
    if (role != "system" && role != "user" && role != "assistant")
      fail(ErrorCode::kFormat,
           "{}.role: unknown role \"{}\" (expected \"system\", \"user\" or \"assistant\")", mat,
           role);
    if (role == "system" && m != 0)
      fail(ErrorCode::kFormat, "{}.role: a \"system\" message is only allowed first", mat);
    has_assistant |= role == "assistant";
    c.messages.push_back({std::move(role), ct->get<std::string>()});
  }
  if (!has_assistant)
    fail(ErrorCode::kFormat, "{}: no \"assistant\" message, nothing to train on", at);
  return c;
}

}  // namespace

std::vector<Conversation> parse_conversations(std::string_view text, const std::string& origin,
                                              bool jsonl) {
  std::vector<Conversation> out;
  bool blank = std::all_of(text.begin(), text.end(), [](char ch) {
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
  });
  if (blank) fail(ErrorCode::kFormat, "{}: empty dataset (no conversations)", origin);
  if (!jsonl) {
    json j = parse_json(text, origin);
    if (!j.is_array())
      fail(ErrorCode::kFormat, "{}: expected a JSON list of conversations, got {}", origin,
           json_type_name(j));
    if (j.empty())
      fail(ErrorCode::kFormat, "{}: empty dataset (the list has no conversations)", origin);
    out.reserve(j.size());
    for (size_t i = 0; i < j.size(); ++i) out.push_back(parse_one(j[i], where(origin, i, 0)));
    return out;
  }
  size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    ++line_no;
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    json j = parse_json(line, origin, line_no);
    out.push_back(parse_one(j, where(origin, out.size(), line_no)));
  }
  return out;
}

std::vector<Conversation> load_conversations(const fs::path& path) {
  std::string text = read_file(path);
  size_t i = text.find_first_not_of(" \t\r\n");
  bool jsonl = path.extension() == ".jsonl" ||
               (path.extension() != ".json" && i != std::string::npos && text[i] != '[');
  return parse_conversations(text, path.string(), jsonl);
}

size_t Example::trained_tokens() const {
  return static_cast<size_t>(
      std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreIndex; }));
}

json DatasetStats::to_json() const {
  return {{"conversations", conversations},
          {"examples", examples},
          {"tokens", tokens},
          {"trained_tokens", trained_tokens},
          {"longest", longest},
          {"truncated", truncated},
          {"dropped", dropped}};
}

RenderedConversation render_for_training(const Conversation& conv, const ChatTemplate& tmpl,
                                         const ordered_json& extra_vars, const std::string& origin,
                                         const std::vector<std::string>& specials) {
  ordered_json messages = ordered_json::array();
  size_t n_assistant = 0;
  for (const ChatMessage& m : conv.messages) {
    messages.push_back({{"role", m.role}, {"content", m.content}});
    n_assistant += m.role == "assistant";
  }
  ChatRendering cr =
      render_chat(tmpl, messages, /*add_generation_prompt=*/false, extra_vars, specials, origin);
  RenderedConversation r;
  r.text = std::move(cr.text);
  r.literal_specials = std::move(cr.literal_specials);
  auto is_literal = [&](size_t at) {
    return std::binary_search(r.literal_specials.begin(), r.literal_specials.end(), at);
  };
  // The template's own occurrence of `what` at or after `from` (one typed in a message is text).
  auto find_markup = [&](std::string_view what, size_t from) {
    size_t at = r.text.find(what, from);
    while (at != std::string::npos && is_literal(at)) at = r.text.find(what, at + 1);
    return at;
  };
  // Each assistant turn is "<|im_start|>assistant\n" + reply + "<|im_end|>"; the reply is
  // whatever the template put there (Qwen3 adds an empty think block to the last one).
  size_t pos = 0;
  for (size_t k = 0; k < n_assistant; ++k) {
    size_t h = find_markup(kAssistantHeader, pos);
    if (h == std::string::npos)
      fail(ErrorCode::kUnsupported,
           "{}: the chat template rendered {} of {} assistant turns as "
           "\"<|im_start|>assistant\\n...<|im_end|>\"; "
           "label masks need ChatML turns",
           origin, k, n_assistant);
    size_t begin = h + kAssistantHeader.size();
    size_t e = find_markup(kImEnd, begin);
    if (e == std::string::npos)
      fail(ErrorCode::kUnsupported,
           "{}: assistant turn {} has no closing <|im_end|> in the rendered template", origin, k);
    r.trained_spans.emplace_back(begin, e + kImEnd.size());
    pos = e + kImEnd.size();
  }
  return r;
}

namespace {

// Renders and tokenizes conversation `i` with its label mask (no truncation yet).
Example encode_conversation(const Conversation& conv, size_t i, const Tokenizer& tok,
                            const ChatTemplate& tmpl, const ordered_json& extra_vars,
                            const std::vector<std::string>& specials, const std::string& at,
                            std::vector<size_t>& starts) {
  RenderedConversation rc = render_for_training(conv, tmpl, extra_vars, at, specials);
  Example ex;
  ex.conversation = i;
  ex.input_ids = tok.encode_with_offsets(rc.text, &starts, rc.literal_specials);
  ex.labels.assign(ex.input_ids.size(), kIgnoreIndex);
  // A token is trained when it starts inside an assistant span (spans begin right after a
  // newline and end at a special token, so no token straddles a span boundary's start).
  size_t s = 0;
  for (size_t t = 0; t < ex.input_ids.size(); ++t) {
    while (s < rc.trained_spans.size() && starts[t] >= rc.trained_spans[s].second) ++s;
    if (s < rc.trained_spans.size() && starts[t] >= rc.trained_spans[s].first)
      ex.labels[t] = ex.input_ids[t];
  }
  return ex;
}

}  // namespace

Dataset tokenize_dataset(const std::vector<Conversation>& convs, const Tokenizer& tok,
                         const ChatTemplate& tmpl, const ordered_json& extra_vars,
                         const DatasetOptions& opt, const std::string& origin) {
  if (opt.max_seq_len < 2)
    fail(ErrorCode::kInvalidArgument, "max_seq_len must be at least 2, got {}", opt.max_seq_len);
  auto where = [&](size_t i) { return fmt::format("{}: conversation {}", origin, i); };

  // Rendering and tokenizing are independent per conversation (both objects are const and
  // thread-safe): spread them over the cores, then apply truncation and statistics in order.
  std::vector<Example> encoded(convs.size());
  std::vector<std::exception_ptr> errors(convs.size());
  size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
  n_threads = std::min(n_threads, std::max<size_t>(1, convs.size() / 64));
  // The tokenizer's control tokens, and the ChatML markers the label spans are found by in any
  // case.
  std::vector<std::string> specials = tok.special_texts();
  specials.emplace_back("<|im_start|>");
  specials.emplace_back(kImEnd);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    std::vector<size_t> starts;
    for (size_t i; (i = next.fetch_add(1)) < convs.size();) {
      try {
        encoded[i] =
            encode_conversation(convs[i], i, tok, tmpl, extra_vars, specials, where(i), starts);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < n_threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);  // the first failing conversation, as a serial run would

  Dataset ds;
  ds.stats.conversations = convs.size();
  ds.examples.reserve(convs.size());
  for (size_t i = 0; i < convs.size(); ++i) {
    Example& ex = encoded[i];
    ds.stats.longest = std::max(ds.stats.longest, ex.input_ids.size());
    if (ex.input_ids.size() > opt.max_seq_len) {
      if (opt.reject_long)
        fail(ErrorCode::kInvalidArgument,
             "{}: {} tokens, longer than max_seq_len {} (truncation disabled)", where(i),
             ex.input_ids.size(), opt.max_seq_len);
      log::warn("{}: {} tokens, truncated to max_seq_len {}", where(i), ex.input_ids.size(),
                opt.max_seq_len);
      ex.input_ids.resize(opt.max_seq_len);
      ex.labels.resize(opt.max_seq_len);
      ex.truncated = true;
      ++ds.stats.truncated;
    }
    size_t trained = ex.trained_tokens();
    if (trained == 0) {
      log::warn("{}: no assistant token left after truncation; conversation skipped", where(i));
      ++ds.stats.dropped;
      continue;
    }
    ds.stats.tokens += ex.input_ids.size();
    ds.stats.trained_tokens += trained;
    ds.examples.push_back(std::move(ex));
  }
  ds.stats.examples = ds.examples.size();
  return ds;
}

}  // namespace nnpipe
