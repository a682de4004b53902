#include "pipeline/steps.h"

#include "backend/backend.h"
#include "core/error.h"
#include "core/file.h"
#include "core/log.h"
#include "export/gguf_export.h"
#include "export/lora_gguf_export.h"
#include "train/trainer.h"

namespace nnpipe {
namespace {

// Copies a finished output directory to the user's output_dir, atomically.
void publish(const fs::path& from, const std::string& output_dir) {
  if (output_dir.empty()) return;
  StagingDir staging(output_dir);
  fs::copy(from, staging.path(), fs::copy_options::recursive);
  staging.commit();
  log::info("copied {} to {}", from.string(), output_dir);
}

// One training step: trains in the step folder, publishes the result, records outputs/metrics.
template <typename Params>
json train_step(const RunSession& session, const char* default_step, const Params& params,
                const FinetuneStepOptions& opt, const char* output_key,
                TrainResult (*train)(const Params&, const TrainOptions&, Backend&)) {
  const std::string step = opt.step.empty() ? default_step : opt.step;
  auto options = [&](const fs::path& dir) {
    TrainOptions o{dir, opt.resume, opt.progress, 2};
    o.comm = opt.comm;
    o.zero_stage = opt.zero_stage;
    o.overlap = opt.overlap;
    return o;
  };
  if (opt.comm && opt.comm->rank() != 0) {  // rank 0 records the step
    validate_session_id(step, "step name");
    log::StepScope scope(step);
    return train(params, options(session.dir() / step), cpu_backend()).to_json();
  }
  return run_step(session, step, params.to_json(), [&](StepContext& c) {
    TrainResult r = train(params, options(c.dir()), cpu_backend());
    publish(r.output, params.output_dir);
    c.set_output(output_key, r.output.string());
    c.set_output("metrics", (c.dir() / "metrics.jsonl").string());
    c.set_output("loss_curve", (c.dir() / "loss.svg").string());
    c.set_output("checkpoints", (c.dir() / "checkpoints").string());
    const json metrics = r.to_json();
    for (auto it = metrics.begin(); it != metrics.end(); ++it) c.set_metric(it.key(), it.value());
  });
}

}  // namespace

json finetune_full(const RunSession& session, const FinetuneFullParams& params,
                   const FinetuneStepOptions& opt) {
  return train_step<FinetuneFullParams>(session, "finetune_full", params, opt, "model",
                                        &nnpipe::finetune_full);
}

json finetune_lora(const RunSession& session, const FinetuneLoraParams& params,
                   const FinetuneStepOptions& opt) {
  return train_step<FinetuneLoraParams>(session, "finetune_lora", params, opt, "adapter",
                                        &nnpipe::finetune_lora);
}

json convert_model_to_gguf(const RunSession& session, const fs::path& model_dir,
                           const std::vector<std::string>& types, const std::string& step) {
  json params = {{"model", model_dir.string()}, {"types", types}};
  return run_step(session, step, params, [&](StepContext& c) {
    json files = json::object();
    for (const std::string& t : types) {
      auto mix = gguf_export_type_from_name(t);
      if (!mix)
        fail(ErrorCode::kInvalidArgument, "convert_model_to_gguf: unknown type \"{}\" (one of {})",
             t, gguf_export_type_names());
      const fs::path out = c.dir() / ("model-" + t + ".gguf");
      GgufExportSummary s = export_model_gguf(model_dir, *mix, out);
      log::info("{}: {} tensors, {} bytes -> {}", t, s.tensors, s.bytes, out.string());
      c.set_output(t, out.string());
      files[t] = {{"bytes", s.bytes}, {"tensors", s.tensors}, {"tensor_types", s.type_counts}};
    }
    c.set_metric("files", files);
  });
}

json quantize_model(const RunSession& session, const fs::path& model_dir,
                    const HfQuantizeOptions& opt, const std::string& step) {
  json params = {{"model", model_dir.string()},
                 {"bits", opt.bits},
                 {"blocksize", opt.blocksize},
                 {"double_quant", opt.double_quant}};
  return run_step(session, step, params, [&](StepContext& c) {
    const fs::path out = c.dir() / "model";
    QuantizeSummary s = quantize_model(model_dir, opt, out);
    json j = s.to_json();
    if (j.contains("tensors")) {
      write_json_file(c.dir() / "tensors.json", j["tensors"]);
      j.erase("tensors");
      c.set_output("tensors", (c.dir() / "tensors.json").string());
    }
    c.set_output("model", out.string());
    c.set_metric("quantization", j);
    log::info("{}: {} -> {} bytes ({:.2f}x), relative RMSE {:.2e}, max abs error {:.2e}", s.method,
              s.bytes_before, s.bytes_after,
              s.bytes_after ? double(s.bytes_before) / double(s.bytes_after) : 0.0, s.rel_rmse,
              s.max_abs_err);
  });
}

json convert_lora_to_gguf(const RunSession& session, const fs::path& base_model_dir,
                          const std::vector<std::pair<std::string, fs::path>>& adapters,
                          GgmlType type, const std::string& step) {
  json params = {{"base_model", base_model_dir.string()}, {"type", ggml_traits(type).name}};
  for (const auto& [name, dir] : adapters) params["adapters"][name] = dir.string();
  return run_step(session, step, params, [&](StepContext& c) {
    json files = json::object();
    for (const auto& [name, dir] : adapters) {
      const fs::path out = c.dir() / (name + ".gguf");
      LoraGgufExportSummary s = export_lora_gguf(dir, base_model_dir, type, out);
      log::info("{}: {} tensors, rank {}, {} bytes -> {}", name, s.tensors, s.rank, s.bytes,
                out.string());
      c.set_output(name, out.string());
      files[name] = {
          {"bytes", s.bytes}, {"tensors", s.tensors}, {"rank", s.rank}, {"alpha", s.alpha}};
    }
    c.set_metric("files", files);
  });
}

}  // namespace nnpipe
