// nnpipe serve: the OpenAI-compatible HTTP server (src/server/): one model, named LoRA stacks,
// continuous batching. SIGTERM or SIGINT drains (running and queued requests finish, new ones get
// 503), then the process exits; a second signal ends it at once.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <limits>
#include <set>
#include <thread>

#include "cli_checks.h"
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "engine/model.h"
#include "server/adapter_registry.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/serve_options.h"

namespace {

using namespace nnpipe;

// The signal handler only writes a byte to this pipe (async-signal-safe); a thread reads it.
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const char c = static_cast<char>(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &c, 1);
}

std::string base_name_of(const std::string& model) {
  std::string p = model;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return fs::path(p).filename().string();
}

int run_serve(server::ServeOptions& o, const std::string& config, std::set<std::string> from_cli) {
  if (!config.empty()) server::load_serve_config(o, config, from_cli);
  server::finish_serve_options(o);
  set_num_threads(o.threads);
  if (o.api_key.empty() && o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1")
    log::warn("serve: listening on {} without an API key: anyone who can reach it can use it",
              o.host);

  auto model = engine::Model::load(o.model);
  server::AdapterRegistry registry(model, o.alias.empty() ? base_name_of(o.model) : o.alias,
                                   o.max_loras);
  for (const std::string& l : o.loras) registry.add_stack(l);
  server::SchedulerOptions so;
  so.parallel = o.parallel;
  so.n_ctx = o.ctx_size;
  so.chunk = o.chunk;
  so.max_queue = o.max_queue;
  server::Scheduler scheduler(model, so);
  server::Metrics metrics;
  server::HttpServer http(o, scheduler, registry, metrics);
  const int port = http.bind();

  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) fail(ErrorCode::kIo, "serve: pipe() failed");
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;  // a second signal takes the default action: exit now
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::thread watcher([&] {
    char c = 0;
    while (read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    if (c == 0) return;  // serve() ended by itself
    log::info("serve: signal {}: draining {} running and {} queued requests, then exiting", int(c),
              scheduler.stats().active, scheduler.stats().queued);
    http.set_draining();
    scheduler.drain();
    // The last chunks of the streams go out before the sockets close.
    if (!http.wait_responses(30)) log::warn("serve: some responses were still being written");
    http.stop();
  });

  log::info("serve: model '{}' ({} stacks, {} adapters), {} slots of {} tokens",
            registry.base_name(), registry.stacks().size(), registry.adapters().size(), o.parallel,
            scheduler.n_ctx());
  // One line on stdout for scripts (and tests) that wait for the server.
  std::printf("nnpipe serve: listening on http://%s:%d\n", o.host.c_str(), port);
  std::fflush(stdout);
  const bool ok = http.serve();
  const char quit = 0;
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &quit, 1);
  watcher.join();
  scheduler.drain();
  log::info("serve: stopped");
  return ok ? 0 : 1;
}

nnpipe::cli::RunFn setup_serve(CLI::App& app) {
  using nnpipe::cli::int_in;
  auto o = std::make_shared<nnpipe::server::ServeOptions>();
  auto config = std::make_shared<std::string>();
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  app.add_option("--config", *config,
                 "JSON file with the same keys as these flags (\"port\": 8080, \"lora\": "
                 "[...]); flags given here win");
  app.add_option("--model", o->model, "GGUF model file or HF model directory");
  app.add_option("--lora", o->loras,
                 "NAME=FILE[:SCALE][+FILE[:SCALE]...]: a named adapter stack (repeatable); a "
                 "one-file stack also names that adapter");
  app.add_option("--alias", o->alias, "The base model's name in the API (default: file name)");
  app.add_option("--host", o->host, "Address to listen on (127.0.0.1)");
  app.add_option("--port", o->port, "Port (8080; 0: any free port)")->check(int_in(0, 65535));
  app.add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY'");
  app.add_option("--api-key-file", o->api_key_file, "Read the API key from a file");
  app.add_option("--parallel", o->parallel, "Sequences decoded together (4)")
      ->check(int_in(1, 1024));
  app.add_option("--ctx-size,-c", o->ctx_size,
                 "Context per sequence (default min(4096, the model's context length))")
      ->check(int_in(0, kMax));
  app.add_option("--chunk", o->chunk, "Prompt tokens per scheduler step (256)")
      ->check(int_in(1, kMax));
  app.add_option("--max-queue", o->max_queue,
                 "Requests waiting for a slot beyond which the answer is 429 (64)")
      ->check(int_in(0, 1 << 20));
  app.add_option("--max-loras", o->max_loras,
                 "LoRA adapters held in memory at once; the least recently used idle one is "
                 "evicted (0: no bound)")
      ->check(int_in(0, kMax));
  app.add_option("--max-body", o->max_body, "Largest request body in bytes (8 MiB; 413 beyond)")
      ->check(int_in(1, kMax));
  app.add_option("--threads,-t", o->threads, "Compute threads (0: every core)")
      ->check(nnpipe::cli::threads_in());
  app.add_option("--http-threads", o->http_threads,
                 "Connections served at once (0: parallel + max-queue + 4)")
      ->check(int_in(0, 4096));
  app.add_option("--timeout", o->timeout, "Seconds a connection may stay silent (600)")
      ->check(int_in(1, 86400));
  app.add_flag("!--no-runtime-lora", o->runtime_lora,
               "Refuse /v1/load_lora_adapter, /v1/unload_lora_adapter and POST /lora-adapters");
  return [o, config, &app] {
    std::set<std::string> from_cli;
    for (const std::string& k : nnpipe::server::serve_option_keys())
      if (k != "runtime-lora" && app.count("--" + k) > 0) from_cli.insert(k);
    if (app.count("--no-runtime-lora") > 0) from_cli.insert("runtime-lora");
    return run_serve(*o, *config, std::move(from_cli));
  };
}

}  // namespace

NNPIPE_COMMAND("serve", "Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API",
               setup_serve);
