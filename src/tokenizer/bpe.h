// The BPE model of tokenizer.json: byte-level symbols merged by rank, like HF's
// models::bpe::Word::merge_all (a heap of candidate merges over a linked list of symbols, so long
// words cost O(n log n)), with a word cache.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nnpipe {

class BpeModel {
 public:
  struct Token {
    int32_t id;
    uint32_t len;  // bytes of the word it covers
  };
  struct Merge {
    int32_t left, right, result;  // vocab ids; rank = position in the list
  };
  struct Options {
    bool ignore_merges = false;
    std::optional<int32_t> unk_id;  // symbols missing from the vocab: dropped if unset
    bool fuse_unk = false;
  };

  BpeModel();
  // `tokens[id]` is the vocab string of id (byte-level form), "" for ids the vocab does not use.
  BpeModel(std::vector<std::string> tokens, const std::vector<Merge>& merges, Options opts);
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // Appends the tokens of one pre-token (raw bytes, before the byte-level mapping).
  void encode_word(std::string_view bytes, std::vector<Token>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::vector<std::string>& tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nnpipe
