"""Size and quality of each GGUF export type versus F16: nnpipe's `eval --ppl --kl-base` (dequantized
f32 compute) side by side with llama.cpp's llama-perplexity (its own kernels, --kl-divergence).

Usage (from the repo root, after ./scripts/build release and ./scripts/llama_cpp):
  .venv/bin/python bench/gguf_quality.py [--model HF_DIR] [--types f32,f16,...] [--ctx 64]
Without --model it trains the pipeline's tiny model (`nnpipe pipeline`, ~2 s) and uses its full
fine-tune. The text is data/tokenizer_corpus.txt plus every message of data/sample*.json(l), i.e.
what the tiny model was trained on and around. Prints a Markdown table.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NNPIPE = Path(os.environ.get("NNPIPE_BIN", ROOT / "build" / "release" / "nnpipe"))
LLAMA_BIN = Path(os.environ["NNPIPE_LLAMA_CPP_BIN"])


def sh(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def text_file(d):
    parts = [(ROOT / "data" / "tokenizer_corpus.txt").read_text()]
    for conv in json.loads((ROOT / "data" / "sample.json").read_text()):
        parts += [m["content"] for m in conv["messages"]]
    for line in (ROOT / "data" / "sample2.jsonl").read_text().splitlines():
        if line.strip():
            parts += [m["content"] for m in json.loads(line)["messages"]]
    p = d / "eval.txt"
    p.write_text("\n".join(parts))
    return p


def llama_ppl(gguf, text, ctx, kl_base_file=None, save_base=None):
    cmd = [LLAMA_BIN / "llama-perplexity", "-m", gguf, "-f", text, "-c", ctx, "-b", ctx, "-t", 2]
    if save_base:
        cmd += ["--kl-divergence-base", save_base]
    if kl_base_file:
        cmd = [LLAMA_BIN / "llama-perplexity", "-m", gguf, "-c", ctx, "-b", ctx, "-t", 2,
               "--kl-divergence-base", kl_base_file, "--kl-divergence"]
    # llama-perplexity 0.3.36 sometimes loses its last log lines at exit (asynchronous logger):
    # rerun until the summary is there (the numbers are deterministic).
    want = "Mean    KLD" if kl_base_file else "Final estimate"
    for _ in range(5):
        out = sh(*cmd, timeout=1200)
        if re.search(want.replace(" ", r"\s*"), out):
            break
    res = {}
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if m:
        res["ppl"] = float(m.group(1))
    m = re.search(r"Mean\s+PPL\(Q\)\s*:\s*([0-9.]+)", out)
    if m:
        res["ppl"] = float(m.group(1))
    m = re.search(r"Mean\s+KLD:\s*([-0-9.e]+)", out)
    if m:
        res["kl"] = float(m.group(1))
    m = re.search(r"Same top p:\s*([0-9.]+)", out)
    if m:
        res["top1"] = float(m.group(1)) / 100
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--types", default="f32,f16,bf16,q8_0,q6_k,q5_k_m,q5_1,q5_0,q4_k_m,q4_1,q4_0")
    ap.add_argument("--ctx", type=int, default=64)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="gguf_quality_"))
    if a.model:
        model = Path(a.model)
    else:
        sh(NNPIPE, "pipeline", "--session", "q", "--no-progress", cwd=d)
        model = d / "runs" / "q" / "finetune_full" / "model"
    text = text_file(d)
    types = a.types.split(",")
    files = {}
    for t in ["f16"] + [t for t in types if t != "f16"]:
        files[t] = d / f"model-{t}.gguf"
        sh(NNPIPE, "export-gguf", "--model", model, "--type", t, "--out", files[t])
    base_logits = d / "f16.kld"
    base = llama_ppl(files["f16"], text, a.ctx, save_base=base_logits)
    n_weights = None
    rows = []
    for t in types:
        ours = json.loads(sh(NNPIPE, "eval", "--model", files[t], "--ppl", text, "--ctx", a.ctx,
                             "--kl-base", files["f16"], "--json", "--no-progress"))
        ref = base if t == "f16" else llama_ppl(files[t], text, a.ctx, kl_base_file=base_logits)
        info = json.loads(sh(NNPIPE, "gguf-info", files[t], "--json", "--tensors"))
        if n_weights is None:
            n_weights = sum(int(__import__("math").prod(x["ne"])) for x in info["tensors"])
        size = files[t].stat().st_size
        rows.append((t, size, 8 * size / n_weights, ours["ppl"], ref.get("ppl"), ours["kl_mean"],
                     ref.get("kl", 0.0), ours["top1_agree"], ref.get("top1", 1.0)))
    print(f"model: {model}; text: {ours['tokens']} tokens, {ours['scored']} positions scored "
          f"(ctx {a.ctx}, second half of each chunk)\n")
    print("| type | bytes | bits/weight | PPL nnpipe | PPL llama.cpp | KL vs F16 nnpipe | "
          "KL vs F16 llama.cpp | top-1 = F16 nnpipe | top-1 = F16 llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, size, bpw, p1, p2, k1, k2, a1, a2 in rows:
        p2s = f"{p2:.4f}" if p2 is not None else "-"
        print(f"| {t} | {size:,} | {bpw:.2f} | {p1:.4f} | {p2s} | {k1:.2e} | {k2:.2e} | "
              f"{100 * a1:.1f}% | {100 * a2:.1f}% |")


if __name__ == "__main__":
    main()
