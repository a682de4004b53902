"""PEFT LoRA adapter directories: nnpipe reads what PEFT writes and PEFT reads what nnpipe writes."""
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import run_nnpipe, run_nnpipe_json

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base(model_dir):
    return Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def peft_adapter(model, out, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=ALL7, **kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B is zero at init: make it informative
    pm = pm.to(dtype)
    pm.save_pretrained(out)
    return out


def lora_tensors(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_peft_adapter_roundtrip(tmp_path, tiny_model, dtype):
    src = peft_adapter(base(tiny_model), tmp_path / "peft", dtype=dtype)
    info = run_nnpipe_json("dev-lora-roundtrip", "--adapter", src, "--model", tiny_model,
                           "--out", tmp_path / "ours")
    assert info["r"] == 4 and info["scaling"] == 2.0
    assert info["modules"] == 7 * 2
    # Tensors: identical names, shapes, dtypes and bytes.
    a = load_file(str(src / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == dtype
        assert torch.equal(a[k], b[k]), k
    # Config: the same fields and values (target_modules is a set in PEFT).
    ca = json.loads((src / "adapter_config.json").read_text())
    cb = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(ca) == set(cb)
    for k in ca:
        if k == "target_modules":
            assert sorted(ca[k]) == sorted(cb[k])
        else:
            assert ca[k] == cb[k], k
    # PEFT loads our directory into the base model with the same tensors.
    m1 = PeftModel.from_pretrained(base(tiny_model), src)
    m2 = PeftModel.from_pretrained(base(tiny_model), tmp_path / "ours")
    t1, t2 = lora_tensors(m1), lora_tensors(m2)
    assert sorted(t1) == sorted(t2) and len(t1) == 2 * 7 * 2
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k


def test_nnpipe_adapter_loads_in_peft(tmp_path, tiny_model):
    out = tmp_path / "init"
    run_nnpipe("dev-lora-init", "--model", tiny_model, "--rank", 4, "--alpha", 8, "--seed", 3,
               "--out", out)
    ours = load_file(str(out / "adapter_model.safetensors"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == sorted(ALL7)
    # Exactly the keys PEFT expects: no missing LoRA keys, no unexpected keys.
    pm = get_peft_model(base(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules=ALL7))
    res = set_peft_model_state_dict(pm, ours)
    assert res.unexpected_keys == []
    assert [k for k in res.missing_keys if "lora_" in k] == []
    # from_pretrained: every LoRA parameter equals the file's value.
    m = PeftModel.from_pretrained(base(tiny_model), out)
    t = lora_tensors(m)
    assert len(t) == len(ours) == 2 * 7 * 2
    for n, p in t.items():
        key = n.replace(".default", "")
        assert torch.equal(p, ours[key]), n
    assert m.peft_config["default"].r == 4 and m.peft_config["default"].lora_alpha == 8


def test_init_statistics_match_kaiming_uniform(tmp_path, tiny_model):
    out = tmp_path / "init"
    run_nnpipe("dev-lora-init", "--model", tiny_model, "--rank", 8, "--seed", 9, "--out", out)
    ours = load_file(str(out / "adapter_model.safetensors"))
    # PEFT's own init for the same model: A ~ kaiming_uniform_(a=sqrt(5)), B = 0.
    torch.manual_seed(0)
    pm = get_peft_model(base(tiny_model), LoraConfig(r=8, target_modules=ALL7))
    theirs = {n.replace(".default", ""): p.detach() for n, p in pm.named_parameters() if "lora_" in n}
    assert sorted(theirs) == sorted(ours)
    ours_u, theirs_u = [], []
    for k, v in ours.items():
        assert v.shape == theirs[k].shape, k
        if "lora_B" in k:
            assert torch.count_nonzero(v) == 0 and torch.count_nonzero(theirs[k]) == 0
            continue
        fan_in = v.shape[1]
        # torch's bound: gain(leaky_relu, sqrt(5)) * sqrt(3 / fan_in)
        bound = math.sqrt(2.0 / (1 + 5)) * math.sqrt(3.0 / fan_in)
        assert v.abs().max() <= bound and theirs[k].abs().max() <= bound
        assert v.abs().max() > 0.9 * bound
        ours_u.append(v.flatten() / bound)
        theirs_u.append(theirs[k].flatten() / bound)
    ou, tu = torch.cat(ours_u).double(), torch.cat(theirs_u).double()
    # Both are U(-1, 1): mean 0, variance 1/3 (n ~ 10^4 values: standard errors ~ 0.006).
    for u in (ou, tu):
        assert abs(float(u.mean())) < 0.03
        assert abs(float(u.var()) - 1 / 3) < 0.02
    # Distributions agree: deciles within 0.05.
    q = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    assert torch.allclose(torch.quantile(ou, q), torch.quantile(tu, q), atol=0.05)


def test_adapter_for_another_model_is_rejected(tmp_path, tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    other = Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=96, intermediate_size=176,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    src = peft_adapter(Qwen2ForCausalLM(other), tmp_path / "other")
    r = run_nnpipe("dev-lora-roundtrip", "--adapter", src, "--model", tiny_model, "--out",
                   tmp_path / "x", check=False)
    assert r.returncode != 0
    assert "another model" in r.stderr and "lora_A.weight" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()

    deeper = Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=64, intermediate_size=176,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    src = peft_adapter(Qwen2ForCausalLM(deeper), tmp_path / "deeper")
    r = run_nnpipe("dev-lora-roundtrip", "--adapter", src, "--model", tiny_model, check=False)
    assert r.returncode != 0 and "layers.2" in r.stderr and "out of range" in r.stderr, r.stderr


def test_unsupported_adapter_features_are_rejected(tmp_path, tiny_model):
    src = peft_adapter(base(tiny_model), tmp_path / "dora", use_dora=True)
    r = run_nnpipe("dev-lora-roundtrip", "--adapter", src, "--model", tiny_model, check=False)
    assert r.returncode != 0 and "use_dora" in r.stderr, r.stderr
    src = peft_adapter(base(tiny_model), tmp_path / "rp", rank_pattern={"q_proj": 2})
    r = run_nnpipe("dev-lora-roundtrip", "--adapter", src, "--model", tiny_model, check=False)
    assert r.returncode != 0 and "rank_pattern" in r.stderr, r.stderr
