"""Shared fixtures for the conformance tests: nnpipe's binary, tests/fixtures/, and helpers to run it.

Every test compares nnpipe with a real implementation (transformers, tokenizers, jinja2, torch,
safetensors). A missing oracle is an import error, i.e. a failure: these tests never skip.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def _bin() -> Path:
    p = Path(os.environ.get("NNPIPE_BIN", ROOT / "build" / "release" / "nnpipe"))
    if not p.exists():
        raise RuntimeError(f"nnpipe binary not found at {p}: run ./scripts/build release")
    return p


@pytest.fixture(scope="session")
def nnpipe_bin() -> Path:
    return _bin()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures/: third-party files the tests compare against (origins in its README.md)."""
    assert FIXTURES.is_dir(), f"{FIXTURES} missing: the checkout is incomplete"
    return FIXTURES


def run_nnpipe(*args, input=None, check=True, cwd=None, timeout=600):
    """Runs nnpipe; returns CompletedProcess with text stdout/stderr."""
    cmd = [str(_bin()), *map(str, args)]
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


# Forks and execs argv[1:], waits, writes the child's own peak RSS (KiB, from wait4) to
# $NNPIPE_RSS_FILE and exits with its status. Run as a fresh small process: Linux carries a
# process's peak RSS over fork and exec (a child of the pytest process, which holds torch, would
# report pytest's ~800 MB), so the measured command must be forked from a small parent.
_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
open(os.environ["NNPIPE_RSS_FILE"], "w").write(str(ru.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_nnpipe_peak_rss(*args, timeout=120):
    """Runs nnpipe; returns (returncode, stdout, stderr, peak RSS in MiB of that process alone)."""
    import sys
    import tempfile
    with tempfile.NamedTemporaryFile("r") as rss:
        env = dict(os.environ, NNPIPE_RSS_FILE=rss.name)
        p = subprocess.Popen([sys.executable, "-c", _RSS_LAUNCHER, str(_bin()), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            raise AssertionError(f"nnpipe {args[0]} did not end within {timeout} s")
        kib = int(rss.read() or 0)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), kib / 1024


def run_nnpipe_json(*args, **kw):
    return json.loads(run_nnpipe(*args, **kw).stdout)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model written by `nnpipe init-model` (default tokenizer)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "1", "--out", out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen_model(tmp_path_factory, fixtures_dir) -> Path:
    """A tiny random model with the real Qwen tokenizer (fixture) and its chat template."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "2", "--out", out,
               "--tokenizer", fixtures_dir / "qwen-tokenizer" / "tokenizer.json")
    return out


def llama_cpp_bin_dir() -> Path:
    """Directory of the llama.cpp oracle's tools (llama-quantize, llama-bench, llama-perplexity),
    built by scripts/llama_cpp and announced through .venv's nnpipe_llama_cpp_env.pth."""
    d = os.environ.get("NNPIPE_LLAMA_CPP_BIN")
    if not d or not (Path(d) / "llama-quantize").exists():
        raise RuntimeError("llama.cpp oracle missing: run ./scripts/llama_cpp (scripts/test does)")
    return Path(d)


def llama_cpp_tool(name: str) -> Path:
    p = llama_cpp_bin_dir() / name
    if not p.exists():
        raise RuntimeError(f"llama.cpp tool {name} missing in {p.parent}: rerun ./scripts/llama_cpp")
    return p


def llama_greedy(llm, ids, n=32):
    """Greedy continuation by argmax over llama.cpp's own logits, one token at a time."""
    import numpy as np
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def hf_greedy(model, ids, n):
    """Greedy continuation by argmax over a transformers model's logits (full forward per token)."""
    import torch
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids):]


PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_peft(model_dir, out, seed, r, alpha, b_std):
    """A PEFT adapter on all seven projections with random nonzero B ~ N(0, b_std^2) (PEFT
    initialises B to zero, which would make every adapter the identity)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=PEFT_TARGETS,
                                           lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * b_std)
    peft.save_pretrained(out)
    return out
