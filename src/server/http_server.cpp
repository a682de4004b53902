#include "server/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "engine/session.h"
#include "server/openai_api.h"

namespace nnpipe::server {

namespace {

using httplib::Request;
using httplib::Response;

// What the scheduler thread hands to the HTTP thread of one job.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;  // text not yet sent
  bool done = false;
  JobResult result;
};

void send_error(Response& res, int status, std::string_view code, std::string_view message,
                std::string_view param = {}) {
  res.status = status;
  res.set_content(error_body(status, code, message, param), "application/json");
}

void send_json(Response& res, const ordered_json& j) {
  res.status = 200;
  res.set_content(dump_json(j), "application/json");
}

// The metrics label of a path: the known endpoints, everything else "other" (bounded labels).
std::string endpoint_label(const std::string& path) {
  static const char* known[] = {
      "/v1/chat/completions",  "/v1/completions",         "/v1/models",    "/health", "/metrics",
      "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/lora-adapters"};
  for (const char* k : known)
    if (path == k) return k;
  return "other";
}

// A library error from the registry or the scheduler: the caller's input (400) or our bug (500).
int status_of(const Error& e) {
  return e.code() == ErrorCode::kInternal || e.code() == ErrorCode::kIo ? 500 : 400;
}

std::string sse(std::string_view data) {
  return fmt::format("data: {}\n\n", data);
}

}  // namespace

struct HttpServer::Impl {
  ServeOptions opt;
  Scheduler& sched;
  AdapterRegistry& reg;
  Metrics& metrics;
  httplib::Server svr;
  std::atomic<bool> draining{false};
  int64_t started = 0;
  // Completion responses not yet written to the end: SIGTERM waits for them after the drain, so
  // that the last chunks of a stream go out before the server stops.
  std::mutex flight_mu;
  std::condition_variable flight_cv;
  int in_flight = 0;

  std::shared_ptr<void> flight_guard() {
    {
      std::lock_guard lk(flight_mu);
      ++in_flight;
    }
    return std::shared_ptr<void>(nullptr, [this](void*) {
      {
        std::lock_guard lk(flight_mu);
        --in_flight;
      }
      flight_cv.notify_all();
    });
  }

  Impl(const ServeOptions& o, Scheduler& s, AdapterRegistry& r, Metrics& m)
      : opt(o), sched(s), reg(r), metrics(m) {
    started = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  }

  bool authorized(const Request& req) const {
    if (opt.api_key.empty()) return true;
    std::string h = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    std::string_view given;
    if (h.size() > kBearer.size() && std::string_view(h).substr(0, kBearer.size()) == kBearer)
      given = std::string_view(h).substr(kBearer.size());
    else
      given = std::string_view(h = req.get_header_value("X-Api-Key"));
    return keys_equal(given, opt.api_key);
  }

  // Every route: the API key (except /health), then the handler, its errors as OpenAI JSON.
  // The key is checked here, after httplib has read the body, so that a refused request leaves
  // the connection in a state to serve the next one.
  httplib::Server::Handler route(void (Impl::*fn)(const Request&, Response&), bool open = false) {
    return [this, fn, open](const Request& req, Response& res) {
      try {
        if (!open && !authorized(req)) {
          res.set_header("WWW-Authenticate", "Bearer");
          send_error(res, 401, "invalid_api_key",
                     "missing or wrong API key: send 'Authorization: Bearer <key>'");
          return;
        }
        (this->*fn)(req, res);
      } catch (const ApiError& e) {
        send_error(res, e.status(), e.code(), e.what(), e.param());
      } catch (const Error& e) {
        send_error(res, status_of(e), status_of(e) == 400 ? "invalid_value" : "internal_error",
                   e.what());
      }
    };
  }

  void setup() {
    svr.new_task_queue = [n = opt.http_thread_count()] {
      return new httplib::ThreadPool(static_cast<size_t>(n));
    };
    svr.set_payload_max_length(opt.max_body);
    svr.set_read_timeout(opt.timeout, 0);
    svr.set_write_timeout(opt.timeout, 0);
    svr.set_keep_alive_timeout(5);
    svr.set_tcp_nodelay(true);
    svr.Post("/v1/chat/completions", route(&Impl::chat));
    svr.Post("/v1/completions", route(&Impl::completions));
    svr.Get("/v1/models", route(&Impl::models));
    svr.Get("/health", route(&Impl::health, /*open=*/true));
    svr.Get("/metrics", route(&Impl::metrics_text));
    svr.Post("/v1/load_lora_adapter", route(&Impl::load_adapter));
    svr.Post("/v1/unload_lora_adapter", route(&Impl::unload_adapter));
    svr.Get("/lora-adapters", route(&Impl::list_adapters));
    svr.Post("/lora-adapters", route(&Impl::set_scales));
    // httplib's own refusals (no route, body over the limit, a bad request line) come with an
    // empty body: give them the OpenAI error JSON too.
    svr.set_error_handler(
        httplib::Server::HandlerWithResponse([this](const Request& req, Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          if (res.status == 404)
            send_error(res, 404, "not_found", fmt::format("no route {} {}", req.method, req.path));
          else if (res.status == 413)
            send_error(
                res, 413, "request_too_large",
                fmt::format("the request body is larger than {} bytes (--max-body)", opt.max_body));
          else
            send_error(res, res.status, res.status >= 500 ? "internal_error" : "bad_request",
                       fmt::format("HTTP {} for {} {}", res.status, req.method, req.path));
          return httplib::Server::HandlerResponse::Handled;
        }));
    svr.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log::error("serve: request failed: {}", what);
      send_error(res, 500, "internal_error", what);
    });
    svr.set_logger([this](const Request& req, const Response& res) {
      metrics.count_request(endpoint_label(req.path), res.status);
      log::debug("serve: {} {} -> {}", req.method, req.path, res.status);
    });
  }

  // ---- completions ----------------------------------------------------------------------------

  void chat(const Request& req, Response& res) { completion(req, res, Endpoint::kChat); }
  void completions(const Request& req, Response& res) {
    completion(req, res, Endpoint::kCompletion);
  }

  AdapterStack stack_for(const CompletionRequest& cr) {
    std::optional<AdapterStack> named = reg.resolve(cr.model);
    if (!named)
      throw ApiError(404, "model_not_found",
                     fmt::format("the model '{}' does not exist: GET /v1/models lists the base "
                                 "model ('{}') and the adapter stacks",
                                 cr.model, reg.base_name()),
                     "model");
    if (!cr.lora) return *named;
    if (!cr.model.empty() && cr.model != reg.base_name())
      throw ApiError(400, "invalid_value",
                     fmt::format("'lora' builds a stack on the base model, but 'model' names the "
                                 "stack '{}': give one or the other",
                                 cr.model),
                     "lora");
    try {
      return reg.from_lora(*cr.lora);
    } catch (const Error& e) {
      throw ApiError(400, "invalid_value", e.what(), "lora");
    }
  }

  std::vector<int32_t> prompt_for(const CompletionRequest& cr) {
    const engine::Model& m = sched.model();
    std::vector<int32_t> ids;
    if (cr.endpoint == Endpoint::kChat) {
      try {
        ids = engine::encode_chat(m.assets(), cr.messages);
      } catch (const Error& e) {
        throw ApiError(400, "invalid_value", fmt::format("messages: {}", e.what()), "messages");
      }
    } else if (cr.prompt_ids) {
      ids = *cr.prompt_ids;
      for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] >= m.vocab_size())
          throw ApiError(400, "invalid_value",
                         fmt::format("prompt[{}] is token {} but the vocabulary has {} tokens", i,
                                     ids[i], m.vocab_size()),
                         "prompt");
    } else {
      ids = m.assets().tokenizer.encode(cr.prompt);
    }
    const int64_t n = static_cast<int64_t>(ids.size()), n_ctx = sched.n_ctx();
    if (n == 0)
      throw ApiError(400, "invalid_value", "the prompt is empty after tokenization", "prompt");
    // The last position must stay free for the first generated token.
    if (n + 1 > n_ctx)
      throw ApiError(400, "context_length_exceeded",
                     fmt::format("the prompt is {} tokens but the context holds {} (--ctx-size): "
                                 "at most {} prompt tokens leave room for one generated token; "
                                 "shorten the prompt or restart the server with a larger "
                                 "--ctx-size",
                                 n, n_ctx, n_ctx - 1),
                     cr.endpoint == Endpoint::kChat ? "messages" : "prompt");
    return ids;
  }

  void completion(const Request& req, Response& res, Endpoint ep) {
    std::shared_ptr<void> guard = flight_guard();
    CompletionRequest cr = parse_completion_request(req.body, ep);
    if (!cr.ignored_fields.empty())
      log::warn("serve: {}: ignored unknown field(s): {}", req.path,
                fmt::join(cr.ignored_fields, ", "));
    auto job = std::make_shared<Job>();
    job->stack = stack_for(cr);
    job->prompt = prompt_for(cr);
    job->params = cr.gen;
    // No max_tokens: until an end-of-generation token or the context is full ("length").
    if (!cr.max_tokens_given) job->params.max_tokens = sched.n_ctx();
    if (!cr.seed_given) job->params.sampling.seed = std::random_device{}();
    auto ch = std::make_shared<Channel>();
    job->on_text = [ch](std::string_view piece) {
      {
        std::lock_guard lk(ch->mu);
        ch->pending.append(piece);
      }
      ch->cv.notify_all();
      return true;
    };
    job->on_done = [ch, this](const JobResult& r) {
      metrics.record(r);
      {
        std::lock_guard lk(ch->mu);
        ch->result = r;
        ch->done = true;
      }
      ch->cv.notify_all();
    };
    Submit s;
    try {
      s = sched.submit(job);
    } catch (const Error& e) {
      throw ApiError(status_of(e), status_of(e) == 400 ? "invalid_value" : "internal_error",
                     e.what());
    }
    if (s == Submit::kQueueFull) {
      res.set_header("Retry-After", "1");
      send_error(res, 429, "queue_full",
                 fmt::format("every slot is busy and {} requests are waiting (--max-queue): "
                             "retry later",
                             opt.max_queue));
      return;
    }
    if (s == Submit::kDraining) {
      res.set_header("Retry-After", "5");
      send_error(res, 503, "shutting_down", "the server is shutting down");
      return;
    }
    ResponseMeta meta = new_response_meta(ep, cr.model.empty() ? reg.base_name() : cr.model);
    if (cr.stream)
      stream(res, ep, job, ch, std::move(meta), cr.include_usage, std::move(guard));
    else
      whole(res, ep, ch, meta);
  }

  static Usage usage_of(const JobResult& r) {
    return {r.prompt_tokens, r.completion_tokens, r.cached_tokens};
  }

  // A job that ended without an answer: the server is going down, or it failed.
  static std::pair<int, std::string> failure(const JobResult& r) {
    if (r.finish_reason == "cancelled")
      return {503, "the request was cancelled: the server is shutting down"};
    return {500, r.error.empty() ? "generation failed" : r.error};
  }

  void whole(Response& res, Endpoint ep, const std::shared_ptr<Channel>& ch,
             const ResponseMeta& meta) {
    std::unique_lock lk(ch->mu);
    ch->cv.wait(lk, [&] { return ch->done; });
    const JobResult r = ch->result;
    lk.unlock();
    if (r.finish_reason != "stop" && r.finish_reason != "length") {
      auto [status, msg] = failure(r);
      send_error(res, status, status == 503 ? "cancelled" : "internal_error", msg);
      return;
    }
    res.status = 200;
    res.set_content(completion_body(ep, meta, r.text, r.finish_reason, usage_of(r)),
                    "application/json");
  }

  void stream(Response& res, Endpoint ep, std::shared_ptr<Job> job, std::shared_ptr<Channel> ch,
              ResponseMeta meta, bool include_usage, std::shared_ptr<void> guard) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto first = std::make_shared<bool>(true);
    res.set_chunked_content_provider(
        "text/event-stream",
        [ep, job, ch, meta, include_usage, first](size_t, httplib::DataSink& sink) {
          std::string text;
          bool done = false;
          JobResult r;
          {
            std::unique_lock lk(ch->mu);
            if (!ch->cv.wait_for(lk, std::chrono::milliseconds(250),
                                 [&] { return !ch->pending.empty() || ch->done; })) {
              lk.unlock();
              // Nothing new (queued, or a long prompt): stop if the client went away.
              if (!sink.is_writable()) {
                job->cancel = true;
                return false;
              }
              return true;
            }
            text.swap(ch->pending);
            done = ch->done;
            if (done) r = ch->result;
          }
          std::string out;
          // The first chat chunk carries the role, text or not (what clients expect first).
          if (!text.empty() || (*first && ep == Endpoint::kChat && !done)) {
            out += sse(chunk_body(ep, meta, text, *first, "", include_usage));
            *first = false;
          }
          if (done) {
            if (r.finish_reason == "stop" || r.finish_reason == "length") {
              out += sse(chunk_body(ep, meta, "", *first, r.finish_reason, include_usage));
              if (include_usage) out += sse(usage_chunk_body(ep, meta, usage_of(r)));
            } else {
              auto [status, msg] = failure(r);
              out += sse(error_body(status, status == 503 ? "cancelled" : "internal_error", msg));
            }
            out += "data: [DONE]\n\n";
          }
          // A write that fails means the client is gone: the job ends at the next step and its
          // slot goes to the next one.
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            job->cancel = true;
            return false;
          }
          if (done) sink.done();
          return true;
        },
        [job, guard](bool success) {
          if (!success) job->cancel = true;
        });
  }

  // ---- models, health, metrics ------------------------------------------------------------------

  void models(const Request&, Response& res) {
    ordered_json data = ordered_json::array();
    const engine::Model& m = sched.model();
    data.push_back({{"id", reg.base_name()},
                    {"object", "model"},
                    {"created", started},
                    {"owned_by", "nnpipe"},
                    {"meta",
                     {{"n_ctx", sched.n_ctx()},
                      {"n_ctx_train", m.config().max_position_embeddings},
                      {"n_vocab", m.vocab_size()}}}});
    std::set<std::string> names;
    for (const StackInfo& s : reg.stacks()) {
      ordered_json ad = ordered_json::array();
      for (const auto& [name, scale] : s.adapters) ad.push_back({{"name", name}, {"scale", scale}});
      data.push_back({{"id", s.name},
                      {"object", "model"},
                      {"created", started},
                      {"owned_by", "nnpipe"},
                      {"parent", reg.base_name()},
                      {"adapters", ad}});
      names.insert(s.name);
    }
    for (const AdapterInfo& a : reg.adapters()) {
      if (names.count(a.name)) continue;  // a one-file stack already listed under its name
      data.push_back({{"id", a.name},
                      {"object", "model"},
                      {"created", started},
                      {"owned_by", "nnpipe"},
                      {"parent", reg.base_name()},
                      {"root", a.path},
                      {"adapters", ordered_json::array({{{"name", a.name}, {"scale", 1.0}}})}});
    }
    send_json(res, {{"object", "list"}, {"data", data}});
  }

  void health(const Request&, Response& res) {
    if (draining) {
      send_error(res, 503, "shutting_down", "the server is draining: shutting down");
      return;
    }
    const SchedulerStats s = sched.stats();
    send_json(res, {{"status", "ok"},
                    {"slots_idle", s.slots - s.active},
                    {"slots_processing", s.active},
                    {"queued", s.queued}});
  }

  void metrics_text(const Request&, Response& res) {
    RegistryGauges g;
    for (const AdapterInfo& a : reg.adapters()) {
      ++g.adapters;
      g.adapter_bytes += a.bytes;
    }
    g.stacks = static_cast<int64_t>(reg.stacks().size());
    res.status = 200;
    res.set_content(metrics.render(sched.stats(), g), "text/plain; version=0.0.4");
  }

  // ---- adapters ---------------------------------------------------------------------------------

  void need_runtime_lora() const {
    if (!opt.runtime_lora)
      throw ApiError(403, "forbidden",
                     "loading and unloading adapters at run time is off (runtime-lora false)");
  }

  static ordered_json adapter_json(const AdapterInfo& a) {
    return {{"id", a.id},         {"name", a.name}, {"path", a.path},  {"scale", a.scale},
            {"digest", a.digest}, {"rank", a.rank}, {"bytes", a.bytes}};
  }

  void load_adapter(const Request& req, Response& res) {
    need_runtime_lora();
    LoraAdapterRequest r = parse_lora_adapter_request(req.body, /*need_path=*/true);
    AdapterInfo info;
    try {
      info = reg.load(r.name, r.path);
    } catch (const Error& e) {
      throw ApiError(status_of(e), status_of(e) == 400 ? "invalid_adapter" : "internal_error",
                     fmt::format("LoRA adapter '{}' rejected: {}", r.name, e.what()), "lora_path");
    }
    log::info("serve: loaded LoRA adapter '{}' (id {}) from {}", info.name, info.id, info.path);
    send_json(res, {{"status", "ok"}, {"adapter", adapter_json(info)}});
  }

  void unload_adapter(const Request& req, Response& res) {
    need_runtime_lora();
    LoraAdapterRequest r = parse_lora_adapter_request(req.body, /*need_path=*/false);
    if (!reg.unload(r.name))
      throw ApiError(404, "adapter_not_found",
                     fmt::format("no LoRA adapter named '{}' is loaded", r.name), "lora_name");
    log::info("serve: unloaded LoRA adapter '{}'", r.name);
    send_json(res, {{"status", "ok"}});
  }

  void list_adapters(const Request&, Response& res) {
    ordered_json a = ordered_json::array();
    for (const AdapterInfo& i : reg.adapters()) a.push_back(adapter_json(i));
    send_json(res, a);
  }

  void set_scales(const Request& req, Response& res) {
    need_runtime_lora();
    auto scales = parse_lora_scales(req.body);
    try {
      reg.set_global_scales(scales);
    } catch (const Error& e) {
      throw ApiError(status_of(e), "invalid_value", e.what());
    }
    send_json(res, {{"success", true}});
  }
};

HttpServer::HttpServer(const ServeOptions& opt, Scheduler& scheduler, AdapterRegistry& registry,
                       Metrics& metrics)
    : impl_(std::make_unique<Impl>(opt, scheduler, registry, metrics)) {
  impl_->setup();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const ServeOptions& o = impl_->opt;
  int port = o.port;
  if (port == 0) {
    port = impl_->svr.bind_to_any_port(o.host);
    if (port < 0) fail(ErrorCode::kIo, "serve: cannot listen on {} (any port)", o.host);
  } else if (!impl_->svr.bind_to_port(o.host, port)) {
    fail(ErrorCode::kIo, "serve: cannot listen on {}:{} (in use, or not an address of this host)",
         o.host, port);
  }
  return port;
}

bool HttpServer::serve() {
  return impl_->svr.listen_after_bind();
}

void HttpServer::set_draining() {
  impl_->draining = true;
}

bool HttpServer::wait_responses(double seconds) {
  std::unique_lock lk(impl_->flight_mu);
  return impl_->flight_cv.wait_for(lk, std::chrono::duration<double>(seconds),
                                   [&] { return impl_->in_flight == 0; });
}

void HttpServer::stop() {
  impl_->svr.stop();
}

}  // namespace nnpipe::server
