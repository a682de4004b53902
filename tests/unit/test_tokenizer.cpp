// Tokenizer unit tests. Expected ids are facts from HF tokenizers (QWEN.md test vectors and
// llama.cpp's golden cases, produced by HF on Qwen's vocab); conformance/test_tokenizer.py checks
// many more strings against HF directly.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "core/utf8.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

using namespace nnpipe;

namespace {

const fs::path kQwen = fs::path(NNPIPE_FIXTURES_DIR) / "qwen-tokenizer/tokenizer.json";

const Tokenizer& qwen() {
  static const Tokenizer t = Tokenizer::from_file(kQwen);
  return t;
}

std::vector<int32_t> ids(std::initializer_list<int32_t> l) {
  return l;
}

// Splits the pieces of `text` by the Qwen pattern into strings.
std::vector<std::string> qwen_pieces(std::string_view text) {
  static const SplitPretokenizer sp(kQwenSplitPattern, "test");
  std::vector<std::string> out;
  for (auto [b, e] : sp.split_pieces(text)) out.emplace_back(text.substr(b, e - b));
  return out;
}

// Runs `fn`, expecting an nnpipe::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F fn, ErrorCode code, std::initializer_list<std::string_view> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (auto p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

}  // namespace

TEST(TokenizerQwen, QwenMdVectors) {
  const Tokenizer& t = qwen();
  EXPECT_EQ(t.encode("Hello world"), ids({9707, 1879}));
  EXPECT_EQ(t.encode(" Hello world"), ids({21927, 1879}));
  EXPECT_EQ(t.encode("ied 4 ½ months"), ids({1122, 220, 19, 220, 26062, 3951}));
  EXPECT_EQ(t.encode(""), ids({}));
  // Added tokens are matched in the raw text.
  auto chat = t.encode("<|im_start|>user\nHello world<|im_end|>");
  ASSERT_GE(chat.size(), 4u);
  EXPECT_EQ(chat.front(), 151644);
  EXPECT_EQ(chat.back(), 151645);
  EXPECT_EQ(t.token_to_id("<|endoftext|>"), 151643);
  EXPECT_EQ(t.token_to_id("Hello"), 9707);
  EXPECT_EQ(t.token_to_id("no such token here"), std::nullopt);
  EXPECT_EQ(t.id_to_token(21927), "ĠHello");
  EXPECT_EQ(t.id_to_token(151645), "<|im_end|>");
  EXPECT_EQ(t.id_to_token(-1), "");
  EXPECT_TRUE(t.is_special(151643));
  EXPECT_FALSE(t.is_special(151657));  // <tool_call> is added but not special
  EXPECT_FALSE(t.is_special(9707));
  EXPECT_EQ(t.added_tokens().size(), 26u);
  EXPECT_EQ(t.size(), 151669u);
  EXPECT_EQ(t.token_bytes(21927), " Hello");
  EXPECT_EQ(t.token_bytes(151644), "<|im_start|>");
}

TEST(TokenizerQwen, LlamaCppGoldenCases) {
  const fs::path dir = fs::path(NNPIPE_FIXTURES_DIR) / "llama.cpp-vocab-tests";
  std::string inp = read_file(dir / "ggml-vocab-qwen2.gguf.inp");
  std::string out = read_file(dir / "ggml-vocab-qwen2.gguf.out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> cases;
  for (size_t pos = 0, k; (k = inp.find(sep, pos)) != std::string::npos; pos = k + sep.size())
    cases.push_back(inp.substr(pos, k - pos));
  std::vector<std::vector<int32_t>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream nums(line);
    std::vector<int32_t> v;
    for (int32_t x; nums >> x;) v.push_back(x);
    expected.push_back(v);
  }
  ASSERT_EQ(cases.size(), 46u);
  ASSERT_EQ(expected.size(), 46u);
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<size_t> starts;
    auto got = qwen().encode_with_offsets(cases[i], &starts);
    EXPECT_EQ(got, expected[i]) << "case " << i << ": " << cases[i];
    EXPECT_EQ(qwen().decode(got), nfc(cases[i])) << "case " << i;
    if (nfc(cases[i]) != cases[i]) continue;
    // Unchanged by NFC: each token starts where the previous one's bytes end.
    size_t pos = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      EXPECT_EQ(starts[k], pos) << "case " << i << " token " << k;
      pos += qwen().token_bytes(got[k]).size();
    }
    EXPECT_EQ(pos, cases[i].size());
  }
}

TEST(TokenizerQwen, OffsetsAroundAddedTokensAndNfc) {
  const Tokenizer& t = qwen();
  std::string text =
      "<|im_start|>user\ne\xCC\x81t\xC3\xA9<|im_end|>\n";  // "e" + U+0301 changes under NFC
  std::vector<size_t> starts;
  auto got = t.encode_with_offsets(text, &starts);
  ASSERT_EQ(got.size(), starts.size());
  EXPECT_EQ(got.front(), 151644);
  EXPECT_EQ(starts.front(), 0u);
  size_t end_pos = text.find("<|im_end|>");
  bool found = false;
  for (size_t k = 0; k < got.size(); ++k) {
    if (k) {
      EXPECT_LE(starts[k - 1], starts[k]);
    }
    EXPECT_LE(starts[k], text.size());
    if (got[k] == 151645) {
      EXPECT_EQ(starts[k], end_pos);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(t.decode(got), "<|im_start|>user\n\xC3\xA9t\xC3\xA9<|im_end|>\n");
}

TEST(TokenizerQwen, DecodeInvalidUtf8AndSkipSpecial) {
  const Tokenizer& t = qwen();
  auto e4 = t.token_to_id("ä");  // the byte-level character of byte 0xE4 (a lone lead byte)
  ASSERT_TRUE(e4);
  EXPECT_EQ(t.decode(std::vector<int32_t>{9707, *e4, 1879}), "Hello\xEF\xBF\xBD world");
  EXPECT_EQ(t.decode(std::vector<int32_t>{151644, 9707, 151645}, true), "Hello");
  EXPECT_EQ(t.decode(std::vector<int32_t>{151644, 9707, 151645}, false),
            "<|im_start|>Hello<|im_end|>");
  EXPECT_EQ(t.decode(std::vector<int32_t>{9707, 999999999, -5}), "Hello");  // unknown ids skipped
  expect_error([&] { t.encode("bad \xFF byte"); }, ErrorCode::kInvalidArgument,
               {"UTF-8", "byte 4"});
}

TEST(TokenizerQwen, LongWordsAndWhitespaceRuns) {
  // A long word exercises the heap BPE; long space runs the regex engine's stack.
  std::string word(200000, 'a');
  auto got = qwen().encode(word);
  EXPECT_EQ(qwen().decode(got), word);
  std::string spaces = std::string(300000, ' ') + "x" + std::string(300000, '\n');
  EXPECT_EQ(qwen().decode(qwen().encode(spaces)), spaces);
}

TEST(TokenizerStream, NeverEmitsPartialCharacters) {
  const Tokenizer& t = qwen();
  std::string text = "Hi 👨‍👩‍👧 你好世界 🦙.cpp ñ\n<|im_end|>";
  auto got = t.encode(text);
  StreamDecoder sd(t);
  std::string all;
  for (int32_t id : got) {
    std::string piece = sd.push(id);
    EXPECT_EQ(utf8::find_invalid(piece), std::string::npos);
    all += piece;
  }
  all += sd.flush();
  EXPECT_EQ(all, text);
  EXPECT_EQ(all, t.decode(got));

  // A character cut short: held back, then U+FFFD at flush; an impossible byte: U+FFFD at once.
  auto f0 = t.token_to_id("ð");   // byte 0xF0: lead of a 4-byte sequence
  auto x9f = t.token_to_id("Ł");  // byte 0x9F: continuation byte
  ASSERT_TRUE(f0 && x9f);
  StreamDecoder s2(t);
  EXPECT_EQ(s2.push(*f0), "");
  EXPECT_EQ(s2.push(*x9f), "");
  EXPECT_EQ(s2.push(9707), "\xEF\xBF\xBDHello");
  EXPECT_EQ(s2.push(*f0), "");
  EXPECT_EQ(s2.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(s2.flush(), "");
  StreamDecoder s3(t, /*skip_special=*/true);
  EXPECT_EQ(s3.push(151644), "");
  EXPECT_EQ(s3.push(*x9f), "\xEF\xBF\xBD");
}

TEST(TokenizerPretokenizer, WhitespaceLikeOniguruma) {
  // Observed with HF tokenizers' Qwen pre-tokenizer: these are \s for Oniguruma...
  for (const char* ch : {"\xC2\x85", "\xC2\xA0", "\xE2\x80\xA8", "\xE3\x80\x80", "\x0B", "\x0C",
                         "\xE1\x9A\x80", "\xE2\x80\xAF", "\xE2\x81\x9F"}) {
    std::string c = ch;
    EXPECT_EQ(qwen_pieces("a" + c + c + "b " + c + "\n"),
              (std::vector<std::string>{"a", c, c + "b", " " + c + "\n"}))
        << c;
  }
  // ... and these are not.
  for (const char* ch : {"\xE2\x80\x8B", "\xEF\xBB\xBF", "\xE1\xA0\x8E", "\x1C", "\x1F"}) {
    std::string c = ch;
    EXPECT_EQ(qwen_pieces("a" + c + c + "b " + c + "\n"),
              (std::vector<std::string>{"a", c + c, "b", " " + c + "\n"}))
        << c;
  }
  // Case-insensitive contractions, including U+017F (long s folds to s).
  EXPECT_EQ(qwen_pieces("'\xC5\xBF 'S 'LL 'K 'Ve x'\xC5\xBFt"),
            (std::vector<std::string>{"'\xC5\xBF", " '", "S", " '", "LL", " '", "K", " '", "Ve",
                                      " x", "'\xC5\xBF", "t"}));
  EXPECT_EQ(qwen_pieces(""), std::vector<std::string>{});
  expect_error([] { qwen_pieces("\xC3"); }, ErrorCode::kInvalidArgument, {"UTF-8"});
}

TEST(TokenizerPretokenizer, PatternRewrite) {
  EXPECT_EQ(onig_to_pcre2(R"(a\sb)", "t").find(R"(\s)"), std::string::npos);
  EXPECT_NE(onig_to_pcre2(R"([^\s\p{L}])", "t").find(R"(\x{85})"), std::string::npos);
  EXPECT_NE(onig_to_pcre2(R"(\s+(?!\S))", "t").find(R"((?![^)"), std::string::npos);
  EXPECT_EQ(onig_to_pcre2(R"(\\s)", "t"), R"(\\s)");  // an escaped backslash, then 's'
  expect_error([] { onig_to_pcre2(R"([\S])", "pat"); }, ErrorCode::kUnsupported, {"pat", "\\S"});
  expect_error([] { SplitPretokenizer("(unclosed", "file.json: pattern"); }, ErrorCode::kFormat,
               {"file.json: pattern", "regex"});
}

TEST(TokenizerNfc, ComposesAndAligns) {
  EXPECT_EQ(nfc("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // Hangul jamo -> 각
  EXPECT_EQ(nfc("a\xCC\xA3\xCC\x82"), nfc("a\xCC\x82\xCC\xA3"));           // canonical order
  // U+1DF6 (Unicode 10) is an inert starter for HF's NFC, so nothing is reordered or composed.
  EXPECT_EQ(nfc("a\xE1\xB7\xB6\xCC\x81"), "a\xE1\xB7\xB6\xCC\x81");
  std::string out;
  EXPECT_FALSE(nfc_normalize("already NFC: caf\xC3\xA9 \xE4\xBD\xA0", out, nullptr));
  std::vector<NfcChange> ch;
  std::string in = "xx e\xCC\x81 yy";
  ASSERT_TRUE(nfc_normalize(in, out, &ch));
  EXPECT_EQ(out, "xx \xC3\xA9 yy");
  ASSERT_EQ(ch.size(), 1u);
  EXPECT_EQ(nfc_to_original(ch, 0), 0u);
  EXPECT_EQ(nfc_to_original(ch, 3), 3u);                          // start of the changed region
  EXPECT_EQ(nfc_to_original(ch, out.find("yy")), in.find("yy"));  // exact after it
  EXPECT_EQ(nfc_to_original(ch, out.size()), in.size());
}

TEST(TokenizerUtf8, LossyLikeRust) {
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8::lossy("ok"), "ok");
  EXPECT_EQ(utf8::lossy("\xE2\x82"
                        "A"),
            R + "A");                                         // truncated sequence: one U+FFFD
  EXPECT_EQ(utf8::lossy("\xF0\x80"), R + R);                  // F0 80 is not a valid prefix
  EXPECT_EQ(utf8::lossy("\xED\xA0\x80"), R + R + R);          // surrogate
  EXPECT_EQ(utf8::lossy("\xC0\xAF"), R + R);                  // overlong
  EXPECT_EQ(utf8::lossy("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
  EXPECT_EQ(utf8::find_invalid("abc\xC3\xA9\xC3"), 5u);
}

namespace {

json small_tokenizer() {
  return build_default_tokenizer("low lower lowest newer newest wider", 20);
}

}  // namespace

TEST(TokenizerErrors, MalformedTokenizerJson) {
  const std::string f = "bad/tokenizer.json";
  auto load = [&](const json& j) { return [j, f] { Tokenizer::from_json(j, f); }; };
  json j = small_tokenizer();
  ASSERT_NO_THROW(Tokenizer::from_json(j, f));

  json k = j;
  k["model"].erase("vocab");
  expect_error(load(k), ErrorCode::kFormat, {f, "model.vocab", "missing"});
  k = j, k["model"]["merges"][3] = json::array({"l", "nope"});
  expect_error(load(k), ErrorCode::kFormat, {f, "model.merges[3]", "nope"});
  k = j, k["model"]["merges"][2] = "l o w";
  expect_error(load(k), ErrorCode::kFormat, {f, "model.merges[2]"});
  k = j, k["model"]["merges"][1] = 7;
  expect_error(load(k), ErrorCode::kFormat, {f, "model.merges[1]"});
  k = j, k["model"]["vocab"]["zzz"] = 5;
  expect_error(load(k), ErrorCode::kFormat, {f, "model.vocab[", "duplicate id 5"});
  k = j, k["model"]["vocab"]["zzz"] = 1.5;
  expect_error(load(k), ErrorCode::kFormat, {f, "model.vocab[\"zzz\"]", "integer"});
  k = j, k["model"]["vocab"]["zzz"] = -3;
  expect_error(load(k), ErrorCode::kFormat, {f, "model.vocab[\"zzz\"]"});
  k = j, k["model"]["vocab"]["zzz"] = "7";
  expect_error(load(k), ErrorCode::kFormat, {f, "model.vocab[\"zzz\"]"});
  k = j, k["model"]["type"] = "WordPiece";
  expect_error(load(k), ErrorCode::kUnsupported, {f, "model.type", "WordPiece"});
  k = j, k["normalizer"] = {{"type", "NFKC"}};
  expect_error(load(k), ErrorCode::kUnsupported, {f, "normalizer.type", "NFKC"});
  k = j, k["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_error(load(k), ErrorCode::kUnsupported, {f, "pre_tokenizer.pretokenizers[0].behavior"});
  k = j, k["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(";
  expect_error(load(k), ErrorCode::kFormat, {f, "pre_tokenizer.pretokenizers[0].pattern.Regex"});
  k = j, k["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  expect_error(load(k), ErrorCode::kUnsupported, {f, "add_prefix_space"});
  k = j, k["decoder"] = {{"type", "WordPiece"}};
  expect_error(load(k), ErrorCode::kUnsupported, {f, "decoder.type"});
  k = j, k["added_tokens"][1]["id"] = k["added_tokens"][0]["id"];
  expect_error(load(k), ErrorCode::kFormat, {f, "added_tokens[1].id", "duplicate"});
  k = j, k["added_tokens"][0]["id"] = 0;  // id 0 is a byte token
  expect_error(load(k), ErrorCode::kFormat, {f, "added_tokens[0].id"});
  k = j, k["added_tokens"][0].erase("content");
  expect_error(load(k), ErrorCode::kFormat, {f, "added_tokens[0].content", "missing"});
  k = j, k["truncation"] = {{"max_length", 5}};
  expect_error(load(k), ErrorCode::kUnsupported, {f, "truncation"});
  expect_error(load(json::array()), ErrorCode::kFormat, {f});
  expect_error([] { Tokenizer::from_file("/nonexistent/tokenizer.json"); }, ErrorCode::kIo,
               {"/nonexistent/tokenizer.json"});
}

TEST(TokenizerErrors, LegacyMergeStringsLoad) {
  json j = small_tokenizer();
  for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  Tokenizer a = Tokenizer::from_json(small_tokenizer(), "list");
  Tokenizer b = Tokenizer::from_json(j, "strings");
  EXPECT_EQ(a.encode("the lowest newer wider"), b.encode("the lowest newer wider"));
}

TEST(TokenizerDefault, DeterministicAndWellFormed) {
  const std::string corpus =
      "the cat sat on the mat. the cat ate the rat! caf\xC3\xA9 caf\xC3\xA9 "
      "\xE4\xBD\xA0\xE5\xA5\xBD";
  json a = build_default_tokenizer(corpus, 20);
  EXPECT_EQ(a.dump(), build_default_tokenizer(corpus, 20).dump());
  const json& vocab = a["model"]["vocab"];
  EXPECT_EQ(vocab["\xC4\xA0"], 32);  // "Ġ" is the space byte, id = byte value
  EXPECT_EQ(vocab["a"], 'a');
  EXPECT_EQ(a["model"]["merges"].size(), 20u);
  EXPECT_EQ(a["model"]["merges"][0], json::array({"a", "t"}));  // 6 times: the most frequent pair
  // Ties go to the smallest pair: " c" (in " cat", " café") beats "he" and "th" (4 each).
  EXPECT_EQ(a["model"]["merges"][1], json::array({"\xC4\xA0", "c"}));
  // Once no pair is left (every word is one token), training stops early.
  EXPECT_EQ(build_default_tokenizer("abab abab", 1000)["model"]["merges"].size(), 3u);
  size_t n = vocab.size();
  ASSERT_EQ(a["added_tokens"].size(), 3u);
  EXPECT_EQ(a["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(a["added_tokens"][0]["id"], n);
  EXPECT_EQ(a["added_tokens"][2]["content"], "<|im_end|>");
  EXPECT_EQ(a["added_tokens"][2]["id"], n + 2);
  Tokenizer t = Tokenizer::from_json(a, "default");
  EXPECT_EQ(t.size(), n + 3);
  auto got = t.encode(corpus + "<|im_end|>");
  EXPECT_LT(got.size(), corpus.size());
  EXPECT_EQ(got.back(), static_cast<int32_t>(n + 2));
  EXPECT_EQ(t.decode(got, true), corpus);
  EXPECT_EQ(t.encode("the cat"),
            (std::vector<int32_t>{*t.token_to_id("the"), *t.token_to_id("\xC4\xA0"
                                                                        "cat")}));
  // Fewer merges are a prefix of more merges.
  json b = build_default_tokenizer(corpus, 10);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a["model"]["merges"][i], b["model"]["merges"][i]);
  expect_error([] { build_default_tokenizer("x", -1); }, ErrorCode::kInvalidArgument,
               {"num_merges"});
  expect_error([] { build_default_tokenizer("\xFF", 1); }, ErrorCode::kInvalidArgument, {"UTF-8"});
}

TEST(TokenizerAddedTokens, FlagsAndNormalized) {
  // Semantics of HF's AddedVocabulary (checked against HF in test_tokenizer.py).
  json j = small_tokenizer();
  int32_t next = j["added_tokens"].back()["id"].get<int32_t>() + 1;
  auto add = [&](const char* content, const char* flag) {
    json t = {{"id", next++},    {"content", content},  {"single_word", false}, {"lstrip", false},
              {"rstrip", false}, {"normalized", false}, {"special", false}};
    t[flag] = true;
    j["added_tokens"].push_back(t);
    return next - 1;
  };
  int32_t lx = add("<x>", "lstrip"), ry = add("<y>", "rstrip"), sz = add("<z>", "single_word");
  int32_t nt = add("e\xCC\x81x", "normalized");  // matched after NFC, as "éx"
  Tokenizer t = Tokenizer::from_json(j, "flags");
  int32_t a = *t.token_to_id("a"), b = *t.token_to_id("b"), sp = *t.token_to_id("\xC4\xA0");
  EXPECT_EQ(t.encode("a  <x>"), (std::vector<int32_t>{a, lx}));    // spaces before it are eaten
  EXPECT_EQ(t.encode("<y> \n b"), (std::vector<int32_t>{ry, b}));  // and after it
  EXPECT_EQ(t.encode("a <z> b"), (std::vector<int32_t>{a, sp, sz, sp, b}));
  EXPECT_NE(t.encode("a<z>b"), (std::vector<int32_t>{a, sz, b}));  // not a whole word
  EXPECT_EQ(t.encode("\xC3\xA9x"), (std::vector<int32_t>{nt}));
  EXPECT_EQ(t.encode("e\xCC\x81x"), (std::vector<int32_t>{nt}));
  std::vector<size_t> starts;
  EXPECT_EQ(t.encode_with_offsets("a  <x>", &starts), (std::vector<int32_t>{a, lx}));
  EXPECT_EQ(starts, (std::vector<size_t>{0, 1}));
  // ignore_merges: a whole pre-token found in the vocab is one token, merges or not.
  j["model"]["vocab"]["abab"] = 5000;
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(Tokenizer::from_json(j, "ignore").encode("abab"), (std::vector<int32_t>{5000}));
  j["model"]["ignore_merges"] = false;
  EXPECT_NE(Tokenizer::from_json(j, "merges").encode("abab"), (std::vector<int32_t>{5000}));
}
