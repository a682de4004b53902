// A console progress bar for training runs.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace nnpipe {

// A console progress bar for training: step/total, epoch, loss, lr, tokens/s and wall-clock ETA.
// On a TTY (isatty(stderr)) it redraws one line in place with '\r' at most ~5 times a second; when
// stderr is not a TTY it prints a plain line at most every 10 s (and at the end) so CI logs stay
// short. ETA = (total - step) * elapsed / (steps done since construction) — resume-aware because
// `first_step` is where this run started. Nothing is written when `enabled` is false.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t first_step, int64_t total_steps, bool enabled = true);
  // epoch < 0 or lr < 0: that field is not shown.
  void update(int64_t step, double epoch, double loss, double lr, double tokens_per_s);
  void finish();  // final line + newline (idempotent; also called by the destructor)
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  static std::string format_eta(double seconds);  // "12s", "3m04s", "1h02m"

 private:
  using Clock = std::chrono::steady_clock;
  std::string render() const;
  void emit(bool final_line);

  std::string label_;
  int64_t first_step_;
  int64_t total_;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  bool have_update_ = false;
  bool printed_since_update_ = false;
  size_t last_width_ = 0;  // to blank leftovers of a longer previous line on a TTY
  Clock::time_point start_;
  Clock::time_point last_print_;
  bool printed_ever_ = false;
  int64_t step_ = 0;
  double epoch_ = 0, loss_ = 0, lr_ = 0, tokens_per_s_ = 0;
};

}  // namespace nnpipe
