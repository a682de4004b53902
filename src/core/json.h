// JSON (nlohmann) with errors that name the file, line and column.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/file.h"

namespace nnpipe {

using json = nlohmann::json;
// Keeps keys in file order (for files we rewrite, e.g. config.json).
using ordered_json = nlohmann::ordered_json;

// 1-based line and column of byte `offset` in `text`.
struct TextPos {
  size_t line = 1;
  size_t column = 1;
};
TextPos text_pos(std::string_view text, size_t offset);

// Parses `text`; on a syntax error throws kFormat "<origin>: line L, column C: <what>".
// `first_line` is the line number of text's first line in its file (for one line of a JSONL file).
json parse_json(std::string_view text, const std::string& origin, size_t first_line = 1);
ordered_json parse_ordered_json(std::string_view text, const std::string& origin);
json read_json_file(const fs::path& path);
// Pretty-printed (2 spaces) with a final newline, written atomically.
void write_json_file(const fs::path& path, const json& value);
void write_json_file(const fs::path& path, const ordered_json& value);

// value.dump(indent) that cannot throw on text: invalid UTF-8 in a string (bytes from a binary
// file, a log line) becomes U+FFFD instead of a type_error 316. For every JSON nnpipe prints.
std::string dump_json(const json& value, int indent = -1);
std::string dump_json(const ordered_json& value, int indent = -1);

// Typed field access with errors naming origin and key.
const json& require_field(const json& obj, const char* key, const std::string& origin);
std::string json_type_name(const json& v);

}  // namespace nnpipe
