"""safetensors: nnpipe's reader and writer against the Python `safetensors` library (the oracle).

Files written by safetensors.torch.save_file are read by `nnpipe inspect --values` and compared value
by value; files re-written by `nnpipe inspect --rewrite` must load identically in
safetensors.torch.load_file and be byte-identical to what the Python library writes.
"""
import json
import math
import struct

import pytest
import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_nnpipe

NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def every_dtype_tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for dt, name in NAMES.items():
        if dt == torch.bool:
            t = torch.rand(3, 5, generator=g) > 0.5
        elif dt.is_floating_point:
            t = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 10).to(dt)
        else:
            info = torch.iinfo(dt)
            lo, hi = max(info.min, -2**62), min(info.max, 2**62)
            t = torch.randint(lo, hi, (3, 5), generator=g, dtype=torch.int64).to(dt) if dt != torch.uint64 \
                else torch.randint(0, 2**62, (3, 5), generator=g, dtype=torch.int64).to(dt)
        out[f"t_{name}"] = t
        out[f"scalar_{name}"] = t.flatten()[0].clone().reshape(())
        out[f"empty_{name}"] = torch.zeros((0, 4), dtype=dt)
    out["specials"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.4e38])
    out["specials_bf16"] = out["specials"].to(torch.bfloat16)
    out["big"] = torch.randn(64, 33, generator=g)
    return out


def as_python_values(t):
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):
        t = t.to(torch.int64) if t.dtype != torch.uint64 else t
        return [int(x) for x in t.flatten().tolist()]
    if t.dtype.is_floating_point:
        return t.to(torch.float64).flatten().tolist()
    return t.flatten().tolist()


def same_values(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y)
        else:
            assert x == y and type(x) == type(y), (x, y)
            if isinstance(x, float) and x == 0:
                assert math.copysign(1, x) == math.copysign(1, y)


def test_reads_every_dtype_written_by_python(tmp_path):
    tensors = every_dtype_tensors()
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "ünï \"q\""})
    got = json.loads(run_nnpipe("inspect", path, "--values").stdout)
    assert got["metadata"] == {"format": "pt", "note": "ünï \"q\""}
    by_name = {t["name"]: t for t in got["tensors"]}
    assert set(by_name) == set(tensors)
    for name, t in tensors.items():
        g = by_name[name]
        assert g["dtype"] == NAMES[t.dtype], name
        assert g["shape"] == list(t.shape), name
        assert g["bytes"] == t.numel() * t.element_size(), name
        same_values(as_python_values(t), g["values"])


def test_rewrite_is_byte_identical_and_loads(tmp_path):
    tensors = every_dtype_tensors()
    src, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    # One metadata key: Python's layout is then deterministic (several keys come out in random order).
    save_file(tensors, str(src), metadata={"format": "pt"})
    run_nnpipe("inspect", src, "--rewrite", out)
    assert out.read_bytes() == src.read_bytes()
    back = load_file(str(out))
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        # bitwise (bf16, NaN payloads included)
        assert torch.equal(back[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), k


def test_rewrite_with_several_metadata_keys_and_kept_order(tmp_path):
    tensors = {"z": torch.arange(6, dtype=torch.int32).reshape(2, 3), "a": torch.ones(2, dtype=torch.float64),
               "m": torch.tensor([1.5], dtype=torch.bfloat16)}
    meta = {f"k{i}": f"v{i}" for i in range(6)}
    src, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(src), metadata=meta)
    run_nnpipe("inspect", src, "--rewrite", out, "--keep-order")
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == meta
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t)
    # Same data buffer as Python's (kept order == Python's order here); only the header may differ.
    a, b = src.read_bytes(), out.read_bytes()
    na, nb = struct.unpack("<Q", a[:8])[0], struct.unpack("<Q", b[:8])[0]
    assert a[8 + na:] == b[8 + nb:]
    assert nb % 8 == 0


def test_empty_file_round_trip(tmp_path):
    src, out = tmp_path / "e.safetensors", tmp_path / "e2.safetensors"
    save_file({}, str(src))
    got = json.loads(run_nnpipe("inspect", src, "--json").stdout)
    assert got["tensors"] == [] and got["total_bytes"] == 0
    run_nnpipe("inspect", src, "--rewrite", out)
    assert out.read_bytes() == src.read_bytes()


def test_reads_sharded_directory_written_by_huggingface_hub(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}.weight": torch.randn(16, 16, generator=g) for i in range(6)}
    save_torch_state_dict(tensors, str(tmp_path), max_shard_size=2500)
    assert (tmp_path / "model.safetensors.index.json").exists()
    got = json.loads(run_nnpipe("inspect", tmp_path, "--values").stdout)
    by_name = {t["name"]: t for t in got["tensors"]}
    assert set(by_name) == set(tensors)
    for k, t in tensors.items():
        same_values(as_python_values(t), by_name[k]["values"])


def header_file(path, header: bytes, buffer: bytes, length=None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + buffer)
    return path


def entry(body):
    return b'{"a":' + body + b"}"


OK = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
# (name, header, buffer bytes, forced length, expected message part, Python also rejects it)
CORRUPT = [
    ("short", None, b"", None, "shorter than the 8-byte", True),
    ("huge_header", OK, b"\0" * 8, 100_000_001, "exceeds the limit", True),
    ("header_past_end", OK, b"\0" * 8, len(OK) + 9, "beyond the end of the file", True),
    ("not_object", b"[1,2]   ", b"", None, "must start with '{'", True),
    ("bad_json", b'{"a":', b"", None, "invalid JSON", True),
    ("bad_utf8", b'{"a\xff":1}', b"", None, "invalid JSON", True),
    ("entry_not_object", entry(b"[1]"), b"", None, 'tensor "a": expected an object', True),
    ("no_dtype", entry(b'{"shape":[2],"data_offsets":[0,8]}'), b"\0" * 8, None, 'missing "dtype"', True),
    ("unknown_dtype", entry(b'{"dtype":"F33","shape":[2],"data_offsets":[0,8]}'), b"\0" * 8, None,
     'unknown dtype "F33"', True),
    ("negative_shape", entry(b'{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}'), b"\0" * 8, None,
     "non-negative integer", True),
    ("overflow_shape", entry(b'{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}'),
     b"\0" * 8, None, "overflows", True),
    ("reversed", entry(b'{"dtype":"F32","shape":[2],"data_offsets":[8,0]}'), b"\0" * 8, None, "reversed", True),
    ("out_of_range", entry(b'{"dtype":"F32","shape":[2],"data_offsets":[0,16]}'), b"\0" * 8, None,
     "beyond the data buffer", True),
    ("size_mismatch", entry(b'{"dtype":"F32","shape":[3],"data_offsets":[0,8]}'), b"\0" * 8, None,
     "needs 12 bytes", True),
    ("overlap", b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                b'"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, None, "overlaps", True),
    ("hole", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, None, "belong to no tensor",
     True),
    ("tail", OK, b"\0" * 12, None, "belong to no tensor", True),
    ("duplicate", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, None,
     'duplicate tensor name "a"', None),
]


@pytest.mark.parametrize("case", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_files_are_rejected_with_file_and_reason(tmp_path, case):
    name, header, buf, length, expect, python_rejects = case
    path = tmp_path / f"{name}.safetensors"
    if header is None:
        path.write_bytes(b"1234")
    else:
        header_file(path, header, buf, length)
    r = run_nnpipe("inspect", path, check=False)
    assert r.returncode != 0
    assert str(path) in r.stderr and expect in r.stderr, r.stderr
    if python_rejects:  # the oracle agrees the file is invalid
        with pytest.raises(Exception):
            load_file(str(path))


def test_sanity_the_corrupt_cases_base_is_valid(tmp_path):
    path = header_file(tmp_path / "ok.safetensors", OK, struct.pack("<2f", 1.0, 2.0))
    assert load_file(str(path))["a"].tolist() == [1.0, 2.0]
    got = json.loads(run_nnpipe("inspect", path, "--values").stdout)
    assert got["tensors"][0]["values"] == [1.0, 2.0]
