#include "core/embedded.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {
namespace {

// Appends every "content" string found anywhere in `j`.
void collect_contents(const json& j, std::string& out) {
  if (j.is_object()) {
    for (auto& [k, v] : j.items()) {
      if (k == "content" && v.is_string())
        out.append(v.get<std::string>()).push_back('\n');
      else
        collect_contents(v, out);
    }
  } else if (j.is_array()) {
    for (const json& v : j) collect_contents(v, out);
  }
}

}  // namespace

json default_tokenizer_json() {
  // The corpus: the embedded prose plus every message of the embedded sample datasets, so that
  // the words the demo trains on become few tokens.
  std::string corpus(embedded::find("tokenizer_corpus.txt"));
  collect_contents(parse_json(embedded::find("sample.json"), "sample.json"), corpus);
  std::string_view jsonl = embedded::find("sample2.jsonl");
  for (size_t pos = 0; pos < jsonl.size();) {
    size_t nl = jsonl.find('\n', pos);
    if (nl == std::string_view::npos) nl = jsonl.size();
    if (nl > pos)
      collect_contents(parse_json(jsonl.substr(pos, nl - pos), "sample2.jsonl"), corpus);
    pos = nl + 1;
  }
  return build_default_tokenizer(corpus, kDefaultTokenizerMerges);
}

}  // namespace nnpipe
