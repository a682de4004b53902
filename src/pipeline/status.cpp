#include "pipeline/status.h"

#include <algorithm>
#include <deque>
#include <sstream>

#include "core/error.h"
#include "pipeline/session.h"

namespace nnpipe {

json get_status(const fs::path& runs_dir, const std::string& session_id, size_t log_lines) {
  validate_session_id(session_id);
  fs::path dir = runs_dir / session_id;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(ErrorCode::kNotFound, "{}: no such session", dir.string());

  json steps = json::array();
  std::vector<fs::path> subdirs;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory() && fs::exists(e.path() / "summary.json")) subdirs.push_back(e.path());
  for (const fs::path& p : subdirs) {
    try {
      steps.push_back(read_json_file(p / "summary.json"));
    } catch (const Error& e) {
      steps.push_back(
          {{"step", p.filename().string()}, {"status", "Unreadable"}, {"error", e.what()}});
    }
  }
  auto start_of = [](const json& s) {
    auto it = s.find("start_time");
    return it != s.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::stable_sort(steps.begin(), steps.end(),
                   [&](const json& a, const json& b) { return start_of(a) < start_of(b); });

  json lines = json::array();
  fs::path log = dir / "pipeline.log";
  if (fs::exists(log)) {
    std::istringstream in(read_file(log));
    std::deque<std::string> keep;
    for (std::string line; std::getline(in, line);) {
      keep.push_back(line);
      if (log_lines && keep.size() > log_lines) keep.pop_front();
    }
    for (auto& l : keep) lines.push_back(l);
  }
  return {{"session_id", session_id}, {"dir", dir.string()}, {"steps", steps}, {"log", lines}};
}

std::string format_status(const json& st) {
  std::ostringstream o;
  o << "session " << st["session_id"].get<std::string>() << " (" << st["dir"].get<std::string>()
    << ")\n";
  if (st["steps"].empty()) o << "  no steps recorded\n";
  for (const json& s : st["steps"]) {
    o << "  " << s.value("step", "?") << ": " << s.value("status", "?");
    if (s.contains("duration_s") && s["duration_s"].is_number())
      o << fmt::format(" ({:.2f} s)", s["duration_s"].get<double>());
    o << "\n";
    if (s.contains("error") && s["error"].is_string())
      o << "      error: " << s["error"].get<std::string>() << "\n";
    if (s.contains("outputs") && s["outputs"].is_object())
      for (auto& [k, v] : s["outputs"].items())
        o << "      " << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
  }
  if (!st["log"].empty()) {
    o << "pipeline.log:\n";
    for (const json& l : st["log"]) o << "  " << l.get<std::string>() << "\n";
  }
  return o.str();
}

}  // namespace nnpipe
