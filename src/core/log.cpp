#include "core/log.h"

#include <memory>
#include <mutex>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include "core/error.h"

namespace nnpipe::log {
namespace {

std::mutex g_mu;
std::string g_step = "-";
std::shared_ptr<spdlog::logger> g_logger;
std::shared_ptr<spdlog::sinks::sink> g_console;
std::shared_ptr<spdlog::sinks::sink> g_file;

// %* in a pattern prints the current step.
class StepFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::lock_guard<std::mutex> lock(g_mu);
    dest.append(g_step.data(), g_step.data() + g_step.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<StepFlag>();
  }
};

std::unique_ptr<spdlog::formatter> make_formatter(const std::string& pattern) {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<StepFlag>('*').set_pattern(pattern);
  return f;
}

void ensure_logger() {
  if (g_logger) return;
  // Console output goes to stderr so that stdout stays clean for --json and machine output.
  g_console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  g_console->set_formatter(make_formatter("%^%l%$ [%*] %v"));
  g_console->set_level(spdlog::level::info);
  g_logger = std::make_shared<spdlog::logger>("nnpipe", g_console);
  g_logger->set_level(spdlog::level::debug);
  g_logger->flush_on(spdlog::level::debug);
}

}  // namespace

void init(spdlog::level::level_enum console_level) {
  ensure_logger();
  g_console->set_level(console_level);
}

void set_console_level(spdlog::level::level_enum level) {
  ensure_logger();
  g_console->set_level(level);
}

void open_file(const std::string& path) {
  ensure_logger();
  close_file();
  try {
    g_file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  } catch (const spdlog::spdlog_ex& e) {
    // spdlog's message already names the file and the OS error ("Failed opening file X for
    // writing: Permission denied").
    fail(ErrorCode::kIo, "cannot open the log file: {}", e.what());
  }
  g_file->set_formatter(make_formatter("%Y-%m-%d %H:%M:%S.%e %-5l [%*] %v"));
  g_file->set_level(spdlog::level::debug);
  g_logger->sinks().push_back(g_file);
}

void close_file() {
  if (!g_logger || !g_file) return;
  auto& sinks = g_logger->sinks();
  std::erase(sinks, g_file);
  g_file->flush();
  g_file.reset();
}

void set_step(const std::string& step) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_step = step.empty() ? "-" : step;
}

std::string step() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_step;
}

spdlog::logger& get() {
  ensure_logger();
  return *g_logger;
}

}  // namespace nnpipe::log
