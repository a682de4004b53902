"""`nnpipe export-gguf` (HF Qwen2 directory -> GGUF model) against gguf-py, the library
convert_hf_to_gguf.py writes with.

What is proven: gguf.GGUFReader reads the file; every KV of docs FORMATS.md "A Qwen2 model in GGUF"
is present with its exact GGUF value type and the value from config.json; tokens and token types
equal convert_hf_to_gguf.py's get_vocab_base rules applied through transformers' tokenizer (padded
with "[PAD{i}]"/UNUSED to vocab_size); merges, special ids and the chat template equal
gguf.SpecialVocab's; the tensor set is exactly the expected one (tied: no output.weight); each
tensor's ne is the HF shape reversed and its bytes equal gguf.quants.quantize of the HF tensor in
the expected type. Expected types are llama-quantize's for the file type of the same name (1-D:
F32; output.weight, or token_embd.weight when tied, Q6_K in Q4_0..Q5_1 files, Q8_0 when Q6_K's
256-block does not divide the row; rows not a multiple of the block size: F16) — for F32, F16,
BF16 and Q8_0 these are also convert_hf_to_gguf.py's. Bad input fails cleanly.
test_export_kquant.py compares whole exports with llama-quantize's output, K-quant mixes included,
and runs them in llama.cpp.
"""
import json
import shutil

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer

from conftest import run_nnpipe

FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, n, rest = hf.split(".", 3)
    mid, suffix = rest.rsplit(".", 1)
    return f"blk.{n}.{LAYER_NAMES[mid]}.{suffix}"


def export(model, type_, out):
    run_nnpipe("export-gguf", "--model", model, "--type", type_, "--out", out)
    return gguf.GGUFReader(out)


def field(r, key):
    f = r.fields.get(key)
    assert f is not None, f"missing KV {key}"
    return f


def check_scalar(r, key, vtype, value):
    f = field(r, key)
    assert f.types == [vtype], (key, f.types)
    assert f.contents() == value, (key, f.contents(), value)


def looks_special(t):  # convert_hf_to_gguf.py's does_token_look_special (Qwen-relevant part)
    return t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))


def expected_vocab(model_dir, vocab_size):
    """convert_hf_to_gguf.py get_vocab_base, minus the decode/encode normalisation of added tokens."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        tokens.append(t)
        if t in added:
            special = tok.added_tokens_decoder[i].special or looks_special(t)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(x) for x in types]


def check_metadata(r, model_dir, type_):
    cfg = json.loads((model_dir / "config.json").read_text())
    check_scalar(r, "general.architecture", V.STRING, "qwen2")
    check_scalar(r, "general.type", V.STRING, "model")
    assert field(r, "general.name").types == [V.STRING]
    check_scalar(r, "general.file_type", V.UINT32, FILE_TYPES[type_])
    assert FILE_TYPES[type_] == int(getattr(gguf.LlamaFileType, {
        "f32": "ALL_F32"}.get(type_, "MOSTLY_" + type_.upper())))
    check_scalar(r, "general.quantization_version", V.UINT32, 2)
    for key, ck in [("context_length", "max_position_embeddings"), ("embedding_length", "hidden_size"),
                    ("block_count", "num_hidden_layers"), ("feed_forward_length", "intermediate_size"),
                    ("attention.head_count", "num_attention_heads"),
                    ("attention.head_count_kv", "num_key_value_heads")]:
        check_scalar(r, f"qwen2.{key}", V.UINT32, cfg[ck])
    check_scalar(r, "qwen2.rope.freq_base", V.FLOAT32, pytest.approx(cfg["rope_theta"], rel=1e-7))
    check_scalar(r, "qwen2.attention.layer_norm_rms_epsilon", V.FLOAT32,
                 pytest.approx(cfg["rms_norm_eps"], rel=1e-7))

    check_scalar(r, "tokenizer.ggml.model", V.STRING, "gpt2")
    check_scalar(r, "tokenizer.ggml.pre", V.STRING, "qwen2")
    tokens, types = expected_vocab(model_dir, cfg["vocab_size"])
    f = field(r, "tokenizer.ggml.tokens")
    assert f.types == [V.ARRAY, V.STRING]
    assert f.contents() == tokens
    f = field(r, "tokenizer.ggml.token_type")
    assert f.types == [V.ARRAY, V.INT32]
    assert f.contents() == types
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert len(tokens) == int(embd.shape[1])  # llama.cpp requires n_vocab == ne[1]

    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=cfg["vocab_size"])
    f = field(r, "tokenizer.ggml.merges")
    assert f.types == [V.ARRAY, V.STRING]
    assert f.contents() == sv.merges
    for name in ("bos", "eos", "pad"):
        key = "padding" if name == "pad" else name
        if name in sv.special_token_ids:
            check_scalar(r, f"tokenizer.ggml.{key}_token_id", V.UINT32, sv.special_token_ids[name])
        else:
            assert f"tokenizer.ggml.{key}_token_id" not in r.fields
    check_scalar(r, "tokenizer.ggml.add_bos_token", V.BOOL, False)
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert sv.chat_template == tc.get("chat_template")
    if sv.chat_template is not None:
        check_scalar(r, "tokenizer.chat_template", V.STRING, sv.chat_template)


def expected_type(name, w, type_, tied):
    """llama-quantize's type for an F32 tensor in a file of type `type_` (llama-quant.cpp)."""
    if w.ndim == 1:
        return T.F32
    qt, nx = T[type_.upper()], w.shape[-1]
    if type_ in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1") and (
            name == "output.weight" or (tied and name == "token_embd.weight")):
        qt = T.Q8_0 if nx % GGML_QUANT_SIZES[qt][0] or qt == T.Q8_0 else T.Q6_K
    if qt == T.Q6_K and nx % 256:
        qt = T.Q8_0  # tensor_type_fallback
    if nx % GGML_QUANT_SIZES[qt][0]:
        qt = T.F16  # a 32-block type's fallback (convert_hf_to_gguf.py's as well)
    return qt


def check_tensors(r, model_dir, type_):
    cfg = json.loads((model_dir / "config.json").read_text())
    hf = load_file(model_dir / "model.safetensors")
    if cfg["tie_word_embeddings"]:
        hf.pop("lm_head.weight", None)
    expected = {gguf_name(k): v for k, v in hf.items()}
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(expected)
    assert ("output.weight" in got) == (not cfg["tie_word_embeddings"])
    for name, w in expected.items():
        t = got[name]
        assert [int(x) for x in t.shape] == list(reversed(w.shape)), name
        qt = expected_type(name, w, type_, cfg["tie_word_embeddings"])
        assert t.tensor_type == qt, (name, t.tensor_type, qt)
        if qt == T.Q6_K:  # gguf-py cannot quantize K types: test_export_kquant.py checks these
            continue
        ref = quants.quantize(w.astype(np.float32), qt)
        assert t.data.tobytes() == ref.tobytes(), name
        deq = quants.dequantize(t.data, qt).reshape(w.shape)
        np.testing.assert_array_equal(deq, quants.dequantize(ref, qt).reshape(w.shape))


@pytest.mark.parametrize("type_", list(FILE_TYPES))
def test_tiny_model(tiny_model, tmp_path, type_):
    r = export(tiny_model, type_, tmp_path / "m.gguf")
    check_metadata(r, tiny_model, type_)
    check_tensors(r, tiny_model, type_)


@pytest.mark.parametrize("type_", ["f16", "q8_0"])
def test_tiny_qwen_tokenizer(tiny_qwen_model, tmp_path, type_):
    r = export(tiny_qwen_model, type_, tmp_path / "m.gguf")
    check_metadata(r, tiny_qwen_model, type_)
    check_tensors(r, tiny_qwen_model, type_)


def test_untied_model_has_output(tiny_model, tmp_path):
    d = tmp_path / "untied"
    shutil.copytree(tiny_model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    w = load_file(d / "model.safetensors")
    w["lm_head.weight"] = np.random.default_rng(0).standard_normal(
        w["model.embed_tokens.weight"].shape).astype(np.float32)
    save_file(w, d / "model.safetensors", metadata={"format": "pt"})
    r = export(d, "q8_0", tmp_path / "m.gguf")
    check_tensors(r, d, "q8_0")


def test_padded_vocab(tiny_model, tmp_path):
    d = tmp_path / "padded"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "3", "--out", d, "--vocab-size", "900")
    r = export(d, "f32", tmp_path / "m.gguf")
    check_metadata(r, d, "f32")
    tokens = field(r, "tokenizer.ggml.tokens").contents()
    assert len(tokens) == 900 and tokens[-1] == "[PAD899]"


@pytest.mark.parametrize("args,msg", [
    (["--model", "{tmp}/missing", "--type", "f16"], "missing"),
    (["--model", "{model}", "--type", "q9_9"], "--type q9_9"),
])
def test_bad_input(tiny_model, tmp_path, args, msg):
    out = tmp_path / "x.gguf"
    args = [a.format(tmp=tmp_path, model=tiny_model) for a in args]
    p = run_nnpipe("export-gguf", *args, "--out", out, check=False)
    assert p.returncode != 0
    assert msg in p.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_pair_merges_and_config_id_fallback(tiny_model, tmp_path):
    """Merges in the legacy "a b" string form (the fixtures use [a, b] pairs) and special ids that
    only config.json gives (no *_token in tokenizer_config): both must match gguf.SpecialVocab."""
    d = tmp_path / "variant"
    shutil.copytree(tiny_model, d)
    tj = json.loads((d / "tokenizer.json").read_text())
    assert isinstance(tj["model"]["merges"][0], list)
    tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    for k in ("bos_token", "eos_token", "pad_token"):
        tc.pop(k, None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    cfg = json.loads((d / "config.json").read_text())
    cfg["pad_token_id"] = 3
    cfg["bos_token_id"] = cfg["vocab_size"] + 5  # out of range: dropped, as SpecialVocab does
    (d / "config.json").write_text(json.dumps(cfg))
    r = export(d, "f16", tmp_path / "m.gguf")
    check_metadata(r, d, "f16")
    assert "tokenizer.ggml.bos_token_id" not in r.fields
    check_scalar(r, "tokenizer.ggml.padding_token_id", V.UINT32, 3)


def test_bf16_source_model(tmp_path):
    """A bfloat16 checkpoint: every tensor is widened exactly to f32 before quantizing."""
    import torch
    from safetensors.torch import load_file as load_torch

    d = tmp_path / "bf16"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "4", "--out", d, "--dtype", "bfloat16")
    r = export(d, "q8_0", tmp_path / "m.gguf")
    got = {t.name: t for t in r.tensors}
    for name, w in load_torch(d / "model.safetensors").items():
        assert w.dtype == torch.bfloat16
        w = w.float().numpy()
        t = got[gguf_name(name)]
        qt = T.F32 if w.ndim == 1 else (T.Q8_0 if w.shape[-1] % 32 == 0 else T.F16)
        assert t.tensor_type == qt, name
        assert t.data.tobytes() == quants.quantize(w, qt).tobytes(), name
