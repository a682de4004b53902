// Private: jinja2's lexer with trim_blocks=True and lstrip_blocks=True (whitespace control,
// comments and raw blocks are resolved here, so the parser sees data and tag tokens only).
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja.h"

namespace nnpipe::jinja {

enum class Tok : uint8_t {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  std::string text;  // data, name, operator, or the unescaped string literal
  Pos pos;
  int64_t ival = 0;
  double fval = 0;
};

// `source` as jinja2 sees it (newlines normalized, one trailing newline dropped) -> tokens ending
// in kEof. Errors: kFormat "<origin>:<line>:<column>: ...".
std::vector<Token> lex(const std::string& source, const std::string& origin);

}  // namespace nnpipe::jinja
