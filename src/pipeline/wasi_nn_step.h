// Step wasi_nn_inference: the pipeline's WASI-NN path. It dlopen()s libwasi_nn_llamacpp.so the way
// WAMR's iwasm loads a backend and chats through its C API with the exported base GGUF: a global
// adapter set at backend init, then one session overriding it with a stacked set in its runtime
// parameters.
#pragma once
#include <string>
#include <vector>

#include "core/json.h"
#include "engine/engine.h"
#include "pipeline/session.h"

namespace nnpipe {

struct WasiNnStepParams {
  fs::path model;                                // GGUF file
  std::vector<engine::AdapterSpec> global_set;   // init_backend_with_config's lora_adapters
  std::vector<engine::AdapterSpec> session_set;  // a session's runtime override
  std::string question;
  std::string system = "You are a helpful assistant.";
  int64_t max_tokens = 64;
};

// The backend library: $NNPIPE_WASI_NN_LIB, else beside this executable, else ../lib/ (install).
fs::path find_wasi_nn_library();

// Metrics: library, replies {global, session_override} with text and the backend's metadata.
json wasi_nn_inference(const RunSession& session, const WasiNnStepParams& p);

}  // namespace nnpipe
