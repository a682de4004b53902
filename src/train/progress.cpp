#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

namespace nnpipe {
namespace {

constexpr double kTtyIntervalS = 0.2;     // ~5 redraws a second
constexpr double kPlainIntervalS = 10.0;  // keeps CI logs short

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t first_step, int64_t total_steps, bool enabled)
    : label_(std::move(label)),
      first_step_(first_step),
      total_(total_steps),
      enabled_(enabled),
      tty_(enabled && ::isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_print_(start_),
      step_(first_step) {}

ProgressBar::~ProgressBar() {
  // A destructor must not throw; writing to stderr cannot, but fmt could in theory.
  try {
    finish();
  } catch (...) {
  }
}

std::string ProgressBar::format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string ProgressBar::render() const {
  double elapsed = seconds_between(start_, Clock::now());
  int64_t done = step_ - first_step_;
  std::string eta = "?";
  if (done > 0)
    eta = format_eta(static_cast<double>(std::max<int64_t>(total_ - step_, 0)) * elapsed /
                     static_cast<double>(done));
  std::string bar;
  if (tty_ && total_ > 0) {
    constexpr int kWidth = 20;
    double frac = std::clamp(static_cast<double>(step_) / static_cast<double>(total_), 0.0, 1.0);
    int filled = static_cast<int>(frac * kWidth);
    // Built with append (not operator+) to dodge a GCC 12 -Wrestrict false positive.
    bar.reserve(kWidth + 3);
    bar += '[';
    bar.append(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    bar += "] ";
  }
  // A negative epoch or lr leaves the field out (evaluation has neither).
  std::string epoch = epoch_ < 0 ? "" : fmt::format(" | epoch {:.2f}", epoch_);
  std::string lr = lr_ < 0 ? "" : fmt::format(" | lr {:.3g}", lr_);
  return fmt::format("{}: {}{}/{}{} | loss {:.4f}{} | {:.0f} tok/s | {} elapsed, eta {}", label_,
                     bar, step_, total_, epoch, loss_, lr, tokens_per_s_, format_eta(elapsed), eta);
}

void ProgressBar::emit(bool final_line) {
  std::string line = render();
  if (tty_) {
    size_t width = line.size();
    // Pad with spaces so a shorter line fully covers the previous one.
    if (width < last_width_) line.append(last_width_ - width, ' ');
    last_width_ = width;
    std::fprintf(stderr, "\r%s%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
  last_print_ = Clock::now();
  printed_ever_ = true;
  printed_since_update_ = true;
}

void ProgressBar::update(int64_t step, double epoch, double loss, double lr, double tokens_per_s) {
  if (!enabled_ || finished_) return;
  step_ = step;
  epoch_ = epoch;
  loss_ = loss;
  lr_ = lr;
  tokens_per_s_ = tokens_per_s;
  have_update_ = true;
  printed_since_update_ = false;
  double since = seconds_between(last_print_, Clock::now());
  // The first update is shown at once on a TTY so the user sees the run has started.
  if (tty_ ? (!printed_ever_ || since >= kTtyIntervalS) : since >= kPlainIntervalS) emit(false);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (!have_update_) return;  // nothing to report (e.g. zero steps)
  if (tty_) {
    emit(true);  // redraw the last state and end the line
  } else if (!printed_since_update_) {
    emit(true);
  }
}

}  // namespace nnpipe
