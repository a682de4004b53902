#include "core/json.h"

#include "core/error.h"

namespace nnpipe {
namespace {

template <typename J>
J parse_impl(std::string_view text, const std::string& origin, size_t first_line = 1) {
  try {
    return J::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is 1-based and points just past the offending character.
    size_t off = e.byte > 0 ? e.byte - 1 : 0;
    TextPos p = text_pos(text, std::min(off, text.size()));
    p.line += first_line - 1;
    std::string what = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 2: " prefix.
    if (auto k = what.find("syntax error"); k != std::string::npos)
      what = what.substr(k);
    else if (auto k2 = what.rfind(": "); k2 != std::string::npos)
      what = what.substr(k2 + 2);
    // The message quotes the bytes last read, which may be invalid UTF-8: escape them so that the
    // error (and summary.json) stays valid text.
    std::string clean;
    for (unsigned char ch : what) {
      if (ch >= 0x20 && ch < 0x7f)
        clean.push_back(static_cast<char>(ch));
      else
        clean += fmt::format("\\x{:02x}", ch);
    }
    what = std::move(clean);
    fail(ErrorCode::kFormat, "{}: line {}, column {}: invalid JSON: {}", origin, p.line, p.column,
         what);
  } catch (const nlohmann::json::exception& e) {
    // e.g. out_of_range for a number beyond double (1E400): still the file's fault.
    fail(ErrorCode::kFormat, "{}: invalid JSON: {}", origin, e.what());
  }
}

}  // namespace

TextPos text_pos(std::string_view text, size_t offset) {
  TextPos p;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++p.line;
      p.column = 1;
    } else if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      ++p.column;
    }
  }
  return p;
}

json parse_json(std::string_view text, const std::string& origin, size_t first_line) {
  return parse_impl<json>(text, origin, first_line);
}

ordered_json parse_ordered_json(std::string_view text, const std::string& origin) {
  return parse_impl<ordered_json>(text, origin);
}

json read_json_file(const fs::path& path) {
  return parse_json(read_file(path), path.string());
}

std::string dump_json(const json& value, int indent) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string dump_json(const ordered_json& value, int indent) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

void write_json_file(const fs::path& path, const json& value) {
  write_file_atomic(path, dump_json(value, 2) + "\n");
}

void write_json_file(const fs::path& path, const ordered_json& value) {
  write_file_atomic(path, dump_json(value, 2) + "\n");
}

const json& require_field(const json& obj, const char* key, const std::string& origin) {
  if (!obj.is_object())
    fail(ErrorCode::kFormat, "{}: expected a JSON object, got {}", origin, json_type_name(obj));
  auto it = obj.find(key);
  if (it == obj.end()) fail(ErrorCode::kFormat, "{}: missing field \"{}\"", origin, key);
  return *it;
}

std::string json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    default:
      return "a value";
  }
}

}  // namespace nnpipe
