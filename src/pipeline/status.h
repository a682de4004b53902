// get_status: what a session's steps did (from their summary.json files) and its log.
#pragma once
#include "core/json.h"

namespace nnpipe {

// {"session_id", "dir", "steps": [summary.json objects ordered by start_time], "log": [lines]}.
// `log_lines` = 0 returns the whole pipeline.log, otherwise its last `log_lines` lines.
// A missing session is a kNotFound error; an unreadable summary.json is reported as a step with
// status "Unreadable" and the parse error, never skipped.
json get_status(const fs::path& runs_dir, const std::string& session_id, size_t log_lines);

// Human-readable rendering of get_status() for the console.
std::string format_status(const json& status);

}  // namespace nnpipe
