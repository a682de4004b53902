// The layering of src/ (docs/DESIGN.md): a file may include headers of its own layer and of the
// layers below it, never of a layer above, nor of a sibling driver. The layer of a file is its
// folder under src/; include/wasi_nn/ (the C API that src/capi/ implements) counts as capi.
// apps/ and tests/ may include anything and are not scanned.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/file.h"

namespace {

namespace fs = nnpipe::fs;

// Rank per layer: lower ranks may not include higher ones. Equal ranks are sibling drivers, which
// may not include each other either (train, engine, eval and export stay independent).
const std::map<std::string, int>& layer_ranks() {
  static const std::map<std::string, int> r = {
      {"core", 0},                                                   // error, json, files, utf8
      {"tensor", 1},                                                 // DType, Tensor
      {"arch", 2},                                                   // ModelConfig, name tables
      {"quant", 3},                                                  // block (de)quantizers
      {"backend", 4},                                                // compute ops and kernels
      {"io", 5},        {"dist", 5},                                 // formats; collectives
      {"tokenizer", 6},                                              // tokenizer, chat template
      {"model", 7},                                                  // Qwen2Model, GGUF import
      {"train", 8},     {"engine", 8},  {"eval", 8}, {"export", 8},  // the drivers
      {"capi", 9},      {"wasi_nn", 9},                              // WASI-NN backend (+ C API)
      {"pipeline", 10}, {"server", 10},                              // runs; nnpipe serve
  };
  return r;
}

// Upward includes that are known and being removed, each with the reason. A stale entry (the
// include is gone) fails too, so that the list only shrinks.
const std::set<std::pair<std::string, std::string>>& allowlist() {
  // Empty since GgmlType moved from io/gguf.h to tensor/ggml_type.h (issue 14 item 1).
  static const std::set<std::pair<std::string, std::string>> a = {};
  return a;
}

struct Include {
  std::string target;
  int line;
};

std::vector<Include> includes_of(const std::string& text) {
  static const std::regex re(R"re(^\s*#\s*include\s*["<]([^">]+)[">])re");
  std::vector<Include> out;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::smatch m;
    if (std::regex_search(line, m, re)) out.push_back({m[1].str(), n});
  }
  return out;
}

// The violations of one file ("<rel>:<line>: includes \"x\" (...)"), `rel` relative to the repo
// root ("src/io/gguf.h"); `used` collects the allowlist entries that matched.
std::vector<std::string> check_file(const std::string& rel, const std::string& text,
                                    std::set<std::pair<std::string, std::string>>* used) {
  std::vector<std::string> out;
  const size_t a = rel.find('/'), b = rel.find('/', a + 1);
  const std::string own = rel.substr(a + 1, b - a - 1);
  const auto& ranks = layer_ranks();
  const auto own_it = ranks.find(own);
  if (own_it == ranks.end()) {
    out.push_back(rel + ": folder src/" + own + "/ has no layer (add it to layer_ranks)");
    return out;
  }
  for (const Include& inc : includes_of(text)) {
    const size_t slash = inc.target.find('/');
    if (slash == std::string::npos) continue;  // <vector>, "fmt.h": not a project layer
    const auto it = ranks.find(inc.target.substr(0, slash));
    if (it == ranks.end()) continue;  // <CLI/CLI.hpp>, <nlohmann/json.hpp>, ...
    const std::string layer = it->first;
    if (layer == own || (own == "capi" && layer == "wasi_nn")) continue;
    const bool upward = it->second > own_it->second;
    const bool sibling = it->second == own_it->second;
    if (!upward && !sibling) continue;
    if (allowlist().contains({rel, inc.target})) {
      if (used) used->insert({rel, inc.target});
      continue;
    }
    out.push_back(rel + ":" + std::to_string(inc.line) + ": includes \"" + inc.target + "\" (" +
                  own + " may not include " + layer + ": " +
                  (upward ? "a layer above it" : "a sibling driver") + ")");
  }
  return out;
}

TEST(Layering, CheckerFindsUpwardAndSiblingIncludes) {
  auto v = check_file("src/core/x.h", "#include <vector>\n#include \"model/qwen2.h\"\n", nullptr);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0],
            "src/core/x.h:2: includes \"model/qwen2.h\" (core may not include model: a layer "
            "above it)");
  v = check_file("src/engine/x.cpp", "  #  include \"train/trainer.h\"\n", nullptr);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0].find("a sibling driver"), std::string::npos);
  EXPECT_TRUE(check_file("src/pipeline/x.cpp",
                         "#include \"engine/engine.h\"\n#include \"wasi_nn/wasi_nn_backend.h\"\n",
                         nullptr)
                  .empty());
  EXPECT_TRUE(check_file("src/io/x.cpp", "#include \"arch/qwen2_arch.h\"\n", nullptr).empty());
  EXPECT_EQ(check_file("src/newlayer/x.h", "", nullptr).size(), 1u);
}

TEST(Layering, NoFileIncludesALayerAboveItsOwn) {
  const fs::path root = fs::path(NNPIPE_SOURCE_DIR);
  std::vector<std::string> violations;
  std::set<std::pair<std::string, std::string>> used;
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(root / "src")) {
    if (!e.is_regular_file()) continue;
    const std::string ext = e.path().extension().string();
    if (ext != ".h" && ext != ".cpp" && ext != ".inc") continue;
    std::ifstream f(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string rel = fs::relative(e.path(), root).generic_string();
    for (std::string& v : check_file(rel, ss.str(), &used)) violations.push_back(std::move(v));
    ++files;
  }
  EXPECT_GT(files, 100) << "src/ not found under " << root;
  std::string all;
  for (const std::string& v : violations) all += "\n  " + v;
  EXPECT_TRUE(violations.empty()) << violations.size() << " upward include(s):" << all;
  for (const auto& entry : allowlist())
    EXPECT_TRUE(used.contains(entry)) << "allowlist entry " << entry.first << " -> " << entry.second
                                      << " no longer needed: remove it";
}

}  // namespace
