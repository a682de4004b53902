// TEMP (http helper's private stand-in, to be dropped when reg's adapter_registry.cpp lands): the
// registry's interface over a vector, digests from path, size and mtime. No LRU.
#include <sys/stat.h>

#include <fmt/format.h>

#include "core/error.h"
#include "server/adapter_registry.h"

namespace nnpipe::server {

struct AdapterRegistry::Impl {
  struct A {
    AdapterInfo info;
    std::shared_ptr<const engine::LoraAdapter> adapter;
  };
  std::mutex mu;
  std::vector<A> adapters;
  std::vector<StackInfo> stacks;
  int64_t next_id = 0;
  A* find(const std::string& n) {
    for (A& a : adapters)
      if (a.info.name == n) return &a;
    return nullptr;
  }
};

AdapterRegistry::AdapterRegistry(std::shared_ptr<const engine::Model> model, std::string base_name,
                                 int64_t)
    : model_(std::move(model)), base_name_(std::move(base_name)), impl_(std::make_shared<Impl>()) {}

namespace {
std::string digest_of(const std::string& path) {
  struct stat st = {};
  if (stat(path.c_str(), &st) != 0) return fmt::format("{:x}", std::hash<std::string>{}(path));
  return fmt::format("{:x}",
                     std::hash<std::string>{}(fmt::format("{}:{}:{}.{}", path, st.st_size,
                                                          st.st_mtim.tv_sec, st.st_mtim.tv_nsec)));
}
}  // namespace

AdapterInfo AdapterRegistry::load(const std::string& name, const std::string& path) {
  auto ad = engine::LoraAdapter::load(path, *model_);
  std::lock_guard lk(impl_->mu);
  Impl::A a;
  a.adapter = ad;
  a.info.name = name;
  a.info.path = path;
  a.info.digest = digest_of(path);
  a.info.rank = ad->rank();
  if (Impl::A* old = impl_->find(name)) {
    a.info.id = old->info.id;
    *old = a;
    return a.info;
  }
  a.info.id = impl_->next_id++;
  impl_->adapters.push_back(a);
  return a.info;
}

void AdapterRegistry::add_stack(const std::string& arg) {
  const size_t eq = arg.find('=');
  if (eq == std::string::npos || eq == 0)
    fail(ErrorCode::kInvalidArgument, "--lora {}: expected NAME=FILE[:SCALE][+FILE[:SCALE]...]",
         arg);
  const std::string name = arg.substr(0, eq);
  std::vector<std::string> parts;
  std::string rest = arg.substr(eq + 1);
  size_t at = 0;
  while (true) {
    const size_t plus = rest.find('+', at);
    parts.push_back(rest.substr(at, plus == std::string::npos ? std::string::npos : plus - at));
    if (plus == std::string::npos) break;
    at = plus + 1;
  }
  StackInfo st;
  st.name = name;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto [path, scale] = engine::parse_lora_arg(parts[i]);
    const std::string an = parts.size() == 1 ? name : fmt::format("{}.{}", name, i);
    load(an, path);
    st.adapters.emplace_back(an, scale);
  }
  std::lock_guard lk(impl_->mu);
  impl_->stacks.push_back(st);
}

bool AdapterRegistry::unload(const std::string& name) {
  std::lock_guard lk(impl_->mu);
  auto& v = impl_->adapters;
  auto it = std::find_if(v.begin(), v.end(), [&](auto& a) { return a.info.name == name; });
  if (it == v.end()) return false;
  v.erase(it);
  auto& s = impl_->stacks;
  s.erase(std::remove_if(s.begin(), s.end(),
                         [&](const StackInfo& st) {
                           for (auto& [n, sc] : st.adapters)
                             if (n == name) return true;
                           return false;
                         }),
          s.end());
  return true;
}

std::optional<AdapterStack> AdapterRegistry::resolve(std::string_view model) {
  std::lock_guard lk(impl_->mu);
  AdapterStack st;
  auto entry = [&](Impl::A& a, float scale) {
    st.entries.push_back({a.adapter, scale, a.info.digest, a.info.name});
  };
  if (model.empty() || model == base_name_) {
    for (Impl::A& a : impl_->adapters)
      if (a.info.scale != 0) entry(a, a.info.scale);
    return st;
  }
  for (const StackInfo& s : impl_->stacks)
    if (s.name == model) {
      for (auto& [n, sc] : s.adapters) entry(*impl_->find(n), sc);
      return st;
    }
  if (Impl::A* a = impl_->find(std::string(model))) {
    entry(*a, 1.0f);
    return st;
  }
  return std::nullopt;
}

AdapterStack AdapterRegistry::from_lora(const std::vector<LoraSelection>& sel) {
  std::lock_guard lk(impl_->mu);
  AdapterStack st;
  for (size_t i = 0; i < sel.size(); ++i) {
    Impl::A* a = nullptr;
    if (sel[i].id) {
      for (Impl::A& x : impl_->adapters)
        if (x.info.id == *sel[i].id) a = &x;
    } else if (sel[i].name) {
      a = impl_->find(*sel[i].name);
    }
    if (!a) fail(ErrorCode::kInvalidArgument, "lora[{}]: no such adapter", i);
    engine::check_lora_scale(sel[i].scale, fmt::format("lora[{}]", i));
    st.entries.push_back({a->adapter, sel[i].scale, a->info.digest, a->info.name});
  }
  return st;
}

void AdapterRegistry::set_global_scales(const std::vector<std::pair<int64_t, float>>& scales) {
  std::lock_guard lk(impl_->mu);
  for (auto& [id, sc] : scales) {
    bool found = false;
    for (Impl::A& a : impl_->adapters)
      if (a.info.id == id) {
        a.info.scale = sc;
        found = true;
      }
    if (!found) fail(ErrorCode::kInvalidArgument, "lora-adapters: no adapter with id {}", id);
  }
}

std::vector<AdapterInfo> AdapterRegistry::adapters() const {
  std::lock_guard lk(impl_->mu);
  std::vector<AdapterInfo> out;
  for (auto& a : impl_->adapters) out.push_back(a.info);
  return out;
}

std::vector<StackInfo> AdapterRegistry::stacks() const {
  std::lock_guard lk(impl_->mu);
  return impl_->stacks;
}

}  // namespace nnpipe::server
