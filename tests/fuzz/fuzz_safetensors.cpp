// libFuzzer target: SafetensorsFile::parse on arbitrary bytes must either validate (and then every
// tensor span lies inside the input) or throw nnpipe::Error; anything else is a bug.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    nnpipe::SafetensorsFile f = nnpipe::SafetensorsFile::parse({data, size}, "fuzz");
    volatile uint8_t sink = 0;
    for (const nnpipe::TensorView& t : f.tensors()) {
      if (t.data.size() != t.numel() * nnpipe::dtype_size(t.dtype)) __builtin_trap();
      if (!t.data.empty()) sink = sink ^ t.data.front() ^ t.data.back();  // ASan checks the bounds
      if (f.find(t.name) != &t) __builtin_trap();
    }
  } catch (const nnpipe::Error&) {
  }
  return 0;
}
