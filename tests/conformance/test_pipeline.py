"""`nnpipe pipeline` and `nnpipe status` end to end: the session folder, summaries on success and
failure, the log, and ids that would escape runs/."""
import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
from peft import PeftModel
import gguf
import torch

from conftest import ROOT, run_nnpipe

STEPS = ["init_model", "pretrain", "prepare_data", "render_chat", "finetune_full", "finetune_lora",
         "finetune_lora_continual", "generate", "quantize_model_8bit", "quantize_model_4bit",
         "convert_model_to_gguf", "convert_base_to_gguf", "convert_lora_to_gguf", "evaluate_gguf",
         "run_inference", "wasi_nn_inference"]


def hf_greedy(model, tok, prompt, im_end):
    """transformers' own greedy generation (no sampling), decoded without special tokens."""
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=64, eos_token_id=im_end, pad_token_id=im_end)
    return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


# The smallest top-1 margin (in logits) accepted for a trained reply's tokens: a reply that wins by
# less is argmax luck, not learning.
MIN_MARGIN = 0.5


def test_pipeline_session(tmp_path):
    r = run_nnpipe("pipeline", "--session", "demo", cwd=tmp_path)
    r_out = r.stdout
    run = tmp_path / "runs" / "demo"
    log = (run / "pipeline.log").read_text()
    for step in STEPS:
        s = json.loads((run / step / "summary.json").read_text())
        assert s["status"] == "Success" and s["error"] is None and s["step"] == step
        assert s["start_time"] <= s["end_time"]
        assert f"[{step}] step {step} started" in log
    assert " debug [" in log and " debug [" not in r.stderr  # DEBUG to the file, INFO+ to the console
    for d in (run / "init_model" / "model", run / "pretrain" / "model"):
        m, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
    model = run / "pretrain" / "model"  # the base every later step starts from
    # the rendered prompt ends with the generation prompt and tokenizes as HF does
    prompt = (run / "render_chat" / "prompt.txt").read_text()
    assert prompt.endswith("<|im_start|>assistant\n")
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    summary = json.loads((run / "render_chat" / "summary.json").read_text())
    assert summary["metrics"]["prompt_tokens"] == len(tok.encode(prompt, add_special_tokens=False).ids)
    st = json.loads(run_nnpipe("status", "--session", "demo", "--json", cwd=tmp_path).stdout)
    assert [s["step"] for s in st["steps"]] == STEPS
    assert st["log"]
    human = run_nnpipe("status", "--session", "demo", "--log", cwd=tmp_path).stdout
    assert "prepare_data: Success" in human and "session demo opened" in human

    # It learns: the fine-tuned models answer the sample's question with the trained reply, in
    # nnpipe's greedy generation and in transformers'/PEFT's own generate() on the outputs.
    sample = json.loads((ROOT / "data" / "sample.json").read_text())
    trained = sample[0]["messages"][2]["content"]
    continual = json.loads((ROOT / "data" / "sample2.jsonl").read_text().splitlines()[0])
    assert continual["messages"][1]["content"] == sample[0]["messages"][1]["content"]
    trained2 = continual["messages"][2]["content"]
    gen = json.loads((run / "generate" / "summary.json").read_text())["metrics"]
    assert gen["trained_reply"] == trained and gen["continual_trained_reply"] == trained2
    replies = gen["replies"]
    assert replies["base"] != trained
    assert replies["finetune_full"] == trained
    assert replies["finetune_lora"] == trained
    assert replies["finetune_lora_continual"] == trained2
    assert trained in r.stderr and trained2 in r.stderr  # shown on the console
    for step in ("pretrain", "finetune_full", "finetune_lora", "finetune_lora_continual"):
        m = json.loads((run / step / "summary.json").read_text())["metrics"]
        # On the pre-trained base every fine-tuning step learns its sample clearly: full
        # fine-tuning memorises it (loss near 0) and both LoRA steps end below a third of their
        # first loss (on the random model LoRA could only tilt nearly flat logits).
        assert m["final_loss"] < (0.1 if step == "finetune_full" else 1 / 3) * m["first_loss"], (step, m)
        assert (run / step / "loss.svg").exists() and (run / step / "metrics.jsonl").exists()
    # The replies are clear choices, not argmax luck: every token of each trained reply wins by a
    # top-1 margin (logit of the chosen token minus the best other) reported in summary.json.
    margins = gen["top1_margins"]
    for name in ("finetune_full", "finetune_lora", "finetune_lora_continual"):
        assert margins[name]["min"] >= MIN_MARGIN, (name, margins[name])
    inf_m = json.loads((run / "run_inference" / "summary.json").read_text())["metrics"]["replies"]
    wn_m = json.loads((run / "wasi_nn_inference" / "summary.json").read_text())["metrics"]["replies"]
    for rep in list(inf_m.values()) + list(wn_m.values()):
        assert rep["top1_margin"]["tokens"] > 5 and rep["top1_margin"]["min"] >= MIN_MARGIN, rep
    # The closing report: a table of the steps with their losses, the artefacts, how to chat.
    assert "finetune_lora " in r_out and "lower)" in r_out and "artefacts:" in r_out
    assert "chat --model" in r_out and "lora_continual.gguf" in r_out
    assert " serve --model " in r_out and "--lora continual=" in r_out  # issue 15 item 8
    im_end = tok.token_to_id("<|im_end|>")
    full = AutoModelForCausalLM.from_pretrained(run / "finetune_full" / "model")
    assert hf_greedy(full, tok, prompt, im_end) == trained
    for step, want in (("finetune_lora", trained), ("finetune_lora_continual", trained2)):
        base = AutoModelForCausalLM.from_pretrained(model)
        peft = PeftModel.from_pretrained(base, run / step / "adapter")
        assert hf_greedy(peft, tok, prompt, im_end) == want, step

    # Quantized HF checkpoints carry transformers' quantization_config and load in transformers.
    for step, key in (("quantize_model_8bit", "load_in_8bit"), ("quantize_model_4bit", "load_in_4bit")):
        cfg = json.loads((run / step / "model" / "config.json").read_text())
        assert cfg["quantization_config"]["quant_method"] == "bitsandbytes"
        assert cfg["quantization_config"][key] is True
        q = json.loads((run / step / "summary.json").read_text())["metrics"]["quantization"]
        assert q["bytes_after"] < q["bytes_before"]
    # The GGUF exports read in gguf-py; the engine's stacked-adapter replies are the trained ones,
    # and llama.cpp, given the same base GGUF and GGUF LoRA, answers the same.
    for f in ("convert_model_to_gguf/model-f16.gguf", "convert_model_to_gguf/model-q8_0.gguf",
              "convert_base_to_gguf/model-f16.gguf", "convert_lora_to_gguf/lora.gguf",
              "convert_lora_to_gguf/lora_continual.gguf"):
        assert gguf.GGUFReader(run / f).tensors, f
    inf = json.loads((run / "run_inference" / "summary.json").read_text())
    assert inf["metrics"]["replies"]["lora"]["text"] == trained
    assert inf["metrics"]["replies"]["stacked"]["text"] == trained2
    assert inf["outputs"]["reply"] == trained2 and trained2 in r.stderr
    # The WASI-NN path (libwasi_nn_llamacpp.so, dlopen()ed): global adapter 1 at backend init, and
    # a session overriding it with the stack [adapter 1 x0, adapter 2 x1] in its runtime params.
    wn = json.loads((run / "wasi_nn_inference" / "summary.json").read_text())
    assert wn["metrics"]["library"].endswith("libwasi_nn_llamacpp.so")
    rep = wn["metrics"]["replies"]
    assert rep["global"]["text"] == trained
    assert [a["scale"] for a in rep["global"]["meta"]["adapters"]] == [1.0]
    assert rep["session_override"]["text"] == trained2 == wn["outputs"]["reply"]
    assert [a["scale"] for a in rep["session_override"]["meta"]["adapters"]] == [0.0, 1.0]
    import llama_cpp
    msgs = sample[0]["messages"][:2]
    for lora, want in (("lora", trained), ("lora_continual", trained2)):
        llm = llama_cpp.Llama(model_path=str(run / "convert_base_to_gguf" / "model-f16.gguf"),
                              lora_path=str(run / "convert_lora_to_gguf" / f"{lora}.gguf"),
                              n_ctx=512, verbose=False, n_threads=2, seed=0)
        out = llm.create_chat_completion(messages=msgs, temperature=0.0, top_k=1, max_tokens=64)
        assert out["choices"][0]["message"]["content"] == want, lora


def test_pipeline_failure_is_recorded(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"messages": [{"role": "user", "content": "hi"}]}]')
    r = run_nnpipe("pipeline", "--session", "broken", "--data", bad, cwd=tmp_path, check=False)
    assert r.returncode != 0
    assert "no \"assistant\" message" in r.stderr
    s = json.loads((tmp_path / "runs" / "broken" / "prepare_data" / "summary.json").read_text())
    assert s["status"] == "Failure" and "conversation 0" in s["error"] and str(bad) in s["error"]
    assert not (tmp_path / "runs" / "broken" / "prepare_data" / "tokenized.jsonl").exists()
    assert not (tmp_path / "runs" / "broken" / "render_chat").exists()
    st = run_nnpipe("status", "--session", "broken", cwd=tmp_path).stdout
    assert "prepare_data: Failure" in st and "no \"assistant\" message" in st


@pytest.mark.parametrize("sid", ["../escape", "a/b", "..", "", "x" * 129, "tab\there"])
def test_bad_session_ids(sid, tmp_path):
    r = run_nnpipe("pipeline", "--session", sid, cwd=tmp_path, check=False)
    assert r.returncode != 0 and "invalid session id" in r.stderr, r.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists() or \
        not any((tmp_path / "runs").iterdir())


def test_unknown_flags_and_help():
    r = run_nnpipe("pipeline", "--no-such-flag", check=False)
    assert r.returncode != 0 and "no-such-flag" in (r.stderr + r.stdout)
    top = run_nnpipe("--help").stdout
    for cmd in ("pipeline", "init-model", "tokenize", "render-chat", "data", "status", "inspect"):
        assert cmd in top
        assert "--help" in run_nnpipe(cmd, "--help").stdout
