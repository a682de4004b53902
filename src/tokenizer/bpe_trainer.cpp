// build_default_tokenizer: a deterministic byte-level BPE trainer producing an HF tokenizer.json
// shaped exactly like Qwen's (same normalizer, pre-tokenizer, decoder), only smaller.
#include <algorithm>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalize.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {
namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

json byte_level_component() {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", false},
          {"use_regex", false}};
}

}  // namespace

json build_default_tokenizer(std::string_view corpus, int num_merges) {
  if (num_merges < 0)
    fail(ErrorCode::kInvalidArgument, "num_merges must be >= 0, got {}", num_merges);
  if (size_t bad = utf8::find_invalid(corpus); bad != std::string_view::npos)
    fail(ErrorCode::kInvalidArgument, "tokenizer corpus is not valid UTF-8 (byte {})", bad);

  // Pre-token frequencies, in a sorted map so that everything after is independent of hashing.
  std::string text = nfc(corpus);
  SplitPretokenizer split(kQwenSplitPattern, "default tokenizer");
  std::map<std::string, int64_t> word_freq;
  for (auto [b, e] : split.split_pieces(text)) ++word_freq[text.substr(b, e - b)];

  std::vector<std::string> bytes(256);  // raw bytes of each token id
  for (int b = 0; b < 256; ++b) bytes[b] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, int32_t> id_of;
  for (int b = 0; b < 256; ++b) id_of.emplace(bytes[b], b);

  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> freq;
  std::unordered_map<uint64_t, int64_t> count;               // pair -> weighted occurrences
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // pair -> words that had it (superset)
  for (const auto& [w, f] : word_freq) {
    std::vector<int32_t> syms(w.begin(), w.end());
    for (auto& s : syms) s = static_cast<unsigned char>(s);
    int32_t wi = static_cast<int32_t>(words.size());
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      uint64_t k = pair_key(syms[i], syms[i + 1]);
      count[k] += f;
      auto& wl = where[k];
      if (wl.empty() || wl.back() != wi) wl.push_back(wi);
    }
    words.push_back(std::move(syms));
    freq.push_back(f);
  }

  // Max-heap on (count, then the lexicographically smallest pair of byte strings), with lazy
  // invalidation: a popped entry whose count is stale is pushed again with the current count.
  struct Entry {
    int64_t count;
    int32_t a, b;
  };
  auto worse = [&](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    if (bytes[x.a] != bytes[y.a]) return bytes[x.a] > bytes[y.a];
    return bytes[x.b] > bytes[y.b];
  };
  std::vector<Entry> heap;
  for (const auto& [k, c] : count) heap.push_back({c, int32_t(k >> 32), int32_t(k & 0xffffffffu)});
  std::make_heap(heap.begin(), heap.end(), worse);

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> stamp(words.size(), -1);
  while (merges.size() < static_cast<size_t>(num_merges) && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    Entry top = heap.back();
    heap.pop_back();
    uint64_t key = pair_key(top.a, top.b);
    int64_t cur = count[key];
    if (cur != top.count) {
      if (cur > 0)
        heap.push_back({cur, top.a, top.b}), std::push_heap(heap.begin(), heap.end(), worse);
      continue;
    }
    if (cur <= 0) break;
    std::string merged = bytes[top.a] + bytes[top.b];
    auto [it, fresh] = id_of.try_emplace(merged, static_cast<int32_t>(bytes.size()));
    if (fresh) bytes.push_back(merged);
    int32_t nid = it->second;
    int32_t step = static_cast<int32_t>(merges.size());
    merges.emplace_back(top.a, top.b);

    std::unordered_set<uint64_t> grown;
    std::vector<int32_t> affected = std::move(where[key]);
    where.erase(key);
    for (int32_t wi : affected) {
      if (stamp[wi] == step) continue;
      stamp[wi] = step;
      auto& syms = words[wi];
      std::vector<int32_t> next;
      next.reserve(syms.size());
      for (size_t i = 0; i < syms.size(); ++i) {
        if (i + 1 < syms.size() && syms[i] == top.a && syms[i + 1] == top.b) {
          next.push_back(nid);
          ++i;
        } else {
          next.push_back(syms[i]);
        }
      }
      if (next.size() == syms.size()) continue;
      for (size_t i = 0; i + 1 < syms.size(); ++i)
        count[pair_key(syms[i], syms[i + 1])] -= freq[wi];
      for (size_t i = 0; i + 1 < next.size(); ++i) {
        uint64_t k = pair_key(next[i], next[i + 1]);
        count[k] += freq[wi];
        if (next[i] == nid || next[i + 1] == nid) {
          grown.insert(k);
          auto& wl = where[k];
          if (wl.empty() || wl.back() != wi) wl.push_back(wi);
        }
      }
      syms = std::move(next);
    }
    std::vector<uint64_t> order(grown.begin(), grown.end());
    std::sort(order.begin(), order.end());
    for (uint64_t k : order)
      if (count[k] > 0) {
        heap.push_back({count[k], int32_t(k >> 32), int32_t(k & 0xffffffffu)});
        std::push_heap(heap.begin(), heap.end(), worse);
      }
  }

  json vocab = json::object();
  for (size_t id = 0; id < bytes.size(); ++id) vocab[byte_level::encode(bytes[id])] = id;
  json merge_list = json::array();
  for (auto [a, b] : merges)
    merge_list.push_back(json::array({byte_level::encode(bytes[a]), byte_level::encode(bytes[b])}));
  json added = json::array();
  int32_t next_id = static_cast<int32_t>(bytes.size());
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"})
    added.push_back({{"id", next_id++},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  return qwen_bpe_tokenizer_json(std::move(vocab), std::move(merge_list), std::move(added));
}

json qwen_bpe_tokenizer_json(json vocab, json merges, json added_tokens) {
  json split_pt = {{"type", "Split"},
                   {"pattern", {{"Regex", std::string(kQwenSplitPattern)}}},
                   {"behavior", "Isolated"},
                   {"invert", false}};
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added_tokens)},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"}, {"pretokenizers", json::array({split_pt, byte_level_component()})}}},
      {"post_processor", byte_level_component()},
      {"decoder", byte_level_component()},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", std::move(vocab)},
        {"merges", std::move(merges)}}},
  };
}

}  // namespace nnpipe
