#!/usr/bin/env python3
"""Tokenizer throughput: nnpipe (bench/tokenizer_bench.cpp) vs HF tokenizers, single thread.

Run with the oracle venv's python after ./scripts/build release:
    python bench/bench_tokenizer.py [--mb 10] [--repeats 3] [--tokenizer PATH]
Two modes over the same deterministic >= 10 MB text, both single-threaded
(TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1):
  whole: the text as ONE string (HF: Tokenizer.encode(text, add_special_tokens=False); nnpipe:
         Tokenizer::encode). HF is known to be slow on huge single strings, so this flatters nnpipe.
  lines: each line (with its "\n") as its own string (HF: encode_batch(lines,
         add_special_tokens=False), which runs serially with parallelism off; nnpipe: encode per
         line). This is HF's efficient path and the fair comparison.
Each is repeated; the median run counts. Both keep their word caches across runs. The ids must be
identical (compared in full, not just counted).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

EN = ("the of and to in is was for that with as on by at from it his an were are which this be "
      "has had not or but have its they one their also first new after two who been more other "
      "model training data token language system time people year world between during used "
      "through however when where these many some such would could about into than only most "
      "Fine-tuning updates weights LoRA adapter quantization inference assistant user question").split()
OTHER = ["Привет, как дела? Сегодня хорошая погода.", "Καλημέρα, τι κάνεις;",
         "今天天气很好，我们去公园散步吧。", "日本語のテキストを処理します。", "한국어 문장을 토큰화합니다.",
         "مرحبا بالعالم، كيف حالك؟", "שלום עולם", "नमस्ते, आप कैसे हैं?", "สวัสดีครับ ยินดีต้อนรับ",
         "Ça va très bien, merci ! Où est la gare ?", "Grüße aus München, die Straße ist schön.",
         "¿Dónde está la biblioteca? Está aquí.", "Thành phố Hồ Chí Minh rất đẹp.", "👍 😀 🦙 👨‍👩‍👧 🇺🇸"]
CODE = ["def encode(self, text):\n    return [self.vocab[t] for t in text.split()]\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        "{\"role\": \"user\", \"content\": \"Hello!\"}\n", "$ ./scripts/build release && ctest -j2\n",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"]


def make_text(mb, seed=2026):
    rng = random.Random(seed)
    parts, size = [], 0
    while size < mb * 1_000_000:
        r = rng.random()
        if r < 0.70:
            words = [rng.choice(EN) for _ in range(rng.randint(8, 40))]
            s = " ".join(words).capitalize() + rng.choice([".", ",", "!", "?", ":", ";"]) + " "
            if rng.random() < 0.2:
                s += f"{rng.randint(0, 10**rng.randint(1, 9))} "
        elif r < 0.88:
            s = rng.choice(OTHER) + " "
        else:
            s = rng.choice(CODE)
        if rng.random() < 0.1:
            s += "\n\n"
        parts.append(s)
        size += len(s.encode())
    return "".join(parts)


def git_commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=str(ROOT / "tests/fixtures/qwen-tokenizer/tokenizer.json"))
    ap.add_argument("--modes", default="lines,whole")
    ap.add_argument("--bench-bin", default=str(ROOT / "build/release/tokenizer_bench"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    text = make_text(args.mb)
    path = OUT / "bench_text.txt"
    path.write_text(text, encoding="utf-8")
    nbytes = len(text.encode())

    hf = Tokenizer.from_file(args.tokenizer)
    lines = [x + "\n" for x in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    results, ok = {"bytes": nbytes, "num_lines": len(lines), "commit": git_commit()}, True
    for mode in args.modes.split(","):
        ids_path = OUT / f"nnpipe_ids_{mode}.bin"
        r = subprocess.run([args.bench_bin, args.tokenizer, str(path), str(args.repeats), str(ids_path), mode],
                           capture_output=True, text=True, check=True)
        ours = json.loads(r.stdout)
        our_ids = np.fromfile(ids_path, dtype="<i4")
        res = {"nnpipe": {"runs_s": ours["runs_s"], "median_s": ours["median_s"], "tokens": ours["tokens"],
                          "tokens_per_s": ours["tokens"] / ours["median_s"],
                          "MB_per_s": nbytes / 1e6 / ours["median_s"]}}
        # HF variants: encode of the whole string; per line encode_batch, and encode_batch_fast
        # (no offsets: HF's fastest path).
        variants = {"hf": lambda: hf.encode(text, add_special_tokens=False).ids} if mode == "whole" else {
            "hf": lambda: [i for e in hf.encode_batch(lines, add_special_tokens=False) for i in e.ids],
            "hf_fast": lambda: [i for e in hf.encode_batch_fast(lines, add_special_tokens=False) for i in e.ids]}
        for name, fn in variants.items():
            runs, hf_ids = [], None
            for _ in range(args.repeats):
                t = time.perf_counter()
                hf_ids = fn()
                runs.append(time.perf_counter() - t)
            med = statistics.median(runs)
            same = len(our_ids) == len(hf_ids) and bool(np.array_equal(our_ids, np.asarray(hf_ids, dtype=np.int32)))
            ok &= same
            res[name] = {"runs_s": runs, "median_s": med, "tokens": len(hf_ids), "tokens_per_s": len(hf_ids) / med,
                         "MB_per_s": nbytes / 1e6 / med, "ids_identical_to_nnpipe": same,
                         "nnpipe_speedup": res["nnpipe"]["tokens_per_s"] / (len(hf_ids) / med)}
        results[mode] = res
    print(json.dumps(results, indent=2))
    if not ok:
        print("ERROR: token ids differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
