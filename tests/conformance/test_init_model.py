"""init-model: the directory nnpipe writes must load in transformers exactly as written.

Oracles: transformers (AutoModelForCausalLM, AutoTokenizer, AutoConfig, GenerationConfig),
safetensors (the weights as stored), tokenizers (encoding), jinja2 (chat template rendering).
"""
import json
import math

import jinja2
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from tokenizers import Tokenizer

from conftest import run_nnpipe

TEXTS = ["Hello world", " Hello world", "ied 4 ½ months", "naïve café — 東京 🚀\n\n  x",
         "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>tail"]


def load_model(d):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(d), output_loading_info=True, dtype=torch.float32)
    return model, info


def stored_tensors(d):
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.fixture(scope="module", params=["default_tokenizer", "qwen_tokenizer"])
def model_dir(request, tiny_model, tiny_qwen_model):
    return tiny_model if request.param == "default_tokenizer" else tiny_qwen_model


def test_transformers_loads_with_no_missing_or_unexpected_keys(model_dir):
    model, info = load_model(model_dir)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert not info.get("error_msgs"), info
    assert type(model).__name__ == "Qwen2ForCausalLM"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True


def test_parameters_equal_the_file(model_dir):
    model, _ = load_model(model_dir)
    stored = stored_tensors(model_dir)
    state = model.state_dict()
    assert "lm_head.weight" not in stored  # tied
    for name, t in stored.items():
        assert torch.equal(state[name], t), name
    # Tied: the output projection is the embedding.
    assert torch.equal(state["lm_head.weight"], stored["model.embed_tokens.weight"])
    assert set(state) - {"lm_head.weight"} == set(stored)


def test_model_runs_a_forward_pass(model_dir):
    model, _ = load_model(model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(ids).logits
    assert out.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(out).all()


def test_tokenizer_loads_and_matches_tokenizers(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids, text
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    cfg = transformers.AutoConfig.from_pretrained(str(model_dir))
    # Special ids come from the tokenizer, not hard-coded.
    assert cfg.eos_token_id == ref.token_to_id("<|im_end|>")
    assert cfg.bos_token_id == ref.token_to_id("<|endoftext|>")
    size = ref.get_vocab_size(with_added_tokens=True)
    assert cfg.vocab_size >= size


def test_tiny_vocab_is_tokenizer_size_rounded_to_64(model_dir):
    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = list(ref.get_vocab(with_added_tokens=True).values())
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["vocab_size"] == math.ceil((max(ids) + 1) / 64) * 64


def test_generation_config_is_qwen_chat_defaults(model_dir):
    ref = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    g = transformers.GenerationConfig.from_pretrained(str(model_dir))
    im_end, eot = ref.token_to_id("<|im_end|>"), ref.token_to_id("<|endoftext|>")
    assert g.do_sample is True
    assert g.repetition_penalty == 1.1 and g.top_p == 0.8 and g.top_k == 20 and g.temperature == 0.7
    assert g.eos_token_id == [im_end, eot]
    assert g.pad_token_id == eot and g.bos_token_id == eot


def test_default_tokenizer_gets_the_chatml_template(tiny_model, fixtures_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    msgs = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}]
    source = (fixtures_dir / "chat-templates" / "qwen1.5-chat.jinja").read_text()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    want = env.from_string(source).render(messages=msgs, add_generation_prompt=True)
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == want
    cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer" and cfg["bos_token"] is None


def test_qwen_tokenizer_config_is_copied(tiny_qwen_model, fixtures_dir):
    src = fixtures_dir / "qwen-tokenizer"
    assert (tiny_qwen_model / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()
    assert (tiny_qwen_model / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_weight_statistics(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    for name, t in stored_tensors(model_dir).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            assert torch.all(t == 1), name
            continue
        # N(0, initializer_range): every weight and every q/k/v bias is random and nonzero
        assert t.numel() >= 32, name
        tol = 4 * cfg["initializer_range"] / math.sqrt(2 * t.numel()) + 1e-4
        assert abs(t.std().item() - cfg["initializer_range"]) < max(tol, 0.003), (name, t.std().item())
        assert abs(t.mean().item()) < 4 * cfg["initializer_range"] / math.sqrt(t.numel()) + 1e-4, name
    stored = stored_tensors(model_dir)
    for i in range(cfg["num_hidden_layers"]):
        for p in ("q", "k", "v"):
            assert f"model.layers.{i}.self_attn.{p}_proj.bias" in stored
        assert f"model.layers.{i}.self_attn.o_proj.bias" not in stored


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_model):
    a, b = tmp_path / "a", tmp_path / "b"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "1", "--out", a)
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "2", "--out", b)
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"):
        assert (a / f).read_bytes() == (tiny_model / f).read_bytes(), f  # fixture uses seed 1
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()


def test_dtype_and_sharding_options(tmp_path, tiny_qwen_model, fixtures_dir):
    d = tmp_path / "bf16"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "2", "--out", d, "--dtype", "bfloat16",
               "--max-shard-size", "500000",
               "--tokenizer", fixtures_dir / "qwen-tokenizer")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((d / s).exists() for s in shards)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    # Same seed: the bf16 weights are the float32 ones rounded to nearest even.
    f32 = stored_tensors(tiny_qwen_model)
    state = model.state_dict()
    for name, t in f32.items():
        assert torch.equal(state[name], t.to(torch.bfloat16)), name
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in f32.values())


def test_bad_arguments_fail_clearly(tmp_path):
    r = run_nnpipe("init-model", "--preset", "tiny", "--seed", "1", "--out", tmp_path / "x",
                   "--vocab-size", "10", check=False)
    assert r.returncode != 0 and "--vocab-size 10 is smaller than the tokenizer" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_nnpipe("init-model", "--preset", "huge", "--seed", "1", "--out", tmp_path / "y", check=False)
    assert r.returncode != 0 and "huge" in r.stderr + r.stdout


def test_smoke_qwen25_0_5b_config_and_shapes(tmp_path, fixtures_dir):
    """Real 0.5B shape (bf16, ~1 GB): config via AutoConfig, shapes via safetensors headers only."""
    d = tmp_path / "q25"
    run_nnpipe("init-model", "--preset", "qwen2.5-0.5b", "--seed", "3", "--out", d,
               "--tokenizer", fixtures_dir / "qwen-tokenizer")
    cfg = transformers.AutoConfig.from_pretrained(str(d))
    # Qwen2.5-0.5B-Instruct (QWEN.md)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (896, 4864, 24)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (14, 2, 151936)
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 32768
    assert cfg.rms_norm_eps == 1e-6 and cfg.rope_parameters["rope_theta"] == 1e6
    assert cfg.dtype == torch.bfloat16
    with torch.device("meta"):
        ref = transformers.AutoModelForCausalLM.from_config(cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    got = {}
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            got[k] = tuple(sl.get_shape())
            assert sl.get_dtype() == "BF16", k
    assert got == want
