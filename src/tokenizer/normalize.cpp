#include "tokenizer/normalize.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include <utf8proc.h>

#include "core/error.h"
#include "core/utf8.h"

namespace nnpipe {
namespace {

// Code points HF's NFC (old Unicode tables) treats as plain starters while utf8proc (newer
// tables) would reorder, decompose or compose them. Passing them through untouched, and cutting
// the text around them, reproduces HF exactly. Regenerate with scripts/gen_nfc_compat.py.
constexpr char32_t kHfInert[][2] = {
#include "tokenizer/nfc_hf_compat.inc"
};

enum Kind : uint8_t {
  kStable,  // starter that nothing before it can combine with: a safe place to cut the text
  kActive,  // may change under NFC or combine with what precedes it
  kInert,   // see kHfInert
};

Kind classify(char32_t cp) {
  if (cp >= kHfInert[0][0] && cp <= std::end(kHfInert)[-1][1])
    for (const auto& r : kHfInert)
      if (cp >= r[0] && cp <= r[1]) return kInert;
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  bool canonical_decomp = p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0;
  // Every second half of a canonical composition is a mark, or a Hangul medial/final jamo.
  bool mark = p->category == UTF8PROC_CATEGORY_MN || p->category == UTF8PROC_CATEGORY_MC ||
              p->category == UTF8PROC_CATEGORY_ME;
  bool jamo_vt = (cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2);
  return (p->combining_class == 0 && !canonical_decomp && !mark && !jamo_vt) ? kStable : kActive;
}

struct KindTable {  // the BMP precomputed; other planes looked up on demand
  uint8_t bmp[0x10000];
  KindTable() {
    for (char32_t cp = 0; cp < 0x10000; ++cp) bmp[cp] = classify(cp);
  }
};

inline Kind kind_of(char32_t cp) {
  static const KindTable t;
  return cp < 0x10000 ? static_cast<Kind>(t.bmp[cp]) : classify(cp);
}

// NFC of one chunk into `dst` (utf8proc's decompose + canonical order + compose, without malloc).
void nfc_chunk(std::string_view chunk, std::string& dst) {
  thread_local std::vector<utf8proc_int32_t> buf(256);
  auto opts = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  auto src = reinterpret_cast<const utf8proc_uint8_t*>(chunk.data());
  utf8proc_ssize_t n;
  for (;;) {
    n = utf8proc_decompose(src, static_cast<utf8proc_ssize_t>(chunk.size()), buf.data(),
                           static_cast<utf8proc_ssize_t>(buf.size()), opts);
    if (n < 0) fail(ErrorCode::kInternal, "utf8proc: {}", utf8proc_errmsg(n));
    if (static_cast<size_t>(n) <= buf.size()) break;
    buf.resize(static_cast<size_t>(n));
  }
  utf8proc_ssize_t len = utf8proc_reencode(buf.data(), n, opts);  // composes, writes UTF-8 in place
  if (len < 0) fail(ErrorCode::kInternal, "utf8proc: {}", utf8proc_errmsg(len));
  dst.append(reinterpret_cast<const char*>(buf.data()), static_cast<size_t>(len));
}

}  // namespace

bool nfc_normalize(std::string_view in, std::string& out, std::vector<NfcChange>* changes) {
  // Chunks start at each stable starter, so each can be normalized on its own; a chunk that is a
  // single stable character (almost all of them) needs no work at all.
  bool changed = false;
  size_t copied = 0;  // input bytes before this are accounted for in `out`
  std::string scratch;
  auto finish = [&](size_t begin, size_t end) {
    scratch.clear();
    nfc_chunk(in.substr(begin, end - begin), scratch);
    if (scratch == in.substr(begin, end - begin)) return;
    if (!changed) {
      out.clear();
      out.reserve(in.size() + 16);
      changed = true;
    }
    out.append(in.substr(copied, begin - copied));
    if (changes) changes->push_back({out.size(), scratch.size(), begin, end - begin});
    out += scratch;
    copied = end;
  };
  size_t chunk = 0;
  bool active = false;  // the current chunk holds a kActive character
  size_t i = 0;
  const size_t n = in.size();
  while (i < n) {
    if (static_cast<unsigned char>(in[i]) < 0x80) {  // ASCII: always a stable starter
      if (active) finish(chunk, i), active = false;
      chunk = i++;
      continue;
    }
    char32_t cp;
    size_t len = utf8::decode(in, i, &cp);
    switch (kind_of(cp)) {
      case kStable:
        if (active) finish(chunk, i), active = false;
        chunk = i;
        break;
      case kActive:
        active = true;
        break;
      case kInert:  // a chunk of its own that is never rewritten
        if (active) finish(chunk, i), active = false;
        chunk = i + len;
        break;
    }
    i += len;
  }
  if (active) finish(chunk, n);
  if (changed) out.append(in.substr(copied));
  return changed;
}

std::string nfc(std::string_view in) {
  std::string out;
  return nfc_normalize(in, out, nullptr) ? out : std::string(in);
}

size_t nfc_to_original(const std::vector<NfcChange>& changes, size_t norm_off) {
  // Last change starting at or before norm_off.
  auto it = std::upper_bound(changes.begin(), changes.end(), norm_off,
                             [](size_t off, const NfcChange& c) { return off < c.norm_off; });
  if (it == changes.begin()) return norm_off;
  const NfcChange& c = *std::prev(it);
  if (norm_off < c.norm_off + c.norm_len)
    return c.orig_off + std::min(norm_off - c.norm_off, c.orig_len);
  return norm_off - (c.norm_off + c.norm_len) + (c.orig_off + c.orig_len);
}

}  // namespace nnpipe
