#include "tokenizer/bpe.h"

#include <algorithm>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "tokenizer/byte_level.h"

namespace nnpipe {
namespace {

// Open-addressing map (left id, right id) -> (rank, result id): the hottest lookup in encoding.
class MergeTable {
 public:
  struct Value {
    int32_t rank, result;
  };
  void build(const std::vector<BpeModel::Merge>& merges) {
    size_t cap = 16;
    while (cap < merges.size() * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, {0, 0});
    mask_ = cap - 1;
    for (size_t r = 0; r < merges.size(); ++r) {
      uint64_t k = key(merges[r].left, merges[r].right);
      size_t s = slot(k);
      while (keys_[s] != kEmpty && keys_[s] != k) s = (s + 1) & mask_;
      keys_[s] = k;  // a repeated pair keeps its last rank, as HF's HashMap::insert does
      vals_[s] = {static_cast<int32_t>(r), merges[r].result};
    }
  }
  const Value* find(int32_t a, int32_t b) const {
    if (keys_.empty()) return nullptr;
    uint64_t k = key(a, b);
    for (size_t s = slot(k);; s = (s + 1) & mask_) {
      if (keys_[s] == k) return &vals_[s];
      if (keys_[s] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> 29) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Value> vals_;
  size_t mask_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct BpeModel::Impl {
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;
  MergeTable merges;
  Options opts;
  int32_t byte_id[256];  // vocab id of each byte's mapped character, -1 if absent

  // Word cache (like HF: bounded, words under 256 bytes). Shared between threads.
  static constexpr size_t kCacheCapacity = 1 << 16, kCacheMaxWord = 256;
  mutable std::shared_mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<Token>, StringHash, std::equal_to<>> cache;

  void merge_word(std::string_view bytes, std::vector<Token>& out) const;
};

BpeModel::BpeModel() : impl_(std::make_unique<Impl>()) {
  std::fill_n(impl_->byte_id, 256, -1);
}

BpeModel::BpeModel(std::vector<std::string> tokens, const std::vector<Merge>& merges, Options opts)
    : BpeModel() {
  impl_->tokens = std::move(tokens);
  impl_->opts = opts;
  impl_->vocab.reserve(impl_->tokens.size());
  for (size_t id = 0; id < impl_->tokens.size(); ++id)
    if (!impl_->tokens[id].empty())
      impl_->vocab.emplace(impl_->tokens[id], static_cast<int32_t>(id));
  for (int b = 0; b < 256; ++b) {
    auto it = impl_->vocab.find(byte_level::byte_to_str(static_cast<uint8_t>(b)));
    impl_->byte_id[b] = it == impl_->vocab.end() ? -1 : it->second;
  }
  impl_->merges.build(merges);
}

BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

const std::vector<std::string>& BpeModel::tokens() const {
  return impl_->tokens;
}

void BpeModel::encode_word(std::string_view bytes, std::vector<Token>& out) const {
  if (bytes.empty()) return;
  if (bytes.size() == 1) {  // the common single-byte piece (space, digit, punctuation)
    int32_t id = impl_->byte_id[static_cast<uint8_t>(bytes[0])];
    if (id >= 0) {
      out.push_back({id, 1});
      return;
    }
  }
  bool cacheable = bytes.size() < Impl::kCacheMaxWord;
  if (cacheable) {
    std::shared_lock lock(impl_->cache_mu);
    auto it = impl_->cache.find(bytes);
    if (it != impl_->cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  if (impl_->opts.ignore_merges) {
    if (auto id = token_to_id(byte_level::encode(bytes))) {
      out.push_back({*id, static_cast<uint32_t>(bytes.size())});
      return;
    }
  }
  impl_->merge_word(bytes, out);
  if (cacheable) {
    std::unique_lock lock(impl_->cache_mu);
    if (impl_->cache.size() < Impl::kCacheCapacity)
      impl_->cache.emplace(std::string(bytes), std::vector<Token>(out.begin() + first, out.end()));
  }
}

void BpeModel::Impl::merge_word(std::string_view bytes, std::vector<Token>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len;  // 0 once merged into its left neighbour
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t result;
    // The heap's top is the largest: make that the lowest rank, then the leftmost.
    bool operator<(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Candidate> heap;  // a binary heap (std::push_heap / pop_heap)
  sym.clear();

  // Initial symbols: one per byte; bytes missing from the vocab become unk (or are dropped).
  std::optional<Symbol> unk;
  auto push = [&](int32_t id, uint32_t len) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, len});
  };
  for (unsigned char b : bytes) {
    int32_t id = byte_id[b];
    if (id >= 0) {
      if (unk) push(unk->id, unk->len), unk.reset();
      push(id, 1);
    } else if (opts.unk_id) {
      if (unk && opts.fuse_unk) {
        unk->len += 1;
      } else {
        if (unk) push(unk->id, unk->len);
        unk = Symbol{*opts.unk_id, 0, 0, 1};
      }
    }
  }
  if (unk) push(unk->id, unk->len);
  if (sym.empty()) return;
  sym.back().next = -1;

  heap.clear();
  auto queue = [&](int32_t rank, int32_t pos, int32_t result) {
    heap.push_back({rank, pos, result});
    std::push_heap(heap.begin(), heap.end());
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i)
    if (auto* m = merges.find(sym[i].id, sym[i + 1].id))
      queue(m->rank, static_cast<int32_t>(i), m->result);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = sym[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[left.next];
    // Stale entry: the pair at this position has changed since it was queued.
    auto* cur = merges.find(left.id, right.id);
    if (!cur || cur->result != top.result) continue;
    left.id = top.result;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0)
      if (auto* m = merges.find(sym[left.prev].id, left.id)) queue(m->rank, left.prev, m->result);
    if (left.next >= 0)
      if (auto* m = merges.find(left.id, sym[left.next].id)) queue(m->rank, top.pos, m->result);
  }
  for (const Symbol& s : sym)
    if (s.len) out.push_back({s.id, s.len});
}

}  // namespace nnpipe
