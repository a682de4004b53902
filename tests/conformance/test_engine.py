"""nnpipe's inference engine against the real implementations.

GGUF: for the same file and the same GGUF LoRA adapters (0, 1 and 2 stacked, different scales) nnpipe's
greedy 64-token continuation equals llama.cpp's (llama-cpp-python's low-level API, flash attention off
and an f16 KV cache, its defaults), and the top-1 token of the logits agrees at >= 99% of positions,
for F16, Q8_0, Q4_0 and Q4_K_M. The adapters are PEFT adapters with random nonzero B converted by
llama.cpp's own convert_lora_to_gguf.py. HF directories: greedy output equals transformers', with and
without a PEFT adapter (PEFT's model). Plus the CLI's robustness: corrupt files, long/empty/invalid
prompts, bad adapters, summary.json.

The model is the "small" preset (rows of 256/768: whole K-quant blocks) fully fine-tuned a little on
the sample conversations, so greedy decoding follows real margins rather than random near-ties.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import llama_cpp

import conftest
from conftest import hf_greedy, ROOT, llama_cpp_bin_dir, run_nnpipe, run_nnpipe_json

TYPES = ["f16", "q8_0", "q4_0", "q4_k_m"]
PROMPTS = [
    "The quick brown fox",
    "<|im_start|>user\nHi, who are you?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat can you do?<|im_end|>\n"
    "<|im_start|>assistant\n",
]
N_GEN = 64
# (adapter index, scale) lists: 0, 1 and 2 stacked adapters.
ADAPTER_SETS = [[], [(0, 1.0)], [(0, 0.7), (1, 1.6)]]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    base = d / "base"
    run_nnpipe("init-model", "--preset", "small", "--seed", "3", "--out", base)
    run_nnpipe("finetune-full", "--model", base, "--data", ROOT / "data" / "sample.json",
               "--epochs", "12", "--lr", "2e-3", "--session", "ft", "--no-progress", cwd=d)
    model = d / "runs" / "ft" / "finetune_full" / "model"
    assert (model / "config.json").exists()
    return d, model


def make_peft(model_dir, out, seed, r, alpha):
    return conftest.make_peft(model_dir, out, seed, r, alpha, b_std=0.05)


def convert_lora(peft_dir, base_dir, out, outtype):
    src = llama_cpp_bin_dir().parent.parent / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    script = src / "convert_lora_to_gguf.py"
    assert script.exists(), script
    subprocess.run([sys.executable, str(script), str(peft_dir), "--base", str(base_dir),
                    "--outtype", outtype, "--outfile", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def adapters(work):
    d, model = work
    p0 = make_peft(model, d / "peft0", 0, 8, 16)
    p1 = make_peft(model, d / "peft1", 1, 16, 8)
    g0 = convert_lora(p0, model, d / "lora0.gguf", "f16")
    g1 = convert_lora(p1, model, d / "lora1.gguf", "f32")
    return {"peft": [p0, p1], "gguf": [g0, g1]}


def export(work, t):
    d, model = work
    out = d / f"model-{t}.gguf"
    if not out.exists():
        run_nnpipe("export-gguf", "--model", model, "--type", t, "--out", out)
    return out


class Llama:
    """llama.cpp through llama-cpp-python with a stack of LoRA adapters set on the context."""

    def __init__(self, path, loras):
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_ubatch=512,
                                   logits_all=True, verbose=False, n_threads=2, seed=0)
        self.adapters = []
        if loras:
            ptrs = []
            for p, _ in loras:
                a = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(p).encode())
                assert a, f"llama.cpp rejected {p}"
                ptrs.append(a)
            self.adapters = ptrs
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(ptrs))(*ptrs)
            scales = (llama_cpp.ctypes.c_float * len(ptrs))(*[s for _, s in loras])
            assert llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr, len(ptrs), scales) == 0

    def tokenize(self, text):
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def greedy(self, ids, n):
        self.llm.reset()
        self.llm.eval(ids)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            self.llm.eval([nxt])
        return out

    def logits(self, ids):
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])


def lora_args(paths, lset):
    args = []
    for i, s in lset:
        args += ["--lora", f"{paths[i]}:{s}"]
    return args


def nnpipe_greedy(model, ids, lora, tmp):
    r = run_nnpipe_json("infer", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
                        "--max-tokens", N_GEN, "--ignore-eos", "--json", "--ctx-size", 512,
                        "--threads", 2, *lora, cwd=tmp)
    assert r["status"] == "Success"
    assert r["outputs"]["rejected_adapters"] == []
    return r["outputs"]["tokens"]


def nnpipe_logits(model, ids, lora, tmp):
    out = tmp / "logits.npy"
    run_nnpipe("infer", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
               "--dump-logits", out, "--ctx-size", 512, "--threads", 2, *lora, cwd=tmp)
    return np.load(out)


@pytest.mark.parametrize("t", TYPES)
def test_gguf_greedy_and_logits_equal_llama_cpp(work, adapters, t, tmp_path):
    gguf = export(work, t)
    for lset in ADAPTER_SETS:
        loras = [(adapters["gguf"][i], s) for i, s in lset]
        llm = Llama(gguf, loras)
        agree = total = 0
        for prompt in PROMPTS:
            ids = llm.tokenize(prompt)
            want = llm.greedy(ids, N_GEN)
            got = nnpipe_greedy(gguf, ids, lora_args(adapters["gguf"], lset), tmp_path)
            assert got == want, f"{t} adapters {lset} prompt {prompt!r}"
            seq = ids + want
            ref = llm.logits(seq)
            ours = nnpipe_logits(gguf, seq, lora_args(adapters["gguf"], lset), tmp_path)
            assert ours.shape == ref.shape
            agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
            total += len(seq)
        assert agree / total >= 0.99, f"{t} adapters {lset}: top-1 agreement {agree}/{total}"


def test_adapters_change_the_output(work, adapters, tmp_path):
    """The comparisons above would pass vacuously if adapters did nothing."""
    gguf = export(work, "f16")
    llm = Llama(gguf, [])
    ids = llm.tokenize(PROMPTS[1])
    base = nnpipe_logits(gguf, ids, [], tmp_path)
    two = nnpipe_logits(gguf, ids, lora_args(adapters["gguf"], ADAPTER_SETS[2]), tmp_path)
    assert np.abs(two - base).max() > 0.1
    zero = nnpipe_logits(gguf, ids, ["--lora", f"{adapters['gguf'][0]}:0"], tmp_path)
    np.testing.assert_array_equal(zero, base)



def test_hf_dir_and_peft_equal_transformers(work, adapters, tmp_path):
    d, model_dir = work
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                              attn_implementation="eager").eval()
    llm_tok = Llama(export(work, "f16"), [])
    for prompt in PROMPTS:
        ids = llm_tok.tokenize(prompt)
        assert nnpipe_greedy(model_dir, ids, [], tmp_path) == hf_greedy(hf, ids, N_GEN)
    peft = PeftModel.from_pretrained(hf, adapters["peft"][0]).eval()
    for prompt in PROMPTS[1:]:
        ids = llm_tok.tokenize(prompt)
        got = nnpipe_greedy(model_dir, ids, ["--lora", adapters["peft"][0]], tmp_path)
        assert got == hf_greedy(peft, ids, N_GEN), prompt


def test_cli_summary_chat_and_robustness(work, adapters, tmp_path):
    d, model_dir = work
    gguf = export(work, "q8_0")
    # Chat through the template, summary.json with text, counts, timings, adapters.
    r = run_nnpipe_json("infer", "--model", gguf, "--prompt", "Hello", "--chat", "--json",
                        "--session", "e1", "--lora", f"{adapters['gguf'][0]}:0.5",
                        "--max-tokens", 16, cwd=tmp_path)
    summary = json.loads((tmp_path / "runs" / "e1" / "run_inference" / "summary.json").read_text())
    assert summary["status"] == "Success" and summary["step"] == "run_inference"
    out = summary["outputs"]
    assert out["rendered_prompt"].endswith("<|im_start|>assistant\n")
    assert out["new_tokens"] == len(out["tokens"]) and out["prompt_tokens"] > 0
    assert out["adapters"][0]["scale"] == 0.5 and out["adapters"][0]["rank"] == 8
    assert summary["metrics"]["timings"]["gen_tok_s"] > 0
    assert r["outputs"]["text"] == out["text"]

    # A bad adapter (another model's) is rejected by name; with --skip-bad-lora the good one still
    # applies (without it the run fails: tests/conformance/test_hostile_cli.py).
    other = tmp_path / "other"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "1", "--out", other)
    bad = convert_lora(make_peft(other, tmp_path / "bad_peft", 5, 4, 8), other,
                       tmp_path / "bad.gguf", "f32")
    ids = "1,2,3,4,5"
    good = run_nnpipe_json("infer", "--model", gguf, "--prompt-ids", ids, "--json",
                           "--lora", adapters["gguf"][0], "--max-tokens", 8, cwd=tmp_path)
    mixed = run_nnpipe_json("infer", "--model", gguf, "--prompt-ids", ids, "--json",
                            "--lora", bad, "--lora", adapters["gguf"][0], "--max-tokens", 8,
                            "--skip-bad-lora", cwd=tmp_path)
    assert len(mixed["outputs"]["rejected_adapters"]) == 1
    assert "bad.gguf" in mixed["outputs"]["rejected_adapters"][0]
    assert mixed["outputs"]["tokens"] == good["outputs"]["tokens"]

    # Corrupt and truncated model files: an error naming the file, not a crash.
    data = gguf.read_bytes()
    for name, blob in (("trunc.gguf", data[: len(data) // 3]), ("head.gguf", data[:40]),
                       ("junk.gguf", b"GGUF" + os.urandom(200))):
        p = tmp_path / name
        p.write_bytes(blob)
        r = run_nnpipe("infer", "--model", p, "--prompt", "hi", check=False, cwd=tmp_path)
        assert r.returncode not in (0, -11, -6) and name in r.stderr, r.stderr

    # Prompt longer than the context: says what to do.
    r = run_nnpipe("infer", "--model", gguf, "--prompt", "hello " * 300, "--ctx-size", 64,
                   check=False, cwd=tmp_path)
    assert r.returncode != 0 and "raise --ctx-size or shorten the prompt" in r.stderr, r.stderr
    # Empty prompt: a clear error; in chat mode the template still gives a prompt.
    r = run_nnpipe("infer", "--model", gguf, "--prompt", "", check=False, cwd=tmp_path)
    assert r.returncode != 0 and "prompt is empty" in r.stderr, r.stderr
    run_nnpipe("infer", "--model", gguf, "--prompt", "", "--chat", "--max-tokens", 4, cwd=tmp_path)
    # Invalid UTF-8 in the prompt is handled (replaced), never a crash.
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"caf\xe9 \xff\xfe ok")
    r = run_nnpipe_json("infer", "--model", gguf, "--prompt-file", bad_utf8, "--json",
                        "--max-tokens", 4, cwd=tmp_path)
    assert r["status"] == "Success"


def test_chat_repl_over_a_pipe(work, tmp_path):
    gguf = export(work, "q8_0")
    r = run_nnpipe("chat", "--model", gguf, "--max-tokens", 12,
                   input="Hello\nWhat can you do?\n/reset\nHello\n/exit\nignored\n", cwd=tmp_path)
    replies = r.stdout.split("\n\n")
    assert len([x for x in replies if x.strip()]) >= 1
    # After /reset the first question gets the same reply as the first time (greedy).
    assert replies[0] == replies[2], r.stdout
