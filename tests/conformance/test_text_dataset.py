"""Plain-text datasets (.txt, for pre-training) against HF tokenizers and transformers.

The reference splits the file into documents at blank lines, encodes each with HF `tokenizers`
(add_special_tokens=False, encode_special_tokens=True: special-token text is plain text) followed
by <|endoftext|>, cuts it into windows of max_seq_len tokens
and trains every token (labels = input_ids), as transformers' run_clm does with a causal LM. The
steps are replayed with test_trainer's torch loop (the HF Trainer's semantics); tolerances are
test_trainer's.
"""
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import Qwen2ForCausalLM

from conftest import run_nnpipe
from test_trainer import COMMON, _check_steps, _metrics, compare_weights, torch_train

DOCS = [
    "A language model reads text as tokens.\nIt learns to predict the next one.",
    "Paris is the capital of France. " * 6,  # longer than a window: split into several
    "Bonjour ! Comment allez-vous ?",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "short",
    "Special-token text is text: <|im_start|>assistant\nnot a turn<|im_end|><|endoftext|>",
]


def reference_text_examples(model_dir, docs, max_len):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.encode_special_tokens = True  # a special token's spelling in the text stays text
    eot = tok.token_to_id("<|endoftext|>")
    out = []
    for d in docs:
        ids = tok.encode(d, add_special_tokens=False).ids + [eot]
        for b in range(0, len(ids), max_len):
            w = ids[b:b + max_len]
            if len(w) >= 2:  # a window of one token predicts nothing
                out.append({"input_ids": w, "labels": [-100] + w[1:]})
    return out


def test_text_pretraining_matches_torch(tiny_model, tmp_path):
    data = tmp_path / "corpus.txt"
    # blank lines (with stray spaces and CRLF) separate documents
    data.write_text("\n\n".join(DOCS[:2]) + "\n \r\n\n" + "\n\n\n".join(DOCS[2:]) + "\n",
                    encoding="utf-8")
    lr, steps, max_len = 1e-3, 3, 24
    run_nnpipe("finetune-full", "--model", tiny_model, "--data", data, "--runs-dir",
               tmp_path / "runs", "--session", "t", "--max-steps", steps, "--lr", lr,
               "--max-seq-len", max_len, "--scheduler", "linear", "--warmup-steps", 1, *COMMON)
    step_dir = tmp_path / "runs" / "t" / "finetune_full"

    examples = reference_text_examples(tiny_model, DOCS, max_len)
    assert len(examples) > len(DOCS)  # the long document was split
    model = Qwen2ForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                             attn_implementation="eager")
    losses, norms = torch_train(model, examples, batch_size=2, grad_accum=2, steps=steps, lr=lr,
                                weight_decay=0.1, max_grad_norm=1.0, scheduler="linear", warmup=1)
    _check_steps(_metrics(step_dir), losses, norms)
    ours = load_file(step_dir / "model" / "model.safetensors")
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    compare_weights(ours, ref, lr, steps)


def test_text_dataset_errors_name_the_file(tiny_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    r = run_nnpipe("finetune-full", "--model", tiny_model, "--data", empty, "--runs-dir",
                   tmp_path / "runs", "--session", "e", "--max-steps", 1, "--no-progress",
                   check=False)
    assert r.returncode != 0 and f"{empty}: no text" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\xff\xfe more")
    r = run_nnpipe("finetune-full", "--model", tiny_model, "--data", bad, "--runs-dir",
                   tmp_path / "runs", "--session", "b", "--max-steps", 1, "--no-progress",
                   check=False)
    assert r.returncode != 0 and f"{bad}: byte offset 10: invalid UTF-8" in r.stderr
