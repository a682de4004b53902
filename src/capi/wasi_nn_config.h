// The WASI-NN backend's config JSON (init, load and runtime parameters): model, sampling,
// stopping, backend, logging and lora_adapters. Unknown keys are warnings; a value of the wrong
// type or out of its range (tests/wasi_nn/README.md lists them) is an error naming the key.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "engine/session.h"

namespace nnpipe::wasi_nn {

struct Config {
  // model
  int64_t n_gpu_layers = 0;  // accepted; CPU-only build
  bool n_gpu_layers_set = false;
  int64_t ctx_size = 0;  // 0: the engine's default; capped at the model's context at load
  int64_t batch_size = 512;
  int threads = 0;  // 0: all cores
  std::string system_prompt;
  // sampling + stopping (+ n_predict / max_tokens)
  engine::GenerateParams gen;
  // backend
  int64_t max_sessions = 64;
  int64_t idle_timeout_ms = 300000;
  double max_sessions_memory_mb = 1024;  // KV cache of all sessions (LRU idle ones evicted past it)
  bool auto_cleanup = true;
  // logging
  std::string log_level = "info";
  std::string log_file;
  // unset: inherit (global -> model -> session); set (maybe empty): this set
  std::optional<std::vector<engine::AdapterSpec>> lora_adapters;
};

// Applies `text` (a JSON object; empty = {}) on top of `base`. Throws kInvalidArgument naming the
// key on malformed JSON or a wrong type; unknown keys go to `warnings`.
Config parse_config(std::string_view text, const Config& base, std::vector<std::string>* warnings);

// Limits of the config (also in tests/wasi_nn/README.md and the C tests).
inline constexpr double kMaxLoraScale = 100;  // |scale| of a LoRA adapter
inline constexpr size_t kMaxSessionIdBytes = 256;

// Why a LoRA scale is refused ("" if it is fine): not finite or beyond +-kMaxLoraScale.
std::string bad_scale(double scale);

}  // namespace nnpipe::wasi_nn
