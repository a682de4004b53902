"""Data-parallel training (docs/DISTRIBUTED.md) under the real launchers: `mpirun -np 2`,
`torchrun --nproc-per-node 2 --no-python` and a Slurm-style launch (SLURM_PROCID/SLURM_NTASKS +
MASTER_ADDR/MASTER_PORT, started here as two processes, as srun would).

The oracle is nnpipe itself in one process: W ranks with gradient_accumulation_steps a are one
process with a * W (the step's micro-batches are split among the ranks, the gradient is normalised
by the step's label tokens summed over the ranks, the dropout stream skips the other ranks'
micro-batches).

Tolerances:
- a = 1 per rank: bit-identical weights and metrics. Each element of the gradient is
  w0*g0 + w1*g1 on both sides (IEEE addition is commutative), so nothing but the order of two
  addends could differ, and it does not.
- a = 2 per rank: rank 0 accumulates micro-batches 0 and 2, rank 1 micro-batches 1 and 3, so the
  summation order differs from one process's 0, 1, 2, 3: gradients differ in the last bits, and
  Adam's update lr * m / (sqrt(v) + eps) turns relative noise into up to an lr-sized step where a
  gradient element is near zero. Weights must agree to max |diff| <= 1e-3 x lr x steps (1.8e-5;
  test_trainer.py's bound for nnpipe vs torch); measured 3.8e-6 (full) and 2.0e-6 (LoRA).
- ZeRO-1 vs unsharded: bit-identical (AdamW is element-wise; each rank updates a slice).
1 OpenMP thread per rank (the one-process runs too), so CI's 2 cores run the ranks in parallel.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import _bin, run_nnpipe
from test_dataset import random_conversations

TORCHRUN = Path(sys.executable).parent / "torchrun"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMP_NUM_THREADS="1")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher, args, world=2):
    """Starts nnpipe `args` on `world` ranks; returns the list of Popen objects (one for mpirun and
    torchrun, one per rank for slurm)."""
    cmd = [str(_bin()), *map(str, args)]
    if launcher == "mpirun":
        mpirun = shutil.which("mpirun")
        assert mpirun, "mpirun missing: ./scripts/deps installs openmpi-bin"
        return [subprocess.Popen([mpirun, "-np", str(world), "--oversubscribe", *cmd], env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    if launcher == "torchrun":
        return [subprocess.Popen([str(TORCHRUN), "--nproc-per-node", str(world), "--no-python",
                                  *cmd], env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)]
    assert launcher == "slurm"
    port = _free_port()
    return [subprocess.Popen(cmd, env=dict(ENV, SLURM_PROCID=str(r), SLURM_NTASKS=str(world),
                                           SLURM_LOCALID=str(r), MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=str(port)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(world)]


def _wait(procs, timeout=180):
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def run_dist(launcher, args, world=2):
    res = _wait(_launch(launcher, args, world))
    for code, o, e in res:
        assert code == 0, f"{launcher} {args[0]} exited {code}\nstdout:\n{o}\nstderr:\n{e}"
    return res


def _args(mode, model, data, runs, session, *, steps, grad_accum, batch=2, extra=()):
    a = [f"finetune-{mode}", "--model", model, "--data", data, "--runs-dir", runs, "--session",
         session, "--max-steps", steps, "--save-steps", 3, "--lr", 3e-3, "--threads", 1,
         "--no-progress", "--batch-size", batch, "--grad-accum", grad_accum]
    if mode == "lora":
        a += ["--rank", 4, "--alpha", 8, "--dropout", 0.2]  # dropout: the rng skips other ranks
    return [str(x) for x in (*a, *extra)]


def _weights_file(runs, session, mode):
    d = runs / session / f"finetune_{mode}"
    return d / ("model/model.safetensors" if mode == "full" else
                "adapter/adapter_model.safetensors")


def _metrics(runs, session, mode):
    rows = [json.loads(l) for l in (runs / session / f"finetune_{mode}" / "metrics.jsonl")
            .read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["tokens"]) for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 10 conversations in micro-batches of 2: 5 per epoch, so a step of 2 x 2 ranks meets a last
    # step with one micro-batch, where rank 1 has nothing and contributes zeros.
    p = tmp_path_factory.mktemp("dist") / "data.json"
    p.write_text(json.dumps(random_conversations(seed=31, n=10)))
    return p


@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_ranks_equal_one_process_with_twice_the_accumulation(tiny_model, data, tmp_path,
                                                                 launcher, mode):
    runs = tmp_path / "runs"
    run_nnpipe(*_args(mode, tiny_model, data, runs, "one", steps=7, grad_accum=2))
    run_dist(launcher, _args(mode, tiny_model, data, runs, "two", steps=7, grad_accum=1))
    assert _weights_file(runs, "two", mode).read_bytes() == \
        _weights_file(runs, "one", mode).read_bytes()
    assert _metrics(runs, "two", mode) == _metrics(runs, "one", mode)
    step = runs / "two" / f"finetune_{mode}"
    summary = json.loads((step / "summary.json").read_text())
    assert summary["status"] == "Success"
    dist = summary["metrics"]["dist"]
    assert dist["world"] == 2 and dist["backend"] == ("mpi" if launcher == "mpirun" else "tcp")
    # Rank 0 writes the step; rank 1 only its own log.
    assert (runs / "two" / "logs" / "rank-1.log").exists()
    assert "rank 1 of 2" in (runs / "two" / "logs" / "rank-1.log").read_text()
    assert sorted(p.name for p in (step / "checkpoints").iterdir()) == \
        ["checkpoint-6", "checkpoint-7"]
    state = json.loads((step / "checkpoints" / "checkpoint-7" / "trainer_state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_accumulation_on_each_rank_differs_only_in_summation_order(tiny_model, data, tmp_path,
                                                                   mode):
    runs = tmp_path / "runs"
    run_nnpipe(*_args(mode, tiny_model, data, runs, "one", steps=6, grad_accum=4, batch=1))
    run_dist("slurm", _args(mode, tiny_model, data, runs, "two", steps=6, grad_accum=2, batch=1))
    ours, ref = load_file(_weights_file(runs, "two", mode)), load_file(
        _weights_file(runs, "one", mode))
    worst = max(float(np.abs(ours[k] - ref[k]).max()) for k in ref)
    bound = 1e-3 * 3e-3 * 6  # 1e-3 x lr x steps
    print(f"\n{mode}: max |diff| {worst:.2e} (bound {bound:.1e})")
    assert worst <= bound
    for (s1, l1, g1, lr1, t1), (s2, l2, g2, lr2, t2) in zip(_metrics(runs, "two", mode),
                                                             _metrics(runs, "one", mode)):
        assert (s1, lr1, t1) == (s2, lr2, t2)
        assert abs(l1 - l2) <= 1e-5 and abs(g1 - g2) <= 1e-4 * g2


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_zero1_gives_the_unsharded_weights(tiny_model, data, tmp_path, mode):
    runs = tmp_path / "runs"
    run_dist("torchrun", _args(mode, tiny_model, data, runs, "plain", steps=5, grad_accum=1))
    res = run_dist("torchrun", _args(mode, tiny_model, data, runs, "zero", steps=5, grad_accum=1,
                                     extra=["--zero", "1"]))
    assert _weights_file(runs, "zero", mode).read_bytes() == \
        _weights_file(runs, "plain", mode).read_bytes()
    assert _metrics(runs, "zero", mode) == _metrics(runs, "plain", mode)
    # The checkpoint's optimizer state is the unsharded one.
    ck = lambda s: (runs / s / f"finetune_{mode}" / "checkpoints" / "checkpoint-5" /
                    "optimizer.safetensors").read_bytes()
    assert ck("zero") == ck("plain")
    z = json.loads((runs / "zero" / f"finetune_{mode}" / "summary.json").read_text())
    p = json.loads((runs / "plain" / f"finetune_{mode}" / "summary.json").read_text())
    zb, pb = (x["metrics"]["dist"]["adamw_state_bytes_per_rank"] for x in (z, p))
    n = z["metrics"]["trainable_parameters"]
    assert pb == 8 * n and zb == 8 * ((n + 1) // 2), (zb, pb, n)
    assert "ZeRO-1 over 2 ranks" in res[0][2]


def _rank_pid(launcher_pid, rank, var):
    """The pid of the launcher's child whose environment has var=rank."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid != launcher_pid:
                    continue
                env = (d / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if f"{var}={rank}".encode() in env:
                return int(d.name)
        time.sleep(0.01)
    raise AssertionError(f"no rank {rank} under pid {launcher_pid}")


@pytest.mark.parametrize("launcher,killed", [("mpirun", 1), ("torchrun", 1), ("slurm", 1),
                                             ("slurm", 0)])
def test_kill9_of_one_rank_stops_all_and_resume_is_identical(tiny_model, data, tmp_path, launcher,
                                                             killed):
    mode = "lora" if killed else "full"
    runs = tmp_path / "runs"
    steps = 40
    run_nnpipe(*_args(mode, tiny_model, data, runs, "ref", steps=steps, grad_accum=2))
    args = _args(mode, tiny_model, data, runs, "k", steps=steps, grad_accum=1)
    metrics = runs / "k" / f"finetune_{mode}" / "metrics.jsonl"
    procs = _launch(launcher, args)
    var = {"mpirun": "OMPI_COMM_WORLD_RANK", "torchrun": "RANK", "slurm": "SLURM_PROCID"}[launcher]
    victim = procs[killed].pid if launcher == "slurm" else _rank_pid(procs[0].pid, killed, var)
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and
                                          len(metrics.read_text().splitlines()) >= 10):
        time.sleep(0.002)
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    res = _wait(procs, timeout=30)
    took = time.time() - t0
    assert took < 15, f"the other rank took {took:.1f} s to stop"
    n = len(metrics.read_text().splitlines())
    assert n < steps, "the run ended before the kill: make it longer"
    if launcher == "slurm":  # no launcher in between: the survivor's own error
        survivor = res[1 - killed]
        assert survivor[0] != 0
        assert f"rank {killed} disconnected during" in survivor[2], survivor[2]
    else:
        assert res[0][0] != 0
    run_dist(launcher, [*args, "--resume"])
    assert _weights_file(runs, "k", mode).read_bytes() == \
        _weights_file(runs, "ref", mode).read_bytes()
    assert _metrics(runs, "k", mode) == _metrics(runs, "ref", mode)


def test_resume_with_another_world_size_is_an_error(tiny_model, data, tmp_path):
    runs = tmp_path / "runs"
    run_dist("slurm", _args("full", tiny_model, data, runs, "s", steps=3, grad_accum=1))
    r = run_nnpipe(*_args("full", tiny_model, data, runs, "s", steps=3, grad_accum=1,
                          extra=["--resume"]), check=False)
    assert r.returncode != 0
    assert "written by a run of 2 rank(s), this run has 1" in r.stderr, r.stderr
    # The error reaches every rank: rank 0 fails the resume, rank 1 says why it stops.
    res = _wait(_launch("slurm", _args("full", tiny_model, data, runs, "s", steps=3,
                                       grad_accum=1, extra=["--resume", "--weight-decay", "0.1"]),
                        world=2))
    assert all(code != 0 for code, _, _ in res)
    assert "other parameters" in res[0][2]
    assert "rank 0 failed (resume)" in res[1][2], res[1][2]
