#!/usr/bin/env python3
"""nnpipe infer vs llama-bench on the Qwen1.5-0.5B shape: pp512 and tg128 for F16, Q8_0, Q4_0,
Q4_K_M at 2 threads, runs alternating (llama.cpp, nnpipe, llama.cpp, ...), medians and peak RSS;
then tg128 with two stacked r16 LoRA adapters (nnpipe and llama.cpp).

  .venv/bin/python bench/bench_infer.py [--rounds 2] [--types f16,q8_0,q4_0,q4_k_m] [--work DIR]
      [--before OLD_NNPIPE]   # also runs another nnpipe build in the same rounds (before/after)

Needs ./scripts/llama_cpp (llama-bench, convert_lora_to_gguf.py) and build/release/nnpipe. Prints a
Markdown table for bench/RESULTS.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NNPIPE = Path(os.environ.get("NNPIPE_BIN", ROOT / "build" / "release" / "nnpipe"))


def llama_bin_dir():
    d = os.environ.get("NNPIPE_LLAMA_CPP_BIN")
    if not d:
        out = subprocess.run([str(ROOT / "scripts" / "llama_cpp")], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        d = str(Path(out) / "build" / "bin")
    return Path(d)


# nnpipe's own environment: without --keep-openblas-env, an inherited OPENBLAS_CORETYPE (some
# machine images pin "Haswell", AVX2 kernels on AVX-512 CPUs) is removed so that nnpipe picks the
# OpenBLAS kernels by CPU features as it does on a plain machine; llama.cpp does not use OpenBLAS.
NNPIPE_ENV = dict(os.environ)


def run_with_rss(cmd, env=None):
    """Runs cmd; returns (stdout, the child's own peak RSS in MiB, from wait4)."""
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=env)
    chunks = []
    while True:
        b = p.stdout.read(65536)
        if not b:
            break
        chunks.append(b)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}")
    return b"".join(chunks).decode(), ru.ru_maxrss / 1024


def llama_bench(bin_dir, model, threads, pp, tg, reps):
    cmd = [bin_dir / "llama-bench", "-m", model, "-t", threads, "-r", reps, "-o", "json"]
    cmd += ["-p", pp, "-n", 0] if pp else ["-p", 0, "-n", tg]
    out, rss = run_with_rss(cmd)
    r = json.loads(out)[0]
    return r["avg_ts"], rss


def nnpipe_bench(model, threads, pp, tg, reps, loras=(), binary=None):
    cmd = [binary or NNPIPE, "infer", "--model", model, "--threads", threads, "--bench-reps", reps, "--json",
           "--session", "bench", "--runs-dir", "/tmp/nnpipe-bench-runs"]
    cmd += ["--bench-pp", pp] if pp else ["--bench-tg", tg, "--ctx-size", tg + 8]
    if pp:
        cmd += ["--ctx-size", pp]
    for l in loras:
        cmd += ["--lora", l]
    out, rss = run_with_rss(cmd, NNPIPE_ENV)
    b = json.loads(out)["metrics"]["bench"]
    return b["pp" if pp else "tg"]["tok_s"], rss


def make_adapters(work, model_dir, bin_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    src = bin_dir.parent.parent / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    outs = []
    for i in range(2):
        g = work / f"lora{i}.gguf"
        outs.append(g)
        if g.exists():
            continue
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        m = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn_like(p) * 0.01)
        m.save_pretrained(work / f"peft{i}")
        subprocess.run([sys.executable, str(src / "convert_lora_to_gguf.py"), str(work / f"peft{i}"),
                        "--base", str(model_dir), "--outtype", "f16", "--outfile", str(g)],
                       check=True, capture_output=True)
    return outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per row")
    ap.add_argument("--reps", type=int, default=3, help="repetitions inside each run")
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/nnpipe-bench-infer")
    ap.add_argument("--no-lora", action="store_true")
    ap.add_argument("--before", type=Path, help="another nnpipe binary, run in the same rounds")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="run nnpipe with an inherited OPENBLAS_CORETYPE instead of removing it")
    a = ap.parse_args()
    if not a.keep_openblas_env and NNPIPE_ENV.pop("OPENBLAS_CORETYPE", None):
        print("note: OPENBLAS_CORETYPE removed from nnpipe's environment (--keep-openblas-env keeps it)",
              file=sys.stderr)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = llama_bin_dir()
    model_dir = work / "qwen1.5-0.5b"
    if not (model_dir / "config.json").exists():
        subprocess.run([NNPIPE, "init-model", "--preset", "qwen1.5-0.5b", "--seed", "0", "--out",
                        model_dir], check=True)
    rows = []
    for t in a.types.split(","):
        g = work / f"model-{t}.gguf"
        if not g.exists():
            subprocess.run([NNPIPE, "export-gguf", "--model", model_dir, "--type", t, "--out", g],
                           check=True)
        for test, pp, tg in (("pp512", 512, 0), ("tg128", 0, 128)):
            ll, nn, ll_rss, nn_rss, old = [], [], [], [], []
            for _ in range(a.rounds):
                v, r = llama_bench(bin_dir, g, a.threads, pp, tg, a.reps)
                ll.append(v), ll_rss.append(r)
                v, r = nnpipe_bench(g, a.threads, pp, tg, a.reps)
                nn.append(v), nn_rss.append(r)
                if a.before:
                    old.append(nnpipe_bench(g, a.threads, pp, tg, a.reps, binary=a.before)[0])
            rows.append((t, test, statistics.median(ll), statistics.median(nn), max(ll_rss),
                         max(nn_rss), statistics.median(old) if old else None))
            print(rows[-1], file=sys.stderr, flush=True)
    lora_rows = []
    if not a.no_lora:
        loras = make_adapters(work, model_dir, bin_dir)
        g = work / f"model-{a.types.split(',')[0]}.gguf"
        base, two, old_two = [], [], []
        for _ in range(a.rounds):
            base.append(nnpipe_bench(g, a.threads, 0, 128, a.reps)[0])
            two.append(nnpipe_bench(g, a.threads, 0, 128, a.reps, loras)[0])
            if a.before:
                old_two.append(nnpipe_bench(g, a.threads, 0, 128, a.reps, loras, a.before)[0])
        lora_rows.append((g.name, statistics.median(base), statistics.median(two),
                          statistics.median(old_two) if old_two else None))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    print(f"Machine: {cpu}, {os.cpu_count()} cores; threads {a.threads}; rounds {a.rounds} "
          f"alternating, {a.reps} reps each; medians.\n")
    report = subprocess.run([str(NNPIPE), "--version"], capture_output=True, text=True,
                            env=NNPIPE_ENV).stdout.strip()
    print("nnpipe --version:\n```\n" + report + "\n```\n")
    before = " before tok/s | after/before |" if a.before else ""
    print("| type | test | llama.cpp tok/s | nnpipe tok/s | ratio | llama.cpp peak RSS MiB | "
          "nnpipe peak RSS MiB |" + before)
    print("|---|---|---|---|---|---|---|" + ("---|---|" if a.before else ""))
    for t, test, l, n, lr, nr, o in rows:
        extra = f" {o:.2f} | {n / o:.3f} |" if o else ""
        print(f"| {t} | {test} | {l:.2f} | {n:.2f} | {n / l:.2f}x | {lr:.0f} | {nr:.0f} |{extra}")
    for name, b, two, o in lora_rows:
        print(f"\nnnpipe tg128 on {name}: {b:.2f} tok/s without adapters, {two:.2f} with two "
              f"stacked r16 adapters ({two / b:.2f}x)"
              + (f"; before: {o:.2f} with the adapters ({two / o:.3f})" if o else ""))


if __name__ == "__main__":
    main()
