#include "core/embedded.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

json default_tokenizer_json() {
  // The corpus: the embedded prose plus every message of the embedded sample datasets, so that
  // the words the demo trains on become few tokens.
  std::string corpus(embedded::find("tokenizer_corpus.txt"));
  for (const char* name : {"sample.json", "sample2.jsonl"}) {
    std::string_view text = embedded::find(name);
    size_t pos = 0;
    while ((pos = text.find("\"content\": \"", pos)) != std::string_view::npos) {
      pos += 12;
      size_t end = text.find('"', pos);
      if (end == std::string_view::npos) break;
      corpus.append(text.substr(pos, end - pos)).push_back('\n');
      pos = end;
    }
  }
  return build_default_tokenizer(corpus, kDefaultTokenizerMerges);
}

}  // namespace nnpipe
