// CLI11 validators for numeric flags: a value out of range (or not finite) is refused while the
// command line is parsed, before any model loads, with the flag named by CLI11
// ("--top-p: nan is not a finite number in [0, 1]").
#pragma once
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

namespace nnpipe::cli {

// An integer in [lo, hi]; `hint` says what the bounds mean.
inline CLI::Validator int_in(int64_t lo, int64_t hi, std::string hint = {}) {
  return CLI::Validator(
      [lo, hi, hint](std::string& s) -> std::string {
        int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc::result_out_of_range || (ec == std::errc() && (v < lo || v > hi)))
          return hi == std::numeric_limits<int64_t>::max()
                     ? fmt::format("{} is out of range: must be >= {}{}", s, lo, hint)
                     : fmt::format("{} is out of range: must be in [{}, {}]{}", s, lo, hi, hint);
        if (ec != std::errc() || p != s.data() + s.size())
          return fmt::format("\"{}\" is not an integer", s);
        return {};
      },
      hi == std::numeric_limits<int64_t>::max() ? fmt::format(">= {}", lo)
                                                : fmt::format("[{}, {}]", lo, hi));
}

// A seed: an unsigned 64-bit integer ("-1" is not "random" here: seeds are always explicit).
inline CLI::Validator seed_check() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size())
          return fmt::format("\"{}\" is not a seed: must be an integer in [0, 2^64-1]", s);
        return {};
      },
      "[0, 2^64-1]");
}

// A finite number in [lo, hi] (or (lo, hi] when lo_open).
inline CLI::Validator finite_in(double lo, double hi, bool lo_open = false) {
  return CLI::Validator(
      [lo, hi, lo_open](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || !end || *end != '\0') return fmt::format("\"{}\" is not a number", s);
        if (!std::isfinite(v) || v > hi || v < lo || (lo_open && v == lo))
          return fmt::format("{} is not a finite number in {}{}, {}]", s, lo_open ? "(" : "[", lo,
                             hi);
        return {};
      },
      fmt::format("{}{}, {}]", lo_open ? "(" : "[", lo, hi));
}

// Compute threads: 0 (every core) up to 4x the hardware threads, at most 1024: more only
// oversubscribes the cores (and each OpenMP thread reserves a stack).
inline int64_t max_threads() {
  const int64_t hw = static_cast<int64_t>(std::thread::hardware_concurrency());
  return hw > 0 ? std::min<int64_t>(1024, 4 * hw) : 1024;
}
inline CLI::Validator threads_in() {
  return int_in(0, max_threads(), " (0: every core; at most 4x the hardware threads)");
}

}  // namespace nnpipe::cli
