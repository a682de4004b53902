#include "pipeline/pipeline_report.h"

#include <algorithm>

#include "core/error.h"

namespace nnpipe {
namespace {

std::string str_or(const json& j, const char* key, const std::string& dflt = "") {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : dflt;
}

// "6.74 -> 0.21 (31x)" for training steps, "" otherwise.
std::string losses(const json& metrics) {
  auto first = metrics.find("first_loss"), last = metrics.find("final_loss");
  if (first == metrics.end() || last == metrics.end() || !first->is_number() || !last->is_number())
    return "";
  const double a = first->get<double>(), b = last->get<double>();
  return b > 0 ? fmt::format("{:.3f} -> {:.3f} ({:.0f}x lower)", a, b, a / b)
               : fmt::format("{:.3f} -> {:.3f}", a, b);
}

// The smallest top-1 margin a reply step reported (the untrained base's excluded), for the note.
std::string margin_note(const json& metrics) {
  double lo = 0;
  bool any = false;
  auto take = [&](const json& m) {
    if (!m.is_object() || !m.contains("min") || !m["min"].is_number()) return;
    lo = any ? std::min(lo, m["min"].get<double>()) : m["min"].get<double>();
    any = true;
  };
  if (auto it = metrics.find("top1_margins"); it != metrics.end() && it->is_object())
    for (auto& [name, m] : it->items())
      if (name != "base") take(m);
  if (auto it = metrics.find("replies"); it != metrics.end() && it->is_object())
    for (auto& [name, r] : it->items())
      if (r.is_object() && r.contains("top1_margin")) take(r["top1_margin"]);
  return any ? fmt::format("replies' top-1 margin >= {:.2f}", lo) : "";
}

}  // namespace

std::string format_pipeline_report(const PipelineResult& r, const std::string& binary) {
  std::vector<std::array<std::string, 5>> rows = {{"step", "status", "time", "loss", "note"}};
  std::array<size_t, 5> w{};
  for (const json& s : r.steps) {
    const json m = s.value("metrics", json::object());
    std::string note = margin_note(m);
    if (note.empty() && s.contains("error") && s["error"].is_string()) note = s["error"];
    rows.push_back({str_or(s, "step", "?"), str_or(s, "status", "?"),
                    s.contains("duration_s") && s["duration_s"].is_number()
                        ? fmt::format("{:.1f} s", s["duration_s"].get<double>())
                        : "",
                    losses(m), note});
  }
  for (const auto& row : rows)
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::max(w[i], row[i].size());
  std::string o = fmt::format("\nsession {} ({})\n", r.session_id, r.session_dir.string());
  double total = 0;
  for (const json& s : r.steps)
    if (s.contains("duration_s") && s["duration_s"].is_number())
      total += s["duration_s"].get<double>();
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto& row = rows[k];
    o += fmt::format("  {:<{}}  {:<{}}  {:>{}}  {:<{}}  {}\n", row[0], w[0], row[1], w[1], row[2],
                     w[2], row[3], w[3], row[4]);
    if (k == 0) o += fmt::format("  {}\n", std::string(w[0] + w[1] + w[2] + w[3] + w[4] + 8, '-'));
  }
  o += fmt::format("  {} steps in {:.1f} s\n", r.steps.size(), total);

  // Final artefacts that exist, in the order a user wants them.
  const fs::path d = r.session_dir;
  const std::vector<std::pair<std::string, fs::path>> arts = {
      {"base model (pre-trained, HF)", d / "pretrain" / "model"},
      {"fine-tuned model (HF)", d / "finetune_full" / "model"},
      {"LoRA adapter (PEFT)", d / "finetune_lora" / "adapter"},
      {"continual LoRA adapter (PEFT)", d / "finetune_lora_continual" / "adapter"},
      {"8-bit model (HF, bitsandbytes)", d / "quantize_model_8bit" / "model"},
      {"4-bit model (HF, bitsandbytes NF4)", d / "quantize_model_4bit" / "model"},
      {"fine-tuned model (GGUF F16)", d / "convert_model_to_gguf" / "model-f16.gguf"},
      {"fine-tuned model (GGUF Q8_0)", d / "convert_model_to_gguf" / "model-q8_0.gguf"},
      {"base model (GGUF F16)", d / "convert_base_to_gguf" / "model-f16.gguf"},
      {"LoRA adapter (GGUF)", d / "convert_lora_to_gguf" / "lora.gguf"},
      {"continual LoRA adapter (GGUF)", d / "convert_lora_to_gguf" / "lora_continual.gguf"}};
  std::string art;
  size_t aw = 0;
  for (const auto& [name, p] : arts) aw = std::max(aw, name.size());
  std::error_code ec;
  for (const auto& [name, p] : arts)
    if (fs::exists(p, ec)) art += fmt::format("  {:<{}}  {}\n", name, aw, p.string());
  if (!art.empty()) o += "\nartefacts:\n" + art;

  const fs::path base = d / "convert_base_to_gguf" / "model-f16.gguf";
  const fs::path lora = d / "convert_lora_to_gguf" / "lora_continual.gguf";
  const fs::path full = d / "convert_model_to_gguf" / "model-q8_0.gguf";
  if (fs::exists(base, ec) && fs::exists(lora, ec))
    o += fmt::format(
        "\nchat with the result:\n  {0} chat --model {1} --lora {2}\n  {0} chat --model {3}\n",
        binary, base.string(), lora.string(), full.string());
  const fs::path first = d / "convert_lora_to_gguf" / "lora.gguf";
  if (fs::exists(base, ec) && fs::exists(lora, ec) && fs::exists(first, ec))
    o += fmt::format(
        "\nserve it (OpenAI-compatible API on http://127.0.0.1:8080/v1; models: {1}, lora, "
        "continual):\n  {0} serve --model {2} --lora lora={3} --lora continual={4}\n",
        binary, base.filename().string(), base.string(), first.string(), lora.string());
  return o;
}

}  // namespace nnpipe
