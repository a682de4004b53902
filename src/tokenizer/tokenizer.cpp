// Encoding (added tokens -> NFC -> Split regex -> byte-level BPE) and decoding, in HF's order.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer_impl.h"

namespace nnpipe {
namespace {

// HF's ByteLevel decoder: a token whose characters all map back to bytes gives those bytes; any
// other token (typically an added token such as "<|im_end|>") gives its own UTF-8.
std::string token_to_bytes(const std::string& token) {
  std::string out;
  return byte_level::decode(token, &out) ? out : token;
}

}  // namespace

void TokenizerState::finish() {
  size = bpe.tokens().size();
  for (const auto& a : added) size = std::max(size, static_cast<size_t>(a.id) + 1);
  bytes.assign(size, {});
  const auto& toks = bpe.tokens();
  for (size_t id = 0; id < toks.size(); ++id)
    if (!toks[id].empty()) bytes[id] = token_to_bytes(toks[id]);
  for (const auto& a : added) bytes[a.id] = token_to_bytes(a.content);
}

void TokenizerState::encode(std::string_view text, std::vector<int32_t>& ids,
                            std::vector<size_t>* starts, std::span<const size_t> literal) const {
  if (size_t bad = utf8::find_invalid(text); bad != std::string_view::npos)
    fail(ErrorCode::kInvalidArgument, "tokenizer input is not valid UTF-8 (byte {})", bad);
  std::vector<AddedTokenMatcher::Piece> segments, subsegments;
  std::vector<std::pair<size_t, size_t>> pieces, refined;
  std::vector<BpeModel::Token> toks;
  std::vector<NfcChange> changes;
  std::string normalized;

  const std::function<bool(size_t)> is_literal = [&](size_t off) {
    return std::binary_search(literal.begin(), literal.end(), off);
  };
  const std::function<bool(size_t)>* lit = literal.empty() ? nullptr : &is_literal;
  if (raw_matcher.empty())
    segments.push_back({0, text.size(), -1});
  else
    raw_matcher.split(text, segments, lit);
  for (const auto& seg : segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      if (starts) starts->push_back(seg.begin);
      continue;
    }
    std::string_view raw = text.substr(seg.begin, seg.end - seg.begin);
    changes.clear();
    std::string_view norm =
        nfc && nfc_normalize(raw, normalized, starts ? &changes : nullptr) ? normalized : raw;
    auto orig = [&](size_t off) { return seg.begin + nfc_to_original(changes, off); };
    subsegments.clear();
    const std::function<bool(size_t)> norm_literal = [&](size_t off) {
      return is_literal(seg.begin + nfc_to_original(changes, off));
    };
    if (norm_matcher.empty())
      subsegments.push_back({0, norm.size(), -1});
    else
      norm_matcher.split(norm, subsegments, lit ? &norm_literal : nullptr);
    for (const auto& sub : subsegments) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        if (starts) starts->push_back(orig(sub.begin));
        continue;
      }
      pieces.assign(1, {sub.begin, sub.end});
      for (const auto& sp : splits) {
        refined.clear();
        for (auto [b, e] : pieces) {
          size_t k = refined.size();
          sp.split_valid(norm.substr(b, e - b), refined);
          for (; k < refined.size(); ++k) refined[k].first += b, refined[k].second += b;
        }
        pieces.swap(refined);
      }
      for (auto [b, e] : pieces) {
        toks.clear();
        bpe.encode_word(norm.substr(b, e - b), toks);
        size_t off = b;
        for (const auto& t : toks) {
          ids.push_back(t.id);
          if (starts) starts->push_back(orig(off));
          off += t.len;
        }
      }
    }
  }
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text,
                                       std::span<const size_t> literal_specials) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode(text, ids, nullptr, literal_specials);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_offsets(
    std::string_view text, std::vector<size_t>* starts,
    std::span<const size_t> literal_specials) const {
  std::vector<int32_t> ids;
  std::vector<size_t> local;
  std::vector<size_t>& s = starts ? *starts : local;
  s.clear();
  impl_->encode(text, ids, &s, literal_specials);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->size)
      continue;  // unknown ids: skipped, like HF
    if (skip_special && is_special(id)) continue;
    bytes += impl_->bytes[id];
  }
  return utf8::lossy(bytes);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->size) return {};
  return impl_->bytes[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(std::string(token));
      it != impl_->added_by_content.end())
    return it->second;
  return impl_->bpe.token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end())
    return it->second.content;
  const auto& toks = impl_->bpe.tokens();
  return id >= 0 && static_cast<size_t>(id) < toks.size() ? toks[id] : std::string();
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second.special;
}

size_t Tokenizer::size() const {
  return impl_->size;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}

std::vector<std::string> Tokenizer::special_texts() const {
  std::vector<std::string> out;
  for (const AddedToken& a : impl_->added)
    if (a.special && !a.content.empty()) out.push_back(a.content);
  return out;
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  // Emit everything except a trailing sequence that may still become a character; sequences that
  // can no longer complete become U+FFFD now, exactly where decode() would put them.
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    bool complete;
    size_t n = utf8::valid_prefix(pending_, i, &complete);
    if (complete) {
      out.append(pending_, i, n);
    } else if (n > 0 && i + n == pending_.size()) {
      break;
    } else {
      out += "\xEF\xBF\xBD";
      n = n ? n : 1;
    }
    i += n;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace nnpipe
