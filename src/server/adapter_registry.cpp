#include "server/adapter_registry.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe::server {

namespace {

using engine::LoraAdapter;

// The files whose bytes are an adapter's content: a GGUF LoRA file, or a PEFT directory's config
// and weights (the config holds alpha and the targets, which change what the weights do).
std::vector<fs::path> content_files(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    return {path / "adapter_config.json", path / "adapter_model.safetensors"};
  return {path};
}

// What identifies a file's version cheaply: stamps equal before the load and after the digest
// mean the digest is of the bytes that were loaded (a replacement by rename changes the inode, a
// rewrite in place the mtime or size).
struct Stamp {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_s = 0, mtime_ns = 0;
  bool operator==(const Stamp&) const = default;
};

std::vector<Stamp> stamps(const std::vector<fs::path>& files) {
  std::vector<Stamp> v;
  for (const fs::path& f : files) {
    struct stat st {};
    Stamp s;
    if (::stat(f.c_str(), &st) == 0)
      s = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
           static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec),
           static_cast<int64_t>(st.st_mtim.tv_nsec)};
    v.push_back(s);
  }
  return v;
}

// XXH3-128 of the files' bytes, streamed in chunks, each file followed by its length (so where one
// file ends is part of the content). 32 hex digits.
std::string digest_of(const std::vector<fs::path>& files) {
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> st(XXH3_createState(),
                                                                     XXH3_freeState);
  if (!st || XXH3_128bits_reset(st.get()) != XXH_OK)
    fail(ErrorCode::kInternal, "XXH3_createState failed");
  std::vector<char> buf(size_t{1} << 20);
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) fail(ErrorCode::kIo, "{}: cannot open to compute its digest", f.string());
    uint64_t n = 0;
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const auto got = static_cast<size_t>(in.gcount());
      XXH3_128bits_update(st.get(), buf.data(), got);
      n += got;
    }
    if (in.bad()) fail(ErrorCode::kIo, "{}: read error while computing its digest", f.string());
    std::array<unsigned char, 8> le{};
    for (size_t i = 0; i < le.size(); ++i) le[i] = static_cast<unsigned char>(n >> (8 * i));
    XXH3_128bits_update(st.get(), le.data(), le.size());
  }
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st.get()));
  std::string hex;
  for (unsigned char b : c.digest) hex += fmt::format("{:02x}", b);
  return hex;
}

size_t weight_bytes(const LoraAdapter& a, int64_t layers) {
  size_t n = 0;
  auto add = [&](const engine::LoraPair* p) {
    if (!p) return;
    n += p->a.nbytes() + p->b.nbytes();
    if (p->bt.defined()) n += p->bt.nbytes();
  };
  for (int64_t l = 0; l < layers; ++l)
    for (int k = 0; k < engine::kNumLinear; ++k) add(a.find(l, static_cast<engine::Linear>(k)));
  add(a.output());
  return n;
}

struct Loaded {
  std::shared_ptr<const LoraAdapter> lora;
  std::string path, digest;
  size_t bytes = 0;
};

// Loads and digests one adapter; slow (reads the file twice, from the page cache the second
// time), so it runs outside the registry's lock.
Loaded load_adapter(const std::string& path, const engine::Model& model) {
  const std::vector<fs::path> files = content_files(path);
  const std::vector<Stamp> before = stamps(files);
  Loaded l;
  l.path = path;
  l.lora = LoraAdapter::load(path, model);  // throws "<path>: <why>"
  l.digest = digest_of(files);
  if (stamps(files) != before)
    fail(ErrorCode::kIo, "{}: the adapter changed on disk while it was loaded; load it again",
         path);
  l.bytes = weight_bytes(*l.lora, model.config().num_hidden_layers);
  return l;
}

// Names travel in JSON, URLs and logs: printable, no spaces, bounded.
void check_name(const std::string& name, const std::string& what) {
  if (name.empty() || name.size() > 256)
    fail(ErrorCode::kInvalidArgument, "{}: an adapter name must have 1 to 256 characters", what);
  for (const char ch : name) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7f)
      fail(ErrorCode::kInvalidArgument,
           "{}: the name '{}' has a space or control character (not allowed in names)", what, name);
  }
}

}  // namespace

struct AdapterRegistry::Impl {
  struct Adapter {
    int64_t id = 0;
    std::string name;
    Loaded l;
    float scale = 0.0f;  // global (POST /lora-adapters)
    uint64_t used = 0;   // LRU clock of the last request (or load) that took it
  };
  struct Stack {
    std::string name;
    std::vector<std::pair<std::string, float>> adapters;
  };

  mutable std::mutex mu;
  int64_t max_loras = 0;
  std::vector<Adapter> adapters;  // in id order (ids only grow)
  std::vector<Stack> stacks;      // in definition order
  int64_t next_id = 0;
  uint64_t clock = 0;

  Adapter* find(std::string_view name) {
    for (Adapter& a : adapters)
      if (a.name == name) return &a;
    return nullptr;
  }
  Adapter* find_id(int64_t id) {
    for (Adapter& a : adapters)
      if (a.id == id) return &a;
    return nullptr;
  }
  Stack* find_stack(std::string_view name) {
    for (Stack& s : stacks)
      if (s.name == name) return &s;
    return nullptr;
  }
  bool in_a_stack(const std::string& name) const {
    for (const Stack& s : stacks)
      for (const auto& [an, sc] : s.adapters)
        if (an == name) return true;
    return false;
  }
  // Evictable: no request holds it (the registry's reference is the only one), no named stack
  // uses it, and base requests do not apply it.
  bool evictable(const Adapter& a) const {
    return a.l.lora.use_count() == 1 && a.scale == 0.0f && !in_a_stack(a.name);
  }

  StackEntry take(Adapter& a, float scale) {
    a.used = ++clock;
    return {a.l.lora, scale, a.l.digest, a.name};
  }

  AdapterInfo info(const Adapter& a) const {
    return {a.id, a.name, a.l.path, a.l.digest, a.scale, a.l.lora->rank(), a.l.bytes};
  }

  Adapter make(std::string name, Loaded l, float scale) {
    Adapter a;
    a.id = next_id++;
    a.name = std::move(name);
    a.l = std::move(l);
    a.scale = scale;
    a.used = ++clock;
    return a;
  }

  // Evicts least recently used adapters until `n` more fit under max_loras; all or nothing.
  void make_room(size_t n, const std::string& what) {
    if (max_loras <= 0) return;
    const auto held = static_cast<int64_t>(adapters.size());
    const int64_t over = held + static_cast<int64_t>(n) - max_loras;
    if (over <= 0) return;
    std::vector<const Adapter*> lru;
    for (const Adapter& a : adapters)
      if (evictable(a)) lru.push_back(&a);
    if (static_cast<int64_t>(lru.size()) < over)
      fail(ErrorCode::kInvalidArgument,
           "{}: --max-loras {} bounds the adapters loaded; {} are loaded and {} of them are in "
           "use, in a named stack or given a global scale, so {} more cannot fit: unload one or "
           "raise --max-loras",
           what, max_loras, held, held - static_cast<int64_t>(lru.size()), n);
    std::sort(lru.begin(), lru.end(),
              [](const Adapter* x, const Adapter* y) { return x->used < y->used; });
    std::vector<std::string> gone;
    for (int64_t i = 0; i < over; ++i) gone.push_back(lru[static_cast<size_t>(i)]->name);
    for (const std::string& name : gone) {
      log::info("adapter '{}' evicted (least recently used; --max-loras {})", name, max_loras);
      std::erase_if(adapters, [&](const Adapter& a) { return a.name == name; });
    }
  }
};

AdapterRegistry::AdapterRegistry(std::shared_ptr<const engine::Model> model, std::string base_name,
                                 int64_t max_loras)
    : model_(std::move(model)), base_name_(std::move(base_name)), impl_(std::make_shared<Impl>()) {
  if (max_loras < 0)
    fail(ErrorCode::kInvalidArgument, "--max-loras {}: must be 0 (no bound) or more", max_loras);
  impl_->max_loras = max_loras;
}

void AdapterRegistry::add_stack(const std::string& arg) {
  const std::string what = "--lora " + arg;
  const size_t eq = arg.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size())
    fail(ErrorCode::kInvalidArgument, "{}: expected NAME=FILE[:SCALE][+FILE[:SCALE]...]", what);
  const std::string name = arg.substr(0, eq);
  check_name(name, what);
  // '+' separates files (a file whose path has a '+' can be loaded by POST /v1/load_lora_adapter).
  std::vector<std::pair<std::string, float>> files;
  for (size_t start = eq + 1;;) {
    const size_t plus = arg.find('+', start);
    const std::string part = arg.substr(start, plus == std::string::npos ? plus : plus - start);
    if (part.empty()) fail(ErrorCode::kInvalidArgument, "{}: an empty FILE between '+'", what);
    files.push_back(engine::parse_lora_arg(part));
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  // A one-file stack names its adapter; the adapters of a longer one are NAME/1, NAME/2, ...
  std::vector<std::string> names;
  for (size_t i = 0; i < files.size(); ++i)
    names.push_back(files.size() == 1 ? name : fmt::format("{}/{}", name, i + 1));
  auto check_free = [&] {
    if (name == base_name_ || impl_->find_stack(name) || impl_->find(name))
      fail(ErrorCode::kInvalidArgument, "{}: the name '{}' is already used", what, name);
    for (const std::string& n : names)
      if (n == base_name_ || impl_->find(n))
        fail(ErrorCode::kInvalidArgument, "{}: the name '{}' is already used", what, n);
  };
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    check_free();  // before the slow loads; again below, since the lock is released meanwhile
  }
  std::vector<Loaded> loaded;
  for (const auto& [file, scale] : files) loaded.push_back(load_adapter(file, *model_));

  std::lock_guard<std::mutex> lock(impl_->mu);
  check_free();
  impl_->make_room(loaded.size(), what);
  Impl::Stack s{name, {}};
  for (size_t i = 0; i < loaded.size(); ++i) {
    impl_->adapters.push_back(impl_->make(names[i], std::move(loaded[i]), 0.0f));
    const Impl::Adapter& a = impl_->adapters.back();
    log::info("adapter '{}' loaded: id {}, {}, rank {}, {:.2f} MiB, digest {}", a.name, a.id,
              a.l.path, a.l.lora->rank(), static_cast<double>(a.l.bytes) / (1 << 20), a.l.digest);
    s.adapters.emplace_back(names[i], files[i].second);
  }
  impl_->stacks.push_back(std::move(s));
}

AdapterInfo AdapterRegistry::load(const std::string& name, const std::string& path) {
  const std::string what = fmt::format("adapter '{}'", name);
  check_name(name, what);
  auto check_free = [&] {
    if (name == base_name_)
      fail(ErrorCode::kInvalidArgument, "{}: that is the base model's name", what);
    const Impl::Stack* s = impl_->find_stack(name);
    if (s && !(s->adapters.size() == 1 && s->adapters[0].first == name))
      fail(ErrorCode::kInvalidArgument,
           "{}: the name of a stack of {} adapters; unload it first or pick another name", what,
           s->adapters.size());
  };
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    check_free();
  }
  Loaded l = load_adapter(path, *model_);

  std::lock_guard<std::mutex> lock(impl_->mu);
  check_free();
  float scale = 0.0f;
  if (Impl::Adapter* old = impl_->find(name)) {
    // Requests in flight keep the old one (their shared_ptr); stacks naming it get the new one.
    scale = old->scale;
    log::info("adapter '{}' (id {}, digest {}) replaced", old->name, old->id, old->l.digest);
    std::erase_if(impl_->adapters, [&](const Impl::Adapter& a) { return a.name == name; });
  } else {
    impl_->make_room(1, what);
  }
  impl_->adapters.push_back(impl_->make(name, std::move(l), scale));
  const Impl::Adapter& a = impl_->adapters.back();
  log::info("adapter '{}' loaded: id {}, {}, rank {}, {:.2f} MiB, digest {}", a.name, a.id,
            a.l.path, a.l.lora->rank(), static_cast<double>(a.l.bytes) / (1 << 20), a.l.digest);
  return impl_->info(a);
}

bool AdapterRegistry::unload(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto drop_adapter = [&](const std::string& n) {
    std::erase_if(impl_->adapters, [&](const Impl::Adapter& a) { return a.name == n; });
    log::info("adapter '{}' unloaded", n);
  };
  if (impl_->find(name)) {
    drop_adapter(name);
    std::erase_if(impl_->stacks, [&](const Impl::Stack& s) {
      for (const auto& [an, sc] : s.adapters)
        if (an == name) return true;
      return false;
    });
    return true;
  }
  if (Impl::Stack* s = impl_->find_stack(name)) {
    // A stack of several files: it goes with the adapters that no other stack uses.
    const auto members = s->adapters;
    std::erase_if(impl_->stacks, [&](const Impl::Stack& x) { return x.name == name; });
    for (const auto& [an, sc] : members)
      if (impl_->find(an) && !impl_->in_a_stack(an)) drop_adapter(an);
    return true;
  }
  return false;
}

std::optional<AdapterStack> AdapterRegistry::resolve(std::string_view model) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  AdapterStack st;
  if (model.empty() || model == base_name_) {
    for (Impl::Adapter& a : impl_->adapters)
      if (a.scale != 0.0f) st.entries.push_back(impl_->take(a, a.scale));
    return st;
  }
  if (const Impl::Stack* s = impl_->find_stack(model)) {
    for (const auto& [an, sc] : s->adapters) {
      Impl::Adapter* a = impl_->find(an);
      if (!a) fail(ErrorCode::kInternal, "stack '{}' names adapter '{}' that is gone", model, an);
      st.entries.push_back(impl_->take(*a, sc));
    }
    return st;
  }
  if (Impl::Adapter* a = impl_->find(model)) {
    st.entries.push_back(impl_->take(*a, 1.0f));
    return st;
  }
  return std::nullopt;
}

AdapterStack AdapterRegistry::from_lora(const std::vector<LoraSelection>& sel) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<std::pair<Impl::Adapter*, float>> picked;
  for (size_t i = 0; i < sel.size(); ++i) {
    const LoraSelection& e = sel[i];
    const std::string what = fmt::format("lora[{}]", i);
    if (e.id.has_value() == e.name.has_value())
      fail(ErrorCode::kInvalidArgument, "{}: give either an \"id\" or a \"name\"", what);
    engine::check_lora_scale(e.scale, what);
    Impl::Adapter* a = e.id ? impl_->find_id(*e.id) : impl_->find(*e.name);
    if (!a && e.id)
      fail(ErrorCode::kInvalidArgument, "{}: no loaded adapter has id {} (GET /lora-adapters)",
           what, *e.id);
    if (!a && impl_->find_stack(*e.name))
      fail(ErrorCode::kInvalidArgument,
           "{}: '{}' is a stack of several adapters: select it with \"model\"", what, *e.name);
    if (!a)
      fail(ErrorCode::kInvalidArgument, "{}: no loaded adapter is named '{}' (GET /lora-adapters)",
           what, *e.name);
    picked.emplace_back(a, e.scale);
  }
  AdapterStack st;
  for (const auto& [a, scale] : picked) st.entries.push_back(impl_->take(*a, scale));
  return st;
}

void AdapterRegistry::set_global_scales(const std::vector<std::pair<int64_t, float>>& scales) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (size_t i = 0; i < scales.size(); ++i) {
    const std::string what = fmt::format("lora-adapters[{}]", i);
    if (!impl_->find_id(scales[i].first))
      fail(ErrorCode::kInvalidArgument, "{}: no loaded adapter has id {}", what, scales[i].first);
    engine::check_lora_scale(scales[i].second, what);
  }
  // As llama-server: the adapters not listed go back to 0.
  for (Impl::Adapter& a : impl_->adapters) a.scale = 0.0f;
  for (const auto& [id, scale] : scales) impl_->find_id(id)->scale = scale;
}

std::vector<AdapterInfo> AdapterRegistry::adapters() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<AdapterInfo> v;
  for (const Impl::Adapter& a : impl_->adapters) v.push_back(impl_->info(a));
  return v;
}

std::vector<StackInfo> AdapterRegistry::stacks() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<StackInfo> v;
  for (const Impl::Stack& s : impl_->stacks) v.push_back({s.name, s.adapters});
  return v;
}

}  // namespace nnpipe::server
