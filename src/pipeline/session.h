// Sessions on disk: runs/<session_id>/pipeline.log (every message, DEBUG and up) and one folder
// per step holding its outputs and a summary.json written on success and on failure alike.
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "core/file.h"
#include "core/json.h"

namespace nnpipe {

// A session id or step name becomes one path component under runs/: it must be non-empty, at most
// 128 bytes, valid UTF-8 (it goes into summary.json and `status --json`), not "." or "..", and
// hold no '/', '\\', NUL or control characters. Throws kInvalidArgument naming the problem
// otherwise.
void validate_session_id(std::string_view id, const char* what = "session id");

// The runs folder: $NNPIPE_RUNS_DIR if set, else "runs" in the current directory.
fs::path default_runs_dir();

// Opens (creating if needed) runs/<id>/, locks it for this process and routes the log file sink
// to its pipeline.log for the object's lifetime. The lock is an flock() on runs/<id>/.lock (which
// also records the holder's pid and command line): a second writer of the same session fails at
// once with "session <id> is in use by pid N (...)"; readers (`nnpipe status`) do not lock. The
// kernel drops the lock when the process ends, however it ends, so a crash leaves no stale lock.
//
// Data-parallel ranks other than 0 (rank > 0) share rank 0's session: they take no lock and log
// to runs/<id>/logs/rank-<rank>.log instead of pipeline.log.
class RunSession {
 public:
  RunSession(const fs::path& runs_dir, const std::string& id, int rank = 0);
  ~RunSession();
  RunSession(const RunSession&) = delete;
  RunSession& operator=(const RunSession&) = delete;

  const std::string& id() const { return id_; }
  const fs::path& dir() const { return dir_; }
  fs::path log_path() const { return dir_ / "pipeline.log"; }
  fs::path lock_path() const { return dir_ / ".lock"; }

 private:
  std::string id_;
  fs::path dir_;
  int lock_fd_ = -1;
};

// What a running step reports: output paths and metrics land in its summary.json.
class StepContext {
 public:
  StepContext(const RunSession& session, std::string step, fs::path dir);
  const RunSession& session() const { return session_; }
  const std::string& step() const { return step_; }
  const fs::path& dir() const { return dir_; }  // runs/<id>/<step>/
  void set_output(const std::string& key, const json& value) { outputs_[key] = value; }
  void set_metric(const std::string& key, const json& value) { metrics_[key] = value; }
  const json& outputs() const { return outputs_; }
  const json& metrics() const { return metrics_; }

 private:
  const RunSession& session_;
  std::string step_;
  fs::path dir_;
  json outputs_ = json::object();
  json metrics_ = json::object();
};

// Runs `body` as step `step` of `session`: creates runs/<id>/<step>/, logs start and end, and
// writes summary.json {step, session_id, parameters, status "Success"|"Failure", outputs, error,
// start_time, end_time, duration_s, metrics}. A failure is recorded, then rethrown.
json run_step(const RunSession& session, const std::string& step, const json& parameters,
              const std::function<void(StepContext&)>& body);

// "<prefix>-YYYYMMDD-HHMMSS" (UTC): the default session id of a command.
std::string timestamped_id(std::string_view prefix);
// A new session id under `runs_dir`: timestamped_id(prefix), with "-2", "-3", ... appended when a
// session of that name exists already; its folder is created (claimed) here.
std::string new_session_id(const fs::path& runs_dir, std::string_view prefix);

// ISO-8601 UTC with milliseconds, e.g. 2026-11-27T21:48:48.123Z.
std::string iso_time(std::chrono::system_clock::time_point t);

}  // namespace nnpipe
