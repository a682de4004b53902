// libwasi_nn_llamacpp.so: WAMR's WASI-NN backend plugin ABI and the session-aware extended API over
// nnpipe's engine. One mutex per backend serialises the calls (WAMR calls from one thread per
// instance). LoRA sets resolve global (init config) -> model (load config) -> session (runtime
// params); the engine's Session drops its KV cache whenever its set changes, so a cache is never
// reused under another set. Every C++ exception becomes an error code and a log line here.
#include "wasi_nn/wasi_nn_backend.h"

#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "capi/wasi_nn_config.h"
#include "capi/wasi_nn_log.h"
#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "engine/engine.h"

namespace {

using namespace nnpipe;
using Clock = std::chrono::steady_clock;

struct Graph {
  std::shared_ptr<engine::Engine> engine;
  wasi_nn::Config cfg;     // backend config + this load's config
  engine::AdapterSet set;  // the model's adapters (global ones unless the load config had its own)
  std::vector<engine::AdapterSpec> specs;
};

struct Exec {
  graph g = 0;
  std::string session_id;  // empty: a plain WAMR execution context
  std::unique_ptr<engine::Session> session;
  std::optional<engine::AdapterSet> override_set;  // from runtime params: this session only
  std::string input, output;
  json meta = json::object();
  Clock::time_point last_used = Clock::now();
};

struct Backend {
  std::mutex mu;
  wasi_nn::Config cfg;
  std::shared_ptr<spdlog::logger> log;
  std::map<graph, Graph> graphs;
  std::map<graph_execution_context, Exec> execs;
  std::map<std::string, graph_execution_context> by_session;
  graph next_graph = 0, last_graph = 0;
  bool has_graph = false;
  graph_execution_context next_exec = 0;
};

wasi_nn_error code_of(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
      return invalid_argument;
    case ErrorCode::kNotFound:
      return not_found;
    case ErrorCode::kFormat:
      return invalid_encoding;
    case ErrorCode::kUnsupported:
      return unsupported_operation;
    default:
      return runtime_error;
  }
}

void drop_exec(Backend& b, graph_execution_context id) {
  auto it = b.execs.find(id);
  if (it == b.execs.end()) return;
  if (!it->second.session_id.empty()) b.by_session.erase(it->second.session_id);
  b.execs.erase(it);
}

// Idle sessions past backend.idle_timeout_ms are closed (auto_cleanup).
void sweep(Backend& b) {
  if (!b.cfg.auto_cleanup || b.cfg.idle_timeout_ms <= 0) return;
  const auto now = Clock::now();
  std::vector<graph_execution_context> old;
  for (const auto& [id, x] : b.execs)
    if (!x.session_id.empty() &&
        now - x.last_used > std::chrono::milliseconds(b.cfg.idle_timeout_ms))
      old.push_back(id);
  for (auto id : old) {
    b.log->info("session '{}' idle for over {} ms: closed", b.execs[id].session_id,
                b.cfg.idle_timeout_ms);
    drop_exec(b, id);
  }
}

// Runs `f` with the backend locked, after closing idle sessions (so a timed-out session is gone at
// the next call of any kind); exceptions become codes and a logged error naming `what`.
template <typename F>
wasi_nn_error guarded(void* ctx, const char* what, F&& f) {
  if (!ctx) return invalid_argument;
  Backend* b = static_cast<Backend*>(ctx);
  try {
    std::lock_guard<std::mutex> lock(b->mu);
    sweep(*b);
    return f(*b);
  } catch (const Error& e) {
    b->log->error("{}: {}", what, e.what());
    return code_of(e);
  } catch (const std::bad_alloc&) {
    b->log->error("{}: out of memory", what);
    return missing_memory;
  } catch (const std::exception& e) {
    b->log->error("{}: {}", what, e.what());
    return runtime_error;
  } catch (...) {
    b->log->error("{}: unknown error", what);
    return runtime_error;
  }
}

void warn_all(Backend& b, const std::vector<std::string>& w) {
  for (const std::string& s : w) b.log->warn("{}", s);
}

// The set for `specs`; bad entries are skipped with a warning naming the adapter and the reason.
engine::AdapterSet resolve(Backend& b, engine::Engine& e,
                           const std::vector<engine::AdapterSpec>& specs) {
  std::vector<engine::AdapterSpec> ok;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].path.empty())
      b.log->warn("lora_adapters[{}]: skipped: no \"path\"", i);
    else
      ok.push_back(specs[i]);
  }
  std::vector<std::string> rejected;
  engine::AdapterSet set = e.adapter_set(ok, &rejected);
  for (const std::string& r : rejected) b.log->warn("LoRA adapter skipped: {}", r);
  for (const engine::AdapterRef& r : set)
    b.log->info("LoRA adapter {} (rank {}, scale {})", r.adapter->origin(), r.adapter->rank(),
                r.scale);
  return set;
}

wasi_nn_error do_init(void** ctx, const char* config, uint32_t len) {
  if (!ctx) return invalid_argument;
  *ctx = nullptr;
  auto b = std::make_unique<Backend>();
  std::vector<std::string> warnings;
  std::string text = config ? std::string(config, len) : std::string();
  try {
    b->cfg = wasi_nn::parse_config(text, {}, &warnings);
  } catch (const std::exception& e) {
    b->log = wasi_nn::make_logger("info", "");
    b->log->error("init_backend: {}", e.what());
    return invalid_argument;
  } catch (...) {
    return runtime_error;
  }
  try {
    b->log = wasi_nn::make_logger(b->cfg.log_level, b->cfg.log_file);
  } catch (...) {
    return runtime_error;
  }
  // The engine's own console messages (this library's private copy of nnpipe's logger) repeat
  // ours: shown from debug down, otherwise errors only (and never below our level).
  const auto lv = b->log->level();
  log::set_console_level(lv <= spdlog::level::debug ? lv : std::max(lv, spdlog::level::err));
  warn_all(*b, warnings);
  if (b->cfg.n_gpu_layers_set && b->cfg.n_gpu_layers != 0)
    b->log->warn("model.n_gpu_layers = {}: unsupported (CPU-only build), running on the CPU",
                 b->cfg.n_gpu_layers);
  if (b->cfg.threads > 0) set_num_threads(b->cfg.threads);
  if (b->cfg.lora_adapters)
    b->log->info("{} global LoRA adapter(s) for every model loaded", b->cfg.lora_adapters->size());
  b->log->debug("backend initialised");
  *ctx = b.release();
  return success;
}

wasi_nn_error do_load(Backend& b, const std::string& path, std::string_view config, graph* g) {
  if (!g) return invalid_argument;
  std::vector<std::string> warnings;
  Graph gr;
  wasi_nn::Config base = b.cfg;
  base.lora_adapters.reset();
  gr.cfg = wasi_nn::parse_config(config, base, &warnings);
  warn_all(b, warnings);
  if (gr.cfg.n_gpu_layers_set && gr.cfg.n_gpu_layers != 0)
    b.log->warn("model.n_gpu_layers = {}: unsupported (CPU-only build), running on the CPU",
                gr.cfg.n_gpu_layers);
  if (gr.cfg.threads > 0) set_num_threads(gr.cfg.threads);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    b.log->error("load: model '{}' not found", path);
    return model_not_found;
  }
  gr.engine = engine::Engine::open(path);
  // The load config's own lora_adapters (even []) replace the global set.
  gr.specs = gr.cfg.lora_adapters
                 ? *gr.cfg.lora_adapters
                 : b.cfg.lora_adapters.value_or(std::vector<engine::AdapterSpec>{});
  gr.set = resolve(b, *gr.engine, gr.specs);
  b.log->info("model '{}' loaded as graph {} with {} adapter(s)", path, b.next_graph,
              gr.set.size());
  *g = b.next_graph++;
  b.graphs.emplace(*g, std::move(gr));
  b.last_graph = *g;
  b.has_graph = true;
  return success;
}

graph_execution_context new_exec(Backend& b, graph g, const std::string& session_id) {
  const Graph& gr = b.graphs.at(g);
  engine::SessionOptions so;
  so.n_ctx = gr.cfg.ctx_size;
  so.n_batch = gr.cfg.batch_size > 0 ? gr.cfg.batch_size : 512;
  Exec x;
  x.g = g;
  x.session_id = session_id;
  x.session = gr.engine->new_session(so);
  if (!gr.cfg.system_prompt.empty()) x.session->set_system(gr.cfg.system_prompt);
  graph_execution_context id = b.next_exec++;
  b.execs.emplace(id, std::move(x));
  if (!session_id.empty()) b.by_session[session_id] = id;
  return id;
}

Exec* find_exec(Backend& b, graph_execution_context id) {
  auto it = b.execs.find(id);
  if (it == b.execs.end()) {
    b.log->error("execution context {} does not exist (closed or evicted?)", id);
    return nullptr;
  }
  it->second.last_used = Clock::now();
  return &it->second;
}

// One chat turn of `x` with `p` (generation parameters).
wasi_nn_error run_turn(Backend& b, Exec& x, const wasi_nn::Config& p) {
  const Graph& gr = b.graphs.at(x.g);
  x.session->set_adapters(x.override_set ? *x.override_set : gr.set);
  if (x.session->history().empty() && !p.system_prompt.empty())
    x.session->set_system(p.system_prompt);
  const int64_t before = static_cast<int64_t>(x.session->history().size());
  engine::GenerateResult r;
  try {
    r = x.session->chat(x.input, p.gen);
  } catch (const Error& e) {
    b.log->error("compute: {}", e.what());
    // A prompt that does not fit the context.
    if (e.code() == ErrorCode::kInvalidArgument &&
        std::string(e.what()).find("context") != std::string::npos)
      return prompt_tool_long;
    return code_of(e);
  }
  x.output = r.text;
  json adapters = json::array();
  for (const engine::AdapterRef& a : x.session->adapters())
    adapters.push_back({{"path", a.adapter->origin()}, {"scale", a.scale}});
  x.meta = {{"input_tokens", r.prompt_tokens},
            {"output_tokens", static_cast<int64_t>(r.tokens.size())},
            {"reused_tokens", r.reused_tokens},
            {"stop_reason", r.stop_reason},
            {"prompt_tok_s", r.prompt_tok_s()},
            {"gen_tok_s", r.gen_tok_s()},
            {"turns", (before + 2) / 2},
            {"session_id", x.session_id},
            {"adapters", adapters}};
  b.log->debug("compute: {} prompt tokens ({} reused), {} generated, {}", r.prompt_tokens,
               r.reused_tokens, r.tokens.size(), r.stop_reason);
  return success;
}

}  // namespace

extern "C" {

WASI_NN_EXPORT wasi_nn_error init_backend(void** ctx) {
  return do_init(ctx, nullptr, 0);
}

WASI_NN_EXPORT wasi_nn_error init_backend_with_config(void** ctx, const char* config,
                                                      uint32_t len) {
  return do_init(ctx, config, len);
}

WASI_NN_EXPORT wasi_nn_error wasi_init_backend_with_config(void** ctx, const char* config,
                                                           uint32_t len) {
  return do_init(ctx, config, len);
}

WASI_NN_EXPORT wasi_nn_error deinit_backend(void* ctx) {
  if (!ctx) return invalid_argument;
  Backend* b = static_cast<Backend*>(ctx);
  try {
    b->log->debug("backend freed ({} graph(s), {} context(s))", b->graphs.size(), b->execs.size());
    delete b;  // contexts first (members in reverse order), then graphs and their adapters
  } catch (...) {
    return runtime_error;
  }
  return success;
}

WASI_NN_EXPORT wasi_nn_error load(void* ctx, graph_builder_array* builder, graph_encoding enc,
                                  execution_target target, graph* g) {
  return guarded(ctx, "load", [&](Backend& b) -> wasi_nn_error {
    if (!builder || builder->size < 1 || !builder->buf || !builder->buf[0].buf || !g)
      return invalid_argument;
    if (enc != ::ggml && enc != ::autodetect) {
      b.log->error("load: encoding {} unsupported (ggml = 5 or autodetect = 6)",
                   static_cast<int>(enc));
      return invalid_encoding;
    }
    if (target != ::cpu)
      b.log->warn("load: execution target {} unsupported: using the CPU", static_cast<int>(target));
    std::string bytes(reinterpret_cast<const char*>(builder->buf[0].buf), builder->buf[0].size);
    std::error_code ec;
    if (bytes.size() < 4096 && bytes.find('\0') == std::string::npos &&
        std::filesystem::exists(bytes, ec))
      return do_load(b, bytes, {}, g);
    // The GGUF bytes themselves: through a private temporary file (removed once mapped/read).
    if (bytes.size() < 4 || bytes.compare(0, 4, "GGUF") != 0) {
      b.log->error("load: builder 0 is neither a model path nor GGUF bytes");
      return invalid_encoding;
    }
    std::string tmp = (std::filesystem::temp_directory_path() / "wasi_nn_XXXXXX").string();
    int fd = mkstemp(tmp.data());
    if (fd < 0) return runtime_error;
    bool ok = ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    ::close(fd);
    wasi_nn_error r = runtime_error;
    try {
      if (ok) r = do_load(b, tmp, {}, g);
    } catch (...) {
      std::filesystem::remove(tmp, ec);
      throw;
    }
    std::filesystem::remove(tmp, ec);
    return r;
  });
}

WASI_NN_EXPORT wasi_nn_error load_by_name_with_config(void* ctx, const char* name, uint32_t namelen,
                                                      const char* config, uint32_t config_len,
                                                      graph* g) {
  return guarded(ctx, "load_by_name_with_config", [&](Backend& b) -> wasi_nn_error {
    if (!name || !g) return invalid_argument;
    return do_load(b, std::string(name, namelen),
                   config ? std::string_view(config, config_len) : std::string_view(), g);
  });
}

WASI_NN_EXPORT wasi_nn_error load_by_name(void* ctx, const char* name, uint32_t namelen, graph* g) {
  return load_by_name_with_config(ctx, name, namelen, nullptr, 0, g);
}

WASI_NN_EXPORT wasi_nn_error wasi_load_by_name_with_config(void* ctx, const char* name,
                                                           uint32_t namelen, const char* config,
                                                           uint32_t config_len, graph* g) {
  return load_by_name_with_config(ctx, name, namelen, config, config_len, g);
}

WASI_NN_EXPORT wasi_nn_error init_execution_context(void* ctx, graph g,
                                                    graph_execution_context* out) {
  return guarded(ctx, "init_execution_context", [&](Backend& b) -> wasi_nn_error {
    if (!out) return invalid_argument;
    if (!b.graphs.count(g)) {
      b.log->error("init_execution_context: graph {} does not exist", g);
      return not_found;
    }
    *out = new_exec(b, g, "");
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error init_execution_context_with_session_id(void* ctx,
                                                                    const char* session_id,
                                                                    graph_execution_context* out) {
  return guarded(ctx, "init_execution_context_with_session_id", [&](Backend& b) -> wasi_nn_error {
    if (!out || !session_id || !*session_id) return invalid_argument;
    if (!b.has_graph || !b.graphs.count(b.last_graph)) {
      b.log->error("init_execution_context_with_session_id: no model loaded");
      return not_found;
    }
    auto it = b.by_session.find(session_id);
    if (it != b.by_session.end()) {
      b.execs.at(it->second).last_used = Clock::now();
      *out = it->second;
      return success;
    }
    // LRU eviction beyond max_sessions.
    while (static_cast<int64_t>(b.by_session.size()) >= b.cfg.max_sessions) {
      graph_execution_context lru = 0;
      auto best = Clock::time_point::max();
      for (const auto& [sid, id] : b.by_session)
        if (b.execs.at(id).last_used < best) best = b.execs.at(id).last_used, lru = id;
      b.log->info("max_sessions {} reached: session '{}' evicted (least recently used)",
                  b.cfg.max_sessions, b.execs.at(lru).session_id);
      drop_exec(b, lru);
    }
    *out = new_exec(b, b.last_graph, session_id);
    b.log->debug("session '{}' opened as context {}", session_id, *out);
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error close_execution_context(void* ctx, graph_execution_context id) {
  return guarded(ctx, "close_execution_context", [&](Backend& b) -> wasi_nn_error {
    if (!b.execs.count(id)) return not_found;
    drop_exec(b, id);
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error set_input(void* ctx, graph_execution_context id, uint32_t index,
                                       tensor* input) {
  return guarded(ctx, "set_input", [&](Backend& b) -> wasi_nn_error {
    Exec* x = find_exec(b, id);
    if (!x) return not_found;
    if (!input || (!input->data.buf && input->data.size)) return invalid_argument;
    if (index != 0) {
      b.log->error("set_input: index {}: only input 0 (the prompt) exists", index);
      return invalid_argument;
    }
    if (input->type != ::u8) {
      b.log->error("set_input: tensor type {}: the prompt must be a u8 tensor of UTF-8 bytes",
                   input->type);
      return invalid_argument;
    }
    x->input.assign(reinterpret_cast<const char*>(input->data.buf), input->data.size);
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error compute(void* ctx, graph_execution_context id) {
  return guarded(ctx, "compute", [&](Backend& b) -> wasi_nn_error {
    Exec* x = find_exec(b, id);
    if (!x) return not_found;
    return run_turn(b, *x, b.graphs.at(x->g).cfg);
  });
}

WASI_NN_EXPORT wasi_nn_error get_output(void* ctx, graph_execution_context id, uint32_t index,
                                        tensor_data* out, uint32_t* out_size) {
  return guarded(ctx, "get_output", [&](Backend& b) -> wasi_nn_error {
    Exec* x = find_exec(b, id);
    if (!x) return not_found;
    if (!out || !out_size || (!out->buf && out->size)) return invalid_argument;
    std::string s;
    if (index == 0)
      s = x->output;
    else if (index == 1)
      s = x->meta.dump();
    else {
      b.log->error("get_output: index {}: outputs are 0 (text) and 1 (JSON metadata)", index);
      return invalid_argument;
    }
    if (s.size() > out->size) {
      b.log->error("get_output: {} bytes do not fit the {}-byte buffer", s.size(), out->size);
      *out_size = static_cast<uint32_t>(s.size());
      return too_large;
    }
    if (!s.empty()) std::memcpy(out->buf, s.data(), s.size());
    *out_size = static_cast<uint32_t>(s.size());
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error run_inference_for_session_with_params(
    void* ctx, graph_execution_context id, const char* prompt, uint32_t prompt_len,
    const char* params, uint32_t params_len, char* out, uint32_t out_max, uint32_t* out_size) {
  return guarded(ctx, "run_inference_for_session_with_params", [&](Backend& b) -> wasi_nn_error {
    Exec* x = find_exec(b, id);
    if (!x) return not_found;
    if (!out_size || (!prompt && prompt_len) || (!out && out_max)) return invalid_argument;
    const Graph& gr = b.graphs.at(x->g);
    std::vector<std::string> warnings;
    wasi_nn::Config base = gr.cfg;
    base.lora_adapters.reset();
    const std::string_view ptext =
        params ? std::string_view(params, params_len) : std::string_view();
    wasi_nn::Config p = wasi_nn::parse_config(ptext, base, &warnings);
    warn_all(b, warnings);
    // lora_adapters present: this session's set from now on ([] = base; null = the model's set).
    json pj = ptext.find_first_not_of(" \t\r\n") == std::string_view::npos ? json::object()
                                                                           : json::parse(ptext);
    if (pj.is_object() && pj.contains("lora_adapters")) {
      if (pj["lora_adapters"].is_null())
        x->override_set.reset();
      else
        x->override_set = resolve(b, *gr.engine, *p.lora_adapters);
    }
    x->input.assign(prompt ? prompt : "", prompt_len);
    wasi_nn_error r = run_turn(b, *x, p);
    if (r != success) return r;
    *out_size = static_cast<uint32_t>(x->output.size());
    if (x->output.size() > out_max) return too_large;
    if (!x->output.empty()) std::memcpy(out, x->output.data(), x->output.size());
    return success;
  });
}

}  // extern "C"
