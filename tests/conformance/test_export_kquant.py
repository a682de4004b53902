"""`nnpipe export-gguf --type <quantized>` against llama.cpp's own quantizer, llama-quantize.

For each llama.cpp file type nnpipe exports (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M, Q5_K_S,
Q5_K_M, Q6_K, and --pure variants), the reference is `llama-quantize f32.gguf ref.gguf TYPE` run
on nnpipe's own `--type f32` export of the same Hugging Face directory, and nnpipe's direct export
must equal it: the same tensor names, the same ggml type per tensor (llama.cpp's mix rules:
output/tied-embedding Q6_K, attn_v/ffn_down "use_more_bits" layers, Q4_K_S's first-layers Q5_K, the
row-length fallbacks Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0 and ->F16), byte-identical tensor data
(read with gguf-py's GGUFReader), and the same KVs with the same value types (llama-quantize sets
general.file_type and general.quantization_version). llama.cpp then loads and evaluates every file
nnpipe wrote.

The models: dims that are multiples of 256 so that K-quants apply (an untied 8-layer model, where
the use_more_bits layers are 0, 3, 6 and 7, and a tied 3-layer one whose ffn_down rows, 320, take
the 32-block fallbacks), and the tiny preset (hidden 64: every K type falls back; ffn_down rows
176: F16).
"""
import json
import shutil
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

from conftest import llama_cpp_tool, run_nnpipe

# nnpipe --type -> (llama-quantize type argument, pure, llama_ftype)
TYPES = {
    "q8_0": ("Q8_0", False, 7), "q4_0": ("Q4_0", False, 2), "q4_1": ("Q4_1", False, 3),
    "q5_0": ("Q5_0", False, 8), "q5_1": ("Q5_1", False, 9), "q4_k_s": ("Q4_K_S", False, 14),
    "q4_k_m": ("Q4_K_M", False, 15), "q5_k_s": ("Q5_K_S", False, 16),
    "q5_k_m": ("Q5_K_M", False, 17), "q6_k": ("Q6_K", False, 18),
    "q4_k": ("Q4_K_S", True, 14), "q5_k": ("Q5_K_S", True, 16),
}
# (name, hidden, intermediate, layers, heads, kv heads, tied); None: the tiny preset as it is.
MODELS = {
    "untied8": (256, 512, 8, 4, 2, False),
    "tied3": (256, 320, 3, 4, 1, True),
    "tiny": None,
}


def make_model(base, out, hidden, inter, layers, heads, kv, tied, seed):
    """An HF Qwen2 directory with nnpipe's tiny tokenizer and random weights of the given dims."""
    shutil.copytree(base, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               max_window_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
               tie_word_embeddings=tied)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    rng = np.random.default_rng(seed)
    vocab, kvd = cfg["vocab_size"], kv * hidden // heads

    def w(*shape, scale=0.05):
        # Per-row scales spread over two decades, so that K-quant super-blocks differ.
        s = scale * 10.0 ** rng.uniform(-1, 1, (shape[0],) + (1,) * (len(shape) - 1))
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    if not tied:
        t["lm_head.weight"] = w(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({
            p + "input_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            p + "post_attention_layernorm.weight":
                (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.q_proj.bias": w(hidden),
            p + "self_attn.k_proj.weight": w(kvd, hidden), p + "self_attn.k_proj.bias": w(kvd),
            p + "self_attn.v_proj.weight": w(kvd, hidden), p + "self_attn.v_proj.bias": w(kvd),
            p + "self_attn.o_proj.weight": w(hidden, hidden),
            p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
            p + "mlp.down_proj.weight": w(hidden, inter),
        })
    save_file(t, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("kquant")
    out = {}
    for i, (name, dims) in enumerate(MODELS.items()):
        d = tiny_model if dims is None else make_model(tiny_model, root / name, *dims, seed=10 + i)
        f32 = root / f"{name}-f32.gguf"
        run_nnpipe("export-gguf", "--model", d, "--type", "f32", "--out", f32)
        out[name] = (d, f32)
    return out


def llama_quantize(src, dst, ftype, pure):
    args = [str(llama_cpp_tool("llama-quantize"))] + (["--pure"] if pure else []) + \
        [str(src), str(dst), ftype, "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return gguf.GGUFReader(dst)


def kv_dict(r):
    return {k: (list(f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}


def compare(ours, ref, ftype_id):
    """Same KVs, tensor names, types, shapes and bytes. Returns {name: type} of ours."""
    assert kv_dict(ours) == kv_dict(ref)
    assert ours.fields["general.file_type"].contents() == ftype_id
    assert ours.fields["general.quantization_version"].contents() == 2
    got = {t.name: t for t in ours.tensors}
    want = {t.name: t for t in ref.tensors}
    assert set(got) == set(want)
    types_got = {n: T(t.tensor_type).name for n, t in got.items()}
    types_want = {n: T(t.tensor_type).name for n, t in want.items()}
    assert types_got == types_want
    for name, t in want.items():
        assert list(got[name].shape) == list(t.shape), name
        a, b = got[name].data.tobytes(), t.data.tobytes()
        if a != b:
            x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
            i = int(np.flatnonzero(x != y)[0]) if x.size == y.size else -1
            pytest.fail(f"{name} ({types_want[name]}): bytes differ, first at {i} of {len(b)}")
    return types_got


@pytest.mark.parametrize("type_", list(TYPES))
@pytest.mark.parametrize("model", list(MODELS))
def test_matches_llama_quantize(models, tmp_path, model, type_):
    src, f32 = models[model]
    ftype, pure, ftype_id = TYPES[type_]
    ref = llama_quantize(f32, tmp_path / "ref.gguf", ftype, pure)
    run_nnpipe("export-gguf", "--model", src, "--type", type_, "--out", tmp_path / "ours.gguf")
    types = compare(gguf.GGUFReader(tmp_path / "ours.gguf"), ref, ftype_id)

    # Not vacuous: the rules under test did fire on these models.
    cfg = json.loads((src / "config.json").read_text())
    if model == "untied8" and type_ == "q4_k_m":
        assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
        assert [types[f"blk.{i}.attn_v.weight"] for i in range(8)] == \
            ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
        assert [types[f"blk.{i}.ffn_down.weight"] for i in range(8)] == \
            ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    if model == "untied8" and type_ == "q4_k_s":
        assert [types[f"blk.{i}.attn_v.weight"] for i in range(8)] == ["Q5_K"] * 4 + ["Q4_K"] * 4
        assert types["blk.0.ffn_down.weight"] == "Q5_K" and types["blk.1.ffn_down.weight"] == "Q4_K"
    if model == "tied3" and type_ in ("q4_0", "q4_k_m"):
        assert "output.weight" not in types and types["token_embd.weight"] == "Q6_K"
    if model == "tied3" and type_ == "q4_k_m":
        # 3 layers: use_more_bits only for layer 2 (>= 7*3/8)
        assert types["blk.2.ffn_down.weight"] == "Q8_0"  # Q6_K, 320 % 256 != 0
        assert types["blk.1.ffn_down.weight"] == "Q5_0"  # Q4_K fallback
    if model == "tiny" and type_ == "q5_k_s":
        assert types["blk.0.ffn_down.weight"] == "F16"  # 176 % 32 != 0
        assert types["blk.0.attn_q.weight"] == "Q5_1"  # Q5_K, 64 % 256 != 0
    for name, t in types.items():
        if name.endswith(".bias") or name.endswith("norm.weight"):
            assert t == "F32", name
    assert cfg["num_hidden_layers"] == sum(n.endswith("attn_v.weight") for n in types)


@pytest.mark.parametrize("type_", ["q4_0", "q4_k_m", "q6_k"])
def test_pure_flag_matches_llama_quantize_pure(models, tmp_path, type_):
    src, f32 = models["untied8"]
    ftype, _, ftype_id = TYPES[type_]
    ref = llama_quantize(f32, tmp_path / "ref.gguf", ftype, True)
    run_nnpipe("export-gguf", "--model", src, "--type", type_, "--pure", "--out",
               tmp_path / "ours.gguf")
    types = compare(gguf.GGUFReader(tmp_path / "ours.gguf"), ref, ftype_id)
    default = ftype.split("_")[0] + "_" + ftype.split("_")[1]  # Q4_K_M -> Q4_K
    assert types["output.weight"] == default


@pytest.fixture
def no_extra_buffer_types(monkeypatch):
    """Loads weights into plain CPU buffers. The oracle is built with GGML_NATIVE, and on machines
    whose CPUID reports AMX that the hypervisor does not enable, ggml's AMX buffer type (an "extra"
    buffer type, used for Q4_0/Q4_1/Q8_0/... weights) dies on its first tile instruction (SIGILL),
    which says nothing about the file."""
    import llama_cpp

    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", params)


@pytest.mark.parametrize("model", ["untied8", "tied3"])
def test_llama_cpp_loads_and_runs(models, tmp_path, model, no_extra_buffer_types):
    """llama.cpp loads every file nnpipe writes and evaluates a few tokens to finite logits."""
    import llama_cpp

    src, _ = models[model]
    for type_ in TYPES:
        out = tmp_path / f"{type_}.gguf"
        run_nnpipe("export-gguf", "--model", src, "--type", type_, "--out", out)
        llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=2, logits_all=True,
                              verbose=False)
        try:
            assert llm.n_vocab() == json.loads((src / "config.json").read_text())["vocab_size"]
            llm.eval([1, 2, 3, 4])
            logits = np.array(llm.scores[:4])
            assert np.isfinite(logits).all() and np.abs(logits).max() > 0, type_
        finally:
            llm.close()
