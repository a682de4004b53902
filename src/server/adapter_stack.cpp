#include "server/adapter_stack.h"

#include <bit>
#include <cstdint>

#include <fmt/format.h>

namespace nnpipe::server {

std::string AdapterStack::key() const {
  std::string k;
  for (const StackEntry& e : entries) {
    if (e.scale == 0.0f) continue;
    if (!k.empty()) k += '+';
    // The scale's bits: 0.5 and 0.50000001f are different stacks, -0 was skipped above.
    k += fmt::format("{}@{:08x}", e.digest, std::bit_cast<uint32_t>(e.scale));
  }
  return k;
}

engine::AdapterSet AdapterStack::set() const {
  engine::AdapterSet s;
  for (const StackEntry& e : entries)
    if (e.scale != 0.0f) s.push_back({e.adapter, e.scale});
  return s;
}

}  // namespace nnpipe::server
