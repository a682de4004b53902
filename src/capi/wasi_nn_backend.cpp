// libwasi_nn_llamacpp.so: WAMR's WASI-NN backend plugin ABI and the session-aware extended API over
// nnpipe's engine. One mutex per backend serialises the calls (WAMR calls from one thread per
// instance). LoRA sets resolve global (init config) -> model (load config) -> session (runtime
// params); the engine's Session drops its KV cache whenever its set changes, so a cache is never
// reused under another set. Every C++ exception becomes an error code and a log line here.
// Backends are known by handles that are never reused (a registry, not raw pointers), so a stale
// or foreign handle is answered invalid_argument instead of touching freed memory. A chat turn that
// does not fit the context drops the oldest turns (the context policy of run_turn).
#include "wasi_nn/wasi_nn_backend.h"

#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
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
#include "core/utf8.h"
#include "engine/engine.h"
#include "tokenizer/chat_template.h"

namespace {

using namespace nnpipe;
using Clock = std::chrono::steady_clock;

struct Graph {
  std::shared_ptr<engine::Engine> engine;
  wasi_nn::Config cfg;     // backend config + this load's config
  engine::AdapterSet set;  // the model's adapters (global ones unless the load config had its own)
  std::vector<engine::AdapterSpec> specs;
  int64_t kv_bytes_per_token = 0;  // f16 K and V of every layer
};

struct Exec {
  graph g = 0;
  std::string session_id;  // empty: a plain WAMR execution context
  std::unique_ptr<engine::Session> session;
  std::optional<engine::AdapterSet> override_set;  // from runtime params: this session only
  std::string system;      // the session's system prompt (Session keeps it privately)
  bool has_input = false;  // set_input was called (compute needs a message)
  int64_t kv_peak = 0;     // most KV-cache tokens held so far (its memory, as the cache grows)
  std::string input, output;
  json meta = json::object();
  Clock::time_point last_used = Clock::now();
};

// One init_backend handle: the WASI-NN instance (not nnpipe::Backend, the compute backend).
struct WasiNnInstance {
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

// Live backends by handle (never reused). A call in flight holds its own reference, so
// deinit_backend during it frees the backend when that call returns.
std::mutex g_registry_mu;
std::map<uintptr_t, std::shared_ptr<WasiNnInstance>> g_backends;
uintptr_t g_next_handle = 1;

// For the messages of calls that have no (live) backend.
spdlog::logger& fallback_log() {
  static const std::shared_ptr<spdlog::logger> lg = wasi_nn::make_logger("info", "");
  return *lg;
}

std::shared_ptr<WasiNnInstance> find_backend(void* ctx, const char* what) {
  {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    auto it = g_backends.find(reinterpret_cast<uintptr_t>(ctx));
    if (it != g_backends.end()) return it->second;
  }
  try {
    fallback_log().error(
        "{}: backend handle {} is not a live backend (never initialised, or freed by "
        "deinit_backend)",
        what, ctx);
  } catch (...) {
  }
  return nullptr;
}

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

void drop_exec(WasiNnInstance& b, graph_execution_context id) {
  auto it = b.execs.find(id);
  if (it == b.execs.end()) return;
  if (!it->second.session_id.empty()) b.by_session.erase(it->second.session_id);
  b.execs.erase(it);
}

// Idle sessions past backend.idle_timeout_ms are closed (auto_cleanup).
void sweep(WasiNnInstance& b) {
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
  std::shared_ptr<WasiNnInstance> b = find_backend(ctx, what);
  if (!b) return invalid_argument;
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

void warn_all(WasiNnInstance& b, const std::vector<std::string>& w) {
  for (const std::string& s : w) b.log->warn("{}", s);
}

constexpr double kMaxLoraAlpha = 1e6;

// The set for `specs`; bad entries are skipped with a warning naming the adapter and the reason.
engine::AdapterSet resolve(WasiNnInstance& b, engine::Engine& e,
                           const std::vector<engine::AdapterSpec>& specs) {
  std::vector<engine::AdapterSpec> ok;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].path.empty())
      b.log->warn("lora_adapters[{}]: skipped: no \"path\"", i);
    else
      ok.push_back(specs[i]);
  }
  std::vector<std::string> rejected;
  engine::AdapterSet all = e.adapter_set(ok, &rejected), set;
  for (const std::string& r : rejected) b.log->warn("LoRA adapter skipped: {}", r);
  // Non-finite or huge factors turn every logit into NaN (a reply of NUL bytes): skipped.
  for (engine::AdapterRef& r : all) {
    const double alpha = r.adapter->alpha();
    if (!std::isfinite(alpha) || std::fabs(alpha) > kMaxLoraAlpha)
      b.log->warn("LoRA adapter skipped: {}: alpha {} is not finite or beyond +-{}",
                  r.adapter->origin(), alpha, kMaxLoraAlpha);
    else if (std::string why = wasi_nn::bad_scale(r.scale); !why.empty())
      b.log->warn("LoRA adapter skipped: {}: {}", r.adapter->origin(), why);
    else
      set.push_back(std::move(r));
  }
  for (const engine::AdapterRef& r : set)
    b.log->info("LoRA adapter {} (rank {}, scale {})", r.adapter->origin(), r.adapter->rank(),
                r.scale);
  return set;
}

wasi_nn_error do_init(void** ctx, const char* config, uint32_t len) {
  if (!ctx) return invalid_argument;
  *ctx = nullptr;
  std::shared_ptr<WasiNnInstance> b;
  try {
    b = std::make_shared<WasiNnInstance>();
  } catch (...) {
    return missing_memory;
  }
  std::vector<std::string> warnings;
  std::string text = config ? std::string(config, len) : std::string();
  try {
    b->cfg = wasi_nn::parse_config(text, {}, &warnings);
  } catch (const std::exception& e) {
    try {
      fallback_log().error("init_backend: {}", e.what());
    } catch (...) {
    }
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
  uintptr_t handle = 0;
  try {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    handle = g_next_handle++;
    g_backends.emplace(handle, b);
  } catch (...) {
    return missing_memory;
  }
  b->log->debug("backend initialised (handle {})", handle);
  *ctx = reinterpret_cast<void*>(handle);
  return success;
}

wasi_nn_error do_load(WasiNnInstance& b, const std::string& path, std::string_view config,
                      graph* g) {
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
  const ModelConfig& mc = gr.engine->model()->config();
  if (gr.cfg.ctx_size > mc.max_position_embeddings) {
    b.log->warn("model.ctx_size {} is beyond the model's context length {}: capped to {}",
                gr.cfg.ctx_size, mc.max_position_embeddings, mc.max_position_embeddings);
    gr.cfg.ctx_size = mc.max_position_embeddings;
  }
  gr.kv_bytes_per_token = 2 * mc.num_hidden_layers * mc.kv_dim() * 2;
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

graph_execution_context new_exec(WasiNnInstance& b, graph g, const std::string& session_id) {
  const Graph& gr = b.graphs.at(g);
  engine::SessionOptions so;
  so.n_ctx = gr.cfg.ctx_size;
  so.n_batch = gr.cfg.batch_size > 0 ? gr.cfg.batch_size : 512;
  Exec x;
  x.g = g;
  x.session_id = session_id;
  x.session = gr.engine->new_session(so);
  x.system = gr.cfg.system_prompt;
  if (!x.system.empty()) x.session->set_system(x.system);
  graph_execution_context id = b.next_exec++;
  b.execs.emplace(id, std::move(x));
  if (!session_id.empty()) b.by_session[session_id] = id;
  return id;
}

Exec* find_exec(WasiNnInstance& b, graph_execution_context id) {
  auto it = b.execs.find(id);
  if (it == b.execs.end()) {
    b.log->error("execution context {} does not exist (closed or evicted?)", id);
    return nullptr;
  }
  it->second.last_used = Clock::now();
  return &it->second;
}

// "session 'ID'" or "execution context N", for messages.
std::string label(const Exec& x, graph_execution_context id) {
  return x.session_id.empty() ? fmt::format("execution context {}", id)
                              : fmt::format("session '{}'", x.session_id);
}

int64_t kv_bytes(const WasiNnInstance& b, const Exec& x) {
  return x.kv_peak * b.graphs.at(x.g).kv_bytes_per_token;
}

// Bounds the KV memory of all sessions (backend.max_sessions_memory_mb): the least recently used
// sessions other than `keep` are closed until the total fits. Plain (WAMR) contexts are not
// sessions: they are never evicted and not counted.
void bound_memory(WasiNnInstance& b, graph_execution_context keep) {
  const double limit = b.cfg.max_sessions_memory_mb * 1024 * 1024;
  double total = 0;
  for (const auto& [sid, id] : b.by_session)
    total += static_cast<double>(kv_bytes(b, b.execs.at(id)));
  while (total > limit) {
    graph_execution_context lru = keep;
    auto best = Clock::time_point::max();
    for (const auto& [sid, id] : b.by_session)
      if (id != keep && b.execs.at(id).last_used < best) best = b.execs.at(id).last_used, lru = id;
    if (lru == keep) {
      b.log->warn(
          "sessions use {:.1f} MB of KV cache, beyond backend.max_sessions_memory_mb {}, "
          "and only the session in use is left",
          total / (1024 * 1024), b.cfg.max_sessions_memory_mb);
      return;
    }
    const Exec& x = b.execs.at(lru);
    b.log->info(
        "sessions use {:.1f} MB of KV cache, beyond backend.max_sessions_memory_mb {}: "
        "session '{}' ({} kB) evicted (least recently used)",
        total / (1024 * 1024), b.cfg.max_sessions_memory_mb, x.session_id, kv_bytes(b, x) / 1024);
    total -= static_cast<double>(kv_bytes(b, x));
    drop_exec(b, lru);
  }
}

// The history without its `k` oldest turns (a turn: a user message and the reply).
ordered_json drop_turns(const ordered_json& history, int64_t k) {
  ordered_json h = ordered_json::array();
  for (size_t i = static_cast<size_t>(2 * k); i < history.size(); ++i) h.push_back(history[i]);
  return h;
}

// Tokens of the prompt of a chat turn `user` after `history`, rendered as Session::chat renders.
int64_t chat_tokens(const engine::Session& s, const std::string& system,
                    const ordered_json& history, const std::string& user) {
  const ChatAssets& a = s.model().assets();
  ordered_json messages = ordered_json::array();
  if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
  for (const auto& m : history) messages.push_back(m);
  messages.push_back({{"role", "user"}, {"content", engine::sanitize_utf8(user)}});
  static const ChatTemplate kChatml(chatml_template_source(), "ChatML");
  const ChatTemplate& t = a.chat_template ? *a.chat_template : kChatml;
  return static_cast<int64_t>(
      a.tokenizer.encode(apply_chat_template(t, messages, true, a.template_vars)).size());
}

bool does_not_fit(const Error& e) {
  return e.code() == ErrorCode::kInvalidArgument &&
         std::string_view(e.what()).find("context") != std::string_view::npos;
}

// One chat turn of `x` with `p` (generation parameters). The context policy: when the prompt
// (history + the new message) plus room for the reply (max_tokens, at most a quarter of the
// context) does not fit, the fewest oldest turns are dropped so that it does, the system prompt
// kept; the metadata says so (context_shifted, dropped_turns). A message that does not fit even
// alone is prompt_tool_long with a way out.
wasi_nn_error run_turn(WasiNnInstance& b, Exec& x, graph_execution_context id,
                       const wasi_nn::Config& p, const char* what) {
  const Graph& gr = b.graphs.at(x.g);
  engine::Session& s = *x.session;
  s.set_adapters(x.override_set ? *x.override_set : gr.set);
  if (s.history().empty() && !p.system_prompt.empty()) {
    s.set_system(p.system_prompt);
    x.system = p.system_prompt;
  }
  const int64_t n_ctx = s.n_ctx();
  const int64_t reserve = std::min(p.gen.max_tokens, n_ctx / 4);
  const ordered_json history = s.history();
  const int64_t turns = static_cast<int64_t>(history.size() / 2);
  auto need = [&](int64_t k) { return chat_tokens(s, x.system, drop_turns(history, k), x.input); };
  auto too_long = [&](int64_t tokens) {
    const std::string n = tokens > 0 ? fmt::format("{} tokens", tokens) : "more tokens";
    b.log->error(
        "{}: {}: the message needs {} (with the system prompt and the chat template) but the "
        "context is {} tokens: shorten it, or close this session (close_execution_context) and "
        "load the model with a larger model.ctx_size (the model allows up to {})",
        what, label(x, id), n, n_ctx, s.model().config().max_position_embeddings);
    return prompt_tool_long;
  };
  const int64_t need0 = need(0);
  int64_t drop = 0;
  if (need0 + reserve > n_ctx && turns > 0) {
    if (const int64_t alone = need(turns); alone > n_ctx) return too_long(alone);
    // need(k) falls as k grows: the smallest k that leaves room for the reply (all turns if none).
    int64_t lo = 1, hi = turns;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (need(mid) + reserve <= n_ctx)
        hi = mid;
      else
        lo = mid + 1;
    }
    drop = lo;
  } else if (need0 > n_ctx) {
    return too_long(need0);
  }
  engine::GenerateResult r;
  for (;;) {
    if (drop > 0) s.set_history(drop_turns(history, drop));
    try {
      r = s.chat(x.input, p.gen);
      break;
    } catch (const Error& e) {
      s.set_history(history);  // a failed turn loses nothing
      // The count above is the engine's own rendering; should it ever differ, drop one more.
      if (does_not_fit(e) && drop < turns) {
        ++drop;
        continue;
      }
      if (does_not_fit(e)) return too_long(0);
      b.log->error("{}: {}: {}", what, label(x, id), e.what());
      return code_of(e);
    } catch (...) {
      s.set_history(history);
      throw;
    }
  }
  if (drop > 0)
    b.log->info(
        "{}: {}: context full ({} prompt tokens + {} for the reply > {}): dropped the {} oldest "
        "turn(s) of {}, system prompt kept",
        what, label(x, id), need0, reserve, n_ctx, drop, turns);
  x.kv_peak = std::max(x.kv_peak, s.context().n_past());
  x.output = r.text;
  json adapters = json::array();
  for (const engine::AdapterRef& a : s.adapters())
    adapters.push_back({{"path", a.adapter->origin()}, {"scale", a.scale}});
  x.meta = {{"input_tokens", r.prompt_tokens},
            {"output_tokens", static_cast<int64_t>(r.tokens.size())},
            {"reused_tokens", r.reused_tokens},
            {"stop_reason", r.stop_reason},
            {"prompt_tok_s", r.prompt_tok_s()},
            {"gen_tok_s", r.gen_tok_s()},
            {"turns", static_cast<int64_t>(s.history().size() / 2)},
            {"context_shifted", drop > 0},
            {"dropped_turns", drop},
            {"n_ctx", n_ctx},
            {"kv_bytes", kv_bytes(b, x)},
            {"session_id", x.session_id},
            {"adapters", adapters}};
  b.log->debug("{}: {} prompt tokens ({} reused), {} generated, {}", what, r.prompt_tokens,
               r.reused_tokens, r.tokens.size(), r.stop_reason);
  if (!x.session_id.empty()) bound_memory(b, id);
  return success;
}

// Session ids name sessions in logs and metadata (JSON): bounded, valid UTF-8, no control bytes.
std::string bad_session_id(const char* id) {
  const size_t n = strnlen(id, wasi_nn::kMaxSessionIdBytes + 1);
  if (n == 0) return "it is empty";
  if (n > wasi_nn::kMaxSessionIdBytes)
    return fmt::format("it is longer than {} bytes", wasi_nn::kMaxSessionIdBytes);
  const std::string_view v(id, n);
  if (size_t at = utf8::find_invalid(v); at != std::string_view::npos)
    return fmt::format("invalid UTF-8 at byte {}", at);
  for (size_t i = 0; i < n; ++i)
    if (static_cast<unsigned char>(v[i]) < 0x20 || v[i] == 0x7f)
      return fmt::format("control byte 0x{:02x} at byte {}", static_cast<unsigned char>(v[i]), i);
  return "";
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
  std::shared_ptr<WasiNnInstance> b;
  try {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    auto it = g_backends.find(reinterpret_cast<uintptr_t>(ctx));
    if (it != g_backends.end()) {
      b = std::move(it->second);
      g_backends.erase(it);
    }
  } catch (...) {
    return runtime_error;
  }
  // A second deinit_backend, or a handle never returned by init: refused, nothing freed.
  if (!b) {
    find_backend(ctx, "deinit_backend");  // logs that the handle is not live
    return invalid_argument;
  }
  try {
    b->log->debug("backend freed ({} graph(s), {} context(s))", b->graphs.size(), b->execs.size());
    // Contexts first (members in reverse order), then graphs and their adapters; a call still in
    // flight holds its own reference and frees the backend when it returns.
    b.reset();
  } catch (...) {
    return runtime_error;
  }
  return success;
}

WASI_NN_EXPORT wasi_nn_error load(void* ctx, graph_builder_array* builder, graph_encoding enc,
                                  execution_target target, graph* g) {
  return guarded(ctx, "load", [&](WasiNnInstance& b) -> wasi_nn_error {
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
  return guarded(ctx, "load_by_name_with_config", [&](WasiNnInstance& b) -> wasi_nn_error {
    if (!name || !g) return invalid_argument;
    // A NUL inside namelen would silently load another file (the prefix): refused.
    if (const void* nul = std::memchr(name, '\0', namelen)) {
      b.log->error(
          "load_by_name: the model name has a NUL byte at offset {} of its {} bytes (namelen)",
          static_cast<const char*>(nul) - name, namelen);
      return invalid_argument;
    }
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
  return guarded(ctx, "init_execution_context", [&](WasiNnInstance& b) -> wasi_nn_error {
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
  return guarded(
      ctx, "init_execution_context_with_session_id", [&](WasiNnInstance& b) -> wasi_nn_error {
        if (!out || !session_id) return invalid_argument;
        if (std::string why = bad_session_id(session_id); !why.empty()) {
          b.log->error(
              "init_execution_context_with_session_id: session id refused: {} (at most {} "
              "bytes of UTF-8 text)",
              why, wasi_nn::kMaxSessionIdBytes);
          return invalid_argument;
        }
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
  return guarded(ctx, "close_execution_context", [&](WasiNnInstance& b) -> wasi_nn_error {
    if (!b.execs.count(id)) return not_found;
    drop_exec(b, id);
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error set_input(void* ctx, graph_execution_context id, uint32_t index,
                                       tensor* input) {
  return guarded(ctx, "set_input", [&](WasiNnInstance& b) -> wasi_nn_error {
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
    x->has_input = true;
    return success;
  });
}

WASI_NN_EXPORT wasi_nn_error compute(void* ctx, graph_execution_context id) {
  return guarded(ctx, "compute", [&](WasiNnInstance& b) -> wasi_nn_error {
    Exec* x = find_exec(b, id);
    if (!x) return not_found;
    if (!x->has_input) {
      b.log->error("compute: {}: no input set (call set_input with the message first)",
                   label(*x, id));
      return invalid_argument;
    }
    return run_turn(b, *x, id, b.graphs.at(x->g).cfg, "compute");
  });
}

WASI_NN_EXPORT wasi_nn_error get_output(void* ctx, graph_execution_context id, uint32_t index,
                                        tensor_data* out, uint32_t* out_size) {
  return guarded(ctx, "get_output", [&](WasiNnInstance& b) -> wasi_nn_error {
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
  return guarded(
      ctx, "run_inference_for_session_with_params", [&](WasiNnInstance& b) -> wasi_nn_error {
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
        // lora_adapters present: this session's set from now on ([] = base; null = the model's
        // set).
        json pj = ptext.find_first_not_of(" \t\r\n") == std::string_view::npos ? json::object()
                                                                               : json::parse(ptext);
        if (pj.is_object() && pj.contains("lora_adapters")) {
          if (pj["lora_adapters"].is_null())
            x->override_set.reset();
          else
            x->override_set = resolve(b, *gr.engine, *p.lora_adapters);
        }
        x->input.assign(prompt ? prompt : "", prompt_len);
        x->has_input = true;
        wasi_nn_error r = run_turn(b, *x, id, p, "run_inference_for_session_with_params");
        if (r != success) return r;
        *out_size = static_cast<uint32_t>(x->output.size());
        if (x->output.size() > out_max) return too_large;
        if (!x->output.empty()) std::memcpy(out, x->output.data(), x->output.size());
        return success;
      });
}

}  // extern "C"
