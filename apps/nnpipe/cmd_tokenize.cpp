// `nnpipe tokenize`: encode or decode with a tokenizer.json (bit-identical to HF tokenizers), in
// single-text or batch (JSON lines) mode; and --build-default, which writes the small tokenizer
// nnpipe trains for its default model.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "command.h"
#include "core/embedded.h"
#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe::cli {
namespace {

struct Options {
  std::string tokenizer, text, file, jsonl, build_default, corpus;
  bool have_text = false, decode = false, with_offsets = false, skip_special = false;
  int merges = 256;
};

fs::path tokenizer_path(const std::string& p) {
  fs::path path(p);
  return fs::is_directory(path) ? path / "tokenizer.json" : path;
}

void write_out(const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size())
    fail(ErrorCode::kIo, "writing to stdout failed");
}

std::string ids_json(const std::vector<int32_t>& ids) {
  return fmt::format("[{}]", fmt::join(ids, ","));
}

// One result as the single-text mode and the batch mode print it (without the newline).
std::string encode_line(const Tokenizer& tok, std::string_view text, bool with_offsets) {
  if (!with_offsets) return ids_json(tok.encode(text));
  std::vector<size_t> starts;
  auto ids = tok.encode_with_offsets(text, &starts);
  return fmt::format(R"({{"ids":{},"offsets":[{}]}})", ids_json(ids), fmt::join(starts, ","));
}

std::vector<int32_t> parse_ids(std::string_view text, const std::string& origin) {
  json j = parse_json(text, origin);
  if (!j.is_array()) fail(ErrorCode::kFormat, "{}: expected a JSON array of token ids", origin);
  std::vector<int32_t> ids;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      fail(ErrorCode::kFormat, "{}: expected token ids (non-negative integers), got {}", origin,
           v.dump());
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

int run_batch(const Tokenizer& tok, const Options& o) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (o.jsonl != "-") {
    file.open(o.jsonl, std::ios::binary);
    if (!file) fail(ErrorCode::kIo, "{}: cannot open", o.jsonl);
    in = &file;
  }
  std::string line, out;
  for (size_t n = 1; std::getline(*in, line); ++n) {
    std::string origin = fmt::format("{} (line {})", o.jsonl, n);
    if (o.decode) {
      out += json(tok.decode(parse_ids(line, origin), o.skip_special)).dump();
    } else {
      json j = parse_json(line, origin);
      if (!j.is_string()) fail(ErrorCode::kFormat, "{}: expected a JSON string", origin);
      out += encode_line(tok, j.get_ref<const std::string&>(), o.with_offsets);
    }
    out += '\n';
    if (out.size() > (1 << 20)) write_out(out), out.clear();
  }
  write_out(out);
  return 0;
}

int run(const Options& o) {
  if (!o.build_default.empty()) {
    std::string corpus = o.corpus.empty() ? std::string(embedded::find("tokenizer_corpus.txt"))
                                          : read_file(o.corpus);
    if (corpus.empty()) fail(ErrorCode::kNotFound, "no tokenizer corpus (pass --corpus FILE)");
    write_json_file(o.build_default, build_default_tokenizer(corpus, o.merges));
    return 0;
  }
  if (o.tokenizer.empty()) fail(ErrorCode::kInvalidArgument, "--tokenizer is required");
  int inputs = o.have_text + !o.file.empty() + !o.jsonl.empty();
  if (inputs != 1) fail(ErrorCode::kInvalidArgument, "give exactly one of --text, --file, --jsonl");
  Tokenizer tok = Tokenizer::from_file(tokenizer_path(o.tokenizer));
  if (!o.jsonl.empty()) return run_batch(tok, o);
  std::string input = o.have_text ? o.text : read_file(o.file);
  if (o.decode) {
    write_out(tok.decode(parse_ids(input, o.have_text ? "--text" : o.file), o.skip_special));
    return 0;
  }
  write_out(encode_line(tok, input, o.with_offsets) + "\n");
  return 0;
}

}  // namespace

NNPIPE_COMMAND(
    "tokenize", "Encode text to token ids (or decode ids) exactly like HF tokenizers",
    [](CLI::App& app) -> RunFn {
      auto o = std::make_shared<Options>();
      app.add_option("--tokenizer", o->tokenizer,
                     "tokenizer.json, or a model directory that contains one");
      app.add_option("--text", o->text, "Text to encode (with --decode: a JSON array of ids)")
          ->each([o](const std::string&) { o->have_text = true; });
      app.add_option("--file", o->file,
                     "Read the text to encode (with --decode: a JSON array of ids) from "
                     "this file, byte for byte");
      app.add_option("--jsonl", o->jsonl,
                     "Batch mode: each line of this file ('-' = stdin) is a JSON string; "
                     "prints one JSON id array per line (with --decode: each line is an "
                     "id array and a JSON string is printed)");
      app.add_flag("--decode", o->decode, "Decode token ids to text instead of encoding");
      app.add_flag("--with-offsets", o->with_offsets,
                   "Print {\"ids\":[...],\"offsets\":[...]}: the byte offset in the input "
                   "where each token starts");
      app.add_flag("--skip-special", o->skip_special, "With --decode: leave out special tokens");
      app.add_option("--build-default", o->build_default,
                     "Instead of tokenizing: train nnpipe's default byte-level BPE "
                     "tokenizer and write its tokenizer.json to this path");
      app.add_option("--corpus", o->corpus,
                     "With --build-default: training text (default: the embedded "
                     "data/tokenizer_corpus.txt)");
      app.add_option("--merges", o->merges, "With --build-default: number of merges")
          ->capture_default_str()
          ->check(CLI::NonNegativeNumber);
      return [o] { return run(*o); };
    });

}  // namespace nnpipe::cli
