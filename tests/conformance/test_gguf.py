"""GGUF: nnpipe's reader and writer against gguf-py (the `gguf` package, llama.cpp's Python side).

Files written by gguf.GGUFWriter are read by `nnpipe gguf-info --json` and compared with
gguf.GGUFReader; `nnpipe dev-gguf-write` re-writes them from that JSON and must produce the same
bytes as gguf-py; corrupt files must make nnpipe exit 1 with an error naming the file.
"""
import json
import struct

import numpy as np
import pytest
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from conftest import run_nnpipe


def write_with_gguf_py(path, alignment=None, nested=False):
    """Every value type, string arrays and F32/F16/BF16/Q8_0/Q4_0 tensors."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch="qwen2")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)  # not exact in float32: both sides must agree on the rounding
    w.add_bool("t.bool", True)
    w.add_bool("t.false", False)
    w.add_string("t.string", "ünï \"q\" \n")
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float64("t.f64", -1e300)
    w.add_array("tokenizer.ggml.tokens", ["a", "", "Ġb c", "<|im_end|>", "ü"] + [f"[PAD{i}]" for i in range(20)])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False, True])
    for name, vt, vals in [("t.arr_u8", V.UINT8, [0, 255]), ("t.arr_u16", V.UINT16, [1, 65535]),
                           ("t.arr_i16", V.INT16, [-5]), ("t.arr_u32", V.UINT32, [7]),
                           ("t.arr_u64", V.UINT64, [2**64 - 1]), ("t.arr_i64", V.INT64, [-2**63]),
                           ("t.arr_f64", V.FLOAT64, [1e-300, 2.5]), ("t.arr_i8", V.INT8, [-128, 127])]:
        w.add_key_value(name, vals, V.ARRAY, sub_type=vt)
    if nested:
        w.add_array("t.nested", [[1, 2], [3], ["x", "y"]])
    f32 = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", f32)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("blk.0.f16", rng.standard_normal((3, 5)).astype(np.float16))
    bf16 = torch.from_numpy(f32).to(torch.bfloat16).view(torch.uint8).numpy()
    w.add_tensor("blk.0.bf16", bf16, raw_dtype=Q.BF16)
    w.add_tensor("blk.0.q8_0", gguf.quants.quantize(f32, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.q4_0", gguf.quants.quantize(f32[:2], Q.Q4_0), raw_dtype=Q.Q4_0)
    w.add_tensor("blk.0.i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def info(path):
    return json.loads(run_nnpipe("gguf-info", path, "--json", "--tensors").stdout)


def reader_kvs(r):
    return {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("alignment", [None, 64])
def test_reads_what_gguf_py_writes(tmp_path, alignment):
    path = write_with_gguf_py(tmp_path / "a.gguf", alignment)
    got = info(path)
    r = gguf.GGUFReader(str(path))
    assert got["version"] == 3
    assert got["alignment"] == (alignment or 32)
    assert got["data_offset"] == r.data_offset

    fields = reader_kvs(r)
    assert [m["key"] for m in got["metadata"]] == list(fields)
    for m in got["metadata"]:
        f = fields[m["key"]]
        assert m["type"] == f.types[0].name, m["key"]
        if f.types[0] == V.ARRAY:
            assert m["element_type"] == f.types[-1].name, m["key"]
        want = f.contents()
        assert m["value"] == want, m["key"]
        assert [type(x) for x in np.atleast_1d(m["value"])] == [type(x) for x in np.atleast_1d(want)]

    assert len(got["tensors"]) == len(r.tensors)
    for t, rt in zip(got["tensors"], r.tensors):
        assert t["name"] == rt.name
        assert t["type"] == rt.tensor_type.name
        assert t["type_id"] == int(rt.tensor_type)
        assert t["ne"] == [int(d) for d in rt.shape]
        assert got["data_offset"] + t["offset"] == rt.data_offset
        assert t["bytes"] == rt.n_bytes


def spec_from(path):
    """dev-gguf-write's input: gguf-info's JSON plus the tensor bytes from gguf-py's reader."""
    got = info(path)
    r = gguf.GGUFReader(str(path))
    tensors = [{"name": t["name"], "type": t["type"], "ne": t["ne"], "data_hex": rt.data.tobytes().hex()}
               for t, rt in zip(got["tensors"], r.tensors)]
    return {"metadata": got["metadata"], "tensors": tensors}


@pytest.mark.parametrize("alignment,nested", [(None, False), (64, False), (None, True)])
def test_writes_what_gguf_py_writes(tmp_path, alignment, nested):
    ref = write_with_gguf_py(tmp_path / "ref.gguf", alignment, nested)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_from(ref)))
    out = tmp_path / "out.gguf"
    run_nnpipe("dev-gguf-write", spec, out)
    assert out.read_bytes() == ref.read_bytes()

    a, b = gguf.GGUFReader(str(ref)), gguf.GGUFReader(str(out))
    fa, fb = reader_kvs(a), reader_kvs(b)
    assert list(fa) == list(fb)
    for k in fa:
        assert fa[k].types == fb[k].types
        if not nested or k != "t.nested":
            assert fa[k].contents() == fb[k].contents()
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert (ta.name, ta.tensor_type, list(ta.shape)) == (tb.name, tb.tensor_type, list(tb.shape))
        assert ta.data.tobytes() == tb.data.tobytes()


def test_hand_written_spec_loads_in_gguf_py(tmp_path):
    vals = np.arange(32, dtype=np.float32) / 7
    spec = {"metadata": [
        {"key": "general.architecture", "type": "STRING", "value": "qwen2"},
        {"key": "qwen2.block_count", "type": "UINT32", "value": 2},
        {"key": "qwen2.rope.freq_base", "type": "FLOAT32", "value": 1000000.0},
        {"key": "tokenizer.ggml.token_type", "type": "ARRAY", "element_type": "INT32", "value": [1, 3, 6]},
        {"key": "empty", "type": "ARRAY", "element_type": "STRING", "value": []},
    ], "tensors": [
        {"name": "token_embd.weight", "type": "F32", "ne": [32], "data_hex": vals.tobytes().hex()},
        {"name": "q", "type": "Q8_0", "ne": [32],
         "data_hex": gguf.quants.quantize(vals, Q.Q8_0).tobytes().hex()},
    ]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    out = tmp_path / "h.gguf"
    run_nnpipe("dev-gguf-write", tmp_path / "s.json", out)
    r = gguf.GGUFReader(str(out))
    f = reader_kvs(r)
    assert f["general.architecture"].contents() == "qwen2"
    assert f["qwen2.block_count"].types == [V.UINT32] and f["qwen2.block_count"].contents() == 2
    assert f["tokenizer.ggml.token_type"].types == [V.ARRAY, V.INT32]
    assert f["tokenizer.ggml.token_type"].contents() == [1, 3, 6]
    assert f["empty"].contents() == []
    assert np.array_equal(r.tensors[0].data, vals)
    np.testing.assert_array_equal(gguf.quants.dequantize(r.tensors[1].data, Q.Q8_0).reshape(-1),
                                  gguf.quants.dequantize(gguf.quants.quantize(vals, Q.Q8_0), Q.Q8_0).reshape(-1))
    text = run_nnpipe("gguf-info", out, "--tensors").stdout
    assert "qwen2.block_count\tUINT32\t2" in text
    assert "token_embd.weight\tF32\t[32]\t0\t128" in text


def must_fail(path, what=None):
    p = run_nnpipe("gguf-info", path, "--json", "--tensors", check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)  # 1 = a clean error; < 0 would be a signal
    assert str(path) in p.stderr
    if what:
        assert what in p.stderr, p.stderr
    return p.stderr


def test_corrupt_files_fail_cleanly(tmp_path):
    ref = write_with_gguf_py(tmp_path / "ref.gguf")
    data = ref.read_bytes()
    r = gguf.GGUFReader(str(ref))
    last = r.tensors[-1]
    bad = tmp_path / "bad.gguf"

    cuts = [0, 3, 7, 15, 23, 30, 100, r.data_offset - 1, last.data_offset + 1,
            last.data_offset + last.n_bytes - 1] + list(range(24, r.data_offset, 97))
    for n in cuts:
        bad.write_bytes(data[:n])
        must_fail(bad)

    def patched(pos, fmt, value):
        b = bytearray(data)
        struct.pack_into(fmt, b, pos, value)
        bad.write_bytes(bytes(b))
        return bad

    must_fail(patched(4, "<I", 2), "GGUF version 2 is not supported")
    must_fail(patched(8, "<Q", 2**40), "tensor count")
    must_fail(patched(16, "<Q", 2**62), "key/value count")
    must_fail(patched(24, "<Q", 2**63), "string length")
    # An array length, a tensor name length, a dim, a type id and an offset.
    tok = r.fields["tokenizer.ggml.tokens"]
    len_pos = tok.offset + sum(p.nbytes for p in tok.parts[:4])  # key len, key, type, elem type
    must_fail(patched(len_pos, "<Q", 2**40), "array of")
    for t in r.tensors:
        parts = t.field.parts
        must_fail(patched(t.field.offset, "<Q", 10**12))
        dim_pos = t.field.offset + sum(p.nbytes for p in parts[:3])
        must_fail(patched(dim_pos, "<q", -1))
        type_pos = t.field.offset + sum(p.nbytes for p in parts[:4])
        must_fail(patched(type_pos, "<I", 5), "unknown ggml type id 5")
        off_pos = type_pos + 4
        must_fail(patched(off_pos, "<Q", int(parts[5][0]) + 1), "not a multiple of the alignment")
        must_fail(patched(off_pos, "<Q", 2**63), "beyond the end of the file")
    # A duplicate tensor name (renaming a tensor to an earlier one of the same length) and overlaps.
    fields = [t.field for t in r.tensors]
    a, d = next((a, d) for i, a in enumerate(fields) for d in fields[i + 1:]
                if len(a.parts[1]) == len(d.parts[1]))
    b = bytearray(data)
    b[d.offset + 8:d.offset + 8 + len(a.parts[1])] = a.parts[1].tobytes()
    bad.write_bytes(bytes(b))
    must_fail(bad, "duplicate tensor name")
    t1 = fields[1]
    off1 = t1.offset + sum(p.nbytes for p in t1.parts[:5])
    must_fail(patched(off1, "<Q", 0), "overlaps")
    # Random byte flips: never a crash.
    rng = np.random.default_rng(1)
    for _ in range(40):
        b = bytearray(data)
        for pos in rng.integers(0, r.data_offset, 3):
            b[pos] ^= int(rng.integers(1, 256))
        bad.write_bytes(bytes(b))
        p = run_nnpipe("gguf-info", bad, "--json", check=False)
        assert p.returncode in (0, 1), (p.returncode, p.stderr)
