#include "pipeline/session.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <new>

#include "core/error.h"
#include "core/log.h"
#include "core/utf8.h"

namespace nnpipe {

void validate_session_id(std::string_view id, const char* what) {
  if (id.empty()) fail(ErrorCode::kInvalidArgument, "invalid {}: it is empty", what);
  if (id.size() > 128)
    fail(ErrorCode::kInvalidArgument, "invalid {}: {} bytes long, at most 128 allowed", what,
         id.size());
  if (size_t bad = utf8::find_invalid(id); bad != std::string_view::npos)
    fail(ErrorCode::kInvalidArgument, "invalid {}: not valid UTF-8 (byte 0x{:02x} at position {})",
         what, static_cast<unsigned char>(id[bad]), bad);
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

namespace {

// This process's command line, printable and short, for the lock file (what a second writer is
// told is holding the session).
std::string own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string out;
  for (char ch : raw) {
    if (out.size() >= 200) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(ch);
    out.push_back(u == 0 ? ' ' : (u < 0x20 || u == 0x7f) ? '?' : ch);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string read_holder(int fd) {
  char buf[512];
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return utf8::lossy(s);
}

}  // namespace

RunSession::RunSession(const fs::path& runs_dir, const std::string& id, int rank) : id_(id) {
  validate_session_id(id);
  dir_ = runs_dir / id;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail(ErrorCode::kIo, "{}: cannot create session folder: {}", dir_.string(), ec.message());
  if (rank > 0) {  // rank 0 holds the lock and writes pipeline.log
    const fs::path logs = dir_ / "logs";
    fs::create_directories(logs, ec);
    if (ec)
      fail(ErrorCode::kIo, "{}: cannot create the ranks' log folder: {}", logs.string(),
           ec.message());
    log::open_file((logs / fmt::format("rank-{}.log", rank)).string());
    log::debug("session {} joined as rank {} (pid {})", id_, rank, ::getpid());
    return;
  }

  const fs::path lock = lock_path();
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    fail(ErrorCode::kIo,
         "{}: cannot open the session lock file (is the session folder writable?): {}",
         lock.string(), std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? read_holder(fd) : std::string();
    ::close(fd);
    if (err != EWOULDBLOCK)
      fail(ErrorCode::kIo, "{}: cannot lock the session: {}", lock.string(), std::strerror(err));
    fail(ErrorCode::kInvalidArgument,
         "session {} is in use by {}: wait for it to end or choose another --session", id_,
         holder.empty() ? std::string("another process") : holder);
  }
  lock_fd_ = fd;
  // Who holds it, for the next writer's error. Failing to record it does not matter.
  const std::string holder = fmt::format("pid {} (command: {})\n", ::getpid(), own_command_line());
  if (::ftruncate(fd, 0) == 0) {
    [[maybe_unused]] ssize_t n = ::pwrite(fd, holder.data(), holder.size(), 0);
  }
  try {
    log::open_file(log_path().string());
  } catch (...) {
    ::close(lock_fd_);
    throw;
  }
  log::debug("session {} opened in {}", id_, fs::absolute(dir_).string());
}

RunSession::~RunSession() {
  log::close_file();
  // Closing the descriptor releases the lock. The file stays: removing it would let a process
  // that opened it just before lock a file no other writer sees.
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

StepContext::StepContext(const RunSession& session, std::string step, fs::path dir)
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

json run_step(const RunSession& session, const std::string& step, const json& parameters,
              const std::function<void(StepContext&)>& body) {
  validate_session_id(step, "step name");
  log::StepScope scope(step);
  fs::path dir = session.dir() / step;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    log::error("step {} failed: {}: cannot create step folder: {}", step, dir.string(),
               ec.message());
    fail(ErrorCode::kIo, "{}: cannot create step folder: {}", dir.string(), ec.message());
  }
  // Said up front (and logged): otherwise the first sign is some output file deep inside the step.
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    const std::string why = std::strerror(errno);
    log::error("step {} failed: {}: step folder is not writable: {}", step, dir.string(), why);
    fail(ErrorCode::kIo, "{}: step folder is not writable: {}", dir.string(), why);
  }

  StepContext ctx(session, step, dir);
  auto start = std::chrono::system_clock::now();
  log::info("step {} started", step);
  log::debug("parameters: {}", dump_json(parameters));
  std::string error;
  std::exception_ptr failure;
  try {
    body(ctx);
  } catch (const std::bad_alloc&) {
    error = fmt::format("out of memory in step {} (std::bad_alloc)", step);
    failure = std::current_exception();
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
  // The step's own error is logged first: it is the root cause even if the summary cannot be
  // written after it (a read-only step folder, a full disk).
  if (!ok) log::error("step {} failed: {}", step, error);
  try {
    write_json_file(dir / "summary.json", summary);
  } catch (const std::exception& e) {
    log::error("step {}: cannot write its summary.json: {}", step, e.what());
    if (ok) throw;
    try {
      std::rethrow_exception(failure);
    } catch (const Error& orig) {
      throw Error(orig.code(),
                  fmt::format("{} (and the step's summary.json could not be written: {})", error,
                              e.what()));
    }
  }
  if (ok) {
    log::info("step {} finished in {:.2f} s", step, summary["duration_s"].get<double>());
    return summary;
  }
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

std::string new_session_id(const fs::path& runs_dir, std::string_view prefix) {
  const std::string base = timestamped_id(prefix);
  std::error_code ec;
  fs::create_directories(runs_dir, ec);
  // Creating the folder claims the id atomically: two commands started in the same second (a
  // script's parallel jobs) get "-2", "-3", ... instead of sharing, and locking, one session.
  for (int n = 1; n <= 1000; ++n) {
    std::string id = n == 1 ? base : fmt::format("{}-{}", base, n);
    if (fs::create_directory(runs_dir / id, ec)) return id;
    if (ec)
      fail(ErrorCode::kIo, "{}: cannot create session folder: {}", (runs_dir / id).string(),
           ec.message());
  }
  fail(ErrorCode::kIo, "{}: more than 1000 sessions named {}-N in one second", runs_dir.string(),
       base);
}

}  // namespace nnpipe
