"""Qwen2 training forward/backward: nnpipe (`dev-forward`) against transformers on the same weights.

Reference: Qwen2ForCausalLM.from_pretrained(DIR, dtype=float32, attn_implementation="eager") on CPU,
given the same right-padded batch with an attention_mask and labels (-100 at padded positions;
transformers shifts the labels itself). Shapes: GQA (4 heads, 2 KV heads: the `tiny` preset) and MHA
(4/4), each tied and untied; a bf16 checkpoint is compared with torch's f32 upcast of it.

Tolerances (both sides compute in fp32 with different summation orders and BLAS kernels):
- logits: max |diff| <= 1e-4. Logits are O(1) sums over 64-wide dot products through two layers;
  reordering costs a few ulp (~1e-6) per op, so 1e-4 leaves two orders of margin yet catches any
  formula error (a wrong RoPE sign, mask or norm moves logits by >= 1e-2).
- loss: |diff| <= 1e-5 (a mean of log-softmax values ~ log(V) = 6; fp32 relative noise ~1e-7).
- gradients: ||g_ours - g_ref|| / ||g_ref|| <= 1e-3 per tensor. Per-element comparisons are
  meaningless for tiny entries (cancellation in sums over tokens), a tensor-wide norm ratio is the
  llm.c-style check; fp32 backward noise is ~1e-6 relative, a wrong term is O(1).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import run_nnpipe

LOGITS_ATOL = 1e-4
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-3


def _randomize(model: Qwen2ForCausalLM, seed: int) -> None:
    """Random everything, norms and biases included, so that every gradient is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fwd") / "tiny-gqa-tied"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "11", "--out", out)
    return out


def _variant(base_dir, tmp_path_factory, kv_heads: int, tied: bool):
    if kv_heads == 2 and tied:
        return base_dir  # exactly what `nnpipe init-model` wrote
    cfg = Qwen2Config.from_pretrained(base_dir)
    cfg.num_key_value_heads = kv_heads
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    _randomize(model, seed=100 + kv_heads + 10 * tied)
    out = tmp_path_factory.mktemp("fwd") / f"tiny-kv{kv_heads}-{'tied' if tied else 'untied'}"
    model.save_pretrained(out)
    names = set(load_file(out / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not tied)
    return out


def _batch(vocab: int, lengths=(7, 4, 5)):
    """Right-padded rows of the given lengths; row 0 masks its first two labels like a prompt."""
    rng = np.random.default_rng(5)
    lengths = list(lengths)
    b, t = len(lengths), max(lengths)
    ids = rng.integers(0, vocab, size=(b, t))
    mask = np.zeros((b, t), dtype=np.int64)
    labels = np.full((b, t), -100, dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, n:] = 0  # pad token: any id, masked out
        mask[r, :n] = 1
        labels[r, :n] = ids[r, :n]
    labels[0, :2] = -100
    return ids, mask, labels, lengths


def _ours(model_dir, tmp_path, ids, labels, lengths, backward=True):
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"input_ids": ids.tolist(), "lengths": lengths,
                                 "labels": labels.tolist()}))
    out = tmp_path / "out.safetensors"
    run_nnpipe("dev-forward", "--model", model_dir, "--batch", batch, "--out", out,
               *(["--backward"] if backward else []))
    return load_file(out)


def _reference(model_dir, ids, mask, labels):
    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                             attn_implementation="eager")
    model.train()  # dropout is 0 in Qwen2 configs; train mode changes nothing else
    res = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                labels=torch.tensor(labels))
    res.loss.backward()
    grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters()}
    return res.logits.detach().numpy(), float(res.loss.detach()), grads, model.config


def compare_dump(ours, ref_logits, ref_loss, ref_grads, label, kind):
    """nnpipe's dev-forward dump against the reference: logits, loss and every gradient within
    the module's tolerances; prints the worst gradient error per kind(name)."""
    assert ours["logits"].shape == ref_logits.shape
    dl = np.abs(ours["logits"] - ref_logits).max()
    assert dl <= LOGITS_ATOL, f"logits max abs diff {dl}"
    dloss = abs(float(ours["loss"][0]) - ref_loss)
    assert dloss <= LOSS_ATOL, f"loss {float(ours['loss'][0])} vs {ref_loss}"
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert set(ours_grads) == set(ref_grads), set(ours_grads) ^ set(ref_grads)
    worst = {}
    for name, ref in ref_grads.items():
        g = ours_grads[name]
        assert g.shape == ref.shape, name
        ref64 = ref.astype(np.float64)
        rel = np.linalg.norm(g.astype(np.float64) - ref64) / np.linalg.norm(ref64)
        assert rel <= GRAD_RTOL, f"grad {name}: relative error {rel}"
        worst[kind(name)] = max(worst.get(kind(name), 0.0), rel)
    print(f"\n{label}: logits {dl:.2e} loss {dloss:.2e} grads "
          + " ".join(f"{k}={v:.1e}" for k, v in sorted(worst.items())))


def _compare(model_dir, tmp_path, lengths=(7, 4, 5)):
    cfg = Qwen2Config.from_pretrained(model_dir)
    ids, mask, labels, lengths = _batch(cfg.vocab_size, lengths)
    ours = _ours(model_dir, tmp_path, ids, labels, lengths)
    ref_logits, ref_loss, ref_grads, _ = _reference(model_dir, ids, mask, labels)

    # All positions, padded ones included: our padding mask equals transformers' (query t sees
    # keys j <= t with j < len), so even logits at padded positions agree.
    compare_dump(ours, ref_logits, ref_loss, ref_grads, model_dir.name,
                 lambda name: name.split(".")[-2] + "." + name.split(".")[-1])


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_forward_backward_matches_transformers(base_dir, tmp_path_factory, tmp_path, kv_heads,
                                               tied):
    _compare(_variant(base_dir, tmp_path_factory, kv_heads, tied), tmp_path)


def test_longer_rows_match(base_dir, tmp_path):
    """Longer rows: RoPE at positions up to 40, softmax over many keys, one unpadded row."""
    _compare(base_dir, tmp_path, lengths=(41, 23))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_checkpoint_matches_torch_upcast(tmp_path, dtype):
    """Half-precision weights: both sides upcast the same stored values to f32 (exactly)."""
    model_dir = tmp_path / f"tiny-{dtype}"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "12", "--dtype", dtype, "--out",
               model_dir)
    stored = load_torch(model_dir / "model.safetensors")  # numpy has no bf16: read via torch
    assert all(t.dtype == getattr(torch, dtype) for t in stored.values())
    _compare(model_dir, tmp_path)


def test_forward_without_labels_has_no_loss(base_dir, tmp_path):
    cfg = Qwen2Config.from_pretrained(base_dir)
    ids, mask, _, lengths = _batch(cfg.vocab_size)
    batch = tmp_path / "b.json"
    batch.write_text(json.dumps({"input_ids": ids.tolist(), "lengths": lengths}))
    out = tmp_path / "o.safetensors"
    run_nnpipe("dev-forward", "--model", base_dir, "--batch", batch, "--out", out)
    res = load_file(out)
    assert np.isnan(res["loss"][0])
    model = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                             attn_implementation="eager")
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(res["logits"] - ref).max() <= LOGITS_ATOL
    r = run_nnpipe("dev-forward", "--model", base_dir, "--batch", batch, "--out", out,
                   "--backward", check=False)
    assert r.returncode != 0 and "labels" in r.stderr
