// tokenizer.json -> Tokenizer::Impl, validating everything: the file is untrusted input, so every
// problem is an Error naming the file and the JSON field, never a crash.
#include <limits>
#include <unordered_set>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer_impl.h"

namespace nnpipe {
namespace {

struct Ctx {
  const std::string& origin;
  [[noreturn]] void bad(const std::string& field, const std::string& what) const {
    fail(ErrorCode::kFormat, "{}: {}: {}", origin, field, what);
  }
  [[noreturn]] void unsupported(const std::string& field, const std::string& what) const {
    fail(ErrorCode::kUnsupported, "{}: {}: {} is not supported", origin, field, what);
  }
  const json& field(const json& obj, const char* key, const std::string& path) const {
    if (!obj.is_object()) bad(path, "expected an object, got " + json_type_name(obj));
    auto it = obj.find(key);
    if (it == obj.end()) bad(path + "." + key, "missing");
    return *it;
  }
  const std::string& str(const json& v, const std::string& path) const {
    if (!v.is_string()) bad(path, "expected a string, got " + json_type_name(v));
    const auto& s = v.get_ref<const std::string&>();
    if (utf8::find_invalid(s) != std::string::npos) bad(path, "not valid UTF-8");
    return s;
  }
  bool boolean(const json& obj, const char* key, const std::string& path, bool dflt) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) bad(path + "." + key, "expected a boolean, got " + json_type_name(*it));
    return it->get<bool>();
  }
  int32_t id(const json& v, const std::string& path) const {
    if (!v.is_number_integer())
      bad(path, "expected a non-negative integer id, got " + json_type_name(v));
    if (v.is_number_unsigned()
            ? v.get<uint64_t>() > uint64_t(std::numeric_limits<int32_t>::max())
            : v.get<int64_t>() < 0 || v.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad(path, "id " + v.dump() + " is out of range");
    return static_cast<int32_t>(v.get<int64_t>());
  }
  std::string type(const json& obj, const std::string& path) const {
    return str(field(obj, "type", path), path + ".type");
  }
};

// A ByteLevel component must not add a prefix space; use_regex splits with GPT-2's pattern.
void check_byte_level(const Ctx& c, const json& v, const std::string& path, bool* use_regex) {
  if (c.boolean(v, "add_prefix_space", path, false))
    c.unsupported(path + ".add_prefix_space", "true");
  *use_regex = c.boolean(v, "use_regex", path, true);
}

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void load_normalizer(const Ctx& c, const json& j, TokenizerState& t) {
  auto it = j.find("normalizer");
  if (it == j.end() || it->is_null()) return;
  std::string type = c.type(*it, "normalizer");
  if (type == "NFC") {
    t.nfc = true;
  } else if (type == "Sequence") {
    const json& seq = c.field(*it, "normalizers", "normalizer");
    if (!seq.is_array()) c.bad("normalizer.normalizers", "expected an array");
    for (size_t i = 0; i < seq.size(); ++i) {
      std::string path = fmt::format("normalizer.normalizers[{}]", i);
      std::string ty = c.type(seq[i], path);
      if (ty != "NFC" || t.nfc) c.unsupported(path + ".type", "normalizer \"" + ty + "\" here");
      t.nfc = true;
    }
  } else {
    c.unsupported("normalizer.type", "normalizer \"" + type + "\"");
  }
}

void load_pre_tokenizer(const Ctx& c, const json& j, TokenizerState& t) {
  const json& pt = c.field(j, "pre_tokenizer", "tokenizer");
  if (pt.is_null()) c.unsupported("pre_tokenizer", "null (nnpipe needs a ByteLevel pre-tokenizer)");
  std::vector<std::pair<const json*, std::string>> parts;
  std::string type = c.type(pt, "pre_tokenizer");
  if (type == "Sequence") {
    const json& seq = c.field(pt, "pretokenizers", "pre_tokenizer");
    if (!seq.is_array()) c.bad("pre_tokenizer.pretokenizers", "expected an array");
    for (size_t i = 0; i < seq.size(); ++i)
      parts.emplace_back(&seq[i], fmt::format("pre_tokenizer.pretokenizers[{}]", i));
  } else {
    parts.emplace_back(&pt, "pre_tokenizer");
  }
  bool byte_level = false;
  for (auto& [p, path] : parts) {
    std::string ty = c.type(*p, path);
    if (byte_level) c.unsupported(path, "a pre-tokenizer after ByteLevel");
    if (ty == "Split") {
      const json& pat = c.field(*p, "pattern", path);
      if (!pat.is_object() || !pat.contains("Regex"))
        c.unsupported(path + ".pattern", "a pattern other than {\"Regex\": ...}");
      const std::string& rx = c.str(pat["Regex"], path + ".pattern.Regex");
      std::string behavior = c.str(c.field(*p, "behavior", path), path + ".behavior");
      if (behavior != "Isolated") c.unsupported(path + ".behavior", "\"" + behavior + "\"");
      if (c.boolean(*p, "invert", path, false)) c.unsupported(path + ".invert", "true");
      t.splits.emplace_back(rx, c.origin + ": " + path + ".pattern.Regex");
    } else if (ty == "ByteLevel") {
      bool use_regex;
      check_byte_level(c, *p, path, &use_regex);
      if (use_regex) t.splits.emplace_back(kGpt2Pattern, c.origin + ": GPT-2 pattern");
      byte_level = true;
    } else {
      c.unsupported(path + ".type", "pre-tokenizer \"" + ty + "\"");
    }
  }
  if (!byte_level) c.unsupported("pre_tokenizer", "a pre-tokenizer without ByteLevel");
}

void load_model(const Ctx& c, const json& j, TokenizerState& t) {
  const json& m = c.field(j, "model", "tokenizer");
  if (!m.is_object()) c.bad("model", "expected an object, got " + json_type_name(m));
  if (m.contains("type") && c.type(m, "model") != "BPE")
    c.unsupported("model.type", "model \"" + c.type(m, "model") + "\"");
  if (auto it = m.find("dropout");
      it != m.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0))
    c.unsupported("model.dropout", "BPE dropout");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (auto it = m.find(k);
        it != m.end() && !it->is_null() && !c.str(*it, std::string("model.") + k).empty())
      c.unsupported(std::string("model.") + k, "a non-empty value");
  if (c.boolean(m, "byte_fallback", "model", false)) c.unsupported("model.byte_fallback", "true");

  const json& vocab = c.field(m, "vocab", "model");
  if (!vocab.is_object()) c.bad("model.vocab", "expected an object, got " + json_type_name(vocab));
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    std::string path = "model.vocab[" + json(it.key()).dump() + "]";
    if (it.key().empty()) c.bad(path, "empty token");
    if (utf8::find_invalid(it.key()) != std::string::npos) c.bad(path, "not valid UTF-8");
    int32_t id = c.id(it.value(), path);
    if (static_cast<size_t>(id) >= tokens.size()) {
      if (id > 16 * 1024 * 1024) c.bad(path, fmt::format("id {} is implausibly large", id));
      tokens.resize(static_cast<size_t>(id) + 1);
    }
    if (!tokens[id].empty())
      c.bad(path, fmt::format("duplicate id {} (also {})", id, json(tokens[id]).dump()));
    tokens[id] = it.key();
    ids.emplace(it.key(), id);
  }

  BpeModel::Options opts;
  opts.ignore_merges = c.boolean(m, "ignore_merges", "model", false);
  opts.fuse_unk = c.boolean(m, "fuse_unk", "model", false);
  if (auto it = m.find("unk_token"); it != m.end() && !it->is_null()) {
    auto u = ids.find(c.str(*it, "model.unk_token"));
    if (u == ids.end()) c.bad("model.unk_token", "not in model.vocab");
    opts.unk_id = u->second;
  }

  const json& merges = c.field(m, "merges", "model");
  if (!merges.is_array()) c.bad("model.merges", "expected an array, got " + json_type_name(merges));
  std::vector<BpeModel::Merge> list;
  list.reserve(merges.size());
  auto lookup = [&](const std::string& s, const std::string& path) {
    auto it = ids.find(s);
    if (it == ids.end()) c.bad(path, "token " + json(s).dump() + " is not in model.vocab");
    return it->second;
  };
  for (size_t r = 0; r < merges.size(); ++r) {
    std::string path = fmt::format("model.merges[{}]", r);
    const json& e = merges[r];
    std::string a, b;
    if (e.is_string()) {  // legacy "a b": exactly one space, like HF's split(' ')
      const std::string& s = c.str(e, path);
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        c.bad(path, "expected \"left right\" with exactly one space");
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2) {
      a = c.str(e[0], path + "[0]"), b = c.str(e[1], path + "[1]");
    } else {
      c.bad(path, "expected a string or an array of two strings, got " + json_type_name(e));
    }
    int32_t l = lookup(a, path), rr = lookup(b, path), res = lookup(a + b, path);
    list.push_back({l, rr, res});
  }
  t.bpe = BpeModel(std::move(tokens), list, opts);
}

void load_added_tokens(const Ctx& c, const json& j, TokenizerState& t) {
  auto at = j.find("added_tokens");
  if (at == j.end() || at->is_null()) return;
  if (!at->is_array()) c.bad("added_tokens", "expected an array, got " + json_type_name(*at));
  std::vector<AddedTokenSpec> raw, norm;
  std::vector<std::string> raw_pat, norm_pat;
  for (size_t i = 0; i < at->size(); ++i) {
    std::string path = fmt::format("added_tokens[{}]", i);
    const json& e = (*at)[i];
    AddedTokenSpec s;
    s.id = c.id(c.field(e, "id", path), path + ".id");
    s.content = c.str(c.field(e, "content", path), path + ".content");
    if (s.content.empty()) c.bad(path + ".content", "empty");
    s.special = c.boolean(e, "special", path, false);
    s.single_word = c.boolean(e, "single_word", path, false);
    s.lstrip = c.boolean(e, "lstrip", path, false);
    s.rstrip = c.boolean(e, "rstrip", path, false);
    // HF's default: normalized unless special.
    s.normalized = c.boolean(e, "normalized", path, !s.special);
    if (t.added_by_id.count(s.id)) c.bad(path + ".id", fmt::format("duplicate id {}", s.id));
    if (t.added_by_content.count(s.content))
      c.bad(path + ".content", "duplicate content " + json(s.content).dump());
    if (auto v = t.bpe.token_to_id(s.content); v && *v != s.id)
      c.bad(path + ".id",
            fmt::format("{} is id {} in model.vocab, not {}", json(s.content).dump(), *v, s.id));
    if (static_cast<size_t>(s.id) < t.bpe.tokens().size() && !t.bpe.tokens()[s.id].empty() &&
        t.bpe.tokens()[s.id] != s.content)
      c.bad(path + ".id",
            fmt::format("id {} is {} in model.vocab", s.id, json(t.bpe.tokens()[s.id]).dump()));
    if (s.id > 16 * 1024 * 1024)
      c.bad(path + ".id", fmt::format("id {} is implausibly large", s.id));
    t.added.push_back({s.id, s.content, s.special});
    t.added_by_id.emplace(s.id, s);
    t.added_by_content.emplace(s.content, s.id);
    if (s.normalized) {
      norm_pat.push_back(t.nfc ? nfc(s.content) : s.content);
      norm.push_back(std::move(s));
    } else {
      raw_pat.push_back(s.content);
      raw.push_back(std::move(s));
    }
  }
  t.raw_matcher.build(std::move(raw), std::move(raw_pat));
  t.norm_matcher.build(std::move(norm), std::move(norm_pat));
}

}  // namespace

Tokenizer Tokenizer::from_json(const json& j, const std::string& origin) {
  Ctx c{origin};
  if (!j.is_object()) c.bad("(top level)", "expected an object, got " + json_type_name(j));
  for (const char* k : {"truncation", "padding"})
    if (auto it = j.find(k); it != j.end() && !it->is_null()) c.unsupported(k, "a non-null value");
  auto dec = j.find("decoder");
  if (dec == j.end() || dec->is_null())
    c.unsupported("decoder", "a missing decoder (nnpipe needs ByteLevel)");
  if (std::string ty = c.type(*dec, "decoder"); ty != "ByteLevel")
    c.unsupported("decoder.type", "decoder \"" + ty + "\"");
  // The post-processor only adds special tokens, which encode (add_special_tokens=False) skips.
  Tokenizer tok;
  Impl& t = *tok.impl_;
  t.origin = origin;
  load_normalizer(c, j, t);
  load_pre_tokenizer(c, j, t);
  load_model(c, j, t);
  load_added_tokens(c, j, t);
  t.finish();
  return tok;
}

Tokenizer Tokenizer::from_file(const fs::path& path) {
  return from_json(read_json_file(path), path.string());
}

}  // namespace nnpipe
