// Finding added tokens in text the way HF's AddedVocabulary does: leftmost-longest matches
// (its Aho-Corasick is built with MatchKind::LeftmostLongest), then the single_word / lstrip /
// rstrip rules of each token.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace nnpipe {

struct AddedTokenSpec {
  int32_t id = 0;
  std::string content;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

class AddedTokenMatcher {
 public:
  struct Piece {
    size_t begin, end;
    int32_t id;  // -1: ordinary text
  };
  // `patterns[i]` is what is searched for token `tokens[i]` (its content, NFC'd if normalized).
  void build(std::vector<AddedTokenSpec> tokens, std::vector<std::string> patterns);
  bool empty() const { return tokens_.empty(); }
  // Cuts `text` into added tokens and the text between them (empty text yields nothing). A
  // special token whose match starts where `literal(begin)` is true stays text (like HF's
  // split_special_tokens for that one occurrence; non-special added tokens are always matched).
  void split(std::string_view text, std::vector<Piece>& out,
             const std::function<bool(size_t)>* literal = nullptr) const;

 private:
  std::vector<AddedTokenSpec> tokens_;
  // Byte trie: node 0 is the root; terminal_[n] is the token index ending at n, or -1.
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;
  bool first_byte_[256] = {};
};

}  // namespace nnpipe
