// The HTTP front end of `nnpipe serve` (cpp-httplib): the OpenAI endpoints, adapter management,
// /health and /metrics over one Scheduler and one AdapterRegistry. httplib serves each connection
// on a thread of its pool; a completion request is parsed, resolved to a stack and a prompt, and
// submitted as a Job on that thread, which then waits for the scheduler thread's callbacks (the
// whole answer, or server-sent events as pieces arrive). httplib stays inside http_server.cpp.
#pragma once
#include <memory>

#include "server/adapter_registry.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/serve_options.h"

namespace nnpipe::server {

class HttpServer {
 public:
  HttpServer(const ServeOptions& opt, Scheduler& scheduler, AdapterRegistry& registry,
             Metrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds opt.host:opt.port (port 0: any free port) and returns the port. Throws kIo.
  int bind();
  // Serves until stop() (from another thread); returns false if listening failed.
  bool serve();
  // /health answers 503 "draining" from now on (new completions get 503 from the scheduler).
  void set_draining();
  // Waits until every completion response has been written to its end (or its client left), at
  // most `seconds`; false on the timeout.
  bool wait_responses(double seconds);
  // Closes the listening socket and ends open streams; serve() returns.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nnpipe::server
