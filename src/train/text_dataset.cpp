#include "train/text_dataset.h"

#include <algorithm>

#include "core/error.h"
#include "core/file.h"
#include "core/utf8.h"

namespace nnpipe {
namespace {

// Documents: runs of non-blank lines; a blank line (only spaces/tabs/CR) ends one. Lines keep
// their newlines except the document's last.
std::vector<std::string> split_documents(std::string_view text) {
  std::vector<std::string> docs;
  std::string cur;
  size_t i = 0;
  while (i < text.size()) {
    size_t e = text.find('\n', i);
    std::string_view line = text.substr(i, e == std::string_view::npos ? text.size() - i : e - i);
    i = e == std::string_view::npos ? text.size() : e + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      if (!cur.empty()) docs.push_back(std::move(cur));
      cur.clear();
      continue;
    }
    if (!cur.empty()) cur += '\n';
    cur.append(line.substr(0, line.size() - (line.ends_with('\r') ? 1 : 0)));
  }
  if (!cur.empty()) docs.push_back(std::move(cur));
  return docs;
}

// Sorted offsets of every special token's text in `doc`: text is text, never a control token (as
// in chat messages, see render_chat).
std::vector<size_t> special_offsets(std::string_view doc,
                                    const std::vector<std::string>& specials) {
  std::vector<size_t> out;
  for (const std::string& sp : specials)
    for (size_t at = doc.find(sp); !sp.empty() && at != std::string_view::npos;
         at = doc.find(sp, at + 1))
      out.push_back(at);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

bool is_text_dataset(const fs::path& path) {
  return path.extension() == ".txt";
}

Dataset tokenize_text_dataset(std::string_view text, const Tokenizer& tok, size_t max_seq_len,
                              const std::string& origin) {
  if (max_seq_len < 2)
    fail(ErrorCode::kInvalidArgument, "max_seq_len must be at least 2, got {}", max_seq_len);
  if (size_t bad = utf8::find_invalid(text); bad != std::string_view::npos)
    fail(ErrorCode::kFormat, "{}: byte offset {}: invalid UTF-8", origin, bad);
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // a BOM is not text
  std::optional<int32_t> eos = tok.token_to_id("<|endoftext|>");
  if (!eos)
    fail(ErrorCode::kFormat, "{}: the tokenizer has no <|endoftext|> token to end documents with",
         origin);
  std::vector<std::string> docs = split_documents(text);
  if (docs.empty())
    fail(ErrorCode::kInvalidArgument, "{}: no text (documents are separated by blank lines)",
         origin);
  const std::vector<std::string> specials = tok.special_texts();
  Dataset ds;
  ds.stats.conversations = docs.size();
  for (size_t d = 0; d < docs.size(); ++d) {
    std::vector<int32_t> ids = tok.encode(docs[d], special_offsets(docs[d], specials));
    ids.push_back(*eos);
    ds.stats.longest = std::max(ds.stats.longest, ids.size());
    if (ids.size() > max_seq_len) ++ds.stats.truncated;  // split, not cut: nothing is lost
    for (size_t b = 0; b < ids.size(); b += max_seq_len) {
      size_t n = std::min(max_seq_len, ids.size() - b);
      if (n < 2) {  // one token predicts nothing
        ++ds.stats.dropped;
        continue;
      }
      Example ex;
      ex.conversation = d;
      ex.input_ids.assign(ids.begin() + static_cast<ptrdiff_t>(b),
                          ids.begin() + static_cast<ptrdiff_t>(b + n));
      ex.labels = ex.input_ids;
      ex.labels[0] = kIgnoreIndex;  // nothing predicts a window's first token
      ds.stats.tokens += n;
      ds.stats.trained_tokens += n - 1;
      ds.examples.push_back(std::move(ex));
    }
  }
  ds.stats.examples = ds.examples.size();
  return ds;
}

Dataset load_text_dataset(const fs::path& path, const Tokenizer& tok, size_t max_seq_len) {
  return tokenize_text_dataset(read_file(path), tok, max_seq_len, path.string());
}

}  // namespace nnpipe
