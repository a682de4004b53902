"""Writes the seed corpus for fuzz_safetensors with the Python safetensors library (the oracle).

Run: /path/to/venv/bin/python tests/fuzz/make_safetensors_seeds.py
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

here = Path(__file__).parent / "corpus" / "safetensors"
save_file({"a": torch.arange(4, dtype=torch.float32)}, str(here / "one_f32.safetensors"))
save_file({}, str(here / "empty.safetensors"))
save_file({"w": torch.ones(2, 3, dtype=torch.bfloat16), "b": torch.zeros(3, dtype=torch.int64),
           "s": torch.tensor(True), "e": torch.zeros(0, 2, dtype=torch.float16)},
          str(here / "mixed.safetensors"), metadata={"format": "pt"})
save_file({"q": torch.tensor([1, -2], dtype=torch.int8), "f8": torch.zeros(2, dtype=torch.float8_e4m3fn)},
          str(here / "small_ints.safetensors"), metadata={"note": "ünï"})
