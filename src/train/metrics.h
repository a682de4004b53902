// Per-step training metrics: a JSONL log (metrics.jsonl) and an SVG loss chart.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/json.h"

namespace nnpipe {

struct MetricsRow {
  int64_t step = 0;         // optimizer step, 1-based
  double epoch = 0;         // fractional epoch
  double loss = 0;          // mean loss of the step (over its label tokens)
  double lr = 0;            // learning rate used by this step
  double grad_norm = 0;     // pre-clip global norm
  double tokens_per_s = 0;  // tokens (incl. prompt) per second of this step
  int64_t tokens = 0;       // cumulative input tokens
  double elapsed_s = 0;     // cumulative wall time
  // Keys exactly: step, epoch, loss, lr, grad_norm, tokens_per_s, tokens, elapsed_s.
  json to_json() const;
  static MetricsRow from_json(const json& j, const std::string& origin);
};

// metrics.jsonl: one JSON object per line, appended and flushed per row.
class MetricsLog {
 public:
  // append=false truncates. With append=true and `keep_until_step` >= 0, rows with step >
  // keep_until_step are dropped first (a resumed run rewrites the tail it is about to redo).
  MetricsLog(const fs::path& path, bool append, int64_t keep_until_step = -1);
  void write(const MetricsRow& row);
  static std::vector<MetricsRow> read(const fs::path& path);  // errors name file and line

 private:
  fs::path path_;
  std::ofstream out_;
};

// A self-contained SVG line chart of loss vs step (axes with tick labels, title, the last loss
// in a legend); written atomically. Empty rows: a chart saying "no data".
void write_loss_svg(const fs::path& path, const std::vector<MetricsRow>& rows,
                    const std::string& title);

}  // namespace nnpipe
