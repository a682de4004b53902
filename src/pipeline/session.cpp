#include "pipeline/session.h"

#include <cstdlib>
#include <ctime>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {

void validate_session_id(std::string_view id, const char* what) {
  if (id.empty()) fail(ErrorCode::kInvalidArgument, "invalid {}: it is empty", what);
  if (id.size() > 128)
    fail(ErrorCode::kInvalidArgument, "invalid {}: {} bytes long, at most 128 allowed", what,
         id.size());
  if (id == "." || id == "..")
    fail(ErrorCode::kInvalidArgument, "invalid {} \"{}\": not a folder name", what, id);
  for (size_t i = 0; i < id.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(id[i]);
    if (c == '/' || c == '\\')
      fail(ErrorCode::kInvalidArgument,
           "invalid {} \"{}\": '{}' at position {} would leave the runs folder", what, id,
           static_cast<char>(c), i);
    if (c < 0x20 || c == 0x7f)
      fail(ErrorCode::kInvalidArgument, "invalid {}: control character 0x{:02x} at position {}",
           what, c, i);
  }
}

fs::path default_runs_dir() {
  const char* env = std::getenv("NNPIPE_RUNS_DIR");
  return env && *env ? fs::path(env) : fs::path("runs");
}

Session::Session(const fs::path& runs_dir, const std::string& id) : id_(id) {
  validate_session_id(id);
  dir_ = runs_dir / id;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail(ErrorCode::kIo, "{}: cannot create session folder: {}", dir_.string(), ec.message());
  log::open_file(log_path().string());
  log::debug("session {} opened in {}", id_, fs::absolute(dir_).string());
}

Session::~Session() {
  log::close_file();
}

StepContext::StepContext(const Session& session, std::string step, fs::path dir)
    : session_(session), step_(std::move(step)), dir_(std::move(dir)) {}

std::string iso_time(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, static_cast<int>(ms % 1000));
}

json run_step(const Session& session, const std::string& step, const json& parameters,
              const std::function<void(StepContext&)>& body) {
  validate_session_id(step, "step name");
  log::StepScope scope(step);
  fs::path dir = session.dir() / step;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(ErrorCode::kIo, "{}: cannot create step folder: {}", dir.string(), ec.message());

  StepContext ctx(session, step, dir);
  auto start = std::chrono::system_clock::now();
  log::info("step {} started", step);
  log::debug("parameters: {}", parameters.dump());
  std::string error;
  std::exception_ptr failure;
  try {
    body(ctx);
  } catch (const std::exception& e) {
    error = e.what();
    failure = std::current_exception();
  }
  const bool ok = !failure;
  auto end = std::chrono::system_clock::now();
  json summary = {
      {"step", step},
      {"session_id", session.id()},
      {"parameters", parameters},
      {"status", ok ? "Success" : "Failure"},
      {"outputs", ctx.outputs()},
      {"error", ok ? json(nullptr) : json(error)},
      {"start_time", iso_time(start)},
      {"end_time", iso_time(end)},
      {"duration_s", std::chrono::duration<double>(end - start).count()},
      {"metrics", ctx.metrics()},
  };
  write_json_file(dir / "summary.json", summary);
  if (ok) {
    log::info("step {} finished in {:.2f} s", step, summary["duration_s"].get<double>());
    return summary;
  }
  log::error("step {} failed: {}", step, error);
  std::rethrow_exception(failure);
}

std::string timestamped_id(std::string_view prefix) {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return std::string(prefix) + "-" + buf;
}

}  // namespace nnpipe
