// One logger for the whole process: console at INFO (or as set), and, once a session is open,
// runs/<id>/pipeline.log at DEBUG with timestamps and the current step's name.
#pragma once
#include <string>

#include <spdlog/spdlog.h>

namespace nnpipe::log {

// Console sink only; safe to call more than once.
void init(spdlog::level::level_enum console_level = spdlog::level::info);
// Adds (or replaces) the DEBUG-level file sink, appending to `path`.
void open_file(const std::string& path);
void close_file();
void set_console_level(spdlog::level::level_enum level);
// The step name shown in every line ("-" outside a step).
void set_step(const std::string& step);
std::string step();
spdlog::logger& get();

template <typename... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  get().debug(f, std::forward<A>(a)...);
}
template <typename... A>
void info(fmt::format_string<A...> f, A&&... a) {
  get().info(f, std::forward<A>(a)...);
}
template <typename... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  get().warn(f, std::forward<A>(a)...);
}
template <typename... A>
void error(fmt::format_string<A...> f, A&&... a) {
  get().error(f, std::forward<A>(a)...);
}

// Sets the step for the lifetime of the object, restoring the previous one after.
class StepScope {
 public:
  explicit StepScope(const std::string& step) : prev_(log::step()) { set_step(step); }
  ~StepScope() { set_step(prev_); }
  StepScope(const StepScope&) = delete;
  StepScope& operator=(const StepScope&) = delete;

 private:
  std::string prev_;
};

}  // namespace nnpipe::log
