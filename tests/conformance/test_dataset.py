"""Chat dataset tokenization and label masks vs an independent implementation on HF tokenizers +
jinja2 (the oracles), token by token; and the dataset validator's errors on bad input."""
import json
import random

import jinja2
import jinja2.sandbox
import pytest
from tokenizers import Tokenizer

from conftest import run_nnpipe

ASSISTANT_HEADER = "<|im_start|>assistant\n"
IM_END = "<|im_end|>"


def jinja_env():
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def load_template(model_dir):
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    jinja_file = model_dir / "chat_template.jinja"
    source = jinja_file.read_text() if jinja_file.exists() else cfg["chat_template"]
    special = {}
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = cfg.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            special[k] = v
    return jinja_env().from_string(source), special


def special_texts(model_dir):
    added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    return sorted({a["content"] for a in added if a["special"]} | {"<|im_start|>", IM_END}, key=len, reverse=True)


def markup_specials(tmpl, messages, special, specials, add_generation_prompt=False):
    """The rendered text, and the [start, end) of each special token the template wrote itself (not
    typed inside a message): the conversation is rendered again with each special-token text in the
    messages disguised by a same-length stand-in; what stays special in both renderings is markup."""
    def disguise(s):
        for sp in specials:
            s = s.replace(sp, sp[0] + "\x07" + sp[2:])
        return s
    text = tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
    other = tmpl.render(messages=[{**m, "content": disguise(m["content"])} for m in messages],
                        add_generation_prompt=add_generation_prompt, **special)
    assert len(text) == len(other)
    found, i = [], 0
    while i < len(text):
        sp = next((sp for sp in specials if text.startswith(sp, i)), None)  # leftmost-longest
        if sp is None:
            i += 1
            continue
        if other.startswith(sp, i):
            found.append((i, i + len(sp)))
        i += len(sp)
    return text, found


def encode_with_markup(tok, text, markup):
    """Markup special tokens are control tokens; every other piece is encoded on its own with
    special-token text as plain text (tokenizers' encode_special_tokens)."""
    ids, offsets, pos = [], [], 0
    tok.encode_special_tokens = True
    try:
        for b, e in markup + [(len(text), len(text))]:
            if pos < b:
                enc = tok.encode(text[pos:b], add_special_tokens=False)
                ids += enc.ids
                offsets += [s + pos for s, _ in enc.offsets]
            if b < e:
                ids.append(tok.token_to_id(text[b:e]))
                offsets.append(b)
            pos = e
    finally:
        tok.encode_special_tokens = False
    return ids, offsets


def reference_examples(model_dir, convs, max_seq_len):
    """The label rule of QWEN.md, written independently: tokens starting inside an assistant
    reply (after the template's "<|im_start|>assistant\\n", up to and including its "<|im_end|>")
    are trained. Special-token text typed inside a message is plain text (docs/DESIGN.md)."""
    tmpl, special = load_template(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    specials = special_texts(model_dir)
    out = []
    for i, conv in enumerate(convs):
        text, markup = markup_specials(tmpl, conv["messages"], special, specials)
        starts = {b for b, _ in markup}
        spans, pos = [], 0
        for _ in [m for m in conv["messages"] if m["role"] == "assistant"]:
            h = text.index(ASSISTANT_HEADER, pos)
            while h not in starts:
                h = text.index(ASSISTANT_HEADER, h + 1)
            b = h + len(ASSISTANT_HEADER)
            e = text.index(IM_END, b)
            while e not in starts:
                e = text.index(IM_END, e + 1)
            e += len(IM_END)
            spans.append((b, e))
            pos = e
        ids, offsets = encode_with_markup(tok, text, markup)
        labels = [t if any(b <= s < e for b, e in spans) else -100 for t, s in zip(ids, offsets)]
        truncated = len(ids) > max_seq_len
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(l == -100 for l in labels):
            continue
        out.append({"conversation": i, "input_ids": ids, "labels": labels, "truncated": truncated})
    return out


PIECES = ["Hello", "world", "Arpit", " ", "  ", "\n", "\n\n", "\t", "héllo", "Ünïcödé", "naïve café", "日本語のテキスト",
          "Привет", "مرحبا", "🦙", "👩‍💻", "e\u0301", "42", "3.14", "it's", "I'LL", "<think>x</think>", "```code```",
          "!!!", "\r\n", "tab\tbed", "<|endoftext|>", "ok.", "Qwen", "    indented"]


def random_text(rng, lo=1, hi=12):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(lo, hi)))


def random_conversations(seed, n):
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        msgs = []
        if rng.random() < 0.5:
            msgs.append({"role": "system", "content": random_text(rng)})
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": random_text(rng)})
            msgs.append({"role": "assistant", "content": random_text(rng)})
        convs.append({"messages": msgs})
    return convs


def nnpipe_examples(model_dir, path, tmp_path, *extra):
    dump = tmp_path / "dump.jsonl"
    stats = json.loads(run_nnpipe("data", "check", path, "--model", model_dir, "--dump", dump, "--json", *extra).stdout)
    return stats, [json.loads(l) for l in dump.read_text().splitlines()]


@pytest.mark.parametrize("model", ["tiny_model", "tiny_qwen_model"])
def test_labels_match_reference(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    convs = random_conversations(11, 300)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs))
    stats, ours = nnpipe_examples(model_dir, path, tmp_path, "--max-seq-len", "100000")
    ref = reference_examples(model_dir, convs, 100000)
    assert len(ours) == len(ref) == 300
    for o, r in zip(ours, ref):
        assert o["input_ids"] == r["input_ids"], f"conversation {r['conversation']}"
        assert o["labels"] == r["labels"], f"conversation {r['conversation']}"
    assert stats["tokens"] == sum(len(r["input_ids"]) for r in ref)
    assert stats["trained_tokens"] == sum(sum(l != -100 for l in r["labels"]) for r in ref)


def test_assistant_boundary_exact(tiny_qwen_model, tmp_path):
    """The <|im_start|>assistant\\n header is never trained; the reply and its <|im_end|> are."""
    convs = [{"messages": [{"role": "user", "content": "Hi! My name is Arpit."},
                           {"role": "assistant", "content": "Hey Arpit, nice to meet you!"}]}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(convs))
    _, ours = nnpipe_examples(tiny_qwen_model, path, tmp_path)
    tok = Tokenizer.from_file(str(tiny_qwen_model / "tokenizer.json"))
    trained = [t for t in ours[0]["labels"] if t != -100]
    assert tok.decode(trained, skip_special_tokens=False).startswith("<think>") or \
        tok.decode(trained, skip_special_tokens=False).startswith("Hey")
    assert tok.decode(trained, skip_special_tokens=False).endswith("Hey Arpit, nice to meet you!<|im_end|>")
    assert tok.token_to_id("<|im_end|>") == trained[-1]


def test_truncation_and_reject(tiny_model, tmp_path):
    convs = random_conversations(5, 40)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(convs, ensure_ascii=False))
    stats, ours = nnpipe_examples(tiny_model, path, tmp_path, "--max-seq-len", "48")
    ref = reference_examples(tiny_model, convs, 48)
    assert [o["input_ids"] for o in ours] == [r["input_ids"] for r in ref]
    assert [o["labels"] for o in ours] == [r["labels"] for r in ref]
    assert [o["truncated"] for o in ours] == [r["truncated"] for r in ref]
    assert stats["truncated"] > 0
    r = run_nnpipe("data", "check", path, "--model", tiny_model, "--max-seq-len", "48", "--reject-long", check=False)
    assert r.returncode != 0 and "longer than max_seq_len 48" in r.stderr


BAD = [
    ("notjson.json", "[{\"messages\": [", "line 1, column"),
    ("notlist.json", "{\"messages\": []}", "expected a JSON list"),
    ("empty.json", "", "empty dataset"),
    ("missing.json", "[{\"msgs\": []}]", "conversation 0: unexpected field \"msgs\""),
    ("role.json", json.dumps([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                              {"messages": [{"role": "wizard", "content": "a"}]}]), "conversation 1: messages[0].role: unknown role"),
    ("content.json", json.dumps([{"messages": [{"role": "user", "content": ["x"]}]}]), "messages[0].content: must be a string"),
    ("noassistant.json", json.dumps([{"messages": [{"role": "user", "content": "x"}]}]), "no \"assistant\" message"),
    ("extra.json", json.dumps([{"messages": [{"role": "user", "content": "x", "x": 1}]}]), "unexpected field \"x\""),
    ("badutf8.jsonl", b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xc3\x28\"}]}\n", "line 1, column"),
    ("line3.jsonl", "\n\n{\"messages\": 1}\n", "line 3: conversation 0: \"messages\" must be an array"),
]


@pytest.mark.parametrize("name,content,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_datasets(name, content, needle, tiny_model, tmp_path):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run_nnpipe("data", "check", path, "--model", tiny_model, check=False)
    assert r.returncode != 0
    assert str(path) in r.stderr and needle in r.stderr, r.stderr
