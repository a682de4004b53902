#include "train/trainer.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "io/hf_model_dir.h"
#include "io/safetensors.h"
#include "model/qwen2.h"
#include "tensor/convert.h"
#include "tokenizer/chat_assets.h"
#include "train/adamw.h"
#include "train/batching.h"
#include "train/checkpoint.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/text_dataset.h"

namespace nnpipe {
namespace {

constexpr int64_t kWarmupSteps = 2;  // excluded from tokens/s (first-touch allocations, caches)

std::span<float> f32_span(Tensor t) {  // Tensor handles share storage: writes reach the original
  return {reinterpret_cast<float*>(t.raw()), static_cast<size_t>(t.numel())};
}

struct TrainData {
  ChatAssets assets;
  Dataset ds;
  std::string fingerprint;
};

TrainData load_train_data(const FinetuneFullParams& p) {
  TrainData d{load_chat_assets(p.model_path), {}, {}};
  if (is_text_dataset(p.dataset_path)) {  // plain text: every token trained
    d.ds =
        load_text_dataset(p.dataset_path, d.assets.tokenizer, static_cast<size_t>(p.max_seq_len));
  } else {
    if (!d.assets.chat_template)
      fail(ErrorCode::kNotFound, "{}: the model has no chat template to render the dataset with",
           p.model_path);
    std::vector<Conversation> convs = load_conversations(p.dataset_path);
    d.ds =
        tokenize_dataset(convs, d.assets.tokenizer, *d.assets.chat_template, d.assets.template_vars,
                         DatasetOptions{static_cast<size_t>(p.max_seq_len), false}, p.dataset_path);
  }
  if (d.ds.examples.empty())
    fail(ErrorCode::kInvalidArgument,
         "{}: no example has a trained token left (max_seq_len {} truncates every reply away?)",
         p.dataset_path, p.max_seq_len);
  std::vector<std::vector<int32_t>> seqs;
  for (const Example& ex : d.ds.examples) {
    seqs.push_back(ex.input_ids);
    seqs.push_back(ex.labels);
  }
  d.fingerprint = fingerprint_tokens(seqs);
  log::info("dataset {}: {} examples, {} tokens, {} trained", p.dataset_path, d.ds.stats.examples,
            d.ds.stats.tokens, d.ds.stats.trained_tokens);
  return d;
}

// What differs between the checkpoint's parameters and this run's, for a clear resume error.
std::string param_differences(const json& saved, const json& now) {
  std::string out;
  for (const auto& [k, v] : now.items())
    if (!saved.contains(k) || saved.at(k) != v)
      out += fmt::format("{}{} (checkpoint {}, now {})", out.empty() ? "" : ", ", k,
                         saved.contains(k) ? saved.at(k).dump() : "absent", v.dump());
  return out;
}

struct Loop {
  Qwen2Model& model;
  const FinetuneFullParams& p;
  const TrainOptions& o;
  const TrainData& data;
  std::string mode;  // "full" | "lora"
  json params_json;
  std::function<void(const fs::path&)> write_weights;  // into a checkpoint directory
  std::function<void(const fs::path&)> read_weights;   // from one
};

void run_loop(Loop& L, TrainResult& res) {
  const FinetuneFullParams& p = L.p;
  const fs::path& dir = L.o.step_dir;
  const std::vector<Example>& examples = L.data.ds.examples;
  TrainSchedule sched{static_cast<int64_t>(examples.size()),
                      p.batch_size,
                      p.gradient_accumulation_steps,
                      p.num_epochs,
                      p.max_steps,
                      p.seed,
                      p.shuffle};
  const int64_t total = sched.total_steps();
  const LrSchedule lr_kind = *lr_schedule_from_name(p.lr_scheduler);
  AdamW opt(AdamWHyper{p.learning_rate, 0.9, 0.999, 1e-8, p.weight_decay});
  Rng rng(p.seed ^ 0xd5a3c1e7b9f24681ull);  // LoRA dropout masks

  TrainerState st;
  st.mode = L.mode;
  st.total_steps = total;
  st.params = L.params_json;
  st.data_fingerprint = L.data.fingerprint;
  fs::create_directories(dir);
  if (L.o.resume) {
    if (auto ck = latest_checkpoint(dir)) {
      TrainerState saved = load_trainer_state(*ck);
      if (saved.mode != st.mode)
        fail(ErrorCode::kInvalidArgument, "--resume: {} is a {} checkpoint, this is a {} run",
             ck->string(), saved.mode, st.mode);
      if (saved.params != st.params)
        fail(ErrorCode::kInvalidArgument,
             "--resume: {} was written with other parameters: {}. Resume with the same "
             "parameters, or start a new session",
             ck->string(), param_differences(saved.params, st.params));
      if (saved.data_fingerprint != st.data_fingerprint)
        fail(ErrorCode::kInvalidArgument,
             "--resume: the dataset {} changed since {} was written (token fingerprint {} vs {})",
             p.dataset_path, ck->string(), saved.data_fingerprint, st.data_fingerprint);
      L.read_weights(*ck);
      opt.load(*ck / "optimizer.safetensors");
      rng.set_state(saved.rng);
      st = saved;
      log::info("resuming from {} (step {}/{})", ck->string(), st.step, total);
    } else {
      log::warn("--resume: no checkpoint in {}: starting from step 0",
                checkpoints_dir(dir).string());
    }
  } else {
    std::error_code ec;
    fs::remove_all(checkpoints_dir(dir), ec);  // a fresh run never mixes with older checkpoints
  }
  res.resumed_from_step = st.step;
  const int64_t first_step = st.step;

  MetricsLog mlog(dir / "metrics.jsonl", L.o.resume, st.step);
  ProgressBar bar(L.mode == "full" ? "finetune_full" : "finetune_lora", st.step, total,
                  L.o.progress);
  L.model.set_training(true, &rng);
  L.model.set_loss_rows_only(true);
  std::map<std::string, Tensor>& params = L.model.trainable();
  std::map<std::string, Tensor> acc;  // accumulated gradients when a step has several micro-batches
  Backend& be = cpu_backend();
  using clock = std::chrono::steady_clock;

  for (int64_t step = st.step; step < total; ++step) {
    const auto t0 = clock::now();
    StepPlan plan = plan_step(sched, step);
    std::vector<Qwen2Batch> batches;
    std::vector<int64_t> counts;
    int64_t n_loss = 0, n_tokens = 0;
    for (const auto& mb : plan.micro_batches) {
      batches.push_back(collate(examples, mb));
      counts.push_back(count_loss_tokens(batches.back()));
      n_loss += counts.back();
      for (int32_t len : batches.back().lengths) n_tokens += len;
    }
    const int64_t live =
        std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; });
    if (live > 1) {
      for (auto& [name, prm] : params) {
        auto it = acc.find(name);
        if (it == acc.end())
          acc[name] = be.zeros(DType::kF32, prm.shape());
        else
          be.zero(it->second);
      }
    }
    // Gradient of sum(CE) / n_loss over the whole step (HF's num_items_in_batch): each
    // micro-batch's mean-loss gradient weighted by its share of the step's label tokens.
    double loss_sum = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      if (counts[i] == 0) continue;
      const double loss = L.model.forward(batches[i]);
      L.model.backward();
      loss_sum += loss * static_cast<double>(counts[i]);
      if (live > 1) {
        const float w = static_cast<float>(static_cast<double>(counts[i]) / n_loss);
        for (const auto& [name, g] : L.model.trainable_grads()) {
          std::span<float> dst = f32_span(acc.at(name));
          const float* src = reinterpret_cast<const float*>(g.raw());
          const size_t n = dst.size();
          float* d = dst.data();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
          for (size_t k = 0; k < n; ++k) d[k] += w * src[k];
        }
      }
    }
    const std::map<std::string, Tensor>& grads = live > 1 ? acc : L.model.trainable_grads();
    float grad_norm = 0;
    const double lr = p.learning_rate * lr_multiplier(lr_kind, step, p.warmup_steps, total);
    if (live > 0) {
      std::vector<std::span<float>> gspans;
      for (const auto& [name, prm] : params) gspans.push_back(f32_span(grads.at(name)));
      grad_norm =
          p.max_grad_norm > 0 ? clip_grad_norm(gspans, p.max_grad_norm) : grad_total_norm(gspans);
      opt.set_lr(lr);
      size_t k = 0;
      for (auto& [name, prm] : params)
        opt.step(name, f32_span(prm), gspans[k++], decays(name) ? p.weight_decay : 0.0);
    }
    const double loss = n_loss > 0 ? loss_sum / static_cast<double>(n_loss) : 0.0;
    if (!std::isfinite(loss))
      fail(ErrorCode::kInvalidArgument,
           "training diverged at step {}: loss is {} (lower the learning "
           "rate?)",
           step + 1, loss);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    st.step = step + 1;
    st.elapsed_s += dt;
    st.tokens += n_tokens;
    st.trained_tokens += n_loss;
    if (step - first_step >= kWarmupSteps) {
      st.timed_s += dt;
      st.timed_tokens += n_tokens;
    }
    st.last_loss = loss;
    st.rng = rng.state();
    if (step == first_step) res.first_loss = loss;

    MetricsRow row;
    row.step = st.step;
    row.epoch = static_cast<double>(st.step) / static_cast<double>(sched.steps_per_epoch());
    row.loss = loss;
    row.lr = lr;
    row.grad_norm = grad_norm;
    row.tokens_per_s = dt > 0 ? static_cast<double>(n_tokens) / dt : 0;
    row.tokens = st.tokens;
    row.elapsed_s = st.elapsed_s;
    if (st.step % p.logging_steps == 0 || st.step == total) mlog.write(row);
    log::debug("step {}/{} epoch {:.3f} loss {:.6f} lr {:.3e} grad_norm {:.4f} {:.1f} tok/s",
               st.step, total, row.epoch, loss, lr, grad_norm, row.tokens_per_s);
    bar.update(st.step, row.epoch, loss, lr, row.tokens_per_s);
    if ((p.save_steps > 0 && st.step % p.save_steps == 0) || st.step == total)
      save_checkpoint(dir, st, opt, L.write_weights, L.o.keep_checkpoints);
  }
  bar.finish();
  L.model.set_training(false, nullptr);
  L.model.set_loss_rows_only(false);
  write_loss_svg(
      dir / "loss.svg", MetricsLog::read(dir / "metrics.jsonl"),
      fmt::format("{} — loss per step", L.mode == "full" ? "finetune_full" : "finetune_lora"));

  res.steps = st.step;
  res.final_loss = st.last_loss;
  if (first_step == total) res.first_loss = st.last_loss;
  res.tokens = st.tokens;
  res.trained_tokens = st.trained_tokens;
  res.train_seconds = st.elapsed_s;
  res.tokens_per_s = st.timed_s > 0     ? static_cast<double>(st.timed_tokens) / st.timed_s
                     : st.elapsed_s > 0 ? static_cast<double>(st.tokens) / st.elapsed_s
                                        : 0;
  res.data = L.data.ds.stats;
  for (const auto& [name, prm] : params) res.trainable_parameters += prm.numel();
}

DType output_dtype(const FinetuneFullParams& p, const ModelConfig& c) {
  if (p.output_dtype == "auto") return c.torch_dtype;
  if (p.output_dtype == "bf16") return DType::kBF16;
  if (p.output_dtype == "f16") return DType::kF16;
  return DType::kF32;
}

// The trained model as an HF directory: config (torch_dtype updated), generation config and
// tokenizer files of the base, weights in the output dtype. Built in a staging directory.
void write_full_model(const Qwen2Model& model, const FinetuneFullParams& p, const fs::path& out) {
  HfModelDir src = HfModelDir::open(p.model_path);
  HfModelFiles files;
  files.config = model.config();
  files.config.torch_dtype = output_dtype(p, model.config());
  files.generation_config = src.generation_config();
  files.tokenizer_json = read_file(src.tokenizer_json_path());
  if (fs::exists(src.dir() / "tokenizer_config.json"))
    files.tokenizer_config_text = read_file(src.dir() / "tokenizer_config.json");
  std::vector<std::vector<uint8_t>> buffers;
  const std::vector<WeightSpec> specs = qwen2_weight_specs(model.config());
  buffers.reserve(specs.size());
  for (const WeightSpec& spec : specs) {
    const Tensor& t = model.params().at(spec.name);
    std::span<const float> v(reinterpret_cast<const float*>(t.raw()),
                             static_cast<size_t>(t.numel()));
    buffers.push_back(from_f32(v, files.config.torch_dtype));
    files.tensors.push_back({spec.name,
                             files.config.torch_dtype,
                             spec.shape,
                             {buffers.back().data(), buffers.back().size()}});
  }
  StagingDir staging(out);
  write_hf_model_files(staging.path(), files);
  for (const char* extra : {"chat_template.jinja"})
    if (fs::exists(src.dir() / extra)) fs::copy_file(src.dir() / extra, staging.path() / extra);
  staging.commit();
}

}  // namespace

bool decays(const std::string& name) {
  // transformers' forbidden patterns, searched in the lower-cased name: "bias", "layernorm",
  // "rmsnorm", "(^|\.)norm($|\.)", "_norm($|\.)".
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  if (n.find("bias") != std::string::npos || n.find("layernorm") != std::string::npos ||
      n.find("rmsnorm") != std::string::npos)
    return false;
  for (size_t at = n.find("norm"); at != std::string::npos; at = n.find("norm", at + 1)) {
    const size_t after = at + 4;
    const bool ends = after == n.size() || n[after] == '.';
    const bool dot_before = at == 0 || n[at - 1] == '.';
    const bool underscore_before = at > 0 && n[at - 1] == '_';
    if (ends && (dot_before || underscore_before)) return false;
  }
  return true;
}

json TrainResult::to_json() const {
  json j = {{"steps", steps},
            {"resumed_from_step", resumed_from_step},
            {"first_loss", first_loss},
            {"final_loss", final_loss},
            {"tokens", tokens},
            {"trained_tokens", trained_tokens},
            {"train_seconds", train_seconds},
            {"tokens_per_s", tokens_per_s},
            {"peak_rss_bytes", peak_rss_bytes},
            {"trainable_parameters", trainable_parameters},
            {"dataset", data.to_json()},
            {"warnings", warnings}};
  if (!lora.is_null()) j["lora"] = lora;
  return j;
}

TrainResult finetune_full(const FinetuneFullParams& p, const TrainOptions& o) {
  p.validate("finetune_full parameters");
  TrainData data = load_train_data(p);
  Qwen2Model model = Qwen2Model::load(p.model_path, cpu_backend());
  TrainResult res;
  if (auto w = p.context_warning(model.config().max_position_embeddings)) {
    log::warn("{}", *w);
    res.warnings.push_back(*w);
  }
  log::info("finetune_full: {} ({} layers, hidden {}), {} threads", p.model_path,
            model.config().num_hidden_layers, model.config().hidden_size, num_threads());
  Loop L{model, p, o, data, "full", p.to_json(), {}, {}};
  L.write_weights = [&](const fs::path& dir) {
    std::vector<TensorRef> refs;
    for (const auto& [name, t] : model.trainable())
      refs.push_back({name, DType::kF32, t.shape(), t.bytes()});
    write_safetensors(dir / "model.safetensors", refs);
  };
  L.read_weights = [&](const fs::path& dir) {
    SafetensorsFile f = SafetensorsFile::open(dir / "model.safetensors");
    for (auto& [name, t] : model.trainable()) {
      const TensorView& v = f.get(name);
      if (v.dtype != DType::kF32 || v.shape != t.shape())
        fail(ErrorCode::kFormat, "{}: {}: expected F32{}, got {}", f.origin(), name,
             json(t.shape()).dump(), dtype_name(v.dtype));
      std::memcpy(t.raw(), v.data.data(), v.data.size());
    }
  };
  run_loop(L, res);
  res.output = o.step_dir / "model";
  write_full_model(model, p, res.output);
  res.peak_rss_bytes = peak_rss_bytes();
  log::info("finetune_full: {} steps, loss {:.4f} -> {:.4f}, {:.1f} tokens/s, model in {}",
            res.steps, res.first_loss, res.final_loss, res.tokens_per_s, res.output.string());
  return res;
}

LoraConfig resolve_continual_config(const LoraConfig& ck, const FinetuneLoraParams& p,
                                    std::vector<std::string>& warnings) {
  const std::string origin = p.checkpoint_lora.value_or("checkpoint_lora");
  auto warn = [&](const std::string& what) {
    warnings.push_back(fmt::format("checkpoint_lora {}: {}", origin, what));
    log::warn("{}", warnings.back());
  };
  if (ck.r != p.lora_rank)
    warn(fmt::format("lora_rank {} requested, the checkpoint has r={}: continuing with r={}",
                     p.lora_rank, ck.r, ck.r));
  if (ck.lora_alpha != p.lora_alpha)
    warn(fmt::format("lora_alpha {} requested, the checkpoint has {}: continuing with {}",
                     p.lora_alpha, ck.lora_alpha, ck.lora_alpha));
  if (std::set<std::string>(ck.target_modules.begin(), ck.target_modules.end()) !=
      std::set<std::string>(p.target_modules.begin(), p.target_modules.end()))
    warn(
        fmt::format("target_modules {} requested, the checkpoint adapts {}: continuing with the "
                    "checkpoint's",
                    json(p.target_modules).dump(), json(ck.target_modules).dump()));
  if (ck.use_rslora != p.use_rslora)
    warn(fmt::format("use_rslora {} requested, the checkpoint has {}: continuing with {}",
                     p.use_rslora, ck.use_rslora, ck.use_rslora));
  LoraConfig c = ck;
  c.lora_dropout = p.lora_dropout;  // dropout is a training choice, not part of the shape
  c.base_model_name_or_path = p.model_path;
  c.inference_mode = true;
  return c;
}

TrainResult finetune_lora(const FinetuneLoraParams& p, const TrainOptions& o) {
  p.validate("finetune_lora parameters");
  TrainData data = load_train_data(p);
  Qwen2Model model = Qwen2Model::load(p.model_path, cpu_backend(), Qwen2LoadOptions{true});
  TrainResult res;
  if (auto w = p.context_warning(model.config().max_position_embeddings)) {
    log::warn("{}", *w);
    res.warnings.push_back(*w);
  }
  PeftAdapter adapter;
  std::string origin;
  if (p.checkpoint_lora) {
    origin = *p.checkpoint_lora;
    adapter = PeftAdapter::load(*p.checkpoint_lora);
    adapter.config = resolve_continual_config(adapter.config, p, res.warnings);
    log::info("continuing LoRA training from {} (r={}, alpha {})", origin, adapter.config.r,
              adapter.config.lora_alpha);
  } else {
    LoraConfig c;
    c.r = p.lora_rank;
    c.lora_alpha = p.lora_alpha;
    c.lora_dropout = p.lora_dropout;
    c.target_modules = p.target_modules;
    c.use_rslora = p.use_rslora;
    c.base_model_name_or_path = p.model_path;
    origin = "new adapter";
    adapter = PeftAdapter::init(model.config(), c, p.seed);
  }
  model.attach_lora(adapter, origin);
  log::info("finetune_lora: {} r={} alpha {} on {}, {} threads", p.model_path, adapter.config.r,
            adapter.config.lora_alpha, json(adapter.config.target_modules).dump(), num_threads());
  Loop L{model, p, o, data, "lora", p.to_json(), {}, {}};
  L.write_weights = [&](const fs::path& dir) { model.lora_adapter().save(dir / "adapter"); };
  L.read_weights = [&](const fs::path& dir) {
    PeftAdapter saved = PeftAdapter::load(dir / "adapter");
    saved.validate(model.config(), (dir / "adapter").string());
    auto& tr = model.trainable();
    for (const LoraModule& m : saved.modules) {
      for (char which : {'A', 'B'}) {
        const std::vector<float>& src = which == 'A' ? m.A : m.B;
        Tensor& t = tr.at(lora_tensor_name(m.layer, m.module, which));
        if (static_cast<size_t>(t.numel()) != src.size())
          fail(ErrorCode::kFormat, "{}: {}: shape differs from the run's adapter", dir.string(),
               lora_tensor_name(m.layer, m.module, which));
        std::memcpy(t.raw(), src.data(), src.size() * sizeof(float));
      }
    }
  };
  run_loop(L, res);
  res.output = o.step_dir / "adapter";
  PeftAdapter out = model.lora_adapter();
  out.config.base_model_name_or_path = p.model_path;
  out.config.inference_mode = true;
  out.save(res.output);
  res.lora = {{"r", out.config.r},
              {"lora_alpha", out.config.lora_alpha},
              {"scaling", out.config.scaling()},
              {"target_modules", out.config.target_modules},
              {"use_rslora", out.config.use_rslora},
              {"continued_from", p.checkpoint_lora ? json(*p.checkpoint_lora) : json()}};
  res.peak_rss_bytes = peak_rss_bytes();
  log::info("finetune_lora: {} steps, loss {:.4f} -> {:.4f}, {:.1f} tokens/s, adapter in {}",
            res.steps, res.first_loss, res.final_loss, res.tokens_per_s, res.output.string());
  return res;
}

}  // namespace nnpipe
