// NFC exactly as HF tokenizers computes it, with the alignment back to the input that
// encode_with_offsets needs.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace nnpipe {

// A region NFC rewrote: output bytes [norm_off, norm_off + norm_len) came from input bytes
// [orig_off, orig_off + orig_len). Outside such regions output and input bytes correspond 1:1.
struct NfcChange {
  size_t norm_off, norm_len, orig_off, orig_len;
};

// `in` must be valid UTF-8. Returns false if `in` is already in NFC (then `out` and `changes` are
// left untouched); else writes the normalized text to `out` and, if `changes` is given, appends
// the rewritten regions in order.
bool nfc_normalize(std::string_view in, std::string& out, std::vector<NfcChange>* changes);

// Convenience: the NFC of valid UTF-8 `in`.
std::string nfc(std::string_view in);

// Maps an offset in the normalized text to one in the original: exact outside changed regions,
// monotonic (clamped to the region) inside them.
size_t nfc_to_original(const std::vector<NfcChange>& changes, size_t norm_off);

}  // namespace nnpipe
