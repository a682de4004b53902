#!/usr/bin/env python3
"""Training benchmark: nnpipe finetune-lora / finetune-full vs transformers+PEFT on PyTorch CPU.

Run with the oracle venv's python after ./scripts/build release:
    python bench/bench_train.py [--modes lora,full] [--steps 20] [--repeats 1] [--work DIR]
                                [--preset qwen1.5-0.5b | --model DIR] [--skip-nnpipe] [--skip-peer]

Setup (the issue's): a randomly initialised Qwen1.5-0.5B-shaped model (`nnpipe init-model`, bf16 on
disk, nnpipe's small default tokenizer, vocab 151936), 24 deterministic chat conversations each
truncated by `nnpipe data check --max-seq-len 256` to exactly 256 tokens, batch 1, 2 threads, the
examples in file order, AdamW (weight decay 0), constant LR, grad clipping at 1.0. LoRA: r16,
alpha 32, dropout 0 on q,k,v,o,gate,up,down_proj, lr 1e-4. Full: all parameters, lr 1e-5.

Both sides train on the SAME token ids (the peer reads nnpipe's tokenized dump), so the losses are
comparable step by step. Timing: all --steps optimizer steps run; the first --warmup steps are
excluded from tokens/s (input tokens of the timed steps / their wall time, forward + backward +
clip + optimizer), and the loss compared is the one of step --steps counting every step.
Peak RSS: the peer runs in its own subprocess (ru_maxrss of that process: model load + training);
nnpipe's is the max of `/usr/bin/time -v`'s "Maximum resident set size" and its summary.json.
The peer uses fp32 weights and attn_implementation="sdpa" (its fastest CPU default; --peer-attn eager
to compare).
Run it on an idle machine: with 2 OpenMP threads on 2 cores, any other busy process makes every
parallel region wait for a scheduler slice (a tiny model: 30 ms/step idle, 800 ms/step beside a
compile); the script warns when the load average is above 0.5 at the start.
Quick check of the harness itself: --preset tiny --steps 5.
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = {"lora": 1e-4, "full": 1e-5}
# The goals: nnpipe/peer ratios.
GOALS = {"lora": {"tps": 1.5, "rss": 0.7}, "full": {"tps": 1.2, "rss": None}}
LOSS_TOL = 0.01
NNPIPE_WARMUP = 2  # steps that nnpipe's summary.json leaves out of tokens_per_s

# ----------------------------------------------------------------------------------------------
# Peer worker (a separate process so its peak RSS is its own).


def proc_status_bytes(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peer_worker(a):
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    examples = [json.loads(line) for line in Path(a.tokens).read_text().splitlines() if line.strip()]
    if not examples:
        raise SystemExit(f"{a.tokens}: no examples")

    t0 = time.perf_counter()
    # fp32: fp32 weights; autocast: fp32 weights, forward under torch.autocast(bfloat16); bf16: the
    # model loaded in bfloat16 (PEFT keeps its adapters in fp32).
    dtype = torch.bfloat16 if a.peer_config == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=a.peer_attn)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if a.mode == "lora":
        import peft
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=SEVEN, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        versions["peft"] = peft.__version__
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    load_s = time.perf_counter() - t0
    rss_after_load = proc_status_bytes("VmRSS")
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)

    losses, step_s, step_tokens, grad_norms = [], [], [], []
    for step in range(a.steps):
        ex = examples[step % len(examples)]  # file order, no shuffle
        ids = torch.tensor([ex["input_ids"]], dtype=torch.long)
        labels = torch.tensor([ex["labels"]], dtype=torch.long)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.peer_config == "autocast"):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t)
        losses.append(float(out.loss.detach()))
        grad_norms.append(float(gn))
        step_tokens.append(ids.numel())
        print(f"peer {a.mode} step {step + 1}/{a.steps} loss {losses[-1]:.6f} {step_s[-1]:.2f}s",
              file=sys.stderr, flush=True)

    timed_s = sum(step_s[a.warmup:])
    timed_tokens = sum(step_tokens[a.warmup:])
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, proc_status_bytes("VmHWM"))
    print(json.dumps({
        "tokens_per_s": timed_tokens / timed_s if timed_s > 0 else None,
        "best_step_tokens_per_s": max(t / s for t, s in zip(step_tokens[a.warmup:], step_s[a.warmup:])),
        "peak_rss_bytes": rss,
        "losses": losses,
        "grad_norms": grad_norms,
        "step_s": step_s,
        "load_s": load_s,
        "rss_after_load_bytes": rss_after_load,
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
        "versions": versions,
    }))


# ----------------------------------------------------------------------------------------------
# Data.

WORDS = (
    "the model learns from data and each step of training moves its weights a little toward "
    "lower loss while the optimizer keeps running averages of gradients so that noisy updates "
    "cancel out over time a small learning rate is safer but slower and a warmup phase helps "
    "when the first batches are far from the solution people often ask how many examples they "
    "need for a useful adapter which depends on the task the base model and how clean the "
    "labels are in practice a few hundred good conversations can already change the tone of "
    "answers for longer documents the sequence length matters because attention cost grows with "
    "it memory is another limit on small machines where every gigabyte counts river mountain "
    "garden window coffee morning evening library museum bicycle station weather report letter "
    "kitchen recipe bread butter garden flowers summer winter autumn spring ocean harbor ship "
    "captain journey market village city street bridge tower castle forest meadow valley"
).split()
TOPICS = ["gardening", "trains", "baking bread", "the history of maps", "learning a language",
          "astronomy", "chess openings", "bicycle repair", "writing letters", "mountain hiking",
          "coffee brewing", "museum design"]


def sentence(rng):
    n = rng.randint(8, 20)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.2:
        words.insert(rng.randint(1, n - 1), str(rng.randint(2, 1999)))
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def make_dataset(path, n, seed=1234):
    """n deterministic conversations whose rendered length is far beyond 256 tokens."""
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        user = f"Can you explain {topic} in some detail? {sentence(rng)}"
        reply = "\n\n".join(" ".join(sentence(rng) for _ in range(5)) for _ in range(4))
        convs.append({"messages": [{"role": "user", "content": user},
                                   {"role": "assistant", "content": reply}]})
    path.write_text(json.dumps(convs, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Helpers.


def run(cmd, what, env=None, capture=True):
    p = subprocess.run(cmd, env=env, text=True, capture_output=capture)
    if p.returncode != 0:
        tail = "\n".join(((p.stderr or "") + (p.stdout or "")).splitlines()[-25:])
        raise SystemExit(f"error: {what} failed (exit {p.returncode}):\n  $ {' '.join(map(str, cmd))}\n{tail}")
    return p


def machine_info():
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], text=True, capture_output=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            model = m.group(1).strip()
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True,
                                capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "-uno"], text=True,
                               capture_output=True).stdout.strip()
        commit += "-dirty" if dirty else ""
    except OSError:
        commit = "?"
    return {"cpu": model, "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "python": platform.python_version()}


def run_peer(a, mode, model, tokens, config="fp32"):
    cmd = [a.python, str(Path(__file__).resolve()), "--peer-worker", "--peer-mode", mode, "--model", str(model),
           "--peer-config", config,
           "--peer-tokens", str(tokens), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--threads", str(a.threads), "--peer-lr", str(LR[mode]), "--peer-attn", a.peer_attn]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=None if a.verbose else subprocess.PIPE)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or "").splitlines()[-25:])
        raise SystemExit(f"error: peer ({mode}) failed (exit {p.returncode}):\n{tail}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["loss_at_end"] = r["losses"][-1]
    return r


def run_nnpipe(a, mode, model, data, work, rep):
    session = f"bench-{mode}-{rep}"
    runs = work / "runs"
    shutil.rmtree(runs / session, ignore_errors=True)
    cmd = [str(a.nnpipe), f"finetune-{mode}", "--model", str(model), "--data", str(data), "--session", session,
           "--runs-dir", str(runs), "--max-seq-len", str(a.seq_len), "--batch-size", "1",
           "--max-steps", str(a.steps)]
    if mode == "lora":
        cmd += ["--rank", "16", "--alpha", "32", "--dropout", "0"]
        if a.nnpipe_matmul_dtype:
            cmd += ["--matmul-dtype", a.nnpipe_matmul_dtype]
    cmd += ["--lr", f"{LR[mode]:g}", "--scheduler", "constant", "--weight-decay", "0", "--max-grad-norm", "1",
            "--no-shuffle", "--threads", str(a.threads)]
    timev = work / f"time-{mode}-{rep}.txt"
    full = (["/usr/bin/time", "-v", "-o", str(timev)] if Path("/usr/bin/time").exists() else []) + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if not a.keep_openblas_env:
        # Some machine images pin OPENBLAS_CORETYPE=Haswell (AVX2 kernels on AVX-512 CPUs); without
        # it nnpipe picks OpenBLAS's kernels by CPU features. The peer does not use OpenBLAS.
        env.pop("OPENBLAS_CORETYPE", None)
    t = time.perf_counter()
    p = subprocess.run(full, env=env, text=True, stdout=None if a.verbose else subprocess.PIPE,
                       stderr=None if a.verbose else subprocess.PIPE)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        tail = "\n".join(((p.stderr or "") + (p.stdout or "")).splitlines()[-25:])
        hint = ""
        if "subcommand" in tail.lower() and f"finetune-{mode}" not in subprocess.run(
                [str(a.nnpipe), "--help"], text=True, capture_output=True).stdout:
            hint = f"\n(hint: {a.nnpipe} has no finetune-{mode} subcommand; rebuild it, or pass --skip-nnpipe)"
        raise SystemExit(f"error: nnpipe finetune-{mode} failed (exit {p.returncode}):\n"
                         f"  $ {' '.join(cmd)}\n{tail}{hint}")
    out_dir = runs / session / f"finetune_{mode}"
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise SystemExit(f"error: nnpipe finetune-{mode} succeeded but wrote no {summary_path}")
    metrics = json.loads(summary_path.read_text()).get("metrics", {})
    for key in ("tokens_per_s", "peak_rss_bytes", "final_loss"):
        if key not in metrics:
            raise SystemExit(f"error: {summary_path}: metrics has no \"{key}\"")
    rss = int(metrics["peak_rss_bytes"])
    if timev.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timev.read_text())
        if m:
            rss = max(rss, int(m.group(1)) * 1024)
    losses, rows = [], []
    mpath = out_dir / "metrics.jsonl"
    if mpath.exists():
        rows = sorted((json.loads(line) for line in mpath.read_text().splitlines() if line.strip()),
                      key=lambda r: r["step"])
        losses = [r["loss"] for r in rows]
    tps = float(metrics["tokens_per_s"])
    if a.warmup != NNPIPE_WARMUP:
        # summary.json always leaves out nnpipe's first 2 steps; recompute from the per-step rows
        # (cumulative tokens, per-step tokens/s) so both sides exclude the same steps.
        if len(rows) != a.steps:
            raise SystemExit(f"error: {mpath}: need {a.steps} rows to honour --warmup {a.warmup}")
        toks = [r["tokens"] - (rows[i - 1]["tokens"] if i else 0) for i, r in enumerate(rows)]
        secs = [t / r["tokens_per_s"] for t, r in zip(toks, rows)]
        tps = sum(toks[a.warmup:]) / sum(secs[a.warmup:])
    best = max((r["tokens_per_s"] for r in rows[a.warmup:]), default=None)
    return {"tokens_per_s": tps, "best_step_tokens_per_s": best, "peak_rss_bytes": rss, "losses": losses,
            "loss_at_end": float(metrics["final_loss"]), "wall_s": wall}


def median_result(rs):
    out = dict(rs[0])  # losses are deterministic: keep the first run's
    out["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rs)
    out["peak_rss_bytes"] = statistics.median(r["peak_rss_bytes"] for r in rs)
    out["runs_tokens_per_s"] = [r["tokens_per_s"] for r in rs]
    out["runs_peak_rss_bytes"] = [r["peak_rss_bytes"] for r in rs]
    return out


def mib(b):
    return b / (1 << 20)


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnpipe", type=Path, default=REPO / "build/release/nnpipe")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nnpipe_bench_train"))
    ap.add_argument("--model", type=Path, help="reuse this model directory instead of init-model")
    ap.add_argument("--preset", default="qwen1.5-0.5b", help="init-model preset (tiny for a quick check)")
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="leading steps excluded from tokens/s")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs per side; the median counts")
    ap.add_argument("--skip-nnpipe", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--nnpipe-matmul-dtype", choices=["f32", "bf16"],
                    help="LoRA: nnpipe's --matmul-dtype (bf16: the frozen base's products in bf16, "
                         "AVX-512 BF16); default: not passed (f32)")
    ap.add_argument("--peer-attn", default="sdpa", choices=["sdpa", "eager"],
                    help="the peer's attention implementation (sdpa: its fastest CPU default)")
    ap.add_argument("--python", default=sys.executable, help="python with torch/transformers/peft for the peer")
    ap.add_argument("--json-out", type=Path, help="also write all results as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true", help="show both sides' progress output")
    # Internal: the peer subprocess.
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-mode", help=argparse.SUPPRESS)
    ap.add_argument("--peer-tokens", help=argparse.SUPPRESS)
    ap.add_argument("--peer-lr", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--peer-config", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="run nnpipe with an inherited OPENBLAS_CORETYPE instead of removing it")
    ap.add_argument("--peer-configs", default="fp32",
                    help="peer configurations to run, comma-separated: fp32 (fp32 weights), autocast "
                         "(fp32 weights, bf16 autocast), bf16 (model loaded in bf16); ratios are "
                         "against the fastest")
    a = ap.parse_args()
    if a.peer_worker:
        a.mode, a.tokens, a.lr = a.peer_mode, a.peer_tokens, a.peer_lr
        return peer_worker(a)

    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in LR:
            ap.error(f"--modes: unknown mode {m!r} (lora, full)")
    if a.warmup >= a.steps:
        ap.error("--warmup must be below --steps (some steps must be timed)")
    if not a.nnpipe.exists():
        raise SystemExit(f"error: {a.nnpipe} not found; run ./scripts/build release or pass --nnpipe")
    a.work.mkdir(parents=True, exist_ok=True)

    model = a.model
    if model is None:
        model = a.work / f"model-{a.preset}"
        if not (model / "config.json").exists():
            print(f"init-model --preset {a.preset} -> {model}", file=sys.stderr)
            run([a.nnpipe, "init-model", "--preset", a.preset, "--seed", "0", "--out", model], "nnpipe init-model")
    data = a.work / "data.json"
    make_dataset(data, a.examples)
    tokens = a.work / "tok.jsonl"
    run([a.nnpipe, "data", "check", data, "--model", model, "--max-seq-len", str(a.seq_len), "--dump", tokens],
        "nnpipe data check")
    examples = [json.loads(line) for line in tokens.read_text().splitlines() if line.strip()]
    bad = [i for i, e in enumerate(examples) if len(e["input_ids"]) != a.seq_len or len(e["labels"]) != a.seq_len]
    if len(examples) != a.examples or bad:
        raise SystemExit(f"error: {tokens}: expected {a.examples} examples of exactly {a.seq_len} tokens; "
                         f"got {len(examples)}, wrong length: {bad[:5]}")
    n_labels = [sum(1 for x in e["labels"] if x != -100) for e in examples]

    info = machine_info()
    load0 = os.getloadavg()[0]
    info["load_avg_start"] = load0
    if load0 > 0.5:
        # With 2 OpenMP threads on 2 cores, one busy core makes every parallel region wait for a
        # scheduler slice: a tiny model measured 30 ms/step idle vs 800 ms/step beside a compile.
        print(f"warning: load average {load0:.1f} before the run; 2-thread timings on a busy machine are "
              f"unreliable (run when the machine is idle)", file=sys.stderr)
    config = json.loads((model / "config.json").read_text())
    results = {}
    for mode in modes:
        peer_runs, nn_runs = [], []
        for rep in range(a.repeats):
            # Alternate the sides so drifting machine load hits both alike.
            if not a.skip_nnpipe:
                print(f"[{mode} {rep + 1}/{a.repeats}] nnpipe ...", file=sys.stderr, flush=True)
                nn_runs.append(run_nnpipe(a, mode, model, data, a.work, rep))
            if not a.skip_peer:
                for cfg in a.peer_configs.split(","):
                    print(f"[{mode} {rep + 1}/{a.repeats}] transformers+PEFT {cfg} ...", file=sys.stderr,
                          flush=True)
                    peer_runs.append((cfg, run_peer(a, mode, model, tokens, cfg)))
        peers = {cfg: median_result([r for c, r in peer_runs if c == cfg])
                 for cfg in dict.fromkeys(c for c, _ in peer_runs)}
        fastest = max(peers, key=lambda c: peers[c]["tokens_per_s"]) if peers else None
        results[mode] = {"nnpipe": median_result(nn_runs) if nn_runs else None,
                         "peer": peers[fastest] if peers else None, "peer_config": fastest,
                         "peers": peers}

    versions = {}
    for mode in modes:
        if results[mode]["peer"]:
            versions.update(results[mode]["peer"]["versions"])
    nn_env = dict(os.environ)
    if not a.keep_openblas_env:
        nn_env.pop("OPENBLAS_CORETYPE", None)
    nn_version = subprocess.run([a.nnpipe, "--version"], text=True, capture_output=True,
                                env=nn_env).stdout.strip()

    # Report.
    print("## Training: nnpipe vs transformers+PEFT (PyTorch CPU)\n")
    print(f"- Machine: `{info['cpu']}` (lscpu model name), {info['cores']} cores, "
          f"load average {info['load_avg_start']:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"- Date: {info['date']}, commit {info['commit']}, {nn_version}, Python {info['python']}"
          + "".join(f", {k} {v}" for k, v in versions.items()))
    print(f"- Model: `{model}` ({config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
          f"vocab {config.get('vocab_size')}, {config.get('torch_dtype', config.get('dtype'))} on disk); "
          f"{len(examples)} examples x {a.seq_len} tokens ({min(n_labels)}-{max(n_labels)} label tokens), batch 1, "
          f"{a.threads} threads, {a.steps} steps, first {a.warmup} untimed, median of {a.repeats}")
    print(f"- Peer: {a.peer_configs} (fp32 weights / fp32 weights under bf16 autocast / the model loaded in "
          f"bf16), attn_implementation={a.peer_attn}, torch.optim.AdamW, clip_grad_norm_(1.0); "
          "LoRA r16 alpha 32 dropout 0 on all seven projections; ratios against the fastest peer\n")
    print("| mode | implementation | tokens/s | peak RSS MiB | loss@%d | nnpipe/peer tokens/s | nnpipe/peer RSS |"
          % a.steps)
    print("|---|---|---:|---:|---:|---:|---:|")
    verdicts = []
    for mode in modes:
        nn, pr = results[mode]["nnpipe"], results[mode]["peer"]
        nn_name = "nnpipe" + (f" (--matmul-dtype {a.nnpipe_matmul_dtype})"
                              if mode == "lora" and a.nnpipe_matmul_dtype else "")
        sides = [(nn_name, nn)] + [(f"transformers+PEFT {c}" + (" (fastest)" if c == results[mode]["peer_config"]
                                                                 and len(results[mode]["peers"]) > 1 else ""), r)
                                    for c, r in results[mode]["peers"].items()]
        for name, r in sides:
            if r is None:
                continue
            tps_ratio = rss_ratio = ""
            if name == nn_name and pr is not None:
                tps_ratio = f"{r['tokens_per_s'] / pr['tokens_per_s']:.2f}x"
                rss_ratio = f"{r['peak_rss_bytes'] / pr['peak_rss_bytes']:.2f}x"
            print(f"| {mode} | {name} | {r['tokens_per_s']:.1f} | {mib(r['peak_rss_bytes']):.0f} | "
                  f"{r['loss_at_end']:.4f} | {tps_ratio} | {rss_ratio} |")
        if nn is not None and pr is not None:
            g = GOALS[mode]
            tr = nn["tokens_per_s"] / pr["tokens_per_s"]
            verdicts.append(f"{mode}: tokens/s {tr:.2f}x (goal >= {g['tps']}x) {'PASS' if tr >= g['tps'] else 'FAIL'}")
            if g["rss"] is not None:
                rr = nn["peak_rss_bytes"] / pr["peak_rss_bytes"]
                verdicts.append(f"{mode}: peak RSS {rr:.2f}x (goal <= {g['rss']}x) "
                                f"{'PASS' if rr <= g['rss'] else 'FAIL'}")
            rel = abs(nn["loss_at_end"] - pr["loss_at_end"]) / abs(pr["loss_at_end"])
            verdicts.append(f"{mode}: loss@{a.steps} differs by {100 * rel:.3f}% (goal <= 1%) "
                            f"{'PASS' if rel <= LOSS_TOL else 'FAIL'}")
            if len(nn["losses"]) == len(pr["losses"]):
                worst = max(abs(x - y) / abs(y) for x, y in zip(nn["losses"], pr["losses"]))
                verdicts.append(f"{mode}: largest per-step loss difference {100 * worst:.3f}%")
    if verdicts:
        print("\n" + "\n".join(f"- {v}" for v in verdicts))
    print("\nPer-step losses:")
    for mode in modes:
        for name in ("nnpipe", "peer"):
            r = results[mode][name]
            if r is not None:
                print(f"- {mode} {name}: " + " ".join(f"{x:.4f}" for x in r["losses"]))
    # The fastest single step is a load-robust cross-check: on a shared machine the median is only
    # as good as the quietest stretch of the run.
    best = [f"{m} {n}: {results[m][n]['best_step_tokens_per_s']:.1f}" for m in modes for n in ("nnpipe", "peer")
            if results[m][n] and results[m][n].get("best_step_tokens_per_s")]
    if best:
        print("\nFastest timed step, tokens/s (first run): " + "; ".join(best))
    if any(results[m]["peer"] for m in modes):
        print("\nPeer details: " + "; ".join(
            f"{m}: load {results[m]['peer']['load_s']:.1f}s, RSS after load "
            f"{mib(results[m]['peer']['rss_after_load_bytes']):.0f} MiB, {results[m]['peer']['trainable_params']:,} "
            f"trainable, runs tokens/s {', '.join(f'{x:.1f}' for x in results[m]['peer']['runs_tokens_per_s'])}"
            for m in modes if results[m]["peer"]))
    if a.json_out:
        a.json_out.write_text(json.dumps({"machine": info, "versions": versions, "nnpipe_version": nn_version,
                                          "args": {k: str(v) for k, v in vars(a).items()}, "results": results},
                                         indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
