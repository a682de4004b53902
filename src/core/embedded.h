// Files of data/ compiled into the library (cmake/embed.cmake): the sample datasets and the
// default tokenizer's training corpus, so that `nnpipe pipeline` needs no download.
#pragma once
#include <string_view>

namespace nnpipe::embedded {
// The file's bytes, or an empty view if no such file was embedded.
std::string_view find(std::string_view name);
}  // namespace nnpipe::embedded
