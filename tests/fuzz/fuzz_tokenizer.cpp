// libFuzzer: encode arbitrary bytes with Qwen's tokenizer (tests/fixtures/qwen-tokenizer, found
// through NNPIPE_FIXTURES_DIR, which CMake sets to the checkout's tests/fixtures).
// - Invalid UTF-8 must be rejected with Error(kInvalidArgument) (HF only takes valid strings, so
//   nnpipe refuses rather than guesses), never crash.
// - Valid UTF-8: decode(encode(x)) == NFC(x) whenever x holds no added token (NFC does not compose
//   across an added token, see test_tokenizer.py); with the added tokens removed from the
//   tokenizer that holds for every x. Offsets are monotonic and within x.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/json.h"
#include "core/utf8.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

using namespace nnpipe;

namespace {

struct Fixture {
  Tokenizer full, bare;
  Fixture() {
    fs::path p = fs::path(NNPIPE_FIXTURES_DIR) / "qwen-tokenizer/tokenizer.json";
    if (!fs::exists(p)) {
      std::fprintf(stderr, "fuzz_tokenizer: fixture %s not found\n", p.c_str());
      std::abort();
    }
    json j = read_json_file(p);
    full = Tokenizer::from_json(j, p.string());
    j["added_tokens"] = json::array();
    bare = Tokenizer::from_json(j, p.string() + " (no added tokens)");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Fixture fx;
  std::string_view x(reinterpret_cast<const char*>(data), size);
  if (utf8::find_invalid(x) != std::string_view::npos) {
    try {
      fx.full.encode(x);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kInvalidArgument) return 0;
    }
    __builtin_trap();  // invalid UTF-8 must be a kInvalidArgument error
  }
  std::string want = nfc(x);
  if (fx.bare.decode(fx.bare.encode(x)) != want) __builtin_trap();
  std::vector<size_t> starts;
  auto ids = fx.full.encode_with_offsets(x, &starts);
  if (starts.size() != ids.size()) __builtin_trap();
  for (size_t i = 0; i < starts.size(); ++i)
    if (starts[i] > x.size() || (i && starts[i] < starts[i - 1])) __builtin_trap();
  std::string back = fx.full.decode(ids);
  bool has_added = false;
  for (const auto& a : fx.full.added_tokens())
    has_added |= x.find(a.content) != std::string_view::npos;
  if (!has_added && back != want) __builtin_trap();
  // Streaming gives the same text.
  StreamDecoder sd(fx.full);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  if (streamed + sd.flush() != back) __builtin_trap();
  return 0;
}
