#include "train/trainer.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <thread>

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
#include "train/grad_sync.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/text_dataset.h"
#include "train/zero.h"

namespace nnpipe {
namespace {

constexpr int64_t kWarmupSteps = 2;  // excluded from tokens/s (first-touch allocations, caches)

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

// A checkpoint's parameters with the defaults of keys added since it was written (matmul_dtype),
// so that a checkpoint of an older nnpipe compares equal to the same run now; as saved when they
// do not parse.
json with_defaults(const json& saved, const std::string& mode) {
  try {
    return mode == "lora" ? FinetuneLoraParams::from_json(saved, "checkpoint").to_json()
                          : FinetuneFullParams::from_json(saved, "checkpoint").to_json();
  } catch (const Error&) {
    return saved;
  }
}

// What differs between a full and a LoRA run: the model's trainable set and how checkpoints
// store it.
struct TrainSpec {
  Qwen2Model& model;
  const FinetuneFullParams& p;
  const TrainOptions& o;
  const TrainData& data;
  std::string mode;  // "full" | "lora"
  json params_json;
  std::function<void(const fs::path&)> write_weights;  // into a checkpoint directory
  std::function<void(const fs::path&)> read_weights;   // from one
};

// One training run in named stages: start_or_resume() once, then per optimizer step
// step() (forward/backward of its micro-batches, accumulation, clipping, AdamW), record(), log()
// and checkpoint(); finish() at the end. All arithmetic on tensors goes through the Backend.
class TrainLoop {
 public:
  TrainLoop(TrainSpec& spec, Backend& be)
      : S_(spec),
        p_(spec.p),
        dir_(spec.o.step_dir),
        be_(be),
        comm_(spec.o.comm ? *spec.o.comm : single_),
        world_(comm_.world()),
        writer_(comm_.rank() == 0),
        sched_{static_cast<int64_t>(spec.data.ds.examples.size()),
               p_.batch_size,
               p_.gradient_accumulation_steps * world_,
               p_.num_epochs,
               p_.max_steps,
               p_.seed,
               p_.shuffle},
        total_(sched_.total_steps()),
        lr_kind_(*lr_schedule_from_name(p_.lr_scheduler)),
        opt_(be, AdamWHyper{p_.learning_rate, 0.9, 0.999, 1e-8, p_.weight_decay}),
        rng_{p_.seed ^ 0xd5a3c1e7b9f24681ull, 0} {
    if (world_ > 1) {
      std::map<std::string, Tensor>& params = S_.model.trainable();
      if (S_.o.zero_stage == 1)
        zero_.emplace(be_, opt_.hyper(), comm_, params);
      else if (S_.o.zero_stage != 0)
        fail(ErrorCode::kInvalidArgument, "zero stage {}: 0 or 1 (optimizer state sharding)",
             S_.o.zero_stage);
      sync_.emplace(comm_, params, S_.model.config().num_hidden_layers, S_.o.overlap,
                    comm_timeout());
    } else if (S_.o.zero_stage == 1) {
      log::info("zero stage 1 with one process: nothing to shard");
    }
    int64_t elements = 0;
    for (const auto& [name, t] : S_.model.trainable()) elements += t.numel();
    state_bytes_ = zero_ ? zero_->state_bytes() : 2 * elements * 4;
    log::info("AdamW state on this rank: {:.1f} MiB ({} of {} elements{})",
              state_bytes_ / 1048576.0, state_bytes_ / 8, elements,
              zero_ ? fmt::format(", ZeRO-1 over {} ranks; unsharded {:.1f} MiB", world_,
                                  2.0 * elements * 4 / 1048576.0)
                    : std::string());
  }

  void run(TrainResult& res) {
    start_or_resume();
    res.resumed_from_step = first_step_;
    S_.model.set_training(true, &rng_);
    S_.model.set_loss_rows_only(true);
    for (int64_t s = st_.step; s < total_; ++s) {
      comm_.set_context(fmt::format("step {}", s + 1));
      const StepOutcome out = step(s);
      record(s, out, res);
      log(out);
      checkpoint();
    }
    finish(res);
  }

 private:
  struct StepOutcome {
    double loss = 0;  // mean over the step's label tokens
    double lr = 0;
    float grad_norm = 0;  // before clipping
    int64_t tokens = 0, loss_tokens = 0;
    double seconds = 0;
  };

  // Fresh: removes older checkpoints. Resume: checks the newest checkpoint against this run and
  // loads its weights, optimizer moments, dropout stream and counters.
  void start_or_resume() {
    st_.mode = S_.mode;
    st_.total_steps = total_;
    st_.params = S_.params_json;
    st_.data_fingerprint = S_.data.fingerprint;
    st_.world_size = world_;
    std::optional<AdamW> loaded;  // rank 0: the checkpoint's optimizer state
    rank0("resume", [&] { open_or_resume(loaded); });
    if (world_ > 1)
      sync_start(loaded);
    else if (loaded)
      opt_ = std::move(*loaded);
    first_step_ = st_.step;
    if (writer_) mlog_.emplace(dir_ / "metrics.jsonl", S_.o.resume, st_.step);
    bar_.emplace(S_.mode == "full" ? "finetune_full" : "finetune_lora", st_.step, total_,
                 S_.o.progress && writer_);
  }

  // Rank 0 (or the only process): the step folder, and the checkpoint to resume from, checked
  // against this run; its optimizer state lands in `loaded`.
  void open_or_resume(std::optional<AdamW>& loaded) {
    fs::create_directories(dir_);
    if (S_.o.resume) {
      if (auto ck = latest_checkpoint(dir_)) {
        TrainerState saved = load_trainer_state(*ck);
        saved.params = with_defaults(saved.params, saved.mode);
        if (saved.mode != st_.mode)
          fail(ErrorCode::kInvalidArgument, "--resume: {} is a {} checkpoint, this is a {} run",
               ck->string(), saved.mode, st_.mode);
        if (saved.params != st_.params)
          fail(ErrorCode::kInvalidArgument,
               "--resume: {} was written with other parameters: {}. Resume with the same "
               "parameters, or start a new session",
               ck->string(), param_differences(saved.params, st_.params));
        if (saved.data_fingerprint != st_.data_fingerprint)
          fail(ErrorCode::kInvalidArgument,
               "--resume: the dataset {} changed since {} was written (token fingerprint {} vs {})",
               p_.dataset_path, ck->string(), saved.data_fingerprint, st_.data_fingerprint);
        if (saved.world_size != world_)
          fail(ErrorCode::kInvalidArgument,
               "--resume: {} was written by a run of {} rank(s), this run has {}: resume with "
               "the same number of ranks (each step's micro-batches are split among them)",
               ck->string(), saved.world_size, world_);
        S_.read_weights(*ck);
        loaded.emplace(be_, opt_.hyper());
        loaded->load(*ck / "optimizer.safetensors");
        rng_ = saved.rng;
        st_ = saved;
        log::info("resuming from {} (step {}/{})", ck->string(), st_.step, total_);
      } else {
        log::warn("--resume: no checkpoint in {}: starting from step 0",
                  checkpoints_dir(dir_).string());
      }
    } else {
      std::error_code ec;
      fs::remove_all(checkpoints_dir(dir_), ec);  // a fresh run never mixes with older checkpoints
    }
  }

  // Runs fn on rank 0 (the only rank that reads checkpoints and writes the step folder); the
  // other ranks learn whether it failed and fail with its message instead of waiting for it.
  template <typename F>
  void rank0(const char* what, F&& fn) {
    std::exception_ptr failure;
    std::string msg;
    if (writer_) {
      try {
        fn();
      } catch (const std::exception& e) {
        if (world_ == 1) throw;
        failure = std::current_exception();
        msg = e.what();
      }
    }
    if (world_ == 1) return;
    const std::string got = comm_.broadcast(failure ? "!" + msg : std::string(), 0);
    if (failure) std::rethrow_exception(failure);
    if (!got.empty())
      fail(ErrorCode::kInvalidArgument, "rank 0 failed ({}): {}", what, got.substr(1));
  }

  // Every rank starts from rank 0's trainer state, weights and optimizer moments (read from its
  // checkpoint when resuming): ranks that initialised alike still start bit-identical, and only
  // rank 0 needs the step folder.
  void sync_start(std::optional<AdamW>& loaded) {
    comm_.set_context("start");
    st_.rng = rng_;  // a fresh state's rng is only recorded after the first step
    const std::string mine = json{{"state", st_.to_json()}, {"resumed", loaded.has_value()}}.dump();
    const json got = parse_json(comm_.broadcast(mine, 0), "rank 0's trainer state");
    if (!writer_) {
      const TrainerState r0 = TrainerState::from_json(got.at("state"), "rank 0's trainer state");
      if (r0.data_fingerprint != S_.data.fingerprint)
        fail(ErrorCode::kInvalidArgument,
             "rank {}: the dataset {} differs from rank 0's (token fingerprint {} vs {}): every "
             "rank must train on the same data",
             comm_.rank(), p_.dataset_path, S_.data.fingerprint, r0.data_fingerprint);
      if (r0.params != st_.params)
        fail(ErrorCode::kInvalidArgument,
             "rank {} was started with other parameters than rank 0: {}", comm_.rank(),
             param_differences(r0.params, st_.params));
      st_ = r0;
      rng_ = st_.rng;
    }
    for (auto& [name, t] : S_.model.trainable()) comm_.broadcast(t, 0);
    const bool resumed = got.at("resumed").get<bool>();
    if (zero_) {
      if (resumed) zero_->scatter(writer_ ? *loaded : opt_);
      return;
    }
    if (!resumed) return;
    if (writer_) opt_ = std::move(*loaded);
    // Unsharded: every rank holds every moment.
    std::vector<int64_t> steps;
    for (const auto& [name, t] : S_.model.trainable()) {
      const AdamWState* st = opt_.state(name);
      if (writer_ && (!st || st->exp_avg.numel() != t.numel()))
        fail(ErrorCode::kFormat, "optimizer state: no state of {} elements for {}", t.numel(),
             name);
      steps.push_back(writer_ ? st->step : 0);
    }
    comm_.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(steps.data()),
                                       steps.size() * sizeof(int64_t)),
                    0);
    size_t k = 0;
    for (const auto& [name, t] : S_.model.trainable()) {
      AdamWState st = writer_ ? *opt_.state(name) : AdamWState{};
      if (!writer_) {
        st.exp_avg = be_.zeros(DType::kF32, {t.numel()});
        st.exp_avg_sq = be_.zeros(DType::kF32, {t.numel()});
        st.step = steps[k];
      }
      comm_.broadcast(st.exp_avg, 0);
      comm_.broadcast(st.exp_avg_sq, 0);
      if (!writer_) opt_.set_state(name, std::move(st));
      ++k;
    }
  }

  StepOutcome step(int64_t step) {
    const auto t0 = clock::now();
    StepOutcome out;
    const std::map<std::string, Tensor>* grads = nullptr;
    const double loss_sum =
        world_ > 1 ? forward_backward_dist(step, out, grads) : forward_backward(step, out, grads);
    out.lr = p_.learning_rate * lr_multiplier(lr_kind_, step, p_.warmup_steps, total_);
    if (grads) out.grad_norm = optimize(*grads, out.lr);
    out.loss = out.loss_tokens > 0 ? loss_sum / static_cast<double>(out.loss_tokens) : 0.0;
    if (!std::isfinite(out.loss))
      fail(ErrorCode::kInvalidArgument,
           "training diverged at step {}: loss is {} (lower the learning rate?)", step + 1,
           out.loss);
    out.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    return out;
  }

  // acc_ holds a zero f32 tensor per trainable parameter (allocated on first use).
  void zero_acc() {
    for (const auto& [name, prm] : S_.model.trainable()) {
      auto it = acc_.find(name);
      if (it == acc_.end())
        acc_[name] = be_.zeros(DType::kF32, prm.shape());
      else
        be_.zero(it->second);
    }
  }

  // Forward and backward of the step's micro-batches. Gradient of sum(CE) / n_loss over the
  // whole step (HF's num_items_in_batch): each micro-batch's mean-loss gradient weighted by its
  // share of the step's label tokens, accumulated with axpy when several micro-batches have
  // labels. Returns sum(loss * tokens); `grads` is null when no micro-batch had a label.
  double forward_backward(int64_t step, StepOutcome& out,
                          const std::map<std::string, Tensor>*& grads) {
    const std::vector<Example>& examples = S_.data.ds.examples;
    const StepPlan plan = plan_step(sched_, step);
    std::vector<Qwen2Batch> batches;
    std::vector<int64_t> counts;
    for (const auto& mb : plan.micro_batches) {
      batches.push_back(collate(examples, mb));
      counts.push_back(count_loss_tokens(batches.back()));
      out.loss_tokens += counts.back();
      for (int32_t len : batches.back().lengths) out.tokens += len;
    }
    const int64_t live =
        std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; });
    if (live > 1) zero_acc();
    double loss_sum = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      if (counts[i] == 0) continue;
      const double loss = S_.model.forward(batches[i]);
      S_.model.backward();
      loss_sum += loss * static_cast<double>(counts[i]);
      if (live > 1) {
        const float w = static_cast<float>(static_cast<double>(counts[i]) / out.loss_tokens);
        for (const auto& [name, g] : S_.model.trainable_grads()) be_.axpy(acc_.at(name), w, g);
      }
    }
    grads = live > 1 ? &acc_ : live > 0 ? &S_.model.trainable_grads() : nullptr;
    return loss_sum;
  }

  // forward_backward with W ranks: rank r runs micro-batches r, r+W, ... of the step. The
  // gradient is the same sum over the step's label tokens: each rank weights its micro-batches by
  // their share of the step's label tokens (all-reduced), accumulates them, and the buckets of the
  // accumulated gradient are summed across the ranks (GradSync: the last micro-batch's layers as
  // its backward finishes them). Every rank ends with the full gradient, so clipping and AdamW
  // see what one process accumulating all micro-batches sees, up to the summation order.
  double forward_backward_dist(int64_t step, StepOutcome& out,
                               const std::map<std::string, Tensor>*& grads) {
    const std::vector<Example>& examples = S_.data.ds.examples;
    const StepPlan plan = plan_step(sched_, step);
    const size_t m = plan.micro_batches.size();
    // Every micro-batch's label tokens, tokens and (padded) rows, from this rank's copy of the
    // data: the dropout stream skips the other ranks' micro-batches by what they draw.
    std::vector<int64_t> counts(m, 0), toks(m, 0), rows(m, 0);
    for (size_t i = 0; i < m; ++i) {
      int64_t longest = 0;
      for (size_t e : plan.micro_batches[i]) {
        const Example& ex = examples.at(e);
        for (size_t t = 1; t < ex.labels.size(); ++t) counts[i] += ex.labels[t] != kIgnoreIndex;
        toks[i] += static_cast<int64_t>(ex.input_ids.size());
        longest = std::max<int64_t>(longest, static_cast<int64_t>(ex.input_ids.size()));
      }
      rows[i] = longest * static_cast<int64_t>(plan.micro_batches[i].size());
    }
    std::vector<size_t> mine;
    double red[2] = {0, 0};  // this rank's label tokens and tokens
    for (size_t i = comm_.rank(); i < m; i += static_cast<size_t>(world_)) {
      mine.push_back(i);
      red[0] += static_cast<double>(counts[i]);
      red[1] += static_cast<double>(toks[i]);
    }
    // The normaliser is the step's label tokens over all ranks. Summed across the ranks, it also
    // proves that they agree on the step's micro-batches.
    comm_.all_reduce(std::span<double>(red, 2), dist::ReduceOp::kSum);
    for (size_t i = 0; i < m; ++i) {
      out.loss_tokens += counts[i];
      out.tokens += toks[i];
    }
    if (red[0] != static_cast<double>(out.loss_tokens) || red[1] != static_cast<double>(out.tokens))
      fail(ErrorCode::kInvalidArgument,
           "step {}: the ranks disagree on the step's micro-batches ({} label tokens summed over "
           "the ranks, {} on rank {}): every rank must run the same data and parameters",
           step + 1, red[0], out.loss_tokens, comm_.rank());
    if (out.loss_tokens == 0) return 0;  // no rank has a label: no gradient anywhere

    std::vector<size_t> live;
    for (size_t i : mine)
      if (counts[i] > 0) live.push_back(i);
    // One live micro-batch: its gradient scaled in place; otherwise (several, or none: zeros to
    // contribute) the weighted sum in acc_, as the single-process path accumulates.
    const bool use_acc = live.size() != 1;
    if (use_acc) zero_acc();
    const std::map<std::string, Tensor>& model_grads = S_.model.trainable_grads();
    const std::map<std::string, Tensor>& src = use_acc ? acc_ : model_grads;
    auto fold = [&](const std::vector<std::string>& names, float w) {
      for (const std::string& n : names) {
        if (use_acc) {
          be_.axpy(acc_.at(n), w, model_grads.at(n));
        } else {
          Tensor g = model_grads.at(n);  // a handle: scaled in place
          be_.scale(g, w);
        }
      }
    };
    std::vector<uint64_t> draws_before(m + 1, rng_.counter);
    for (size_t i = 0; i < m; ++i)
      draws_before[i + 1] = draws_before[i] + (counts[i] > 0 ? S_.model.dropout_draws(rows[i]) : 0);

    const auto t0 = clock::now();
    size_t started = 0;
    double loss_sum = 0;
    for (size_t k = 0; k < live.size(); ++k) {
      const size_t i = live[k];
      const Qwen2Batch batch = collate(examples, plan.micro_batches[i]);
      rng_.counter = draws_before[i];
      const double loss = S_.model.forward(batch);
      if (rng_.counter != draws_before[i + 1])
        fail(ErrorCode::kInternal, "step {}: micro-batch {} drew {} dropout values, {} expected",
             step + 1, i, rng_.counter - draws_before[i], draws_before[i + 1] - draws_before[i]);
      const float w = static_cast<float>(static_cast<double>(counts[i]) / out.loss_tokens);
      const bool last = k + 1 == live.size();
      if (last && S_.o.overlap)
        S_.model.set_grad_ready([&](int64_t layer) {
          const size_t b = sync_->bucket_of_layer(layer);
          if (b == SIZE_MAX) return;
          fold(sync_->names(b), w);
          sync_->start(b, src);
          started = b + 1;
        });
      try {
        S_.model.backward();
      } catch (...) {
        S_.model.set_grad_ready({});
        throw;
      }
      S_.model.set_grad_ready({});
      for (size_t b = last ? started : 0; b < sync_->buckets(); ++b) fold(sync_->names(b), w);
      loss_sum += loss * static_cast<double>(counts[i]);
    }
    rng_.counter = draws_before[m];
    const auto t1 = clock::now();
    compute_s_ += std::chrono::duration<double>(t1 - t0).count();
    // What the backward did not hide: the buckets left (all of them with --no-overlap) and the
    // wait for the queue.
    for (size_t b = started; b < sync_->buckets(); ++b) sync_->start(b, src);
    sync_->wait();
    exposed_s_ += std::chrono::duration<double>(clock::now() - t1).count();
    comm_.all_reduce(std::span<double>(&loss_sum, 1), dist::ReduceOp::kSum);
    grads = &src;
    return loss_sum;
  }

  // Global-norm clipping (or the norm only) and one AdamW step of every trainable parameter;
  // returns the pre-clip norm.
  float optimize(const std::map<std::string, Tensor>& grads, double lr) {
    std::map<std::string, Tensor>& params = S_.model.trainable();
    std::vector<Tensor> g;  // handles sharing the gradients' storage, in parameter order
    for (const auto& [name, prm] : params) g.push_back(grads.at(name));
    const float norm =
        p_.max_grad_norm > 0 ? clip_grad_norm(be_, g, p_.max_grad_norm) : grad_total_norm(be_, g);
    if (zero_) {
      std::vector<double> wd;
      for (const auto& [name, prm] : params) wd.push_back(decays(name) ? p_.weight_decay : 0.0);
      zero_->set_lr(lr);
      zero_->step(params, g, wd);
      return norm;
    }
    opt_.set_lr(lr);
    size_t k = 0;
    for (auto& [name, prm] : params)
      opt_.step(name, prm, g[k++], decays(name) ? p_.weight_decay : 0.0);
    return norm;
  }

  // The counters a checkpoint saves; tokens/s leaves out the first kWarmupSteps of a process.
  void record(int64_t step, const StepOutcome& out, TrainResult& res) {
    st_.step = step + 1;
    st_.elapsed_s += out.seconds;
    st_.tokens += out.tokens;
    st_.trained_tokens += out.loss_tokens;
    if (step - first_step_ >= kWarmupSteps) {
      st_.timed_s += out.seconds;
      st_.timed_tokens += out.tokens;
    }
    st_.last_loss = out.loss;
    st_.rng = rng_;
    if (step == first_step_) res.first_loss = out.loss;
  }

  // metrics.jsonl every logging_steps (and the last step), the debug log and the progress bar.
  void log(const StepOutcome& out) {
    MetricsRow row;
    row.step = st_.step;
    row.epoch = static_cast<double>(st_.step) / static_cast<double>(sched_.steps_per_epoch());
    row.loss = out.loss;
    row.lr = out.lr;
    row.grad_norm = out.grad_norm;
    row.tokens_per_s = out.seconds > 0 ? static_cast<double>(out.tokens) / out.seconds : 0;
    row.tokens = st_.tokens;
    row.elapsed_s = st_.elapsed_s;
    if (writer_ && (st_.step % p_.logging_steps == 0 || st_.step == total_)) mlog_->write(row);
    log::debug("step {}/{} epoch {:.3f} loss {:.6f} lr {:.3e} grad_norm {:.4f} {:.1f} tok/s",
               st_.step, total_, row.epoch, out.loss, out.lr, out.grad_norm, row.tokens_per_s);
    bar_->update(st_.step, row.epoch, out.loss, out.lr, row.tokens_per_s);
  }

  // Every save_steps and at the last step.
  void checkpoint() {
    if (!((p_.save_steps > 0 && st_.step % p_.save_steps == 0) || st_.step == total_)) return;
    if (zero_) {  // the moments gathered on rank 0, saved unsharded
      AdamW full(be_, opt_.hyper());
      zero_->gather(full);
      if (writer_) save_checkpoint(dir_, st_, full, S_.write_weights, S_.o.keep_checkpoints);
    } else if (writer_) {
      save_checkpoint(dir_, st_, opt_, S_.write_weights, S_.o.keep_checkpoints);
    }
  }

  void finish(TrainResult& res) {
    bar_->finish();
    S_.model.set_training(false, nullptr);
    S_.model.set_loss_rows_only(false);
    if (writer_)
      write_loss_svg(
          dir_ / "loss.svg", MetricsLog::read(dir_ / "metrics.jsonl"),
          fmt::format("{} — loss per step", S_.mode == "full" ? "finetune_full" : "finetune_lora"));
    if (world_ > 1) {
      const double comm = sync_->comm_seconds();
      res.dist = {{"world", world_},
                  {"backend", comm_.name()},
                  {"zero_stage", zero_ ? 1 : 0},
                  {"adamw_state_bytes_per_rank", state_bytes_},
                  {"overlap", S_.o.overlap},
                  {"compute_s", compute_s_},
                  {"comm_s", comm},
                  {"exposed_comm_s", exposed_s_},
                  {"hidden_fraction", comm > 0 ? std::max(0.0, 1.0 - exposed_s_ / comm) : 0.0}};
      log::info(
          "data parallel: {} ranks ({}), forward+backward {:.2f} s, gradient all-reduce {:.2f} s "
          "of which {:.2f} s not hidden by the backward ({:.0f}% hidden)",
          world_, comm_.name(), compute_s_, comm, exposed_s_,
          100 * res.dist["hidden_fraction"].get<double>());
    }
    res.steps = st_.step;
    res.final_loss = st_.last_loss;
    if (first_step_ == total_) res.first_loss = st_.last_loss;
    res.tokens = st_.tokens;
    res.trained_tokens = st_.trained_tokens;
    res.train_seconds = st_.elapsed_s;
    res.tokens_per_s = st_.timed_s > 0     ? static_cast<double>(st_.timed_tokens) / st_.timed_s
                       : st_.elapsed_s > 0 ? static_cast<double>(st_.tokens) / st_.elapsed_s
                                           : 0;
    res.data = S_.data.ds.stats;
    for (const auto& [name, prm] : S_.model.trainable()) res.trainable_parameters += prm.numel();
  }

  using clock = std::chrono::steady_clock;
  double comm_timeout() const {
    return dist::detect_launch(dist::process_env(), dist::Kind::kNone).timeout_s;
  }

  TrainSpec& S_;
  const FinetuneFullParams& p_;
  const fs::path dir_;
  Backend& be_;
  dist::SingleProcess single_;
  dist::Collective& comm_;
  const int world_;
  const bool writer_;  // rank 0: the only rank that writes into the step folder
  TrainSchedule sched_;
  int64_t total_;
  LrSchedule lr_kind_;
  AdamW opt_;
  CounterRng rng_;  // LoRA dropout masks
  TrainerState st_;
  int64_t first_step_ = 0;
  std::map<std::string, Tensor> acc_;  // accumulated gradients when several micro-batches count
  std::optional<MetricsLog> mlog_;
  std::optional<ProgressBar> bar_;
  std::optional<ShardedAdamW> zero_;
  std::optional<GradSync> sync_;
  int64_t state_bytes_ = 0;
  double compute_s_ = 0, exposed_s_ = 0;  // data parallel: forward+backward; waits for the comm
};

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
  if (!dist.is_null()) j["dist"] = dist;
  return j;
}

TrainResult finetune_full(const FinetuneFullParams& p, const TrainOptions& o, Backend& be) {
  p.validate("finetune_full parameters");
  TrainData data = load_train_data(p);
  Qwen2Model model = Qwen2Model::load(p.model_path, be);
  TrainResult res;
  if (auto w = p.context_warning(model.config().max_position_embeddings)) {
    log::warn("{}", *w);
    res.warnings.push_back(*w);
  }
  log::info("finetune_full: {} ({} layers, hidden {}), {} threads", p.model_path,
            model.config().num_hidden_layers, model.config().hidden_size, num_threads());
  TrainSpec L{model, p, o, data, "full", p.to_json(), {}, {}};
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
  TrainLoop(L, be).run(res);
  res.output = o.step_dir / "model";
  if (!o.comm || o.comm->rank() == 0) write_full_model(model, p, res.output);
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

TrainResult finetune_lora(const FinetuneLoraParams& p, const TrainOptions& o, Backend& be) {
  p.validate("finetune_lora parameters");
  TrainData data = load_train_data(p);
  Qwen2Model model = Qwen2Model::load(p.model_path, be, Qwen2LoadOptions{true});
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
  if (p.matmul_dtype == "bf16") {
    model.set_matmul_numerics(Numerics::kTorchBf16);
    if (!cpu_has_avx512bf16() && be.device() == Device::kCPU)
      log::warn(
          "matmul_dtype bf16: this CPU has no AVX512_BF16; the bf16 products are emulated "
          "(activations rounded to bf16, then f32 sgemm): the same numerics, no speed-up");
  }
  log::info("finetune_lora: {} r={} alpha {} on {}, {} threads, {} base matmuls", p.model_path,
            adapter.config.r, adapter.config.lora_alpha, json(adapter.config.target_modules).dump(),
            num_threads(), p.matmul_dtype);
  TrainSpec L{model, p, o, data, "lora", p.to_json(), {}, {}};
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
  TrainLoop(L, be).run(res);
  res.output = o.step_dir / "adapter";
  PeftAdapter out = model.lora_adapter();
  out.config.base_model_name_or_path = p.model_path;
  out.config.inference_mode = true;
  if (!o.comm || o.comm->rank() == 0) out.save(res.output);
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
