"""Issue 13 (hostile and careless input), the command-line side of items 1, 4, 5 and 10: every bad
number or file is refused in bounded time and memory with a message naming the flag, file or key,
never a crash, `unexpected error:` or a silent wrong result. Each test is named after its item;
the engine-level checks are tests/unit/test_hostile_cli.cpp."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading

import pytest

from conftest import _bin, run_nnpipe, run_nnpipe_json, run_nnpipe_peak_rss

CHATS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris is the capital of France."}]},
    {"messages": [{"role": "user", "content": "Say hello."},
                  {"role": "assistant", "content": "Hello there!"}]},
]


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory):
    """The tiny model as an HF dir and a Q8_0 GGUF, a PEFT adapter trained for 2 steps and its
    GGUF export, a chat dataset and a text for perplexity."""
    d = tmp_path_factory.mktemp("hostile_cli")
    data = d / "chats.json"
    data.write_text(json.dumps(CHATS))
    gguf = d / "m.gguf"
    run_nnpipe("export-gguf", "--model", tiny_model, "--type", "q8_0", "--out", gguf)
    run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--max-steps", 2,
               "--runs-dir", d / "runs", "--session", "base", "--no-progress")
    peft = d / "runs" / "base" / "finetune_lora" / "adapter"
    lora = d / "lora.gguf"
    run_nnpipe("export-lora-gguf", "--adapter", peft, "--base", tiny_model, "--out", lora)
    text = d / "text.txt"
    text.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(1500)))
    return {"dir": d, "hf": tiny_model, "gguf": gguf, "peft": peft, "lora": lora, "data": data,
            "text": text}


def fails_naming(r, *parts):
    """rc != 0 (no signal), no `unexpected error:`, and every part named on stderr."""
    assert r.returncode > 0, (r.returncode, r.stderr)
    assert "unexpected error" not in r.stderr, r.stderr
    for p in parts:
        assert str(p) in r.stderr, (p, r.stderr)


def infer(work, *args, **kw):
    return run_nnpipe("infer", "--model", work["gguf"], "--prompt", "hi", "-n", 2, "--runs-dir",
                      work["dir"] / "runs", *args, check=False, cwd=work["dir"], **kw)


def peak_rss_mb(*args, timeout=120):
    """Runs nnpipe; returns (rc, stderr, peak RSS in MB of that process alone)."""
    rc, _, err, mb = run_nnpipe_peak_rss(*args, timeout=timeout)
    return rc, err, mb


# --- item 1 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_item1_eval_ctx_zero_is_an_error(work, kind):
    for ctx in (0, 3, -5):
        r = run_nnpipe("eval", "--model", work[kind], "--ppl", work["text"], "--ctx", ctx,
                       check=False)
        fails_naming(r, "--ctx")  # was SIGFPE (rc -8) for 0
    r = run_nnpipe("eval", "--model", work[kind], "--ppl", work["text"], "--chunks", 0, check=False)
    fails_naming(r, "--chunks")


def test_item1_eval_ctx_above_the_model_is_capped_like_infer(work):
    r = run_nnpipe("eval", "--model", work["gguf"], "--ppl", work["text"], "--ctx", 100000,
                   "--chunks", 1, "--json", "--no-progress")
    assert json.loads(r.stdout)["ctx"] == 2048
    assert "--ctx 100000 exceeds the model's context length 2048" in r.stderr, r.stderr


# --- item 4 -------------------------------------------------------------------------------------

def test_item4_infer_ctx_negative_is_an_error(work):
    for cmd in ("infer", "chat"):
        r = run_nnpipe(cmd, "--model", work["gguf"], "-c", -5, input="", check=False)
        fails_naming(r, "--ctx-size")


def test_item4_infer_ctx_huge_is_capped_in_bounded_memory(work):
    for c in (20000000, 1000000000):
        rc, err, mb = peak_rss_mb("infer", "--model", work["gguf"], "--prompt", "hi", "-n", 2,
                                  "-c", c, "--json", "--runs-dir", work["dir"] / "runs",
                                  "--session", f"ctx{c}")
        assert rc == 0, err
        assert f"--ctx-size {c} exceeds the model's context length 2048: using 2048" in err, err
        assert mb < 300, f"-c {c}: peak RSS {mb:.0f} MB"  # was 5 GB / std::bad_alloc
        s = json.loads((work["dir"] / "runs" / f"ctx{c}" / "run_inference" / "summary.json")
                       .read_text())
        assert s["outputs"]["model"]["ctx_size"] == 2048


def test_item4_chat_ctx_huge_is_capped(work):
    r = run_nnpipe("chat", "--model", work["gguf"], "-c", 1000000000, "-n", 2, input="hi\n")
    assert "exceeds the model's context length 2048" in r.stderr, r.stderr


# --- item 5 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e39"])
def test_item5_lora_scale_non_finite_is_refused(work, scale):
    for path in (work["lora"], work["peft"]):
        r = infer(work, "--lora", f"{path}:{scale}")
        fails_naming(r, f"--lora {path}:{scale}", "scale")
        assert "\0" not in r.stdout


@pytest.mark.parametrize("flag,value", [
    ("--top-p", "nan"), ("--min-p", "nan"), ("--repeat-penalty", "nan"), ("--temp", "inf"),
    ("--temp", "nan"), ("--presence-penalty", "nan"), ("--frequency-penalty", "inf"),
    ("--presence-penalty", "-inf"), ("--top-p", "2"), ("--repeat-penalty", "0")])
def test_item5_sampling_non_finite_is_refused(work, flag, value):
    fails_naming(infer(work, flag, value), flag)


def test_item5_gguf_adapter_alpha_non_finite_is_refused(work):
    blob = work["lora"].read_bytes()
    key = b"adapter.lora.alpha"
    at = blob.index(key) + len(key)
    assert struct.unpack("<I", blob[at:at + 4])[0] == 6  # FLOAT32
    for name, v in (("nan", float("nan")), ("inf", float("inf"))):
        bad = work["dir"] / f"alpha_{name}.gguf"
        bad.write_bytes(blob[:at + 4] + struct.pack("<f", v) + blob[at + 8:])
        fails_naming(infer(work, "--lora", bad), bad, "adapter.lora.alpha")


def test_item5_peft_lora_alpha_huge_is_refused_and_not_exported(work):
    bad = work["dir"] / "peft_alpha_huge"
    shutil.copytree(work["peft"], bad, dirs_exist_ok=True)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 1e308
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    fails_naming(infer(work, "--lora", bad), "adapter_config.json", "lora_alpha")
    out = work["dir"] / "alpha_huge.gguf"
    r = run_nnpipe("export-lora-gguf", "--adapter", bad, "--base", work["hf"], "--out", out,
                   check=False)
    fails_naming(r, "adapter_config.json", "lora_alpha")
    assert not out.exists()


# --- item 10 ------------------------------------------------------------------------------------

def test_item10a_rejected_lora_is_an_error_unless_skip_bad_lora(work):
    typo = work["dir"] / "typo.gguf"
    for cmd, extra in (("infer", ["--prompt", "hi", "--runs-dir", work["dir"] / "runs"]),
                       ("chat", [])):
        r = run_nnpipe(cmd, "--model", work["gguf"], "--lora", typo, "-n", 2, *extra, input="hi\n",
                       check=False)
        fails_naming(r, typo, "no such adapter", "--skip-bad-lora")
    # Opt-in: today's warn-and-skip, the rejection listed; the base model's answer.
    base = run_nnpipe_json("infer", "--model", work["gguf"], "--prompt-ids", "1,2,3", "-n", 4,
                           "--json", "--runs-dir", work["dir"] / "runs")
    r = run_nnpipe_json("infer", "--model", work["gguf"], "--prompt-ids", "1,2,3", "-n", 4,
                        "--json", "--runs-dir", work["dir"] / "runs", "--lora", typo,
                        "--skip-bad-lora")
    assert len(r["outputs"]["rejected_adapters"]) == 1 and str(typo) in r["outputs"]["rejected_adapters"][0]
    assert r["outputs"]["tokens"] == base["outputs"]["tokens"]


def test_item10b_data_check_fails_without_a_usable_example(work):
    long = work["dir"] / "long_user.json"
    long.write_text(json.dumps([{"messages": [{"role": "user", "content": "hello " * 3000},
                                              {"role": "assistant", "content": "hi"}]}]))
    r = run_nnpipe("data", "check", long, "--model", work["hf"], "--max-seq-len", 100,
                   check=False)
    fails_naming(r, long, "no usable example")
    run_nnpipe("data", "check", work["data"], "--model", work["hf"])  # a usable set still passes


def test_item10c_max_seq_len_past_the_model_context_warns(work):
    r = run_nnpipe("finetune-lora", "--model", work["hf"], "--data", work["data"], "--max-steps", 1,
                   "--max-seq-len", 100000, "--runs-dir", work["dir"] / "runs", "--no-progress",
                   "--json")
    msg = "max_seq_len 100000 exceeds the model's max_position_embeddings 2048"
    assert msg in r.stderr, r.stderr
    assert any(msg in w for w in json.loads(r.stdout)["metrics"]["warnings"])


@pytest.mark.parametrize("args,flag", [
    (["-t", "-3"], "--threads"), (["-t", "100000"], "--threads"), (["--top-k", "-5"], "--top-k"),
    (["--repeat-last-n", "-100"], "--repeat-last-n"), (["--bench-reps", "0"], "--bench-reps"),
    (["--bench-reps", "-1"], "--bench-reps"), (["--bench-pp", "0"], "--bench-pp"),
    (["--bench-pp", "-1"], "--bench-pp"), (["--bench-tg", "-1"], "--bench-tg"),
    (["--seed", "-1"], "--seed"), (["--prompt-ids", "1,,2"], "--prompt-ids"),
    (["--prompt-ids", "1,2,"], "--prompt-ids"), (["--prompt-ids", "4294967297"], "--prompt-ids"),
    (["-n", "-1"], "--max-tokens"), (["--bench-pp", "100000"], "--bench-pp")])
def test_item10d_cli_numbers_out_of_range_are_refused(work, args, flag):
    fails_naming(infer(work, *args), flag)


def test_item10d_threads_above_4x_the_cores_are_refused(work):
    n = 4 * (os.cpu_count() or 1) + 1
    if n <= 1024:
        fails_naming(infer(work, "-t", n), "--threads")
    for cmd in (["eval", "--model", work["gguf"], "--ppl", work["text"]],
                ["finetune-lora", "--model", work["hf"], "--data", work["data"]]):
        fails_naming(run_nnpipe(*cmd, "--threads", -3, check=False), "--threads")
    r = run_nnpipe("finetune-lora", "--model", work["hf"], "--data", work["data"], "--seed", -1,
                   check=False)
    fails_naming(r, "--seed")


def test_item10d_lora_rank_above_hidden_is_refused(work):
    r = run_nnpipe("finetune-lora", "--model", work["hf"], "--data", work["data"], "--max-steps", 1,
                   "--rank", 100000, "--runs-dir", work["dir"] / "runs", "--no-progress",
                   check=False, timeout=60)
    fails_naming(r, "LoRA rank 100000 exceeds min(in, out) = 64")


def _tokenizer_mutants():
    def unigram(t):
        t["model"]["type"] = "Unigram"

    def duplicate_id(t):
        v = t["model"]["vocab"]
        v[list(v)[10]] = 5

    def empty_vocab(t):
        t["model"]["vocab"], t["model"]["merges"] = {}, []

    def bad_regex(t):
        def walk(o):
            if isinstance(o, dict):
                for k in o:
                    if k == "Regex":
                        o[k] = "(unclosed"
                    else:
                        walk(o[k])
            elif isinstance(o, list):
                for x in o:
                    walk(x)
        walk(t["pre_tokenizer"])

    return [("unigram", unigram, "Unigram"), ("duplicate_id", duplicate_id, "duplicate id"),
            ("empty_vocab", empty_vocab, "byte-level"), ("bad_regex", bad_regex, "regex")]


@pytest.mark.parametrize("name,mutate,what", _tokenizer_mutants())
def test_item10e_export_gguf_validates_the_tokenizer(work, name, mutate, what):
    d = work["dir"] / f"tok_{name}"
    shutil.copytree(work["hf"], d, dirs_exist_ok=True)
    tok = json.loads((work["hf"] / "tokenizer.json").read_text())
    mutate(tok)
    (d / "tokenizer.json").write_text(json.dumps(tok))
    out = work["dir"] / f"tok_{name}.gguf"
    r = run_nnpipe("export-gguf", "--model", d, "--type", "f16", "--out", out, check=False)
    fails_naming(r, "tokenizer.json", what)
    assert not out.exists()
    assert not [p for p in work["dir"].iterdir() if p.name.startswith(out.name)]  # no temp left
