// The thread-safe engine: one loaded Model shared read-only by any number of sessions on their own
// threads, and a registry of loaded adapters that may change while sessions run. Everything is
// shared_ptr-owned: a session keeps the adapters of its set alive even after they are unloaded
// from the registry, so unloading never pulls weights from under a running forward.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/lora.h"
#include "engine/model.h"
#include "engine/session.h"

namespace nnpipe::engine {

struct AdapterSpec {
  std::string path;
  float scale = 1.0f;
};

class Engine {
 public:
  explicit Engine(std::shared_ptr<const Model> model) : model_(std::move(model)) {}
  static std::shared_ptr<Engine> open(const fs::path& model_path) {
    return std::make_shared<Engine>(Model::load(model_path));
  }
  const std::shared_ptr<const Model>& model() const { return model_; }

  // Loads (or returns the already loaded) adapter at `path`. Throws with "<path>: <why>".
  std::shared_ptr<const LoraAdapter> load_adapter(const std::string& path);
  // Forgets an adapter (sessions using it keep it until they switch sets). False if unknown.
  bool unload_adapter(const std::string& path);
  std::vector<std::string> loaded_adapters() const;

  // The set for `specs`, in order. An adapter that cannot be loaded or does not fit is left out
  // and its message ("<path>: <why>") appended to `rejected`; the others still apply.
  AdapterSet adapter_set(const std::vector<AdapterSpec>& specs, std::vector<std::string>* rejected);

  std::unique_ptr<Session> new_session(SessionOptions opt = {}) const {
    return std::make_unique<Session>(model_, opt);
  }

 private:
  std::shared_ptr<const Model> model_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const LoraAdapter>> adapters_;
};

}  // namespace nnpipe::engine
