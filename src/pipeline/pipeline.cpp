#include "pipeline/pipeline.h"

#include <chrono>
#include <ctime>

#include "core/embedded.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "eval/perplexity.h"
#include "model/generate.h"
#include "model/init_model.h"
#include "model/qwen2.h"
#include "pipeline/inference_step.h"
#include "pipeline/reply_margin.h"
#include "pipeline/session.h"
#include "pipeline/steps.h"
#include "pipeline/wasi_nn_step.h"
#include "tokenizer/chat_assets.h"
#include "train/dataset.h"

namespace nnpipe {
namespace {

// The assistant reply that follows `question` as a user message in `convs` ("" if none).
std::string trained_reply(const std::vector<Conversation>& convs, const std::string& question) {
  for (const Conversation& cv : convs)
    for (size_t i = 0; i + 1 < cv.messages.size(); ++i)
      if (cv.messages[i].role == "user" && cv.messages[i].content == question &&
          cv.messages[i + 1].role == "assistant")
        return cv.messages[i + 1].content;
  return "";
}

// The first conversation's first user message.
std::string first_question(const std::vector<Conversation>& convs) {
  for (const ChatMessage& m : convs.at(0).messages)
    if (m.role == "user") return m.content;
  fail(ErrorCode::kInvalidArgument, "pipeline: the first conversation has no user message");
}

// The first conversation's system message ("" if it has none): inference asks as training did.
std::string first_system(const std::vector<Conversation>& convs) {
  const auto& msgs = convs.at(0).messages;
  return !msgs.empty() && msgs[0].role == "system" ? msgs[0].content : "";
}

}  // namespace

PipelineResult run_pipeline(const PipelineOptions& opt) {
  PipelineResult res;
  res.session_id = opt.session_id ? *opt.session_id : new_session_id(opt.runs_dir, "pipeline");
  RunSession session(opt.runs_dir, res.session_id);
  res.session_dir = session.dir();
  log::info("session {}: {}", res.session_id, session.dir().string());
  set_num_threads(opt.threads > 0 ? opt.threads : opt.model ? 0 : 1);
  log::info("compute threads: {}", num_threads());

  // 1. The model: a tiny random Qwen2 with nnpipe's own tokenizer, unless one was given.
  fs::path model_dir;
  if (opt.model) {
    model_dir = *opt.model;
  } else {
    res.steps.push_back(run_step(session, "init_model", {{"preset", "tiny"}, {"seed", opt.seed}},
                                 [&](StepContext& c) {
                                   InitModelOptions io;
                                   io.preset = "tiny";
                                   io.seed = opt.seed;
                                   io.out = c.dir() / "model";
                                   InitModelResult r = init_model(io);
                                   c.set_output("model", io.out.string());
                                   c.set_metric("parameters", r.parameters);
                                   c.set_metric("bytes", r.bytes);
                                 }));
    model_dir = session.dir() / "init_model" / "model";
    // 1b. A short pre-training on the embedded generic text (every token trained), so that the
    // base knows its vocabulary before it is fine-tuned, as a real base model does. LoRA adapts
    // such a model; on random weights it cannot learn much (the frozen tied embeddings of a random
    // model bound its logits to about 0.02 * hidden_size).
    if (opt.pretrain_epochs > 0) {
      const fs::path corpus = session.dir() / "pretrain_corpus.txt";
      write_file_atomic(corpus, embedded::find("pretrain.txt"));
      FinetuneFullParams pp;
      pp.model_path = model_dir.string();
      pp.dataset_path = corpus.string();
      pp.num_epochs = opt.pretrain_epochs;
      pp.learning_rate = 4e-3;
      pp.lr_scheduler = "cosine";
      pp.warmup_steps = 5;
      pp.max_seq_len = 128;
      pp.batch_size = 2;
      pp.seed = opt.seed;
      pp.save_steps = 0;
      FinetuneStepOptions po;
      po.progress = opt.progress;
      po.step = "pretrain";
      res.steps.push_back(finetune_full(session, pp, po));
      model_dir = session.dir() / "pretrain" / "model";
    }
  }

  // 2. The dataset: validated, rendered with the model's template, tokenized with label masks.
  std::optional<ChatAssets> assets;
  json data_params = {{"dataset", opt.dataset ? opt.dataset->string() : "embedded:sample.json"},
                      {"model", model_dir.string()},
                      {"max_seq_len", opt.max_seq_len}};
  std::vector<Conversation> convs;
  fs::path train_data, continual_data;
  res.steps.push_back(run_step(session, "prepare_data", data_params, [&](StepContext& c) {
    assets.emplace(load_chat_assets(model_dir));
    fs::path data_path = c.dir() / "dataset.json";
    if (opt.dataset) {
      convs = load_conversations(*opt.dataset);
      data_path = *opt.dataset;
    } else {
      write_file_atomic(data_path, embedded::find("sample.json"));
      convs = load_conversations(data_path);
    }
    train_data = data_path;
    // The second sample file, for continual LoRA: new answers to known questions.
    continual_data = c.dir() / "dataset2.jsonl";
    write_file_atomic(continual_data, embedded::find("sample2.jsonl"));
    c.set_output("dataset2", continual_data.string());
    Dataset ds =
        tokenize_dataset(convs, assets->tokenizer, *assets->chat_template, assets->template_vars,
                         DatasetOptions{opt.max_seq_len, false}, data_path.string());
    std::string dump;
    for (const Example& ex : ds.examples)
      dump +=
          json{
              {"conversation", ex.conversation}, {"input_ids", ex.input_ids}, {"labels", ex.labels}}
              .dump() +
          "\n";
    write_file_atomic(c.dir() / "tokenized.jsonl", dump);
    c.set_output("dataset", data_path.string());
    c.set_output("tokenized", (c.dir() / "tokenized.jsonl").string());
    c.set_metric("stats", ds.stats.to_json());
    log::info("{} conversations, {} tokens, {} trained", ds.stats.conversations, ds.stats.tokens,
              ds.stats.trained_tokens);
  }));

  // 3. A chat prompt as the model will see it at inference: the first conversation's turns up to
  // its first user message, rendered with the generation prompt.
  res.steps.push_back(
      run_step(session, "render_chat", {{"model", model_dir.string()}}, [&](StepContext& c) {
        ordered_json messages = ordered_json::array();
        for (const ChatMessage& m : convs.at(0).messages) {
          messages.push_back({{"role", m.role}, {"content", m.content}});
          if (m.role == "user") break;
        }
        std::string prompt =
            apply_chat_template(*assets->chat_template, messages, true, assets->template_vars);
        std::vector<int32_t> ids = assets->tokenizer.encode(prompt);
        write_file_atomic(c.dir() / "prompt.txt", prompt);
        c.set_output("prompt", (c.dir() / "prompt.txt").string());
        c.set_metric("prompt_tokens", ids.size());
        log::info("rendered prompt ({} tokens):\n{}", ids.size(), prompt);
      }));
  if (!opt.train) return res;

  // 4-6. Full fine-tuning, LoRA on the untouched base, then continual LoRA from that adapter on
  // the second sample file. Hyperparameters sized for the tiny model to memorise the samples.
  FinetuneStepOptions so;
  so.progress = opt.progress;
  FinetuneFullParams fp;
  fp.model_path = model_dir.string();
  fp.dataset_path = train_data.string();
  fp.num_epochs = opt.epochs;
  fp.learning_rate = 3e-3;
  fp.lr_scheduler = "cosine";
  fp.max_seq_len = static_cast<int64_t>(opt.max_seq_len);
  fp.seed = opt.seed;
  fp.save_steps = 100;
  res.steps.push_back(finetune_full(session, fp, so));
  FinetuneLoraParams lp;
  static_cast<FinetuneFullParams&>(lp) = fp;
  lp.learning_rate = 1e-2;
  lp.lora_rank = 8;
  lp.lora_alpha = 16;
  lp.lora_dropout = 0.0;
  res.steps.push_back(finetune_lora(session, lp, so));
  FinetuneLoraParams cp = lp;
  cp.dataset_path = continual_data.string();
  cp.checkpoint_lora = (session.dir() / "finetune_lora" / "adapter").string();
  so.step = "finetune_lora_continual";
  res.steps.push_back(finetune_lora(session, cp, so));

  // 7. What each model now answers to the samples' first question (greedy, training forward).
  const fs::path full_model = session.dir() / "finetune_full" / "model";
  res.steps.push_back(
      run_step(session, "generate", {{"model", model_dir.string()}}, [&](StepContext& c) {
        // The first conversation up to its first user message.
        ordered_json messages = ordered_json::array();
        for (const ChatMessage& m : convs.at(0).messages) {
          messages.push_back({{"role", m.role}, {"content", m.content}});
          if (m.role == "user") break;
        }
        const std::string question = messages.back()["content"];
        const std::string expected = trained_reply(convs, question);
        const std::string expected2 = trained_reply(load_conversations(continual_data), question);
        json replies = json::object(), margins = json::object();
        auto ask = [&](const std::string& name, const fs::path& dir, const fs::path& lora) {
          Qwen2Model model = load_for_chat(dir, lora);
          ChatReply r = chat_reply(model, *assets, messages, 64);
          replies[name] = r.text;
          margins[name] = {{"min", r.min_margin}, {"mean", r.mean_margin}};
          log::info("{:>24}: {}  (top-1 margin min {:.2f}, mean {:.2f})", name, r.text,
                    r.min_margin, r.mean_margin);
        };
        log::info("user: {}", question);
        ask("base", model_dir, {});
        ask("finetune_full", full_model, {});
        ask("finetune_lora", model_dir, session.dir() / "finetune_lora" / "adapter");
        ask("finetune_lora_continual", model_dir,
            session.dir() / "finetune_lora_continual" / "adapter");
        c.set_metric("question", question);
        c.set_metric("replies", replies);
        c.set_metric("top1_margins", margins);
        c.set_metric("trained_reply", expected);
        c.set_metric("continual_trained_reply", expected2);
        write_json_file(c.dir() / "replies.json", replies);
        c.set_output("replies", (c.dir() / "replies.json").string());
      }));

  // 8-9. The fine-tuned model as Hugging Face 8-bit (LLM.int8) and 4-bit (NF4) checkpoints.
  HfQuantizeOptions q8;
  q8.bits = 8;
  res.steps.push_back(quantize_model(session, full_model, q8, "quantize_model_8bit"));
  HfQuantizeOptions q4;
  q4.bits = 4;
  res.steps.push_back(quantize_model(session, full_model, q4, "quantize_model_4bit"));

  // 10. The fine-tuned model as GGUF for llama.cpp and nnpipe's engine: F16 and Q8_0; and the
  // base the adapters were trained on (F16), for inference with the LoRA adapters.
  res.steps.push_back(convert_model_to_gguf(session, full_model, {"f16", "q8_0"}));
  res.steps.push_back(convert_model_to_gguf(session, model_dir, {"f16"}, "convert_base_to_gguf"));

  // 11. Both LoRA adapters as GGUF LoRA files (F16), as llama.cpp's convert_lora_to_gguf.py.
  res.steps.push_back(convert_lora_to_gguf(
      session, model_dir,
      {{"lora", session.dir() / "finetune_lora" / "adapter"},
       {"lora_continual", session.dir() / "finetune_lora_continual" / "adapter"}},
      GgmlType::kF16));

  // 12. What Q8_0 costs: perplexity of both exports on the training conversations (the tokens the
  // model learned) and the KL divergence of Q8_0 from F16, as llama-perplexity computes them.
  const fs::path gguf_dir = session.dir() / "convert_model_to_gguf";
  res.steps.push_back(run_step(
      session, "evaluate_gguf", {{"base", (gguf_dir / "model-f16.gguf").string()}},
      [&](StepContext& c) {
        std::vector<int32_t> tokens;
        for (const fs::path& p : {train_data, continual_data}) {
          Dataset ds = tokenize_dataset(load_conversations(p), assets->tokenizer,
                                        *assets->chat_template, assets->template_vars,
                                        DatasetOptions{opt.max_seq_len, false}, p.string());
          for (const Example& ex : ds.examples)
            tokens.insert(tokens.end(), ex.input_ids.begin(), ex.input_ids.end());
        }
        EvalModel f16 = load_eval_model(gguf_dir / "model-f16.gguf");
        EvalModel q8 = load_eval_model(gguf_dir / "model-q8_0.gguf");
        PerplexityOptions po;
        po.n_ctx = 64;
        PerplexityResult r = perplexity(q8.model, tokens, po, &f16.model);
        c.set_metric("tokens", r.tokens);
        c.set_metric("scored", r.scored);
        c.set_metric("ctx", po.n_ctx);
        c.set_metric("ppl_f16", r.base_ppl);
        c.set_metric("ppl_q8_0", r.ppl);
        c.set_metric("kl_q8_0_vs_f16", r.kl_mean);
        c.set_metric("top1_agree_q8_0_vs_f16", r.top1_agree);
        log::info(
            "perplexity on the training conversations: F16 {:.4f}, Q8_0 {:.4f}; Q8_0 vs "
            "F16: mean KL {:.2e}, top-1 agreement {:.1f}%",
            r.base_ppl, r.ppl, r.kl_mean, 100 * r.top1_agree);
      }));

  // 13. Inference with the engine: the exported base GGUF with the stacked GGUF LoRA adapters,
  // answering the samples' first question. Set "lora" applies the first adapter; set "stacked"
  // stacks both, the first at scale 0 (disabled) and the continual one at 1, so it answers with
  // the second sample file's reply. Each set runs in its own engine session (no shared KV).
  {
    const fs::path base_gguf = session.dir() / "convert_base_to_gguf" / "model-f16.gguf";
    const fs::path lora_dir = session.dir() / "convert_lora_to_gguf";
    const std::string question = first_question(convs), system = first_system(convs);
    json params = {{"model", base_gguf.string()}, {"system", system}, {"question", question}};
    res.steps.push_back(run_step(session, "run_inference", params, [&](StepContext& c) {
      const std::vector<std::pair<std::string, std::vector<engine::AdapterSpec>>> sets = {
          {"lora", {{(lora_dir / "lora.gguf").string(), 1.0f}}},
          {"stacked",
           {{(lora_dir / "lora.gguf").string(), 0.0f},
            {(lora_dir / "lora_continual.gguf").string(), 1.0f}}}};
      json replies = json::object();
      log::info("user: {}", question);
      for (const auto& [name, loras] : sets) {
        InferenceParams ip;
        ip.model = base_gguf.string();
        ip.loras = loras;
        ip.prompt = question;
        ip.chat = true;
        ip.system = system;
        ip.gen.max_tokens = 64;
        json r = infer(ip);
        if (!r["rejected_adapters"].empty())
          fail(ErrorCode::kFormat, "run_inference: adapters rejected: {}",
               r["rejected_adapters"].dump());
        ordered_json msgs = ordered_json::array();
        if (!system.empty()) msgs.push_back({{"role", "system"}, {"content", system}});
        msgs.push_back({{"role", "user"}, {"content", question}});
        ReplyMargin m =
            chat_reply_margin(base_gguf, loras, msgs, r["tokens"].get<std::vector<int32_t>>());
        r["top1_margin"] = m.to_json();
        replies[name] = r;
        std::string adapters;
        for (const engine::AdapterSpec& a : loras)
          adapters += fmt::format("{}{}:{}", adapters.empty() ? "" : " + ",
                                  fs::path(a.path).filename().string(), a.scale);
        log::info("{:>8} ({}): {}  (top-1 margin min {:.2f}, mean {:.2f})", name, adapters,
                  r["text"].get<std::string>(), m.min, m.mean);
      }
      c.set_metric("replies", replies);
      c.set_output("reply", replies["stacked"]["text"]);
    }));

    // 14. The WASI-NN path: the same GGUF files through libwasi_nn_llamacpp.so's C API, loaded
    // as a WebAssembly runtime loads it. The first adapter is global (backend init); one session
    // overrides it with the stacked set in its runtime parameters.
    WasiNnStepParams wp;
    wp.model = base_gguf;
    wp.global_set = {{(lora_dir / "lora.gguf").string(), 1.0f}};
    wp.session_set = {{(lora_dir / "lora.gguf").string(), 0.0f},
                      {(lora_dir / "lora_continual.gguf").string(), 1.0f}};
    wp.question = question;
    wp.system = system;  // "" : no system prompt, as in training
    res.steps.push_back(wasi_nn_inference(session, wp));
  }
  return res;
}

}  // namespace nnpipe
