#include "capi/wasi_nn_log.h"

#include <cstdlib>
#include <filesystem>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace nnpipe::wasi_nn {

namespace {

// Why `file` cannot be the log ("" if it can). spdlog would create missing directories: a typo
// in a config must not make folders, so the parent must exist.
std::string unwritable(const std::string& file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path parent = fs::path(file).parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::is_directory(parent, ec)) return fmt::format("'{}' is not a directory", parent.string());
  if (fs::is_directory(file, ec)) return "it is a directory";
  return "";
}

}  // namespace

std::shared_ptr<spdlog::logger> make_logger(std::string level, std::string file) {
  std::string level_src = "logging.level", file_src = "logging.file";
  if (const char* e = std::getenv("WASI_NN_LOG_LEVEL"); e && *e)
    level = e, level_src = "WASI_NN_LOG_LEVEL";
  if (const char* e = std::getenv("WASI_NN_LOG_FILE"); e && *e)
    file = e, file_src = "WASI_NN_LOG_FILE";
  std::vector<spdlog::sink_ptr> sinks{std::make_shared<spdlog::sinks::stderr_sink_mt>()};
  std::string bad_file;
  if (!file.empty()) {
    bad_file = unwritable(file);
    if (bad_file.empty()) {
      try {
        sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false));
      } catch (const std::exception& e) {
        bad_file = e.what();
      }
    }
  }
  auto lg = std::make_shared<spdlog::logger>("wasi_nn", sinks.begin(), sinks.end());
  lg->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [wasi_nn] [%l] %v");
  spdlog::level::level_enum lv = spdlog::level::from_str(level);  // unknown -> off
  if (level == "warning") lv = spdlog::level::warn;
  if (lv == spdlog::level::off && level != "off") {
    lg->set_level(spdlog::level::info);
    lg->warn(
        "{}: unknown log level '{}' (trace, debug, info, warn, error, critical, off): using info",
        level_src, level);
  } else {
    lg->set_level(lv);
  }
  lg->flush_on(spdlog::level::trace);
  if (!bad_file.empty())
    lg->warn("{}: log file '{}' cannot be opened ({}): logging to stderr only", file_src, file,
             bad_file);
  return lg;
}

}  // namespace nnpipe::wasi_nn
