"""LoRA training forward/backward: nnpipe (`dev-forward --lora`) against PEFT on the same weights.

Reference: PeftModel.from_pretrained(Qwen2ForCausalLM(dtype=float32, eager attention), ADAPTER,
is_trainable=True) in train mode on CPU, on a right-padded batch of 2 with an attention_mask and
labels. Adapters come from PEFT itself (get_peft_model + save_pretrained, r=4, alpha=8, dropout 0)
with lora_B randomized (PEFT initialises B = 0, which would make the branch invisible). Variants:
all seven target modules on the tiny GQA tied preset and on an MHA untied model, rsLoRA (scaling
alpha/sqrt(r)), and q_proj/v_proj only. Only the adapter has gradients: we must dump exactly the
lora_A/lora_B tensors, under PEFT's saved names.

Tolerances are those of test_qwen2_forward.py, whose compare_dump is used (both sides fp32, different summation orders):
logits max |diff| <= 1e-4, loss <= 1e-5, per-tensor gradient ||diff|| / ||ref|| <= 1e-3. The LoRA
branch adds two rank-4 matmuls per layer, O(1e-7) noise each, far below those bounds.

bf16/f16 base with --frozen-base: we keep the matrices in half precision and widen rows to f32 on
the fly; the reference is PEFT on torch's f32 upcast of the same checkpoint. Half -> f32 is exact,
so both sides multiply identical f32 values and the same fp32 tolerances apply (no half-precision
rounding slack needed).
"""
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import run_nnpipe
from test_qwen2_forward import _batch, _randomize, compare_dump

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def gqa_tied(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "tiny-gqa-tied"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "21", "--out", out)
    return out


@pytest.fixture(scope="module")
def mha_untied(gqa_tied, tmp_path_factory):
    cfg = Qwen2Config.from_pretrained(gqa_tied)
    cfg.num_key_value_heads = cfg.num_attention_heads
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    _randomize(model, seed=321)
    out = tmp_path_factory.mktemp("lora") / "tiny-mha-untied"
    model.save_pretrained(out)
    return out


def _base(model_dir):
    return Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                            attn_implementation="eager")


def _peft_adapter(model_dir, out, seed=0, **kw):
    torch.manual_seed(seed)
    pm = get_peft_model(_base(model_dir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(out)
    return out


def _ours(model_dir, adapter, tmp_path, ids, labels, lengths, *extra):
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"input_ids": ids.tolist(), "lengths": lengths,
                                 "labels": labels.tolist()}))
    out = tmp_path / "out.safetensors"
    run_nnpipe("dev-forward", "--model", model_dir, "--batch", batch, "--out", out, "--backward",
               "--lora", adapter, *extra)
    return load_file(out)


def _reference(model_dir, adapter, ids, mask, labels):
    pm = PeftModel.from_pretrained(_base(model_dir), adapter, is_trainable=True)
    pm.train()
    res = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    res.loss.backward()
    # Saved (and our) names drop PEFT's adapter name: "...lora_A.default.weight" -> "...lora_A.weight".
    grads = {n.replace(".default.", "."): p.grad.detach().numpy()
             for n, p in pm.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    return res.logits.detach().numpy(), float(res.loss.detach()), grads


def _compare(model_dir, adapter, tmp_path, *extra):
    cfg = Qwen2Config.from_pretrained(model_dir)
    ids, mask, labels, lengths = _batch(cfg.vocab_size, lengths=(7, 4))
    ours = _ours(model_dir, adapter, tmp_path, ids, labels, lengths, *extra)
    ref_logits, ref_loss, ref_grads = _reference(model_dir, adapter, ids, mask, labels)

    # The adapter must matter, or the comparison says nothing about the LoRA branch.
    with torch.no_grad():
        base_logits = _base(model_dir)(input_ids=torch.tensor(ids),
                                       attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(ref_logits - base_logits).max() > 1e-2

    compare_dump(ours, ref_logits, ref_loss, ref_grads, model_dir.name,
                 lambda name: name.split(".")[-4] + "." + name.split(".")[-2])


@pytest.mark.parametrize("variant", ["gqa_tied", "mha_untied"])
def test_lora_all_modules_matches_peft(request, tmp_path, variant):
    model_dir = request.getfixturevalue(variant)
    adapter = _peft_adapter(model_dir, tmp_path / "adapter", target_modules=ALL7)
    _compare(model_dir, adapter, tmp_path)


def test_rslora_matches_peft(gqa_tied, tmp_path):
    adapter = _peft_adapter(gqa_tied, tmp_path / "adapter", seed=1, target_modules=ALL7,
                            use_rslora=True)
    _compare(gqa_tied, adapter, tmp_path)


def test_q_v_only_matches_peft(mha_untied, tmp_path):
    adapter = _peft_adapter(mha_untied, tmp_path / "adapter", seed=2,
                            target_modules=["q_proj", "v_proj"])
    _compare(mha_untied, adapter, tmp_path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_frozen_half_base_matches_peft_on_upcast(tmp_path, dtype):
    model_dir = tmp_path / f"tiny-{dtype}"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "22", "--dtype", dtype, "--out",
               model_dir)
    assert all(t.dtype == getattr(torch, dtype)
               for t in load_torch(model_dir / "model.safetensors").values())
    adapter = _peft_adapter(model_dir, tmp_path / "adapter", seed=3, target_modules=ALL7)
    _compare(model_dir, adapter, tmp_path, "--frozen-base")


def test_saved_adapter_loads_in_peft(gqa_tied, tmp_path):
    """lora_adapter().save() output is a PEFT adapter with the same tensors and the same logits."""
    src = _peft_adapter(gqa_tied, tmp_path / "adapter", seed=4, target_modules=ALL7,
                        use_rslora=True)
    cfg = Qwen2Config.from_pretrained(gqa_tied)
    ids, mask, labels, lengths = _batch(cfg.vocab_size, lengths=(7, 4))
    _ours(gqa_tied, src, tmp_path, ids, labels, lengths, "--save-lora", tmp_path / "saved")
    a = load_torch(src / "adapter_model.safetensors")
    b = load_torch(tmp_path / "saved" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert b[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k
    logits = []
    for d in (src, tmp_path / "saved"):
        pm = PeftModel.from_pretrained(_base(gqa_tied), d)
        assert pm.peft_config["default"].use_rslora
        with torch.no_grad():
            logits.append(pm(input_ids=torch.tensor(ids),
                             attention_mask=torch.tensor(mask)).logits)
    assert torch.equal(logits[0], logits[1])
