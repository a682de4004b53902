// Hugging Face tokenizer.json, byte-level BPE as Qwen uses it: added/special tokens matched in the
// raw text first, NFC per segment, the Split pre-tokenizer regex, GPT-2 byte mapping, BPE merges by
// rank. Encoding is bit-identical to HF `tokenizers` (tested against it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"

namespace nnpipe {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
};

class Tokenizer {
 public:
  // Loads tokenizer.json; errors name the file and the offending field.
  static Tokenizer from_file(const fs::path& path);
  static Tokenizer from_json(const json& j, const std::string& origin);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Like tokenizers' encode(text, add_special_tokens=False): added tokens in the text are matched,
  // except a special one whose text starts at one of the sorted offsets `literal_specials`: that
  // occurrence is plain text (special-token text typed in a chat message, see render_chat).
  std::vector<int32_t> encode(std::string_view text,
                              std::span<const size_t> literal_specials = {}) const;
  // Same ids; starts[i] = byte offset in `text` where token i begins. Exact wherever NFC left the
  // text unchanged (the chat-template boundaries label masks need are always such places).
  std::vector<int32_t> encode_with_offsets(std::string_view text, std::vector<size_t>* starts,
                                           std::span<const size_t> literal_specials = {}) const;
  // The texts of the special (control) added tokens, e.g. "<|im_start|>".
  std::vector<std::string> special_texts() const;
  // Bytes of the ids joined; invalid UTF-8 is replaced by U+FFFD (like HF's decode).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // Raw bytes of one token (byte-level mapping undone; added tokens: their content).
  std::string token_bytes(int32_t id) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;  // vocab or added token
  std::string id_to_token(int32_t id) const;                         // "" if unknown
  bool is_special(int32_t id) const;
  // max id + 1 over vocab and added tokens.
  size_t size() const;
  const std::vector<AddedToken>& added_tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streaming decode: feeds ids one by one and returns only complete UTF-8 characters, holding back
// a partial multi-byte sequence until its last byte arrives.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();  // whatever is held back (invalid bytes as U+FFFD)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

// The small byte-level BPE tokenizer nnpipe builds itself for the embedded default model:
// 256 byte tokens + `num_merges` merges learned (deterministically) from `corpus` with Qwen's
// pre-tokenizer, then <|endoftext|>, <|im_start|>, <|im_end|>. Returns tokenizer.json content.
json build_default_tokenizer(std::string_view corpus, int num_merges);

// tokenizer.json content of a Qwen2-style byte-level BPE (NFC, Qwen's split regex, ByteLevel)
// with the given model.vocab object, model.merges array and added_tokens array.
json qwen_bpe_tokenizer_json(json vocab, json merges, json added_tokens);

}  // namespace nnpipe

namespace nnpipe {
// The default tokenizer of the embedded model: build_default_tokenizer over the embedded corpus
// (data/tokenizer_corpus.txt + the sample conversations) with kDefaultTokenizerMerges merges.
inline constexpr int kDefaultTokenizerMerges = 700;
json default_tokenizer_json();
}  // namespace nnpipe
