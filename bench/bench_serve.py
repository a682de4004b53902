#!/usr/bin/env python3
"""nnpipe serve vs llama-server (built from the same llama.cpp sources as the other oracles) on the
Qwen1.5-0.5B shape, F16, random weights: N concurrent streaming clients (1, 8, 32), each request
generating exactly --tokens tokens (ignore_eos, greedy), (a) all on the base, (b) client i on
adapter i % 4 (four random r16 LoRA adapters on all seven projections). Reports aggregate generated
tokens/s and p50/p99 time to first token (the first streamed chunk with content), medians of the
repeats. Both servers get the same GGUF, threads, slots (--parallel) and context per slot.

  .venv/bin/python bench/bench_serve.py [--servers llama,nnpipe] [--clients 1,8,32] [--repeats 2]
      [--threads 2] [--parallel 8] [--tokens 32] [--adapters 4] [--endpoint completions|chat]
      [--nnpipe-select model|lora] [--work DIR] [--json OUT]

llama-server comes from ./scripts/llama_server (or $NNPIPE_LLAMA_SERVER); nnpipe from
build/release/nnpipe (or $NNPIPE_BIN). A server that is not there is skipped with a message. The
adapters go to llama-server as --lora FILE (with --lora-init-without-apply, so base requests run
without them) and are picked per request with `lora: [{"id": k, "scale": 1}]`; to nnpipe serve as
--lora aK=FILE, picked with `model: "aK"` (or the same `lora` field with --nnpipe-select lora).
(a) runs on a server started without adapters. Prints a Markdown table for bench/RESULTS.md.
"""
import argparse
import datetime
import http.client
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NNPIPE = Path(os.environ.get("NNPIPE_BIN", ROOT / "build" / "release" / "nnpipe"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Model and adapters

def make_model(work):
    model_dir = work / "qwen1.5-0.5b"
    if not (model_dir / "config.json").exists():
        # The real Qwen tokenizer: the generated ids decode to text, so time to first token is the
        # first streamed piece (the embedded demo tokenizer knows only 815 of the 151,936 ids).
        subprocess.run([str(NNPIPE), "init-model", "--preset", "qwen1.5-0.5b", "--seed", "0", "--out",
                        str(model_dir), "--tokenizer",
                        str(ROOT / "tests" / "fixtures" / "qwen-tokenizer" / "tokenizer.json")],
                       check=True)
    gguf = work / "model-f16.gguf"
    if not gguf.exists():
        subprocess.run([str(NNPIPE), "export-gguf", "--model", str(model_dir), "--type", "f16", "--out",
                        str(gguf)], check=True)
    return model_dir, gguf


def make_adapters(work, model_dir, n, r=16):
    """n random PEFT adapters (r, alpha 2r, all seven projections; B != 0), as GGUF LoRA files
    written by nnpipe export-lora-gguf (byte-equal to convert_lora_to_gguf.py: see
    tests/conformance/test_export_lora_gguf.py)."""
    import numpy as np
    from safetensors.numpy import save_file
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // heads
    shapes = {"q_proj": (heads * hd, h), "k_proj": (kv * hd, h), "v_proj": (kv * hd, h),
              "o_proj": (h, heads * hd), "gate_proj": (inter, h), "up_proj": (inter, h),
              "down_proj": (h, inter)}
    outs = []
    for i in range(n):
        g = work / f"lora{i}-r{r}.gguf"
        outs.append(g)
        if g.exists():
            continue
        rng = np.random.default_rng(1000 + i)
        d = work / f"peft{i}-r{r}"
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for l in range(layers):
            for t in TARGETS:
                out_f, in_f = shapes[t]
                part = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                key = f"base_model.model.model.layers.{l}.{part}.{t}"
                bound = 1.0 / math.sqrt(in_f)
                tensors[f"{key}.lora_A.weight"] = rng.uniform(-bound, bound, (r, in_f)).astype(np.float32)
                tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out_f, r)) * 0.01).astype(np.float32)
        save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
            "lora_dropout": 0.0, "target_modules": TARGETS, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "inference_mode": True, "base_model_name_or_path": str(model_dir)}))
        subprocess.run([str(NNPIPE), "export-lora-gguf", "--adapter", str(d), "--base", str(model_dir),
                        "--type", "f16", "--out", str(g)], check=True)
    return outs


# ---------------------------------------------------------------------------------------------
# Servers

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_bin():
    b = os.environ.get("NNPIPE_LLAMA_SERVER")
    if b:
        return Path(b)
    p = subprocess.run([str(ROOT / "scripts" / "llama_server")], capture_output=True, text=True)
    if p.returncode:
        log(p.stderr[-2000:])
        return None
    return Path(p.stdout.strip().splitlines()[-1])


def nnpipe_has_serve():
    if not NNPIPE.exists():
        return False, f"{NNPIPE} does not exist (./scripts/build release nnpipe)"
    # CLI11 answers `nnpipe serve --help` with the main help when there is no such subcommand.
    p = subprocess.run([str(NNPIPE), "--help"], capture_output=True, text=True)
    if not any(l.split()[:1] == ["serve"] for l in p.stdout.splitlines()):
        return False, f"{NNPIPE} has no `serve` subcommand yet (this build predates it)"
    return True, ""


class Server:
    def __init__(self, kind, binary, gguf, adapters, a, work):
        self.kind, self.port = kind, free_port()
        tag = f"{kind}-{len(adapters)}a"
        self.log_path = work / f"server-{tag}.log"
        if kind == "llama":
            cmd = [binary, "-m", gguf, "-t", a.threads, "-tb", a.threads, "-np", a.parallel,
                   "-c", a.ctx * a.parallel, "--host", "127.0.0.1", "--port", self.port, "--no-webui"]
            for g in adapters:
                cmd += ["--lora", g]
            if adapters:
                cmd += ["--lora-init-without-apply"]
        else:
            cmd = [binary, "serve", "--model", gguf, "--threads", a.threads, "--parallel", a.parallel,
                   "--ctx-size", a.ctx, "--host", "127.0.0.1", "--port", self.port]
            for i, g in enumerate(adapters):
                cmd += ["--lora", f"a{i}={g}"]
        self.cmd = [str(c) for c in cmd]
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        self.wait_ready()

    def log_tail(self):
        self.logf.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout=300):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(self.cmd)} exited {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.kind} server not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


# ---------------------------------------------------------------------------------------------
# Clients

def one_request(port, path, body, api):
    """One streaming request: (ttft s, generated tokens, total s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"POST {path} -> {resp.status}: {resp.read()[:500]!r}")
    ttft, pieces, usage = None, 0, None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        j = json.loads(data)
        if j.get("usage"):
            usage = j["usage"]
        for c in j.get("choices") or []:
            piece = c.get("text") if api == "completions" else (c.get("delta") or {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                pieces += 1
    t1 = time.perf_counter()
    conn.close()
    n = usage.get("completion_tokens") if usage else None
    return ttft if ttft is not None else t1 - t0, n if n is not None else pieces, t1 - t0


def body_for(server_kind, a, client, req, adapter):
    # Distinct prompts: a prompt cache may reuse only the shared opening, the same for both.
    text = (f"Request {req} of client {client}: write a short story about a lighthouse keeper "
            f"who finds a message in a bottle number {client * 100 + req}.")
    b = {"max_tokens": a.tokens, "ignore_eos": True, "temperature": 0, "stream": True,
         "stream_options": {"include_usage": True}}
    if a.endpoint == "chat":
        b["messages"] = [{"role": "user", "content": text}]
    else:
        b["prompt"] = text
    if adapter is not None:
        if server_kind == "nnpipe" and a.nnpipe_select == "model":
            b["model"] = f"a{adapter}"
        else:
            b["lora"] = [{"id": adapter, "scale": 1.0}]
    return b


def percentile(v, q):
    s = sorted(v)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run_load(server, a, clients, n_adapters):
    """All clients at once, each sending its requests back to back. Returns (tokens/s, ttft p50,
    ttft p99, mean tokens per request)."""
    path = "/v1/chat/completions" if a.endpoint == "chat" else "/v1/completions"
    per_client = max(a.min_requests_per_client, math.ceil(a.min_requests / clients))
    results, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(ci):
        try:
            start.wait()
            for r in range(per_client):
                adapter = ci % n_adapters if n_adapters else None
                t_send = time.perf_counter()
                ttft, n, total = one_request(server.port, path, body_for(server.kind, a, ci, r, adapter),
                                             a.endpoint)
                with lock:
                    results.append((t_send, t_send + total, ttft, n))
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]}\n{server.log_tail()}")
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    tokens = sum(r[3] for r in results)
    ttfts = [r[2] for r in results]
    return tokens / wall, percentile(ttfts, 0.5), percentile(ttfts, 0.99), tokens / len(results)


def bench_server(kind, binary, gguf, loras, a, work):
    rows = []
    for n_adapters in (0, a.adapters):
        srv = Server(kind, binary, gguf, loras[:n_adapters], a, work)
        try:
            # Warm-up (weights paged in, every adapter touched once).
            for k in range(max(1, n_adapters)):
                one_request(srv.port, "/v1/chat/completions" if a.endpoint == "chat" else "/v1/completions",
                            body_for(kind, a, 999, k, k if n_adapters else None), a.endpoint)
            for clients in a.clients:
                reps = [run_load(srv, a, clients, n_adapters) for _ in range(a.repeats)]
                row = dict(server=kind, clients=clients, adapters=n_adapters,
                           tok_s=statistics.median(r[0] for r in reps),
                           ttft_p50=statistics.median(r[1] for r in reps),
                           ttft_p99=statistics.median(r[2] for r in reps),
                           tokens_per_request=statistics.median(r[3] for r in reps),
                           repeats=[list(r) for r in reps])
                rows.append(row)
                log(json.dumps(row))
                if abs(row["tokens_per_request"] - a.tokens) > 1e-9:
                    log(f"warning: {kind} generated {row['tokens_per_request']:.2f} tokens per request, "
                        f"not {a.tokens}")
        finally:
            srv.stop()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="llama,nnpipe")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256, help="context per slot")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per request")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=8, help="requests per run at least")
    ap.add_argument("--min-requests-per-client", type=int, default=1)
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--nnpipe-select", choices=["model", "lora"], default="model")
    ap.add_argument("--work", default="/tmp/nnpipe-bench-serve")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    a.clients = [int(c) for c in a.clients.split(",")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    servers = []
    for kind in a.servers.split(","):
        if kind == "llama":
            b = llama_server_bin()
            if b is None or not b.exists():
                log("skipping llama-server: ./scripts/llama_server failed (see above)")
                continue
            servers.append((kind, b))
        elif kind == "nnpipe":
            ok, why = nnpipe_has_serve()
            if not ok:
                log(f"skipping nnpipe serve: {why}")
                continue
            servers.append((kind, NNPIPE))
        else:
            sys.exit(f"unknown server {kind!r} (llama, nnpipe)")
    if not servers:
        sys.exit("no server to run")
    if not NNPIPE.exists():
        sys.exit(f"{NNPIPE} is needed to make the model and adapters (./scripts/build release nnpipe)")
    model_dir, gguf = make_model(work)
    loras = make_adapters(work, model_dir, a.adapters)

    rows = []
    load_before = os.getloadavg()
    for kind, binary in servers:
        try:
            rows += bench_server(kind, binary, gguf, loras, a, work)
        except RuntimeError as e:
            if kind != "nnpipe":
                raise
            log(f"skipping nnpipe serve: it did not run the benchmark:\n{e}")

    load_after = os.getloadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    print(f"Machine: {cpu}, {os.cpu_count()} cores; {datetime.date.today()}; Qwen1.5-0.5B shape F16 "
          f"(random weights), {a.threads} threads, {a.parallel} slots, {a.ctx} context per slot, "
          f"{a.tokens} generated tokens per request ({a.endpoint}, streaming), {a.adapters} random "
          f"r16 adapters on all seven projections; medians of {a.repeats} repeats; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other work on the machine).\n")
    print("| server | clients | adapters | generated tok/s | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        what = "base" if not r["adapters"] else f"{r['adapters']} (client i: i % {r['adapters']})"
        name = "llama-server" if r["server"] == "llama" else "nnpipe serve"
        print(f"| {name} | {r['clients']} | {what} | {r['tok_s']:.1f} | {1000 * r['ttft_p50']:.0f} | "
              f"{1000 * r['ttft_p99']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
