"""Writes the seed corpus for fuzz_gguf_model: micro Qwen2 GGUF models (hidden 32, one layer, an
8-token vocabulary) written with gguf-py's GGUFWriter (the oracle), in several tensor types.

Run: /path/to/venv/bin/python tests/fuzz/make_gguf_model_seeds.py
"""
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

here = Path(__file__).parent / "corpus" / "gguf_model"
here.mkdir(parents=True, exist_ok=True)
H, FF, V, HEADS, KV = 32, 64, 8, 2, 1
HD = H // HEADS


def write(name, qtype, tied):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(here / name), arch="qwen2")
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(["a", "b", "c", "ab", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[PAD7]"])
    w.add_token_types([1, 1, 1, 1, 3, 3, 3, 5])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(6)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def t(n, shape, one_d=False):
        x = rng.standard_normal(shape).astype(np.float32) * 0.1
        qt = Q.F32 if one_d else qtype
        w.add_tensor(n, gguf.quants.quantize(x, qt) if qt != Q.F32 else x, raw_dtype=qt)

    t("token_embd.weight", (V, H))
    t("blk.0.attn_norm.weight", (H,), True)
    t("blk.0.attn_q.weight", (H, H))
    t("blk.0.attn_q.bias", (H,), True)
    t("blk.0.attn_k.weight", (KV * HD, H))
    t("blk.0.attn_k.bias", (KV * HD,), True)
    t("blk.0.attn_v.weight", (KV * HD, H))
    t("blk.0.attn_v.bias", (KV * HD,), True)
    t("blk.0.attn_output.weight", (H, H))
    t("blk.0.ffn_norm.weight", (H,), True)
    t("blk.0.ffn_gate.weight", (FF, H))
    t("blk.0.ffn_up.weight", (FF, H))
    t("blk.0.ffn_down.weight", (H, FF))
    t("output_norm.weight", (H,), True)
    if not tied:
        t("output.weight", (V, H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


write("micro_f32_tied.gguf", Q.F32, True)
write("micro_q8_0.gguf", Q.Q8_0, False)
write("micro_q4_0_tied.gguf", Q.Q4_0, True)
write("micro_f16.gguf", Q.F16, False)
