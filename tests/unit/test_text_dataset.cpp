// Plain-text datasets (train/text_dataset.h): documents, <|endoftext|>, windows, labels, errors.
#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/text_dataset.h"

using namespace nnpipe;

namespace {

const Tokenizer& tok() {
  static const Tokenizer t = Tokenizer::from_json(default_tokenizer_json(), "default");
  return t;
}

}  // namespace

TEST(TextDataset, DocumentsEndWithEndoftextAndEveryPredictedTokenIsTrained) {
  const int32_t eot = *tok().token_to_id("<|endoftext|>");
  Dataset ds = tokenize_text_dataset("Hello world.\nSecond line.\n\n  \n\nAnother text.\n", tok(),
                                     512, "t.txt");
  ASSERT_EQ(ds.examples.size(), 2u);
  EXPECT_EQ(ds.stats.conversations, 2u);
  std::vector<int32_t> want = tok().encode("Hello world.\nSecond line.");
  want.push_back(eot);
  EXPECT_EQ(ds.examples[0].input_ids, want);
  EXPECT_EQ(ds.examples[0].labels[0], kIgnoreIndex);  // nothing predicts the first token
  for (size_t i = 1; i < want.size(); ++i) EXPECT_EQ(ds.examples[0].labels[i], want[i]);
  EXPECT_EQ(ds.examples[1].input_ids.back(), eot);
  EXPECT_EQ(ds.stats.trained_tokens,
            ds.examples[0].trained_tokens() + ds.examples[1].trained_tokens());
}

TEST(TextDataset, LongDocumentsAreSplitIntoWindowsNotTruncated) {
  std::string doc;
  for (int i = 0; i < 40; ++i) doc += "The quick brown fox jumps over the lazy dog. ";
  std::vector<int32_t> all = tok().encode(doc);
  all.push_back(*tok().token_to_id("<|endoftext|>"));
  Dataset ds = tokenize_text_dataset(doc, tok(), 16, "t.txt");
  std::vector<int32_t> joined;
  for (const Example& ex : ds.examples) {
    EXPECT_LE(ex.input_ids.size(), 16u);
    EXPECT_GE(ex.input_ids.size(), 2u);
    joined.insert(joined.end(), ex.input_ids.begin(), ex.input_ids.end());
  }
  // Every token kept, in order, except a last window of one token (it predicts nothing).
  if (all.size() % 16 == 1) all.pop_back();
  EXPECT_EQ(joined, all);
  EXPECT_EQ(ds.stats.truncated, 1u);
}

TEST(TextDataset, ErrorsNameTheFileAndWhat) {
  auto err = [](std::string_view text, size_t len, const char* name) {
    return test::error_of([&] { tokenize_text_dataset(text, tok(), len, name); });
  };
  EXPECT_NE(err("\n \n\t\n", 64, "empty.txt").find("empty.txt: no text"), std::string::npos);
  EXPECT_NE(err("ok\xff\xfe", 64, "bad.txt").find("bad.txt: byte offset 2: invalid UTF-8"),
            std::string::npos);
  EXPECT_NE(err("text", 1, "t.txt").find("max_seq_len must be at least 2"), std::string::npos);
}

TEST(TextDataset, OnlyTxtNamesAreText) {
  EXPECT_TRUE(is_text_dataset("corpus.txt"));
  EXPECT_FALSE(is_text_dataset("chat.json"));
  EXPECT_FALSE(is_text_dataset("chat.jsonl"));
}
