// Private state of Tokenizer, shared by tokenizer_load.cpp (building it from tokenizer.json) and
// tokenizer.cpp (encoding and decoding).
#pragma once
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

// (A plain struct, because Tokenizer::Impl is private and the loader's helpers need the state.)
struct TokenizerState {
  std::string origin;
  BpeModel bpe;
  bool nfc = false;                       // normalizer: NFC or none
  std::vector<SplitPretokenizer> splits;  // applied in order; then the byte-level mapping
  std::vector<AddedToken> added;          // as declared, for added_tokens()
  std::unordered_map<int32_t, AddedTokenSpec> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  AddedTokenMatcher raw_matcher;   // normalized: false, matched in the raw text
  AddedTokenMatcher norm_matcher;  // normalized: true, matched in the normalized text
  std::vector<std::string> bytes;  // token_bytes of every id (vocab and added)
  size_t size = 0;

  // Fills `bytes` and `size` once vocab and added tokens are in place.
  void finish();
  // `literal`: sorted offsets where special-token text is plain text (Tokenizer::encode).
  void encode(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts,
              std::span<const size_t> literal = {}) const;
};

struct Tokenizer::Impl : TokenizerState {};

}  // namespace nnpipe
