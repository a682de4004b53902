// libFuzzer target: GgufFile::parse on arbitrary bytes must either validate (and then every tensor
// span lies inside the input, and what we write from it parses back to the same bytes) or throw
// nnpipe::Error; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "fuzz_memory_limit.h"
#include "io/gguf.h"

// 2 GiB of fresh address space: far above what a few-kB input legitimately needs, far below what
// a header claiming 2^32 blocks or elements would allocate.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  nnpipe::fuzz::limit_address_space(uint64_t{2} << 30);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    nnpipe::GgufFile f = nnpipe::GgufFile::parse({data, size}, "fuzz");
    volatile uint8_t sink = 0;
    nnpipe::GgufWriter w;
    for (const nnpipe::GgufKv& kv : f.metadata()) w.add(kv.key, kv.value);
    for (const nnpipe::GgufTensor& t : f.tensors()) {
      if (t.data.size() != t.nbytes) __builtin_trap();
      if (!t.data.empty()) sink = sink ^ t.data.front() ^ t.data.back();  // ASan checks the bounds
      if (f.find(t.name) != &t) __builtin_trap();
      w.add_tensor(t.name, t.type, t.ne, t.data);
    }
    // What we write from what we read must parse again and write back the same bytes (exact
    // types survive). Huge alignments are valid but would make the padding huge: skip those.
    if (f.alignment() <= 4096) {
      std::string once = w.to_bytes();
      nnpipe::GgufFile g = nnpipe::GgufFile::parse(
          {reinterpret_cast<const uint8_t*>(once.data()), once.size()}, "fuzz-rewrite");
      nnpipe::GgufWriter w2;
      for (const nnpipe::GgufKv& kv : g.metadata()) w2.add(kv.key, kv.value);
      for (const nnpipe::GgufTensor& t : g.tensors()) w2.add_tensor(t.name, t.type, t.ne, t.data);
      if (w2.to_bytes() != once) __builtin_trap();
    }
  } catch (const nnpipe::Error&) {
  }
  return 0;
}
