#include "pipeline/status.h"

#include <algorithm>
#include <deque>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "pipeline/session.h"

namespace nnpipe {

json get_status(const fs::path& runs_dir, const std::string& session_id, size_t log_lines) {
  validate_session_id(session_id);
  fs::path dir = runs_dir / session_id;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(ErrorCode::kNotFound, "{}: no such session", dir.string());

  // Steps in the order they ran: start_time has millisecond resolution and fast steps share it,
  // so ties fall back to end_time, then to when summary.json was written (nanoseconds).
  struct Entry {
    json summary;
    std::string start, end;
    fs::file_time_type written;
  };
  std::vector<Entry> entries;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const fs::path summary = e.path() / "summary.json";
    std::error_code dec;  // an unreadable entry is skipped, never an exception
    if (!e.is_directory(dec) || !fs::exists(summary, dec)) continue;
    Entry en;
    try {
      en.summary = read_json_file(summary);
    } catch (const Error& err) {
      en.summary = {
          {"step", e.path().filename().string()}, {"status", "Unreadable"}, {"error", err.what()}};
    }
    auto str = [&](const char* key) {
      auto it = en.summary.find(key);
      return it != en.summary.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    en.start = str("start_time");
    en.end = str("end_time");
    std::error_code tec;
    en.written = fs::last_write_time(summary, tec);
    entries.push_back(std::move(en));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.start, a.end, a.written) < std::tie(b.start, b.end, b.written);
  });
  json steps = json::array();
  for (Entry& en : entries) steps.push_back(std::move(en.summary));

  json lines = json::array();
  fs::path log = dir / "pipeline.log";
  if (fs::exists(log, ec)) {
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
        o << "      " << k << ": " << (v.is_string() ? v.get<std::string>() : dump_json(v)) << "\n";
  }
  if (!st["log"].empty()) {
    o << "pipeline.log:\n";
    for (const json& l : st["log"]) o << "  " << l.get<std::string>() << "\n";
  }
  return o.str();
}

}  // namespace nnpipe
