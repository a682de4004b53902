#include "engine/engine.h"

#include "core/error.h"
#include "core/log.h"

namespace nnpipe::engine {

std::shared_ptr<const LoraAdapter> Engine::load_adapter(const std::string& path) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = adapters_.find(path); it != adapters_.end()) return it->second;
  }
  // Load outside the lock: other sessions keep running meanwhile.
  std::shared_ptr<const LoraAdapter> a = LoraAdapter::load(path, *model_);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = adapters_.emplace(path, a);
  return it->second;
}

bool Engine::unload_adapter(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  return adapters_.erase(path) > 0;
}

std::vector<std::string> Engine::loaded_adapters() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> v;
  for (const auto& [k, a] : adapters_) v.push_back(k);
  return v;
}

AdapterSet Engine::adapter_set(const std::vector<AdapterSpec>& specs,
                               std::vector<std::string>* rejected) {
  AdapterSet set;
  for (const AdapterSpec& s : specs) {
    try {
      check_lora_scale(s.scale, s.path);
      set.push_back({load_adapter(s.path), s.scale});
    } catch (const Error& e) {
      log::warn("LoRA adapter rejected: {}", e.what());
      if (rejected) rejected->push_back(e.what());
    }
  }
  return set;
}

}  // namespace nnpipe::engine
