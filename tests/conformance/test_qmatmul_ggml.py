"""nnpipe's CPU qmatmul (the inference engine's matrix products with ggml-typed weights) against
ggml itself: the oracle's libggml-cpu loaded through ctypes, ggml_get_type_traits_cpu(type) ->
from_float of the vec_dot type on each activation row, then vec_dot(W row, converted row) per
output, exactly what ggml_compute_forward_mul_mat does per (row, token) on this AVX2 build.
Weights are random rows quantized by ggml_quantize_chunk (what llama-quantize writes).

What is proven, per type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K):
- the converted activations (Q8_0/Q8_1/Q8_K blocks, f16/bf16 rounding) are byte-identical to
  ggml-cpu's from_float, including rounding ties (x * id landing on .5: ggml-cpu's AVX quantizer
  rounds half to even, the _ref one away from zero) and tokens of very different magnitude;
- every output is within 1e-5 * sum_j |w_j| |xq_j| of ggml's, for n in {1, 3, 8, 64} (8 and 64
  also take the prompt paths: row-block x token tiles, dequantize + sgemm for the float types,
  or, on CPUs with AVX-512 VNNI, the int8 GEMM for Q8_0/Q4_0 (qmatmul_vnni.cpp))
  and both nnpipe kernel sets (AVX2, scalar).
Why this tolerance: both sides compute the same exact integer block sums (or exact f16/bf16
products) and differ only in how f32 partial sums are rounded and ordered. n f32 additions of
terms bounded by |w||xq| err by at most ~n * 2^-24 * sum |w||xq| in the worst case, typically
sqrt(n) * 2^-24; for n <= 4096 values that is <= 2.4e-4 worst, ~4e-6 typical; 1e-5 fails any
real error (a wrong scale, a dropped block, an off-by-one quant: each term is ~1/cols of the scale,
so 1e-5 catches one wrong term of a 1024-column row only when it is large, which is why the
activation bytes are compared exactly as well). The AVX2 kernels follow ggml's lane order, so
most outputs are bit-identical; the test reports that fraction.
"""
import ctypes
import zlib
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from conftest import run_nnpipe

TYPES = ["Q8_0", "Q4_0", "F16", "Q4_K", "Q6_K", "Q5_0", "Q5_K", "Q4_1", "Q5_1", "BF16", "F32"]
NS = [1, 3, 8, 64]
ROWS = 37


class TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                           ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_int)


class Ggml:
    def __init__(self, d: Path):
        self.base = ctypes.CDLL(os.fspath(d / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(os.fspath(d / "libggml-cpu.so"))
        self.cpu.ggml_cpu_init.restype = None
        self.cpu.ggml_cpu_init()
        self.cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCpu)
        self.cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
        self.base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
        self.base.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.base.ggml_row_size.restype = ctypes.c_size_t
        self.base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.base.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                  ctypes.c_void_p]

    def row_size(self, t: int, cols: int) -> int:
        return self.base.ggml_row_size(t, cols)

    def quantize(self, x: np.ndarray, t: int) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if t == int(T.F32):
            return x.view(np.uint8).reshape(x.shape[0], -1).copy()
        out = np.zeros((x.shape[0], self.row_size(t, x.shape[1])), np.uint8)
        n = self.base.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, x.shape[0],
                                          x.shape[1], None)
        assert n == out.size
        return out

    def to_float(self, t: int, q: np.ndarray, k: int) -> np.ndarray:
        if t == int(T.F32):
            return np.frombuffer(q.tobytes(), np.float32).copy()
        if t == int(T.Q8_K):  # ggml-base has no to_float for Q8_K: {f32 d; i8 qs[256]; i16 bsums[16]}
            b = np.frombuffer(q.tobytes(), np.uint8).reshape(-1, 292)
            d = b[:, :4].copy().view(np.float32)
            return (d * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
        if t == int(T.Q8_1):  # nor for Q8_1: {f16 d; f16 s; i8 qs[32]}
            b = np.frombuffer(q.tobytes(), np.uint8).reshape(-1, 36)
            d = b[:, :2].copy().view(np.float16).astype(np.float32)
            return (d * b[:, 4:].view(np.int8).astype(np.float32)).reshape(-1)
        out = np.zeros(k, np.float32)
        TO_FLOAT(self.base.ggml_get_type_traits(t).contents.to_float)(
            np.ascontiguousarray(q).ctypes.data, out.ctypes.data, k)
        return out

    def matmul(self, t: int, wq: np.ndarray, x: np.ndarray):
        """ggml's y (n, rows) and the converted activations (n, vec_dot row bytes)."""
        tr = self.cpu.ggml_get_type_traits_cpu(t).contents
        vdt = tr.vec_dot_type
        from_float = FROM_FLOAT(self.cpu.ggml_get_type_traits_cpu(vdt).contents.from_float)
        vec_dot = VEC_DOT(tr.vec_dot)
        n, cols = x.shape
        act = np.zeros((n, self.row_size(vdt, cols)), np.uint8)
        y = np.zeros((n, wq.shape[0]), np.float32)
        s = ctypes.c_float()
        x = np.ascontiguousarray(x, np.float32)
        for i in range(n):
            from_float(x[i].ctypes.data, act[i].ctypes.data, cols)
            for r in range(wq.shape[0]):
                vec_dot(cols, ctypes.byref(s), 0, wq[r].ctypes.data, 0, act[i].ctypes.data, 0, 1)
                y[i, r] = s.value
        return y, act, vdt


@pytest.fixture(scope="module")
def ggml():
    d = os.environ.get("NNPIPE_LLAMA_CPP_BIN")
    if not d or not (Path(d) / "libggml-cpu.so").exists():
        raise RuntimeError("llama.cpp oracle missing: run ./scripts/llama_cpp (scripts/test does)")
    return Ggml(Path(d))


def inputs(type_name: str, n: int):
    # crc32, not hash(): str hashes change with every interpreter (PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(f"{type_name}/{n}".encode()))
    cols = 512 if type_name in ("Q4_K", "Q5_K", "Q6_K") else 96
    if n == 64:
        cols *= 2
    w = rng.standard_normal((ROWS, cols)).astype(np.float32)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 3, (n, 1)).astype(np.float32)
    # Rounding ties for Q8_0/Q8_1: with amax = 127, id = 1 and x * id = k + .5 exactly.
    x[0, :32] = np.concatenate([[127.0], np.arange(-15, 16) + 0.5]).astype(np.float32)
    return w, x


def nnpipe_matmul(tmp_path, type_name, wq, x, isa):
    files = {k: tmp_path / f"{k}.bin" for k in ("w", "x", "y", "a")}
    files["w"].write_bytes(wq.tobytes())
    files["x"].write_bytes(np.ascontiguousarray(x, "<f4").tobytes())
    run_nnpipe("dev-qmatmul", "--type", type_name, "--weights", files["w"], "--x", files["x"],
               "--rows", wq.shape[0], "--cols", x.shape[1], "--n", x.shape[0],
               "--out", files["y"], "--act-out", files["a"], "--isa", isa)
    y = np.frombuffer(files["y"].read_bytes(), np.float32).reshape(x.shape[0], wq.shape[0])
    return y, np.frombuffer(files["a"].read_bytes(), np.uint8)


def isas():
    flags = Path("/proc/cpuinfo").read_text().split("\nflags")[1].split("\n")[0].split()
    return ["scalar"] + (["avx2"] if {"avx2", "fma", "f16c"} <= set(flags) else [])


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("type_name", TYPES)
def test_qmatmul_matches_ggml_vec_dot(ggml, tmp_path, type_name, n):
    t = int(T[type_name])
    w, x = inputs(type_name, n)
    wq = ggml.quantize(w, t)
    y_ref, act_ref, vdt = ggml.matmul(t, wq, x)

    # The scale of each output: sum |w| |xq| over the dequantized weights and converted x.
    wd = ggml.to_float(t, wq, w.size).reshape(w.shape).astype(np.float64)
    xq = np.stack([ggml.to_float(vdt, a, x.shape[1]) for a in act_ref]).astype(np.float64)
    scale = np.abs(xq) @ np.abs(wd).T  # (n, rows)

    for isa in isas():
        y, act = nnpipe_matmul(tmp_path, type_name, wq, x, isa)
        if vdt in (int(T.F16), int(T.BF16)):  # nnpipe keeps the rounded values as f32
            ours = np.frombuffer(act.tobytes(), np.float32)
            assert np.array_equal(ours, xq.reshape(-1).astype(np.float32)), isa
        else:
            assert act.tobytes() == act_ref.tobytes(), f"{isa}: converted activations differ"
        err = np.abs(y.astype(np.float64) - y_ref)
        worst = np.unravel_index(np.argmax(err / (scale + 1e-30)), err.shape)
        assert np.all(err <= 1e-5 * scale + 1e-30), \
            f"{isa}: token {worst[0]} row {worst[1]}: {y[worst]!r} vs ggml {y_ref[worst]!r} " \
            f"(scale {scale[worst]:.3g}, rel {err[worst] / scale[worst]:.3g})"
        same = float(np.mean(y.view(np.uint32) == y_ref.view(np.uint32)))
        print(f"{type_name} n={n} {isa}: {same:.0%} bit-identical to ggml, "
              f"max rel {np.max(err / (scale + 1e-30)):.2g}")
