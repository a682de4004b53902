// The adapters a server has loaded, and the names requests use to pick a stack of them.
//   --lora NAME=FILE[:SCALE][+FILE[:SCALE]...]  names a stack; a one-file stack also names that
//                                              adapter (so `lora: [{"name": NAME}]` finds it)
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM) and /lora-adapters (llama-server)
// Adapters get ids in load order (llama-server's `lora: [{"id": N, "scale": S}]`). Each loaded
// file is identified by a digest of its content, which is what KV reuse keys on. Memory is bounded
// by max_loras: loading one more evicts the least recently used adapter that no request holds and
// no named stack needs (nor a global scale applies; an evicted adapter is forgotten, as if
// unloaded). Requests keep the shared_ptrs of their stack: unloading or evicting never breaks one
// in flight. The adapters of a stack of several files are named NAME/1, NAME/2, ... Thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model.h"
#include "server/adapter_stack.h"

namespace nnpipe::server {

struct AdapterInfo {
  int64_t id = 0;
  std::string name, path, digest;
  float scale = 0.0f;  // the global scale POST /lora-adapters set (applied to base requests)
  int64_t rank = 0;
  size_t bytes = 0;  // weights held
};

struct StackInfo {
  std::string name;
  std::vector<std::pair<std::string, float>> adapters;  // adapter name, scale
};

// One entry of llama-server's `lora` request field: an id or a name, and a scale.
struct LoraSelection {
  std::optional<int64_t> id;
  std::optional<std::string> name;
  float scale = 1.0f;
};

class AdapterRegistry {
 public:
  // base_name: what `model` is for the bare model (the model file or directory's name).
  // max_loras: adapters held at once (0: no bound).
  AdapterRegistry(std::shared_ptr<const engine::Model> model, std::string base_name,
                  int64_t max_loras);

  const std::string& base_name() const { return base_name_; }

  // Parses and loads one --lora argument. Throws kInvalidArgument (bad syntax, a name already
  // used, a bad scale) or the loader's kFormat/kNotFound/kUnsupported ("<path>: <why>").
  void add_stack(const std::string& arg);
  // Loads an adapter under `name` (replacing the adapter of that name, if any, for later
  // requests). Throws like add_stack; the registry is unchanged then.
  AdapterInfo load(const std::string& name, const std::string& path);
  // Forgets an adapter (and the named stacks that use it), or a named stack of several files (and
  // its adapters that no other stack uses). False when the name is unknown.
  bool unload(const std::string& name);

  // The stack for a request's `model`: the base name (or "") gives the global-scale stack (empty
  // unless POST /lora-adapters set scales); a stack name or an adapter name gives that stack.
  // nullopt when the name is unknown (404).
  std::optional<AdapterStack> resolve(std::string_view model);
  // The stack for a `lora` field. Throws kInvalidArgument naming the entry (unknown id/name,
  // neither or both given, bad scale).
  AdapterStack from_lora(const std::vector<LoraSelection>& sel);
  // POST /lora-adapters: [{id, scale}]; throws kInvalidArgument for an unknown id or bad scale.
  void set_global_scales(const std::vector<std::pair<int64_t, float>>& scales);

  std::vector<AdapterInfo> adapters() const;  // in id order
  std::vector<StackInfo> stacks() const;      // named stacks, in definition order

 private:
  struct Impl;
  std::shared_ptr<const engine::Model> model_;
  std::string base_name_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace nnpipe::server
