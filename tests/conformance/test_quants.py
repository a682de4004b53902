"""nnpipe's ggml block quantizers and dequantizers against llama.cpp's (ggml_quantize_chunk, what
llama-quantize calls, through ctypes from the oracle's libggml-base) and gguf-py's numpy ones
(gguf.quants).

What is proven, per type:
- F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: quantize bytes equal llama.cpp's
  reference quantizers' (no importance matrix) on random and adversarial matrices: ties at .5,
  zeros and -0.0, constant blocks, f16-overflowing scales (1e5 .. 1e30), subnormal weights (1/d
  overflows to inf), magnitudes spread over 40 decades, one outlier per super-block.
- F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: the same bytes as gguf.quants.quantize too, except
  one documented divergence between gguf-py and llama.cpp (we follow llama.cpp): a Q4_0/Q5_0 block
  whose values are all +/-0.0 gets d = -0.0 from ggml (its running max starts at +0.0), while
  gguf-py's argmax picks the block's first value, -0.0 -> d = +0.0. Dequantize equals
  gguf.quants.dequantize bit for bit, both on gguf-py's blocks and on random valid blocks (every
  code pattern, random finite f16 scales).
- Q4_K, Q5_K, Q6_K: gguf-py has no quantizer for them; dequantize is checked bit for bit on random
  valid blocks, and our blocks read back within the error bounds of K_BOUNDS.
Inputs exclude NaN and inf, which llama-quantize rejects. -0.0 mixed with +0.0 appears only in the
llama.cpp comparison: numpy's min/max of mixed zeros picks either, which changes the f16 sign bit
of gguf-py's Q4_1/Q5_1 min.
"""
import ctypes
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from conftest import llama_cpp_bin_dir, run_nnpipe

QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
K_TYPES = ["Q4_K", "Q5_K", "Q6_K"]
SHAPES = [(1, 32), (3, 64), (5, 256), (16, 512), (40, 4096)]  # the last one takes the threaded path

# Byte offsets of the f16 scale fields in each block (must be finite for a meaningful comparison).
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def special_blocks(rng: np.random.Generator) -> np.ndarray:
    """32-element blocks that hit rounding ties, zero/constant scales and extreme magnitudes."""
    b = []
    half = np.arange(-64, 64, dtype=np.float32)[:32] + 0.5  # x*id lands on .5 when d == 1
    b.append(np.concatenate([[127.0], half[:31]]).astype(np.float32))  # Q8_0 d = 1: ties at .5
    b.append(np.concatenate([[-8.0], half[:31] / 4]).astype(np.float32))  # Q4_0 d = 1
    b.append(np.concatenate([[-16.0], half[:31] / 2]).astype(np.float32))  # Q5_0 d = 1
    b.append(np.linspace(0, 15, 32, dtype=np.float32))  # Q4_1 d = 1, min 0
    b.append(np.linspace(0, 31, 32, dtype=np.float32))  # Q5_1 d = 1
    b.append(np.zeros(32, np.float32))
    b.append(np.full(32, -0.0, np.float32))
    b.append(np.full(32, 3.25, np.float32))  # constant: Q4_1/Q5_1 d = 0
    b.append(np.full(32, -7.0, np.float32))
    x = rng.standard_normal(32).astype(np.float32)
    x[[3, 17]] = [5.0, -5.0]  # equal magnitudes: the first one sets Q4_0/Q5_0's sign
    b.append(x)
    b.append((rng.standard_normal(32) * 1e5).astype(np.float32))  # d overflows f16 -> inf
    b.append((rng.standard_normal(32) * 3e4).astype(np.float32))
    b.append((rng.standard_normal(32) * 1e30).astype(np.float32))
    b.append((rng.standard_normal(32) * 1e-6).astype(np.float32))  # d is an f16 subnormal
    b.append((rng.standard_normal(32) * 1e-30).astype(np.float32))  # d rounds to f16 zero
    b.append(rng.integers(-3, 4, 32).astype(np.float32))
    b.append(np.float32(2.0) ** rng.integers(-20, 20, 32).astype(np.float32))
    return np.stack(b)


def matrices():
    rng = np.random.default_rng(1234)
    out = []
    for rows, cols in SHAPES:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x *= np.float32(10.0) ** rng.integers(-3, 3, (rows, 1)).astype(np.float32)
        out.append((f"randn{rows}x{cols}", x))
    out.append(("special", special_blocks(rng)[:16].reshape(8, 64)))
    out.append(("special_row", special_blocks(rng).reshape(1, -1)))  # one row of 17 blocks
    return out


MATRICES = matrices()


def k_matrices():
    rng = np.random.default_rng(77)
    out = [m for m in MATRICES if m[1].shape[1] % 256 == 0]
    b = [np.zeros(256, np.float32), np.full(256, -7.0, np.float32),
         (rng.standard_normal(256) * 1e-6).astype(np.float32),  # d is an f16 subnormal
         (rng.standard_normal(256) * 1e3).astype(np.float32),
         rng.integers(-40, 40, 256).astype(np.float32)]
    x = rng.standard_normal(256).astype(np.float32)
    x[200] = 500.0  # one outlier: the other groups' int8 scales round to 0 or 1
    b.append(x)
    x = rng.standard_normal(256).astype(np.float32)
    x[:128] *= np.float32(1e-4)  # groups of very different scales within one super-block
    b.append(x)
    out.append(("k_special", np.stack(b).reshape(7, 256)))
    return out

# gguf-py warns when its f16 scales overflow to inf and inf * 0 gives NaN: intended inputs here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def nnpipe_quantize(tmp_path, x: np.ndarray, type_name: str) -> bytes:
    src, dst = tmp_path / "x.f32", tmp_path / "q.bin"
    src.write_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())
    run_nnpipe("dev-quantize", "--type", type_name, "--in", src, "--out", dst, "--cols", x.shape[1])
    return dst.read_bytes()


def nnpipe_dequantize(tmp_path, q: bytes, type_name: str) -> np.ndarray:
    src, dst = tmp_path / "q.bin", tmp_path / "y.f32"
    src.write_bytes(q)
    run_nnpipe("dev-quantize", "--type", type_name, "--in", src, "--out", dst, "--dequantize")
    return np.frombuffer(dst.read_bytes(), dtype="<f4")


def assert_same_floats(ours: np.ndarray, ref: np.ndarray):
    ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
    assert ours.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)  # NaN only from inf * 0 (an inf f16 scale)
    diff = np.flatnonzero(ours[~nan].view(np.uint32) != ref[~nan].view(np.uint32))
    assert diff.size == 0, f"{diff.size} values differ, first at {diff[0]}: " \
        f"{ours[~nan][diff[0]]!r} vs {ref[~nan][diff[0]]!r}"


def gguf_py_quantize(x: np.ndarray, type_name: str) -> bytes:
    """gguf.quants.quantize, with its one divergence from llama.cpp undone: Q4_0/Q5_0 blocks of
    only +/-0.0 get ggml's d = -0.0 (f16 0x8000) instead of the sign of the block's first zero."""
    q = np.ascontiguousarray(quants.quantize(x, T[type_name])).view(np.uint8).copy()
    if type_name in ("Q4_0", "Q5_0"):
        bs, ts = GGML_QUANT_SIZES[T[type_name]]
        blocks = q.reshape(-1, ts)
        zero = np.all(x.reshape(-1, bs) == 0, axis=1)
        blocks[zero, 0:2] = np.frombuffer(np.float16(-0.0).tobytes(), np.uint8)
    return q.tobytes()


def first_difference(name, x, type_name, ours, ref):
    a, b = np.frombuffer(ours, np.uint8), np.frombuffer(ref, np.uint8)
    i = int(np.flatnonzero(a != b)[0])
    bs, ts = GGML_QUANT_SIZES[T[type_name]]
    return (f"{name}: first differing byte {i} (block {i // ts}, "
            f"values {x.reshape(-1)[i // ts * bs:(i // ts + 1) * bs]})")


@pytest.mark.parametrize("type_name", QUANTIZABLE)
@pytest.mark.parametrize("name,x", MATRICES, ids=[m[0] for m in MATRICES])
def test_quantize_bytes_match_gguf_py(tmp_path, type_name, name, x):
    ref = gguf_py_quantize(x, type_name)
    ours = nnpipe_quantize(tmp_path, x, type_name)
    assert len(ours) == len(ref)
    if ours != ref:
        pytest.fail(first_difference(name, x, type_name, ours, ref))
    # Dequantizing gguf-py's own blocks gives gguf-py's floats.
    assert_same_floats(nnpipe_dequantize(tmp_path, ref, type_name),
                       quants.dequantize(np.frombuffer(ref, np.uint8).reshape(x.shape[0], -1),
                                         T[type_name]))


@pytest.fixture(scope="module")
def ggml():
    lib = ctypes.CDLL(os.fspath(llama_cpp_bin_dir() / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def quantize(x: np.ndarray, type_name: str) -> bytes:
        """ggml_quantize_chunk(type, x, dst, 0, rows, cols, NULL): no importance matrix, as
        llama-quantize without --imatrix."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = int(T[type_name])  # gguf-py's ids are ggml's
        out = np.zeros(lib.ggml_row_size(t, x.shape[1]) * x.shape[0], np.uint8)
        n = lib.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                                    None)
        assert n == out.size
        return out.tobytes()
    return quantize


def llama_cpp_matrices():
    """MATRICES plus inputs where the C code leaves its well-defined range, and K-sized ones."""
    rng = np.random.default_rng(99)
    out = list(MATRICES) + k_matrices()[-1:]

    def m(name, x):
        out.append((name, np.asarray(x, np.float32).reshape(-1, 256)))
    m("subnormal", rng.standard_normal(4 * 256) * 1e-40)  # 1/d overflows to inf
    m("huge", rng.standard_normal(4 * 256) * 1e30)  # f16 d = inf
    m("big", rng.standard_normal(4 * 256) * 1e6)
    m("spread", rng.standard_normal(8 * 256) * np.exp(rng.uniform(-46, 46, 8 * 256)))
    m("sparse_neg_zero", np.where(rng.random(8 * 256) < 0.05, rng.standard_normal(8 * 256), -0.0))
    m("mixed_zeros", np.where(rng.random(4 * 256) < 0.5, 0.0, -0.0))
    m("positive", rng.random(4 * 256))
    m("negative", -rng.random(4 * 256) - 1)
    m("onehot", np.eye(256)[:4] * 5)
    m("powers_of_two", 2.0 ** rng.integers(-30, 30, 4 * 256))
    m("uniform", rng.uniform(-1, 1, 64 * 256))
    return out


LLAMA_CPP_MATRICES = llama_cpp_matrices()


LLAMA_CPP_CASES = [(t, name, x) for t in QUANTIZABLE[1:] + K_TYPES for name, x in LLAMA_CPP_MATRICES
                   if x.shape[1] % GGML_QUANT_SIZES[T[t]][0] == 0]  # K types: 256-multiple rows


@pytest.mark.parametrize("type_name,name,x", LLAMA_CPP_CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in LLAMA_CPP_CASES])
def test_quantize_bytes_match_llama_cpp(tmp_path, ggml, type_name, name, x):
    ref = ggml(x, type_name)
    ours = nnpipe_quantize(tmp_path, x, type_name)
    assert len(ours) == len(ref)
    if ours != ref:
        pytest.fail(first_difference(name, x, type_name, ours, ref))


def random_blocks(type_name: str, n_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, ts = GGML_QUANT_SIZES[T[type_name]]
    blocks = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[type_name]:
        scale = np.float32(10.0) ** rng.integers(-6, 4, n_blocks).astype(np.float32)
        v = (rng.standard_normal(n_blocks).astype(np.float32) * scale).astype(np.float16)
        blocks[:, off:off + 2] = v.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] + K_TYPES)
@pytest.mark.parametrize("n_blocks", [1, 7, 5000])  # 5000: the threaded path
def test_dequantize_random_blocks_match_gguf_py(tmp_path, type_name, n_blocks):
    blocks = random_blocks(type_name, n_blocks, seed=n_blocks)
    ref = quants.dequantize(blocks, T[type_name])
    assert_same_floats(nnpipe_dequantize(tmp_path, blocks.tobytes(), type_name), ref)


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_dequantize_all_16_bit_patterns(tmp_path, type_name):
    bits = np.arange(1 << 16, dtype=np.uint16)
    ref = quants.dequantize(bits.view(np.uint8), T[type_name])
    ours = nnpipe_dequantize(tmp_path, bits.tobytes(), type_name)
    nan = np.isnan(ref.reshape(-1))
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref.reshape(-1)[~nan].view(np.uint32))


# Per K type: worst-case error per super-block as a multiple of A = max |x| (Q6_K) or of the
# super-block's range including 0, max(x, 0) - min(x, 0) (Q4_K/Q5_K), and the relative RMS error on Gaussian rows.
# Q6_K: half a step of the 6-bit grid, whose top code may clamp: A/32. Q4_K/Q5_K have no such
# simple guarantee (heuristic scale search, 6-bit scales and mins): the bound is one full step,
# range/nmax (the worst we observed here is 0.77 of it). RMS limits are step/sqrt(12) for Gaussian data plus
# ~10%: 4 bits ~7.2%, 5 bits ~3.7%, 6 bits ~1.8%.
K_BOUNDS = {"Q4_K": ("range", 1 / 15, 0.08), "Q5_K": ("range", 1 / 31, 0.041),
            "Q6_K": ("amax", 1 / 32, 0.025)}


@pytest.mark.parametrize("type_name", K_TYPES)
@pytest.mark.parametrize("name,x", k_matrices(), ids=[m[0] for m in k_matrices()])
def test_k_quantize_reads_back_within_bound(tmp_path, type_name, name, x):
    _, ts = GGML_QUANT_SIZES[T[type_name]]
    q = nnpipe_quantize(tmp_path, x, type_name)
    assert len(q) == x.size // 256 * ts
    ref = quants.dequantize(np.frombuffer(q, np.uint8).reshape(x.shape[0], -1), T[type_name])
    assert_same_floats(nnpipe_dequantize(tmp_path, q, type_name), ref)
    # Plus the f16 rounding of d (and dmin) times the largest |scale * code|: at most 2^-13 when
    # they are f16 subnormals (2^-25 * 64 * 64), relative and negligible otherwise.
    kind, k, rms = K_BOUNDS[type_name]
    xb, yb = x.reshape(-1, 256), ref.reshape(-1, 256)
    if kind == "amax":
        size = np.abs(xb).max(axis=1)
    else:  # the affine grid always spans 0 (its min is clamped to <= 0)
        size = np.maximum(xb.max(axis=1), 0) - np.minimum(xb.min(axis=1), 0)
    err = np.abs(yb - xb).max(axis=1)
    assert np.all(err <= k * size + 2.0 ** -13), (err / np.maximum(size, 1e-30)).max()
    if name.startswith("randn"):
        assert np.sqrt(np.mean((ref - x) ** 2)) <= rms * np.sqrt(np.mean(x ** 2))


def test_bad_row_length_is_an_error(tmp_path):
    src = tmp_path / "x.f32"
    src.write_bytes(np.zeros(48, "<f4").tobytes())
    r = run_nnpipe("dev-quantize", "--type", "Q4_0", "--in", src, "--out", tmp_path / "q",
                   "--cols", 48, check=False)
    assert r.returncode != 0 and "multiple of 32" in r.stderr
    r = run_nnpipe("dev-quantize", "--type", "Q8_0", "--in", src, "--out", tmp_path / "q",
                   "--cols", 64, check=False)
    assert r.returncode != 0 and "whole rows" in r.stderr
    r = run_nnpipe("dev-quantize", "--type", "Q8_0", "--in", src, "--out", tmp_path / "q",
                   "--cols", 32, "--rows", 2, check=False)
    assert r.returncode != 0 and "not 2 x 32" in r.stderr


def test_unsupported_type_is_reported(tmp_path):
    src = tmp_path / "x.f32"
    src.write_bytes(np.zeros(256, "<f4").tobytes())
    r = run_nnpipe("dev-quantize", "--type", "Q3_K", "--in", src, "--out", tmp_path / "q",
                   "--cols", 256, check=False)
    assert r.returncode != 0 and "not implemented" in r.stderr
