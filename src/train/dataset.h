// Chat datasets: the description's JSON (a list of {"messages": [{"role", "content"}]}) or JSONL of
// the same objects, tokenized with the model's own chat template. Labels follow QWEN.md: the
// tokens of each assistant reply and its closing <|im_end|> are trained, everything else is -100.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"  // kIgnoreIndex
#include "core/json.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct Conversation {
  std::vector<ChatMessage> messages;
};

// Parses and validates; errors name the origin, the conversation index (and JSONL line) and the
// field: not JSON, not a list, missing/extra fields, unknown role, non-string content, no
// assistant turn, empty input, invalid UTF-8. JSONL is chosen by a ".jsonl" name, or (for names
// other than ".json") when the
// text does not start with '['.
std::vector<Conversation> parse_conversations(std::string_view text, const std::string& origin,
                                              bool jsonl);
std::vector<Conversation> load_conversations(const fs::path& path);

struct DatasetOptions {
  size_t max_seq_len = 2048;
  bool reject_long = false;  // error instead of truncating conversations longer than max_seq_len
};

struct Example {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;  // same length; kIgnoreIndex where not trained (unshifted, like HF)
  size_t conversation = 0;      // index in the source
  bool truncated = false;
  size_t trained_tokens() const;
};

struct DatasetStats {
  size_t conversations = 0;
  size_t examples = 0;
  size_t tokens = 0;
  size_t trained_tokens = 0;
  size_t longest = 0;  // tokens, before truncation
  size_t truncated = 0;
  size_t dropped = 0;  // no trained token left after truncation
  json to_json() const;
};

// The text of one conversation as the model sees it, and the [begin, end) byte spans of the
// assistant replies (content plus <|im_end|>) in it. A turn is delimited by the template's own
// "<|im_start|>assistant\n" and "<|im_end|>": special-token text typed inside a message (see
// render_chat, `specials` = Tokenizer::special_texts()) is plain text, listed in literal_specials,
// and never starts or ends a turn.
struct RenderedConversation {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained_spans;
  std::vector<size_t> literal_specials;
};
RenderedConversation render_for_training(const Conversation& conv, const ChatTemplate& tmpl,
                                         const ordered_json& extra_vars, const std::string& origin,
                                         const std::vector<std::string>& specials);

struct Dataset {
  std::vector<Example> examples;
  DatasetStats stats;
};

// `extra_vars` are the template variables besides messages (bos_token, eos_token, ...).
Dataset tokenize_dataset(const std::vector<Conversation>& convs, const Tokenizer& tok,
                         const ChatTemplate& tmpl, const ordered_json& extra_vars,
                         const DatasetOptions& opt, const std::string& origin);

}  // namespace nnpipe
