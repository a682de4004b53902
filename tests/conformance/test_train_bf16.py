"""`finetune-lora --matmul-dtype bf16` (opt-in) against the default fp32 path and against PEFT on
the model loaded in bfloat16 (transformers + PEFT, adapters fp32 as PEFT keeps them).

A bf16 checkpoint (`init-model --preset small --dtype bfloat16`: hidden 256, FFN 768), continual
LoRA from a PEFT adapter with random B (so A gets gradients from step 1), the trainer's loop of
test_trainer.torch_train, 3 steps. Per step, nnpipe bf16 against nnpipe f32 and against PEFT bf16:
loss |diff| <= LOSS_ATOL (2e-3) and grad-norm relative diff <= NORM_RTOL (1e-2).

Why these bounds: nnpipe's bf16 mode rounds only the frozen base's matmul operands to bf16
(relative 2^-9 per value, sums in f32); PEFT's bf16 model rounds every activation (norms,
attention, residual stream, logits). Neither is the other's computation; measured on this model
both sit within ~2e-4 of each other and of the fp32 loss (~6.6), and their gradient norms within
~1e-3 relative, so the bounds leave 10x room for summation order and data. A wrong product (an
unrounded or mis-rounded operand, a lost K block, a transposed tile, garbage dx) moves the
gradient norm by far more than 1e-2. The test also requires bf16 and f32 to differ (> 1e-7): the
flag must take effect.
"""
import json

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import Qwen2ForCausalLM

from conftest import run_nnpipe
from test_dataset import random_conversations, reference_examples
from test_trainer import _metrics, _peft_adapter, torch_train

LOSS_ATOL = 2e-3
NORM_RTOL = 1e-2
STEPS, LR = 3, 1e-3
COMMON = ["--batch-size", "2", "--grad-accum", "1", "--no-shuffle", "--max-grad-norm", "1.0",
          "--weight-decay", "0.0", "--no-progress", "--threads", "2", "--max-steps", STEPS,
          "--lr", LR, "--scheduler", "constant", "--rank", 4, "--alpha", 8, "--dropout", 0]


def _run(model, data, start, runs, session, *extra):
    run_nnpipe("finetune-lora", "--model", model, "--data", data, "--runs-dir", runs, "--session",
               session, "--checkpoint-lora", start, *COMMON, *extra)
    return runs / session / "finetune_lora"


def test_lora_bf16_matmuls_match_fp32_and_peft_bf16(tmp_path):
    model = tmp_path / "small-bf16"
    run_nnpipe("init-model", "--preset", "small", "--seed", "3", "--dtype", "bfloat16", "--out",
               model)
    convs = random_conversations(seed=41, n=6)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(convs))
    torch.manual_seed(0)  # PEFT's kaiming init of A draws from the global generator
    start = _peft_adapter(model, tmp_path / "start")

    f32_dir = _run(model, data, start, tmp_path / "runs", "f32")
    bf16_dir = _run(model, data, start, tmp_path / "runs", "bf16", "--matmul-dtype", "bf16")
    summary = json.loads((bf16_dir / "summary.json").read_text())
    assert summary["parameters"]["matmul_dtype"] == "bf16", summary["parameters"]
    f32_loss = [r["loss"] for r in _metrics(f32_dir)]
    bf16_loss = [r["loss"] for r in _metrics(bf16_dir)]
    f32_norm = [r["grad_norm"] for r in _metrics(f32_dir)]
    bf16_norm = [r["grad_norm"] for r in _metrics(bf16_dir)]

    from peft import PeftModel
    base = Qwen2ForCausalLM.from_pretrained(model, dtype=torch.bfloat16, attn_implementation="eager")
    pm = PeftModel.from_pretrained(base, start, is_trainable=True)
    examples = reference_examples(model, convs, 2048)
    peft_loss, peft_norm = torch_train(pm, examples, batch_size=2, grad_accum=1, steps=STEPS,
                                       lr=LR, weight_decay=0.0, max_grad_norm=1.0,
                                       scheduler="constant", warmup=0)
    print(f"\nlosses f32 {f32_loss}\n       bf16 {bf16_loss}\n  PEFT bf16 {peft_loss}")
    print(f"grad norms f32 {f32_norm}\n       bf16 {bf16_norm}\n  PEFT bf16 {peft_norm}")
    assert len(bf16_loss) == len(f32_loss) == len(peft_loss) == STEPS
    for name, loss, norm in (("fp32", f32_loss, f32_norm), ("PEFT bf16", peft_loss, peft_norm)):
        d_loss = [abs(a - b) for a, b in zip(bf16_loss, loss)]
        d_norm = [abs(a - b) / b for a, b in zip(bf16_norm, norm)]
        assert max(d_loss) <= LOSS_ATOL, f"loss vs {name}: {d_loss}"
        assert max(d_norm) <= NORM_RTOL, f"grad norm vs {name}: {d_norm}"
    assert max(abs(a - b) for a, b in zip(bf16_loss, f32_loss)) > 1e-7, "bf16 changed nothing"
    # The adapter trained with bf16 products stays close to the fp32 one (3 Adam steps of lr).
    ours = load_file(bf16_dir / "adapter" / "adapter_model.safetensors")
    ref = load_file(f32_dir / "adapter" / "adapter_model.safetensors")
    worst = max(float(np.abs(ours[k] - ref[k]).max()) for k in ref)
    assert worst <= 2 * LR * STEPS, worst
