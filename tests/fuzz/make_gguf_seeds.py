"""Writes the seed corpus for fuzz_gguf with gguf-py's GGUFWriter (the oracle).

Run: /path/to/venv/bin/python tests/fuzz/make_gguf_seeds.py
"""
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

here = Path(__file__).parent / "corpus" / "gguf"
here.mkdir(parents=True, exist_ok=True)


def write(name, fill, alignment=None):
    w = gguf.GGUFWriter(str(here / name), arch="qwen2")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def every_type(w):
    w.add_uint8("u8", 1)
    w.add_int8("i8", -1)
    w.add_uint16("u16", 2)
    w.add_int16("i16", -2)
    w.add_uint32("u32", 3)
    w.add_int32("i32", -3)
    w.add_float32("f32", 0.5)
    w.add_bool("b", True)
    w.add_string("s", "ünï")
    w.add_uint64("u64", 4)
    w.add_int64("i64", -4)
    w.add_float64("f64", 0.25)
    w.add_array("tokens", ["a", "b c", ""])
    w.add_key_value("u16s", [1, 2], V.ARRAY, sub_type=V.UINT16)
    w.add_array("nested", [[1], ["x"]])


def tensors(w):
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    w.add_tensor("f32", x)
    w.add_tensor("f16", x[0].astype(np.float16))
    w.add_tensor("q8_0", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("q4_0", gguf.quants.quantize(x[:1], Q.Q4_0), raw_dtype=Q.Q4_0)


write("empty.gguf", lambda w: None)
write("every_type.gguf", every_type)
write("tensors.gguf", tensors)
write("align64.gguf", lambda w: (every_type(w), tensors(w)), alignment=64)
