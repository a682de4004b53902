"""Checkpoints and --resume: a training run killed with SIGKILL at an arbitrary moment and resumed
ends with exactly the weights of an uninterrupted run (bitwise: same machine, same thread count),
and its metrics.jsonl holds each step once with the same losses. Also the resume errors."""
import json
import signal
import subprocess
import time

import pytest

from conftest import ROOT, _bin, run_nnpipe

SAMPLE = ROOT / "data" / "sample.json"
STEPS = 36


def _args(mode, model, runs, session, extra=(), lr=3e-3):
    a = [f"finetune-{mode}", "--model", model, "--data", SAMPLE, "--runs-dir", runs, "--session",
         session, "--max-steps", STEPS, "--save-steps", 4, "--lr", lr, "--threads", 2,
         "--no-progress", "--batch-size", 2, "--grad-accum", 2]
    if mode == "lora":
        a += ["--rank", 4, "--alpha", 8, "--dropout", 0.2]  # dropout: the RNG state is resumed too
    return [str(x) for x in (*a, *extra)]


def _output(runs, session, mode):
    d = runs / session / f"finetune_{mode}"
    if mode == "full":
        return (d / "model" / "model.safetensors").read_bytes()
    return (d / "adapter" / "adapter_model.safetensors").read_bytes()


def _losses(runs, session, mode):
    rows = [json.loads(l) for l in
            (runs / session / f"finetune_{mode}" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows]


def _kill_after(args, metrics, lines):
    """Starts a run and SIGKILLs it once metrics.jsonl has `lines` lines."""
    p = subprocess.Popen([str(_bin()), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
            break
        time.sleep(0.002)
    finished = p.poll() is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not finished, "the run ended before it could be killed: make it longer"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_kill9_and_resume_is_bitwise_identical(tiny_model, tmp_path, mode):
    runs = tmp_path / "runs"
    run_nnpipe(*_args(mode, tiny_model, runs, "ref"))
    ref, ref_losses = _output(runs, "ref", mode), _losses(runs, "ref", mode)
    assert len(ref_losses) == STEPS

#Killed before the first checkpoint, mid - run, and late; the second one is killed twice.
    for i, kills in enumerate([[2], [9, 21], [33]]):
        session = f"k{i}"
        metrics = runs / session / f"finetune_{mode}" / "metrics.jsonl"
        for n, lines in enumerate(kills):
            extra = ["--resume"] if n else []
            _kill_after(_args(mode, tiny_model, runs, session, extra), metrics, lines)
        run_nnpipe(*_args(mode, tiny_model, runs, session, ["--resume"]))
        assert _output(runs, session, mode) == ref, f"kills after {kills} lines: weights differ"
        assert _losses(runs, session, mode) == ref_losses
        summary = json.loads((runs / session / f"finetune_{mode}" / "summary.json").read_text())
        assert summary["status"] == "Success"
        assert summary["metrics"]["steps"] == STEPS
        ckpts = sorted(p.name for p in (runs / session / f"finetune_{mode}" / "checkpoints").iterdir())
        assert ckpts == [f"checkpoint-{STEPS - 4}", f"checkpoint-{STEPS}"], ckpts


def test_resume_with_other_parameters_is_an_error(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    run_nnpipe(*_args("full", tiny_model, runs, "s"))
    r = run_nnpipe(*_args("full", tiny_model, runs, "s", ["--resume"], lr=1e-2), check=False)
    assert r.returncode != 0
    assert "other parameters" in r.stderr and "learning_rate" in r.stderr, r.stderr
    summary = json.loads((runs / "s" / "finetune_full" / "summary.json").read_text())
    assert summary["status"] == "Failure" and "learning_rate" in summary["error"]


def test_resume_without_checkpoint_starts_fresh(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    r = run_nnpipe(*_args("full", tiny_model, runs, "fresh", ["--resume"]))
    assert "no checkpoint" in r.stderr
    run_nnpipe(*_args("full", tiny_model, runs, "ref"))
    assert _output(runs, "fresh", "full") == _output(runs, "ref", "full")


def test_resume_a_checkpoint_written_before_matmul_dtype(tiny_model, tmp_path):
    """A checkpoint of an older nnpipe has no matmul_dtype: its default (f32) is assumed, so the
    same run resumes; asking for bf16 is a parameter change and an error."""
    runs = tmp_path / "runs"
    run_nnpipe(*_args("lora", tiny_model, runs, "old"))
    for f in (runs / "old" / "finetune_lora" / "checkpoints").glob("*/trainer_state.json"):
        state = json.loads(f.read_text())
        del state["params"]["matmul_dtype"]
        f.write_text(json.dumps(state))
    run_nnpipe(*_args("lora", tiny_model, runs, "old", ["--resume"]))
    r = run_nnpipe(*_args("lora", tiny_model, runs, "old", ["--resume", "--matmul-dtype", "bf16"]),
                   check=False)
    assert r.returncode != 0 and "matmul_dtype" in r.stderr, r.stderr
