// The backend's own logger ("wasi_nn"): stderr plus an optional file; level and file from the
// config's logging section, overridden by WASI_NN_LOG_LEVEL / WASI_NN_LOG_FILE.
#pragma once
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace nnpipe::wasi_nn {

// A new logger per backend (never registered globally, so several backends can coexist).
std::shared_ptr<spdlog::logger> make_logger(std::string level, std::string file);

}  // namespace nnpipe::wasi_nn
