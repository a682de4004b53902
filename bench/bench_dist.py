#!/usr/bin/env python3
"""Data-parallel scaling on one machine: 2 MPI ranks x 1 thread vs 1 process x 2 threads (the same
cores, the same optimizer steps: one process accumulates 2 micro-batches, each rank takes one), for
LoRA and full fine-tuning of a random-initialised Qwen2.5-0.5B, plus the gradient-overlap numbers
(with and without --no-overlap). Prints a markdown table for bench/RESULTS.md.

usage: bench/bench_dist.py [--steps N] [--model DIR] [--modes lora,full]
Needs mpirun (scripts/deps) and ~16 GB of memory for full fine-tuning (ZeRO-1 on the ranks).
Run it on an otherwise idle machine: it creates /tmp/quiet while it runs and refuses to start
when that file exists (someone else is benchmarking).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("NNPIPE_BIN", ROOT / "build" / "release" / "nnpipe"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(cmd, env=ENV):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model")
    ap.add_argument("--modes", default="lora,full")
    a = ap.parse_args()
    quiet = Path("/tmp/quiet")
    if quiet.exists():
        sys.exit("/tmp/quiet exists: someone is benchmarking; try later")
    quiet.write_text(f"bench_dist.py pid {os.getpid()}\n")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(a.model) if a.model else Path(tmp) / "qwen2.5-0.5b"
            if not model.exists():
                run([BIN, "init-model", "--preset", "qwen2.5-0.5b", "--seed", "1", "--out", model])
            rows = []
            for mode in a.modes.split(","):
                common = [f"finetune-{mode}", "--model", model, "--data", ROOT / "data" / "sample.json",
                          "--max-steps", a.steps, "--batch-size", 1, "--no-progress", "--lr", "1e-4",
                          "--runs-dir", Path(tmp) / "runs", "--json", "--max-grad-norm", "1.0"]
                zero = ["--zero", "1"] if mode == "full" else []
                configs = [
                    ("1 process x 2 threads", [], [*common, "--threads", 2, "--grad-accum", 2]),
                    ("2 MPI ranks x 1 thread", ["mpirun", "-np", 2, "--oversubscribe"],
                     [*common, "--threads", 1, "--grad-accum", 1, *zero]),
                    ("2 MPI ranks x 1 thread, --no-overlap", ["mpirun", "-np", 2, "--oversubscribe"],
                     [*common, "--threads", 1, "--grad-accum", 1, *zero, "--no-overlap"]),
                ]
                base = None
                for i, (name, launcher, args) in enumerate(configs):
                    r = run([*launcher, BIN, *args, "--session", f"{mode}-{i}"])
                    m = json.loads(r.stdout)["metrics"]
                    tps = m["tokens_per_s"]
                    base = base or tps
                    d = m.get("dist") or {}
                    rows.append((mode, name, tps, tps / base, d))
            print("| mode | configuration | tokens/s | vs 1x2 | fwd+bwd s | all-reduce s | exposed s | hidden | AdamW state/rank |")
            print("|---|---|---|---|---|---|---|---|---|")
            for mode, name, tps, rel, d in rows:
                if d:
                    extra = (f"{d['compute_s']:.2f} | {d['comm_s']:.2f} | {d['exposed_comm_s']:.2f} | "
                             f"{100 * d['hidden_fraction']:.0f}% | {d['adamw_state_bytes_per_rank'] / 2**20:.0f} MiB")
                else:
                    extra = "- | - | - | - | -"
                print(f"| {mode} | {name} | {tps:.1f} | {rel:.2f} | {extra} |")
    finally:
        quiet.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
