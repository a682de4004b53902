// libFuzzer target: a GGUF that parses is read as a Qwen2 model (config from the KVs,
// tokenizer.json rebuilt from the tokenizer arrays, chat template, every tensor dequantized), as
// `nnpipe eval` does. Each stage must succeed or throw nnpipe::Error; a crash, hang or sanitizer
// report is a bug.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_memory_limit.h"
#include "io/gguf.h"
#include "model/gguf_model.h"

// 2 GiB of fresh address space: far above what a few-kB input legitimately needs, far below what
// a header claiming 2^32 blocks or elements would allocate.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  nnpipe::fuzz::limit_address_space(uint64_t{2} << 30);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nnpipe::GgufFile f = nnpipe::GgufFile::parse({data, size}, "fuzz");
    try {
      nnpipe::ChatAssets a = nnpipe::chat_assets_from_gguf(f);
      (void)a.tokenizer.encode("ab c<|im_end|>");
    } catch (const nnpipe::Error&) {
    }
    nnpipe::Qwen2Model m = nnpipe::load_qwen2_gguf(f);
    (void)m.config();
  } catch (const nnpipe::Error&) {
  }
  return 0;
}
