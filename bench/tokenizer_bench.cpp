// Times Tokenizer::encode, single-threaded: the whole file as one string, or (MODE "lines") each
// line, with its '\n', as its own string.
// Usage: tokenizer_bench TOKENIZER_JSON TEXT_FILE [REPEATS=5] [IDS_OUT|-] [whole|lines]
// Prints {"runs_s":[...],"median_s":..,"tokens":..,"bytes":..,"load_s":..} as JSON; IDS_OUT gets
// the ids of the last run as little-endian int32 (for an exact comparison with HF).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/tokenizer.h"

using namespace nnpipe;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER_JSON TEXT_FILE [REPEATS] [IDS_OUT]\n", argv[0]);
    return 2;
  }
  try {
    using clock = std::chrono::steady_clock;
    auto secs = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
    auto t0 = clock::now();
    Tokenizer tok = Tokenizer::from_file(argv[1]);
    double load_s = secs(clock::now() - t0);
    std::string text = read_file(argv[2]);
    int repeats = argc > 3 ? std::max(1, std::atoi(argv[3])) : 5;
    bool lines = argc > 5 && std::string_view(argv[5]) == "lines";
    std::vector<std::string_view> docs;
    if (lines) {
      for (size_t pos = 0; pos < text.size();) {
        size_t nl = text.find('\n', pos);
        size_t end = nl == std::string::npos ? text.size() : nl + 1;
        docs.push_back(std::string_view(text).substr(pos, end - pos));
        pos = end;
      }
    } else {
      docs.push_back(text);
    }
    std::vector<double> runs;
    std::vector<int32_t> ids;
    for (int r = 0; r < repeats; ++r) {
      ids.clear();
      auto t = clock::now();
      for (std::string_view d : docs) {
        auto part = tok.encode(d);
        ids.insert(ids.end(), part.begin(), part.end());
      }
      runs.push_back(secs(clock::now() - t));
    }
    std::vector<double> sorted = runs;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted[sorted.size() / 2];
    if (argc > 4 && std::string_view(argv[4]) != "-")
      write_file_atomic(argv[4], std::string_view(reinterpret_cast<const char*>(ids.data()),
                                                  ids.size() * sizeof(int32_t)));
    std::printf(
        "{\"runs_s\":[%s],\"median_s\":%.6f,\"tokens\":%zu,\"bytes\":%zu,\"load_s\":%.4f}\n",
        fmt::format("{:.6f}", fmt::join(runs, ",")).c_str(), median, ids.size(), text.size(),
        load_s);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
