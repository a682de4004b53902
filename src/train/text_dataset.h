// Plain-text datasets for (continued) pre-training: a UTF-8 `.txt` file whose documents are
// separated by blank lines. Unlike chat data, every token is trained (a causal LM objective over
// the whole text, as transformers' run_clm / TRL's "text" datasets do). Each document is tokenized
// as plain text (a special token's spelling in it stays text, like tokenizers' encode with
// encode_special_tokens), followed by <|endoftext|>, and cut into consecutive windows of at most
// max_seq_len tokens (nothing is dropped but a last window of one token).
#pragma once
#include <cstdint>
#include <string_view>

#include "train/dataset.h"

namespace nnpipe {

// Whether `path` names a plain-text dataset (".txt").
bool is_text_dataset(const fs::path& path);

// Errors name `origin`: invalid UTF-8 (with the byte offset), no document, no <|endoftext|> token.
Dataset tokenize_text_dataset(std::string_view text, const Tokenizer& tok, size_t max_seq_len,
                              const std::string& origin);
Dataset load_text_dataset(const fs::path& path, const Tokenizer& tok, size_t max_seq_len);

}  // namespace nnpipe
