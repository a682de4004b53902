#include "train/checkpoint.h"

#include <bit>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {
namespace {

// -2: the dropout RNG is a counter-based (seed, counter); -1 held a xoshiro state.
constexpr const char* kFormatTag = "nnpipe-trainer-checkpoint-2";
constexpr const char* kPrefix = "checkpoint-";

// "checkpoint-<digits>" -> step; anything else (staging dirs, stray files) -> nullopt.
std::optional<int64_t> checkpoint_step(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  std::string digits = name.substr(std::strlen(kPrefix));
  if (digits.empty() || digits.size() > 15) return std::nullopt;
  for (char c : digits)
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoll(digits);
}

std::map<int64_t, fs::path> list_checkpoints(const fs::path& step_dir) {
  std::map<int64_t, fs::path> out;
  std::error_code ec;
  fs::path dir = checkpoints_dir(step_dir);
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory())
      if (auto s = checkpoint_step(e.path().filename().string()))
        if (fs::exists(e.path() / "trainer_state.json")) out[*s] = e.path();
  return out;
}

}  // namespace

json TrainerState::to_json() const {
  return {{"format", kFormatTag},
          {"mode", mode},
          {"step", step},
          {"total_steps", total_steps},
          {"tokens", tokens},
          {"trained_tokens", trained_tokens},
          {"elapsed_s", elapsed_s},
          {"timed_s", timed_s},
          {"timed_tokens", timed_tokens},
          // Bit patterns, so that a resumed run continues with exactly this state.
          {"last_loss_bits", std::bit_cast<uint64_t>(last_loss)},
          {"rng", {{"seed", rng.seed}, {"counter", rng.counter}}},
          {"params", params},
          {"data_fingerprint", data_fingerprint},
          {"world_size", world_size}};
}

TrainerState TrainerState::from_json(const json& j, const std::string& origin) {
  try {
    if (j.at("format") != kFormatTag)
      fail(ErrorCode::kFormat,
           "{}: not a trainer checkpoint of this nnpipe version (format {}, expected \"{}\"): "
           "start a new session",
           origin, j.at("format").dump(), kFormatTag);
    TrainerState s;
    s.mode = j.at("mode").get<std::string>();
    s.step = j.at("step").get<int64_t>();
    s.total_steps = j.at("total_steps").get<int64_t>();
    s.tokens = j.at("tokens").get<int64_t>();
    s.trained_tokens = j.at("trained_tokens").get<int64_t>();
    s.elapsed_s = j.at("elapsed_s").get<double>();
    s.timed_s = j.at("timed_s").get<double>();
    s.timed_tokens = j.at("timed_tokens").get<int64_t>();
    s.last_loss = std::bit_cast<double>(j.at("last_loss_bits").get<uint64_t>());
    const json& r = j.at("rng");
    s.rng.seed = r.at("seed").get<uint64_t>();
    s.rng.counter = r.at("counter").get<uint64_t>();
    s.params = j.at("params");
    s.data_fingerprint = j.at("data_fingerprint").get<std::string>();
    s.world_size = j.value("world_size", 1);  // absent: written before data parallelism
    return s;
  } catch (const json::exception& e) {
    fail(ErrorCode::kFormat, "{}: malformed trainer state: {}", origin, e.what());
  }
}

fs::path checkpoints_dir(const fs::path& step_dir) {
  return step_dir / "checkpoints";
}

std::optional<fs::path> latest_checkpoint(const fs::path& step_dir) {
  auto all = list_checkpoints(step_dir);
  if (all.empty()) return std::nullopt;
  return all.rbegin()->second;
}

void save_checkpoint(const fs::path& step_dir, const TrainerState& state, const AdamW& opt,
                     const std::function<void(const fs::path&)>& write_weights, int keep) {
  fs::path dir = checkpoints_dir(step_dir);
  fs::create_directories(dir);
  fs::path final_path = dir / fmt::format("{}{}", kPrefix, state.step);
  {
    StagingDir staging(final_path);
    write_weights(staging.path());
    opt.save(staging.path() / "optimizer.safetensors");
    // The state goes last: its presence marks a complete checkpoint even for a reader that
    // ignores the rename.
    write_json_file(staging.path() / "trainer_state.json", state.to_json());
    staging.commit();
  }
  log::debug("checkpoint {} written", final_path.string());
  auto all = list_checkpoints(step_dir);
  int n = static_cast<int>(all.size());
  for (const auto& [step, path] : all) {
    if (n-- <= keep) break;
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) log::warn("could not remove old checkpoint {}: {}", path.string(), ec.message());
  }
}

TrainerState load_trainer_state(const fs::path& checkpoint) {
  fs::path p = checkpoint / "trainer_state.json";
  return TrainerState::from_json(read_json_file(p), p.string());
}

std::string fingerprint_tokens(const std::vector<std::vector<int32_t>>& seqs) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(seqs.size());
  for (const auto& s : seqs) {
    mix(s.size());
    for (int32_t t : s) mix(static_cast<uint32_t>(t));
  }
  return fmt::format("{:016x}", h);
}

}  // namespace nnpipe
