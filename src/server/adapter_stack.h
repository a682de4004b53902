// The adapter stack a request runs with: loaded adapters (shared, so unloading one never pulls it
// from under a request in flight) with their user scales. Its identity for KV reuse is the content
// digest of each adapter file with its scale, never a name or an id: a different file reloaded
// under the same name is a different stack (vLLM #42125, llama.cpp #26207).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/lora.h"

namespace nnpipe::server {

struct StackEntry {
  std::shared_ptr<const engine::LoraAdapter> adapter;
  float scale = 1.0f;
  std::string digest;  // content hash of the adapter's file(s), hex
  std::string name;    // for logs and /v1/models only
};

struct AdapterStack {
  std::vector<StackEntry> entries;  // applied in order; scale-0 entries change nothing

  // "digest@scale-bits+..." over the entries with a non-zero scale; "" for the base model.
  std::string key() const;
  engine::AdapterSet set() const;
  bool empty() const { return key().empty(); }
};

}  // namespace nnpipe::server
