"""`nnpipe export-lora-gguf` (PEFT LoRA adapter -> GGUF LoRA adapter) against llama.cpp's own
convert_lora_to_gguf.py (from the llama-cpp-python sdist that scripts/llama_cpp unpacks, with its
vendored gguf-py), gguf-py's reader, PEFT and llama.cpp itself.

What is proven:
- For PEFT adapters (random nonzero B; r/alpha variants, a subset of targets, all seven targets,
  bf16 tensors, trained) our file is byte-identical to the converter's for f32, f16, bf16 and
  q8_0 (q8_0 rows that are not a multiple of 32 fall back to F16 in both). The adapters are saved
  without PEFT's README.md model card (nnpipe's own adapters have none): the converter copies
  descriptive KVs (general.tags, general.base_model.*) from it, which nnpipe does not write.
- rsLoRA: the same bytes except adapter.lora.alpha, which is lora_alpha * sqrt(r) in ours (the
  converter writes lora_alpha; llama.cpp scales by alpha / r, so only ours gives PEFT's
  lora_alpha / sqrt(r)).
- gguf.GGUFReader reads every file we write.
- llama.cpp loads every file as a LoRA on the base GGUF (nnpipe export-gguf f32). With our f32
  file at scale 1 it continues prompts greedily exactly as llama.cpp does on PEFT's
  merge_and_unload of the adapter (exported the same way), rsLoRA included; the adapter visibly
  changes the continuation. f16/bf16/q8_0 files stay within a stated log-probability distance of
  the merge (llama.cpp also rounds the LoRA branch's activations there, so greedy ties can flip).
- Bad input (a LoRA on the tied lm_head, an adapter of another model, a layer the base lacks,
  a truncated safetensors file, an unknown --type) fails with a clear message, a non-zero exit
  and no output file.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import llama_cpp

from conftest import llama_greedy, llama_cpp_bin_dir, run_nnpipe

TYPES = ["f32", "f16", "bf16", "q8_0"]
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> LoraConfig fields, plus how the weights are made. Dir names are the GGUF general.name
# source, so they vary in case, digits and underscores.
ADAPTERS = {
    "adapter": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all7_r32": dict(r=32, lora_alpha=8, target_modules=ALL7),
    "Rs_LoRA": dict(r=16, lora_alpha=4, target_modules=ALL7, use_rslora=True),
    "bf16ad": dict(r=8, lora_alpha=8, target_modules=["o_proj", "gate_proj", "up_proj"],
                   dtype=torch.bfloat16),
    "trained": dict(r=8, lora_alpha=16, target_modules=ALL7, train=True),
    "trained_rs": dict(r=16, lora_alpha=8, target_modules=ALL7, use_rslora=True, train=True),
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog and runs into the forest.",
    "Hi, I am Arpit. What can you do? I can answer questions about the weather.",
    "One two three four five six seven eight nine ten eleven twelve.",
]
PROMPTS = [t[:20] for t in TEXTS]
# Adapter directory names: the converter derives general.name, .basename, .finetune, .version and
# .size_label from them (gguf-py Metadata's heuristics).
DIR_NAMES = ["Qwen2.5-0.5B-lora-v2", "my-adapter-7B", "Mixtral-8x7B-Instruct-v0.1",
             "bloom-7b1-chat", "tiny-q8_0-LoRA", "v2", "adapter with spaces", "model-128k-lora",
             "small-xl-mini", "iter3-A2B", "x--y-", "ABC_def-1_5b"]


def converter_dir() -> Path:
    """The vendored llama.cpp tree of the sdist that scripts/llama_cpp built (cache/build/bin)."""
    cache = llama_cpp_bin_dir().parent.parent
    found = sorted(cache.glob("llama_cpp_python-*/vendor/llama.cpp/convert_lora_to_gguf.py"))
    assert found, f"convert_lora_to_gguf.py missing under {cache}: rerun ./scripts/llama_cpp"
    return found[-1].parent


# Runs the converter once per job in ONE Python process (its imports take most of its time). The
# converter's directory comes first on sys.path, as when run as a script, and gguf is not imported
# before it, so it uses its vendored gguf-py.
DRIVER = """
import json, runpy, sys
src, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, src)
rc = []
for args in jobs:
    sys.argv = [src + "/convert_lora_to_gguf.py", *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        rc.append(0)
    except SystemExit as e:
        rc.append(e.code or 0)
print(json.dumps(rc))
"""


def run_converter(jobs):
    r = subprocess.run([sys.executable, "-c", DRIVER, str(converter_dir()), json.dumps(jobs)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    rcs = json.loads(r.stdout.strip().splitlines()[-1])
    assert rcs == [0] * len(jobs), (rcs, r.stderr[-4000:])


def hf_model(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")


def make_adapter(base, out, seed, r, lora_alpha, target_modules, use_rslora=False,
                 dtype=torch.float32, train=False):
    torch.manual_seed(seed)
    model = hf_model(base)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                          target_modules=target_modules, use_rslora=use_rslora,
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    if train:
        # A few hundred Adam steps on TEXTS: the adapted model then continues the prompts with
        # clear margins, so greedy decoding is no coin toss between near-tied logits.
        tok = Tokenizer.from_file(str(base / "tokenizer.json"))
        seqs = [torch.tensor([tok.encode(t, add_special_tokens=False).ids]) for t in TEXTS]
        opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        for step in range(150):
            ids = seqs[step % len(seqs)]
            loss = pm(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        with torch.no_grad():  # B = 0 would make the adapter a no-op
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    pm.to(dtype)
    pm.save_pretrained(out)
    (out / "README.md").unlink()  # see the module docstring
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_gguf")
    base = d / "base"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "11", "--out", base)
    adapters = {}
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        adapters[name] = make_adapter(base, d / "adapters" / name, seed=100 + i, **kw)
    ours, ref, jobs = {}, {}, []
    for name, a in adapters.items():
        for t in TYPES:
            ours[name, t] = d / "ours" / name / f"{t}.gguf"
            ours[name, t].parent.mkdir(parents=True, exist_ok=True)
            run_nnpipe("export-lora-gguf", "--adapter", a, "--base", base, "--type", t,
                       "--out", ours[name, t])
            ref[name, t] = d / "ref" / name / f"{t}.gguf"
            ref[name, t].parent.mkdir(parents=True, exist_ok=True)
            jobs.append(["--base", str(base), "--outtype", t, "--outfile", str(ref[name, t]),
                         str(a)])
    for n in DIR_NAMES:
        a = shutil.copytree(adapters["adapter"], d / "names" / n)
        ours[n] = d / "ours" / "names" / f"{n}.gguf"
        ours[n].parent.mkdir(parents=True, exist_ok=True)
        run_nnpipe("export-lora-gguf", "--adapter", a, "--base", base, "--out", ours[n])
        ref[n] = d / "ref" / "names" / f"{n}.gguf"
        ref[n].parent.mkdir(parents=True, exist_ok=True)
        jobs.append(["--base", str(base), "--outfile", str(ref[n]), str(a)])  # default f32
    run_converter(jobs)
    return dict(dir=d, base=base, adapters=adapters, ours=ours, ref=ref)


def kvs(r):
    return {k: (f.types, f.contents()) for k, f in r.fields.items()}


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("name", [n for n, kw in ADAPTERS.items() if not kw.get("use_rslora")])
def test_byte_identical_to_converter(work, name, t):
    ours, ref = work["ours"][name, t], work["ref"][name, t]
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    assert list(kvs(a)) == list(kvs(b))
    assert kvs(a) == kvs(b)
    assert [(x.name, x.tensor_type, list(x.shape)) for x in a.tensors] == \
        [(x.name, x.tensor_type, list(x.shape)) for x in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert x.data.tobytes() == y.data.tobytes(), x.name
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("name", DIR_NAMES)
def test_name_kvs_match_converter(work, name):
    """general.* naming KVs from the directory name; both at their default type (f32)."""
    ours, ref = work["ours"][name], work["ref"][name]
    assert kvs(gguf.GGUFReader(ours)) == kvs(gguf.GGUFReader(ref))
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("name", [n for n, kw in ADAPTERS.items() if kw.get("use_rslora")])
def test_rslora_alpha_is_scaled(work, name, t):
    kw = ADAPTERS[name]
    a, b = gguf.GGUFReader(work["ours"][name, t]), gguf.GGUFReader(work["ref"][name, t])
    ka, kb = kvs(a), kvs(b)
    assert list(ka) == list(kb)
    alpha = "adapter.lora.alpha"
    assert ka[alpha][0] == kb[alpha][0] == [gguf.GGUFValueType.FLOAT32]
    assert kb[alpha][1] == kw["lora_alpha"]  # the converter: lora_alpha as is
    assert ka[alpha][1] == np.float32(kw["lora_alpha"] * np.sqrt(kw["r"]))
    assert {k: v for k, v in ka.items() if k != alpha} == {k: v for k, v in kb.items() if k != alpha}
    assert [(x.name, x.tensor_type, list(x.shape), x.data.tobytes()) for x in a.tensors] == \
        [(x.name, x.tensor_type, list(x.shape), x.data.tobytes()) for x in b.tensors]


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_reader_sees_peft_tensors(work, name):
    """gguf-py reads our f32 file; each tensor holds PEFT's A/B (ne = numpy shape reversed)."""
    r = gguf.GGUFReader(work["ours"][name, "f32"])
    peft = {k: v.float().numpy() for k, v in
            load_file(work["adapters"][name] / "adapter_model.safetensors").items()}
    assert len(r.tensors) == len(peft)
    hf = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
          "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for k, v in peft.items():
        parts = k.split(".")  # base_model.model.model.layers.N.parent.module.lora_X.weight
        gname = f"blk.{parts[4]}.{hf[parts[6]]}.weight.lora_{parts[7][-1].lower()}"
        t = next(x for x in r.tensors if x.name == gname)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == list(reversed(v.shape))
        np.testing.assert_array_equal(np.asarray(t.data).reshape(v.shape), v)


def load_llama(path, lora=None):
    kw = {"lora_path": str(lora), "lora_scale": 1.0} if lora else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_ubatch=128,
                           logits_all=True, verbose=False, n_threads=2, seed=0,
                           type_k=0, type_v=0, **kw)  # f32 KV cache



def merge_to_gguf(base, adapter, out):
    """PEFT's merge_and_unload of `adapter` into `base`, exported by nnpipe export-gguf f32."""
    m = PeftModel.from_pretrained(hf_model(base), adapter).merge_and_unload()
    mdir = out.with_suffix("")
    m.save_pretrained(mdir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / f, mdir / f)
    run_nnpipe("export-gguf", "--model", mdir, "--type", "f32", "--out", out)
    return out


LLAMA_ADAPTERS = ["trained", "trained_rs"]


@pytest.fixture(scope="module")
def llama_models(work):
    d, base = work["dir"], work["base"]
    base_gguf = d / "base-f32.gguf"
    run_nnpipe("export-gguf", "--model", base, "--type", "f32", "--out", base_gguf)
    merged = {}
    for name in LLAMA_ADAPTERS:
        merged[name] = merge_to_gguf(base, work["adapters"][name], d / "merged" / f"{name}.gguf")
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    llm = load_llama(base_gguf)
    base_out = [llama_greedy(llm, ids) for ids in prompts]
    return dict(base=base_gguf, merged=merged, prompts=prompts, base_out=base_out)


def logprobs(llm, ids):
    llm.reset()
    llm.eval(ids)
    x = np.array(llm.scores[: len(ids)], dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("name", LLAMA_ADAPTERS)
def test_llama_cpp_lora_equals_merged(work, llama_models, name):
    """llama.cpp with our f32 LoRA file at scale 1 continues each prompt greedily exactly as
    llama.cpp on PEFT's merge_and_unload (exported f32); log-probabilities along the way agree to
    1e-4 (seen: ~2e-6, the summation order of W x + s B(A x) vs (W + s B A) x). trained_rs is
    rsLoRA: with the converter's unscaled alpha the scale would be 4x too small."""
    lm = llama_models
    merged = load_llama(lm["merged"][name])
    want = [llama_greedy(merged, ids) for ids in lm["prompts"]]
    lora = load_llama(lm["base"], work["ours"][name, "f32"])
    assert [llama_greedy(lora, ids) for ids in lm["prompts"]] == want
    assert all(w != b for w, b in zip(want, lm["base_out"])), "the adapter changes nothing"
    for ids, w in zip(lm["prompts"], want):
        assert np.abs(logprobs(merged, ids + w) - logprobs(lora, ids + w)).max() < 1e-4


# Max |log-prob difference| to the f32 merge for the rounded types: ~3x what they give here (seen:
# f16 1e-2, bf16 5e-2, q8_0 0.25 on an AVX2 CPU). llama.cpp rounds the adapter's weights AND, in
# its f16/bf16/q8_0 matmuls, the activations entering the LoRA branch, so greedy ties may flip
# after a few tokens; a wrong layout, pairing or alpha moves log-probs by whole units. bf16 (an
# 8-bit mantissa for the weights and, in ggml's bf16 dot product, the activations) varies most
# between machines: seen 0.16 on an AVX-512 Zen 4 EPYC, where the adapter trained here (another
# BLAS kernel) and ggml's kernels both differ from the AVX2 machine's; its bound is 2x that.
ROUNDED_TOL = {"f16": 3e-2, "bf16": 3.2e-1, "q8_0": 7.5e-1}


@pytest.mark.parametrize("t", list(ROUNDED_TOL))
@pytest.mark.parametrize("name", LLAMA_ADAPTERS)
def test_llama_cpp_rounded_types_close_to_merged(work, llama_models, name, t):
    lm = llama_models
    merged = load_llama(lm["merged"][name])
    lora = load_llama(lm["base"], work["ours"][name, t])
    for ids in lm["prompts"]:
        seq = ids + llama_greedy(merged, ids)
        assert np.abs(logprobs(merged, seq) - logprobs(lora, seq)).max() < ROUNDED_TOL[t]


def test_llama_cpp_loads_every_file(work, llama_models):
    for key, path in work["ours"].items():
        llm = load_llama(llama_models["base"], path)
        assert len(llama_greedy(llm, llama_models["prompts"][0], 4)) == 4, key


# ---- bad input ----

def export_fails(tmp_path, adapter, base, *extra, t="f16"):
    out = tmp_path / "out.gguf"
    r = run_nnpipe("export-lora-gguf", "--adapter", adapter, "--base", base, "--type", t,
                   "--out", out, *extra, check=False)
    assert r.returncode != 0
    assert not out.exists()
    assert list(tmp_path.glob("out.gguf*")) == []  # no temporary left behind either
    return r.stderr


def edit_adapter(work, tmp_path, edit, config_edit=None):
    src = work["adapters"]["adapter"]
    dst = tmp_path / "edited"
    shutil.copytree(src, dst)
    t = load_file(src / "adapter_model.safetensors")
    edit(t)
    save_file(t, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    if config_edit:
        cfg = json.loads((src / "adapter_config.json").read_text())
        config_edit(cfg)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_lm_head_on_tied_model_fails(work, tmp_path):
    cfg = json.loads((work["base"] / "config.json").read_text())
    assert cfg["tie_word_embeddings"]
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]

    def add_lm_head(t):
        t["base_model.model.lm_head.lora_A.weight"] = torch.randn(8, hidden)
        t["base_model.model.lm_head.lora_B.weight"] = torch.randn(vocab, 8)

    bad = edit_adapter(work, tmp_path, add_lm_head,
                       lambda c: c["target_modules"].append("lm_head"))
    err = export_fails(tmp_path, bad, work["base"])
    assert "adapter_model.safetensors" in err and "base_model.model.lm_head.lora_" in err
    assert "ties lm_head to embed_tokens" in err and "output.weight" in err


def test_adapter_of_another_model_fails(work, tmp_path):
    """A PEFT adapter made on a model with 4 KV heads (k_proj out 64) for our 2-KV-head base."""
    cfg = Qwen2Config.from_pretrained(work["base"])
    cfg.num_key_value_heads = cfg.num_attention_heads
    other = tmp_path / "other"
    Qwen2ForCausalLM(cfg).save_pretrained(other)
    shutil.copy(work["base"] / "tokenizer.json", other / "tokenizer.json")
    bad = make_adapter(other, tmp_path / "other-adapter", seed=5, r=4, lora_alpha=8,
                       target_modules=["k_proj"])
    err = export_fails(tmp_path, bad, work["base"])
    assert "adapter_model.safetensors" in err and "k_proj.lora_B.weight" in err
    assert "another model" in err


def test_layer_beyond_base_fails(work, tmp_path):
    def move_layer(t):
        for k in [k for k in t if ".layers.1." in k]:
            t[k.replace(".layers.1.", ".layers.7.")] = t.pop(k)

    err = export_fails(tmp_path, edit_adapter(work, tmp_path, move_layer), work["base"])
    assert "layers.7.self_attn" in err and "out of range" in err and "2 layers" in err


def test_truncated_safetensors_fails(work, tmp_path):
    bad = tmp_path / "truncated"
    shutil.copytree(work["adapters"]["adapter"], bad)
    st = bad / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    err = export_fails(tmp_path, bad, work["base"])
    assert "adapter_model.safetensors" in err


def test_unknown_type_fails(work, tmp_path):
    err = export_fails(tmp_path, work["adapters"]["adapter"], work["base"], t="q4_0")
    assert "q4_0" in err and "f32, f16, bf16, q8_0" in err


def test_help():
    r = run_nnpipe("export-lora-gguf", "--help")
    assert "--adapter" in r.stdout and "--base" in r.stdout and "q8_0" in r.stdout
