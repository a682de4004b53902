#include <gtest/gtest.h>

#include "core/error.h"
#include "train/dataset.h"

using namespace nnpipe;

namespace {

std::string error_of(std::string_view text, bool jsonl = false) {
  try {
    parse_conversations(text, "d.json", jsonl);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(DatasetParse, AcceptsJsonAndJsonl) {
  auto c = parse_conversations(
      R"([{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}])",
      "d.json", false);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].messages[2].content, "a");
  auto l = parse_conversations(
      "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":"
      "\"a\"}]}\n\n"
      "{\"messages\":[{\"role\":\"user\",\"content\":\"v\"},{\"role\":\"assistant\",\"content\":"
      "\"b\"}]}\r\n",
      "d.jsonl", true);
  EXPECT_EQ(l.size(), 2u);
}

TEST(DatasetParse, ErrorsNameFileConversationAndField) {
  EXPECT_NE(error_of("").find("empty dataset"), std::string::npos);
  EXPECT_NE(error_of("[]").find("empty dataset"), std::string::npos);
  EXPECT_NE(error_of("[{").find("d.json: line 1, column"), std::string::npos);
  EXPECT_NE(error_of("{}").find("expected a JSON list"), std::string::npos);
  EXPECT_NE(error_of(R"([{"msgs":[]}])").find("conversation 0: unexpected field \"msgs\""),
            std::string::npos);
  EXPECT_NE(error_of(R"([{}])").find("missing field \"messages\""), std::string::npos);
  std::string two =
      R"([{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]},)";
  EXPECT_NE(error_of(two + R"({"messages":[{"role":"bot","content":"x"}]}])")
                .find("conversation 1: messages[0].role: unknown role \"bot\""),
            std::string::npos);
  EXPECT_NE(error_of(R"([{"messages":[{"role":"user","content":5}]}])")
                .find("messages[0].content: must be a string"),
            std::string::npos);
  EXPECT_NE(error_of(R"([{"messages":[{"role":"user","content":"x"}]}])")
                .find("no \"assistant\" message"),
            std::string::npos);
  EXPECT_NE(error_of(R"([{"messages":[{"role":"user","content":"x","name":"n"}]}])")
                .find("unexpected field \"name\""),
            std::string::npos);
  EXPECT_NE(error_of(R"([{"messages":[{"content":"x"}]}])").find("missing field \"role\""),
            std::string::npos);
  EXPECT_NE(error_of("[{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}]")
                .find("d.json: line 1"),
            std::string::npos);
  EXPECT_NE(error_of("\n{\"messages\": 3}", true)
                .find("line 2: conversation 0: \"messages\" must be an array"),
            std::string::npos);
  EXPECT_NE(error_of("\n\n{\"messages\": [}", true).find("d.json: line 3, column 15: invalid JSON"),
            std::string::npos);
}
