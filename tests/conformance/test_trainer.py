"""The trainer against transformers / PEFT / torch doing the same training steps.

nnpipe runs `finetune-full` / `finetune-lora` on a dataset; the reference tokenizes the same
conversations independently (test_dataset.reference_examples: tokenizers + jinja2), builds the same
micro-batches (file order, right padding), normalises the loss by the step's label tokens with
transformers' own `num_items_in_batch`, clips with torch.nn.utils.clip_grad_norm_, exempts the
parameters the HF Trainer exempts from weight decay (Trainer.get_decay_parameter_names), steps
torch.optim.AdamW, and follows transformers' LR schedule. Then the weights are compared.

Tolerances:
- per-step loss |diff| <= 2e-5 and grad-norm relative diff <= 1e-4: fp32 forward/backward agree to
  ~1e-6 (test_qwen2_forward); the first step is exact up to summation order.
- weights after the steps, per tensor: at most 0.1% of the elements differ by more than
  1e-3 * lr per step, and none by more than 2 * lr per step. Adam's first update is
  lr * g / (|g| + eps) ~ lr * sign(g): where a gradient element sits at the fp32 noise floor its
  sign is noise, so such an element may move by a full update either way (seen: 1 element of 4096
  in a tensor, all others within 1e-6); everywhere else the weights agree to ~1e-3 of an update.
  A wrong formula (missing bias correction, decay on norms, another loss normalisation) moves
  most elements of some tensor by >= 0.1 * lr.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Qwen2ForCausalLM, Trainer, get_scheduler

from conftest import run_nnpipe
from test_dataset import random_conversations, reference_examples

LOSS_ATOL = 2e-5
GRAD_NORM_RTOL = 1e-4
WEIGHT_CLOSE_PER_LR = 1e-3  # per step
WEIGHT_OUTLIER_FRACTION = 1e-3


def _pad(examples):
    t = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros((len(examples), t), dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    labels = torch.full((len(examples), t), -100, dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        mask[r, :n] = 1
        labels[r, :n] = torch.tensor(e["labels"])
    return ids, mask, labels


def torch_train(model, examples, *, batch_size, grad_accum, steps, lr, weight_decay, max_grad_norm,
                scheduler, warmup):
    """The HF Trainer's inner loop, written out (file order, no shuffling)."""
    model.train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [{"params": [p for n, p in trainable if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    sched = get_scheduler(scheduler, opt, num_warmup_steps=warmup, num_training_steps=steps)
    micro = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
    plan = [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]
    losses, norms = [], []
    for s in range(steps):
        batches = [_pad(mb) for mb in plan[s % len(plan)]]
        n_items = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab in batches)
        opt.zero_grad()
        total = 0.0
        for ids, mask, lab in batches:
            out = model(input_ids=ids, attention_mask=mask, labels=lab,
                        num_items_in_batch=torch.tensor(n_items))
            out.loss.backward()
            total += float(out.loss.detach())
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in trainable],
                                                          max_grad_norm)))
        opt.step()
        sched.step()
        losses.append(total)
    return losses, norms


def compare_weights(ours, ref, lr, steps):
    worst_frac, worst = 0.0, 0.0
    for name, w in ours.items():
        assert w.dtype == np.float32 and w.shape == ref[name].shape, name
        d = np.abs(w - ref[name])
        frac = float((d > WEIGHT_CLOSE_PER_LR * lr * steps).mean())
        # k_proj's bias adds q.b_k to every score of a query row, which softmax ignores: its true
        # gradient is exactly 0, both sides hold rounding noise, and Adam turns noise into +-lr.
        if not name.endswith("k_proj.bias"):
            assert frac <= WEIGHT_OUTLIER_FRACTION, f"{name}: {frac:.2%} of the elements differ"
        assert d.max() <= 2 * lr * steps, f"{name}: max |diff| {d.max()}"
        worst_frac, worst = max(worst_frac, frac), max(worst, float(d.max()))
    print(f"\nweights: max |diff| {worst:.2e}, worst outlier fraction {worst_frac:.1e} "
          f"(lr {lr}, {steps} steps)")


def _metrics(step_dir):
    return [json.loads(l) for l in (step_dir / "metrics.jsonl").read_text().splitlines()]


def _check_steps(rows, ref_losses, ref_norms):
    assert [r["step"] for r in rows] == list(range(1, len(ref_losses) + 1))
    for r, loss, norm in zip(rows, ref_losses, ref_norms):
        assert abs(r["loss"] - loss) <= LOSS_ATOL, f"step {r['step']}: loss {r['loss']} vs {loss}"
        assert abs(r["grad_norm"] - norm) <= GRAD_NORM_RTOL * norm, \
            f"step {r['step']}: grad_norm {r['grad_norm']} vs {norm}"


COMMON = ["--batch-size", "2", "--grad-accum", "2", "--no-shuffle", "--max-grad-norm", "1.0",
          "--weight-decay", "0.1", "--no-progress", "--threads", "2"]


@pytest.fixture(scope="module")
def convs():
    # 10 conversations: 5 micro-batches of 2 -> optimizer steps of 2, 2 and 1 micro-batches, so
    # both the token-weighted accumulation and the short last step of an epoch are exercised.
    return random_conversations(seed=31, n=10)


@pytest.mark.parametrize("scheduler,warmup,steps", [("constant", 0, 1), ("linear", 1, 4),
                                                     ("cosine", 2, 4)])
def test_full_finetune_matches_torch(tiny_model, convs, tmp_path, scheduler, warmup, steps):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    lr = 1e-3
    run_nnpipe("finetune-full", "--model", tiny_model, "--data", data, "--runs-dir",
               tmp_path / "runs", "--session", "t", "--max-steps", steps, "--lr", lr,
               "--scheduler", scheduler, "--warmup-steps", warmup, *COMMON)
    step_dir = tmp_path / "runs" / "t" / "finetune_full"

    examples = reference_examples(tiny_model, convs, 2048)
    model = Qwen2ForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                             attn_implementation="eager")
    losses, norms = torch_train(model, examples, batch_size=2, grad_accum=2, steps=steps, lr=lr,
                                weight_decay=0.1, max_grad_norm=1.0, scheduler=scheduler,
                                warmup=warmup)
    _check_steps(_metrics(step_dir), losses, norms)

    ours = load_file(step_dir / "model" / "model.safetensors")
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(ours) <= set(ref)
    compare_weights(ours, ref, lr, steps)

    summary = json.loads((step_dir / "summary.json").read_text())
    assert summary["status"] == "Success"
    m = summary["metrics"]
    assert m["steps"] == steps and m["trained_tokens"] > 0 and m["tokens_per_s"] > 0
    assert m["final_loss"] == pytest.approx(_metrics(step_dir)[-1]["loss"])
    assert (step_dir / "loss.svg").read_text().lstrip().startswith("<")


def test_full_output_dtype_bf16_loads_in_transformers(tiny_model, convs, tmp_path):
    """The output directory is a model transformers loads, with logits equal to ours."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    run_nnpipe("finetune-full", "--model", tiny_model, "--data", data, "--runs-dir",
               tmp_path / "runs", "--session", "b", "--max-steps", 2, "--output-dtype", "bf16",
               "--lr", 1e-3, *COMMON)
    out = tmp_path / "runs" / "b" / "finetune_full" / "model"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    ref = model(input_ids=ids).logits.detach().numpy()
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"input_ids": ids.tolist()}))
    run_nnpipe("dev-forward", "--model", out, "--batch", batch, "--out", tmp_path / "o.safetensors")
    ours = load_file(tmp_path / "o.safetensors")["logits"]
    assert np.abs(ours - ref).max() <= 1e-4


def test_grad_accumulation_equals_one_big_batch(tiny_model, tmp_path):
    """Token-weighted accumulation: batch 4 x accum 1 and batch 1 x accum 4 take the same step."""
    convs = random_conversations(seed=8, n=4)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    outs = []
    for bs, ga in [(4, 1), (1, 4)]:
        session = f"bs{bs}"
        run_nnpipe("finetune-full", "--model", tiny_model, "--data", data, "--runs-dir",
                   tmp_path / "runs", "--session", session, "--max-steps", 1, "--batch-size", bs,
                   "--grad-accum", ga, "--no-shuffle", "--lr", 1e-3, "--no-progress")
        step_dir = tmp_path / "runs" / session / "finetune_full"
        outs.append((_metrics(step_dir)[0], load_file(step_dir / "model" / "model.safetensors")))
    (m1, w1), (m2, w2) = outs
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-6)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-5)
    compare_weights(w1, w2, 1e-3, 1)  # same noise-floor caveat as against torch




ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_adapter(base_dir, out, r=4, alpha=8, targets=ALL7, rslora=False):
    """A PEFT-initialised adapter (kaiming A) with random B, so that A gets gradients too."""
    from peft import LoraConfig, get_peft_model
    model = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                          target_modules=targets, use_rslora=rslora,
                                          task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out)
    return out


@pytest.mark.parametrize("rslora,targets", [(False, ALL7), (True, ["q_proj", "v_proj"])],
                         ids=["all7", "rslora-qv"])
def test_lora_steps_match_peft(tiny_model, convs, tmp_path, rslora, targets):
    """Continual LoRA from a PEFT adapter: our steps equal PEFT's on the same adapter."""
    from peft import PeftModel, get_peft_model_state_dict
    start = _peft_adapter(tiny_model, tmp_path / "start", rslora=rslora, targets=targets)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    lr, steps = 1e-3, 3
    r = run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--runs-dir",
                   tmp_path / "runs", "--session", "l", "--max-steps", steps, "--lr", lr,
                   "--scheduler", "linear", "--warmup-steps", 1, "--checkpoint-lora", start,
                   "--rank", 4, "--alpha", 8, "--dropout", 0, "--targets", ",".join(targets),
                   *(["--rslora"] if rslora else []), *COMMON)
    assert "checkpoint" not in r.stderr.lower() or "warn" not in r.stderr.lower(), r.stderr
    step_dir = tmp_path / "runs" / "l" / "finetune_lora"

    base = Qwen2ForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                            attn_implementation="eager")
    pm = PeftModel.from_pretrained(base, start, is_trainable=True)
    examples = reference_examples(tiny_model, convs, 2048)
    losses, norms = torch_train(pm, examples, batch_size=2, grad_accum=2, steps=steps, lr=lr,
                                weight_decay=0.1, max_grad_norm=1.0, scheduler="linear", warmup=1)
    _check_steps(_metrics(step_dir), losses, norms)
    ref = {k: v.detach().numpy() for k, v in get_peft_model_state_dict(pm).items()}
    ours = load_file(step_dir / "adapter" / "adapter_model.safetensors")
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    compare_weights(ours, ref, lr, steps)
    cfg = json.loads((step_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["use_rslora"] == rslora and sorted(cfg["target_modules"]) == sorted(targets)
    # The base is untouched and the trained adapter loads in PEFT.
    PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tiny_model), step_dir / "adapter")


def test_continual_lora_checkpoint_shape_wins(tiny_model, convs, tmp_path):
    start = _peft_adapter(tiny_model, tmp_path / "start", r=4, alpha=8, targets=["q_proj", "v_proj"])
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs[:4]))
    r = run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--runs-dir",
                   tmp_path / "runs", "--session", "c", "--max-steps", 2, "--checkpoint-lora",
                   start, "--rank", 16, "--alpha", 32, "--no-progress")
    assert "lora_rank 16 requested, the checkpoint has r=4" in r.stderr, r.stderr
    assert "target_modules" in r.stderr
    step_dir = tmp_path / "runs" / "c" / "finetune_lora"
    summary = json.loads((step_dir / "summary.json").read_text())
    assert len(summary["metrics"]["warnings"]) == 3  # rank, alpha, targets
    assert summary["metrics"]["lora"]["r"] == 4
    assert summary["metrics"]["lora"]["continued_from"] == str(start)
    cfg = json.loads((step_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_fresh_lora_adapter_loads_in_peft_with_equal_logits(tiny_model, convs, tmp_path):
    from peft import PeftModel
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--runs-dir",
               tmp_path / "runs", "--session", "f", "--max-steps", 3, "--lr", 1e-2,
               "--no-progress")
    adapter = tmp_path / "runs" / "f" / "finetune_lora" / "adapter"
    pm = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation="eager"), adapter)
    ids = torch.tensor([[3, 17, 99, 250, 4, 8]])
    ref = pm(input_ids=ids).logits.detach().numpy()
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"input_ids": ids.tolist()}))
    run_nnpipe("dev-forward", "--model", tiny_model, "--lora", adapter, "--batch", batch, "--out",
               tmp_path / "o.safetensors")
    ours = load_file(tmp_path / "o.safetensors")["logits"]
    assert np.abs(ours - ref).max() <= 1e-4
    base = Qwen2ForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)(input_ids=ids).logits
    assert np.abs(base.detach().numpy() - ref).max() > 1e-3  # the adapter changed something


def _failure(runs, session, step):
    s = json.loads((runs / session / step / "summary.json").read_text())
    assert s["status"] == "Failure", s
    return s["error"]


def test_bad_inputs_fail_clearly(tiny_model, convs, tmp_path):
    runs = tmp_path / "runs"
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs[:2]))
    # An adapter for another model (4 KV heads: k_proj/v_proj B have other shapes).
    from transformers import Qwen2Config
    cfg = Qwen2Config.from_pretrained(tiny_model)
    cfg.num_key_value_heads = 4
    other = tmp_path / "other"
    Qwen2ForCausalLM(cfg).save_pretrained(other)
    adapter = _peft_adapter(other, tmp_path / "other-adapter")
    r = run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--runs-dir", runs,
                   "--session", "a", "--checkpoint-lora", adapter, "--rank", 4, "--alpha", 8,
                   check=False)
    assert r.returncode != 0 and "another model" in r.stderr, r.stderr
    assert "k_proj" in _failure(runs, "a", "finetune_lora")
    assert not (runs / "a" / "finetune_lora" / "adapter").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    r = run_nnpipe("finetune-full", "--model", tiny_model, "--data", bad, "--runs-dir", runs,
                   "--session", "b", check=False)
    assert r.returncode != 0 and str(bad) in r.stderr
    assert "line 1" in _failure(runs, "b", "finetune_full")
    assert not (runs / "b" / "finetune_full" / "model").exists()

    r = run_nnpipe("finetune-full", "--model", tmp_path / "nope", "--data", data, "--runs-dir",
                   runs, "--session", "c", check=False)
    assert r.returncode != 0 and "nope" in r.stderr

    r = run_nnpipe("finetune-lora", "--model", tiny_model, "--data", data, "--runs-dir", runs,
                   "--session", "d", "--targets", "q_proj,lm_head", check=False)
    assert r.returncode != 0 and "lm_head" in r.stderr
    r = run_nnpipe("finetune-full", "--model", tiny_model, "--data", data, "--runs-dir", runs,
                   "--session", "e", "--lr", "-1", check=False)
    assert r.returncode != 0 and "learning_rate" in r.stderr
    params = tmp_path / "p.json"
    params.write_text('{"model_path": "x", "num_epochs": "three"}')
    r = run_nnpipe("finetune-full", "--params", params, "--runs-dir", runs, "--session", "f",
                   check=False)
    assert r.returncode != 0 and "num_epochs" in r.stderr and str(params) in r.stderr
