"""nnpipe's tokenizer against HF `tokenizers` (the oracle): ids, decode, offsets, the default
tokenizer. nnpipe runs in batch mode (`nnpipe tokenize --jsonl`), once per test, not per string."""
import json
import random
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from conftest import FIXTURES, _bin, run_nnpipe

QWEN = FIXTURES / "qwen-tokenizer" / "tokenizer.json"
VOCAB_TESTS = FIXTURES / "llama.cpp-vocab-tests"


def nnpipe_batch(tok_path, lines, *flags, tmp_path):
    """Runs `nnpipe tokenize --jsonl` on JSON values `lines`; returns one parsed result per line."""
    f = tmp_path / f"batch-{random.random()}.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    r = subprocess.run([str(_bin()), "tokenize", "--tokenizer", str(tok_path), "--jsonl", str(f), *flags],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.split("\n")[:-1]]  # not splitlines(): U+2028 is text
    assert len(out) == len(lines)
    return out


def hf_ids(hf, texts):
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def first_mismatches(texts, ours, theirs, n=5):
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    return len(bad), "\n".join(f"{t!r}\n  nnpipe {a}\n  hf     {b}" for t, a, b in bad[:n])


# --- generated text -------------------------------------------------------------------------------

FRAGMENTS = {
    "latin": ["Hello", "world", "café", "naïve", "Führer", "résumé", "Ångström", "Straße", "œuvre",
              "ÇA VA", "jalapeño", "Ærøskøbing", "Dvořák", "Łódź", "İstanbul", "ıi", "ﬁnance", "Ǆemal"],
    "decomposed": ["e\u0301", "A\u030a", "n\u0303o", "o\u0308\u0304", "a\u0323\u0302", "a\u0302\u0323",
                   "\u1100\u1161\u11a8", "\u1112\u1161\u11ab", "\u0915\u093c", "\u0958", "\u212b",
                   "\u2126", "e\u0301\u0301", "\u0301start", "u\u0308\u0301", "\u00c5\u0327", "\u0344"],
    "cyrillic": ["Привет мир", "ЁЛКА", "ёжик", "Україна", "нещо на Бълг", "Й"],
    "greek": ["Καλημέρα κόσμε", "ΐ", "ὁ λόγος", "ΑΒΓ"],
    "cjk": ["你好世界", "日本語のテキスト", "한국어 텍스트", "中文，标点。", "ｶﾀｶﾅ", "〜！？"],
    "arabic": ["مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "٣٤٥", "؟"],
    "hebrew": ["שָׁלוֹם", "עברית"],
    "indic": ["नमस्ते दुनिया", "क़िला", "हिन्दी", "বাংলা", "தமிழ்", "ಕನ್ನಡ"],
    "sea": ["สวัสดีครับ", "ภาษาไทย", "សួស្តី", "ខ្មែរ", "ພາສາລາວ", "မြန်မာ"],
    "emoji": ["👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🦙", "🇺🇸", "1️⃣", "🧑🏿‍💻", "😀😃😄", "©", "™"],
    "digits": ["0", "42", "3.14159", "1,000,000", "2026-11-27", "１２３", "½", "²³", "Ⅻ", "٣"],
    "space": [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085",
              "\u200b", "\ufeff", "\x0b", "\x0c", "\u2003", " \n ", "\n\n\n", "\t\t", "\u180e", "\x1c"],
    "contraction": ["'s", "'S", "'t", "'re", "'RE", "'Ve", "'m", "'ll", "'Ll", "'LL", "'d", "'D",
                    "'ſ", "’s", "'x", "''"],
    "punct": ["!!!", "...", "?!", "---", "(", ")", "{}", "[]", "<>", "\"", "#", "@", "$%^&*", "``",
              "~~", "//", "/*", "**", "„quoted“", "«»", "¿", "¡", "…", "—", "、", "。"],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<think>", "</think>", "<|im_start", "<|im_end|", "<|", "|>",
                "<|im_start|><|im_end|>", "<|object_ref_start|>"],
    "code": ["def f(x):\n    return x", "int main() { return 0; }", "http://example.com/a?b=c",
             "x = [1, 2, 3]", "if (a && b) {\n\tc();\n}", "$ ls -la | grep .cpp"],
}
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
          (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1780, 0x17FF), (0x1100, 0x11FF),
          (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEF),
          (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF)]


def random_fragment(rng):
    if rng.random() < 0.15:
        lo, hi = rng.choice(RANGES)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
    frag = rng.choice(FRAGMENTS[rng.choice(list(FRAGMENTS))])
    r = rng.random()
    if r < 0.1:
        frag = frag.upper()
    elif r < 0.2:
        frag = frag.title()
    elif r < 0.25:
        frag = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
    return frag


def generated(n=5000, seed=1234):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(1, 12) if i % 50 else rng.randint(100, 600)  # every 50th is long
        seps = ["", " ", " ", "", "\n", rng.choice(FRAGMENTS["space"])]
        out.append("".join(random_fragment(rng) + rng.choice(seps) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def hf_qwen():
    return Tokenizer.from_file(str(QWEN))


@pytest.fixture(scope="module")
def texts():
    return generated()


# --- tests ------------------------------------------------------------------------------------------

def test_golden_llama_cpp_cases(hf_qwen, tmp_path):
    cases = (VOCAB_TESTS / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split(
        "\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(x) for x in line.split()] for line in
                (VOCAB_TESTS / "ggml-vocab-qwen2.gguf.out").read_text().split("\n")[:-1]]
    assert len(cases) == len(expected) == 46
    ours = nnpipe_batch(QWEN, cases, tmp_path=tmp_path)
    n, msg = first_mismatches(cases, ours, expected)
    assert n == 0, msg
    n, msg = first_mismatches(cases, ours, hf_ids(hf_qwen, cases))
    assert n == 0, msg


def test_single_text_cli():
    assert json.loads(run_nnpipe("tokenize", "--tokenizer", QWEN, "--text", "Hello world").stdout) == [9707, 1879]
    # A model directory works too; --file reads bytes as they are.
    assert json.loads(run_nnpipe("tokenize", "--tokenizer", QWEN.parent, "--text", " Hello world").stdout) == [21927, 1879]
    out = run_nnpipe("tokenize", "--tokenizer", QWEN, "--decode", "--text", "[1122, 220, 19, 220, 26062, 3951]").stdout
    assert out == "ied 4 ½ months"


def test_generated_strings_match_hf(hf_qwen, texts, tmp_path):
    assert len(texts) >= 5000
    ours = nnpipe_batch(QWEN, texts, tmp_path=tmp_path)
    n, msg = first_mismatches(texts, ours, hf_ids(hf_qwen, texts))
    assert n == 0, f"{n} of {len(texts)} differ:\n{msg}"


def nfc_between_added_tokens(hf, text):
    """NFC of the text between added tokens: HF matches added tokens first, so NFC never composes
    across one (e.g. "<|im_end|>" + U+0338 keeps its ">")."""
    contents = sorted((t.content for t in hf.get_added_tokens_decoder().values()), key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, contents)) + ")", text)  # longest first
    return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))


def test_decode_roundtrip_is_nfc(hf_qwen, texts, tmp_path):
    ids = hf_ids(hf_qwen, texts)
    ours = nnpipe_batch(QWEN, ids, "--decode", tmp_path=tmp_path)
    for t, i, d in zip(texts, ids, ours):
        assert d == nfc_between_added_tokens(hf_qwen, t), (t, i)
        if not any(a.content in t for a in hf_qwen.get_added_tokens_decoder().values()):
            assert d == unicodedata.normalize("NFC", t)
        assert d == hf_qwen.decode(i, skip_special_tokens=False)
    # skip_special drops exactly the special added tokens, like HF.
    ours = nnpipe_batch(QWEN, ids[:500], "--decode", "--skip-special", tmp_path=tmp_path)
    assert ours == [hf_qwen.decode(i, skip_special_tokens=True) for i in ids[:500]]


def test_decode_invalid_utf8_like_hf(hf_qwen, tmp_path):
    # Byte tokens that do not form whole characters: HF replaces them (from_utf8_lossy).
    rng = random.Random(7)
    byte_ids = [hf_qwen.token_to_id(t) for t in BYTE_TO_CHAR.values()]
    seqs = [[rng.choice(byte_ids) for _ in range(rng.randint(1, 12))] for _ in range(2000)]
    seqs += [[hf_qwen.token_to_id("Ġ")] + s + [151644] for s in seqs[:200]]
    ours = nnpipe_batch(QWEN, seqs, "--decode", tmp_path=tmp_path)
    assert ours == [hf_qwen.decode(s, skip_special_tokens=False) for s in seqs]


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def test_offsets(hf_qwen, texts, tmp_path):
    res = nnpipe_batch(QWEN, texts, "--with-offsets", tmp_path=tmp_path)
    specials = {t.content for t in hf_qwen.get_added_tokens_decoder().values()}
    for text, r in zip(texts, res):
        raw = text.encode()
        ids, offs = r["ids"], r["offsets"]
        assert ids == hf_ids(hf_qwen, [text])[0]
        assert offs == sorted(offs) and all(0 <= o <= len(raw) for o in offs)
        for i, o in zip(ids, offs):  # added tokens sit exactly where their text is
            tok = hf_qwen.id_to_token(i)
            if tok in specials:
                assert raw[o:o + len(tok.encode())] == tok.encode(), (text, i, o)
        if unicodedata.normalize("NFC", text) == text:
            # Unchanged by NFC: each offset is where the token's bytes start (oracle: HF's vocab).
            pos = 0
            for i, o in zip(ids, offs):
                tok = hf_qwen.id_to_token(i)
                b = tok.encode() if tok in specials else bytes(CHAR_TO_BYTE[c] for c in tok)
                assert o == pos and raw[pos:pos + len(b)] == b, (text, i, o, pos)
                pos += len(b)
            assert pos == len(raw)


def test_every_code_point_in_context(hf_qwen, tmp_path):
    """Each code point in a few regex/NFC-sensitive contexts: catches Unicode table differences
    (PCRE2 vs Oniguruma properties, utf8proc vs HF's NFC)."""
    texts = []
    for base in range(0, 0x110000, 8):
        cs = [chr(c) for c in range(base, base + 8) if not 0xD800 <= c < 0xE000]
        texts.append(" ".join(f"a{c}b {c}{c}1 '{c}\u0301{c}\u0316 \u1100{c}" for c in cs))
    ours = nnpipe_batch(QWEN, texts, tmp_path=tmp_path)
    n, msg = first_mismatches(texts, ours, hf_ids(hf_qwen, texts), n=3)
    assert n == 0, f"{n} groups of 8 code points differ:\n{msg}"


def test_malformed_tokenizer_is_a_clear_error(tmp_path):
    j = json.loads(QWEN.read_text(encoding="utf-8"))
    j["model"]["merges"][5] = ["Ġ", "not-a-token-xyz"]
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(j), encoding="utf-8")
    r = run_nnpipe("tokenize", "--tokenizer", bad, "--text", "hi", check=False)
    assert r.returncode == 1
    assert str(bad) in r.stderr and "model.merges[5]" in r.stderr and "not-a-token-xyz" in r.stderr
    j = json.loads(QWEN.read_text(encoding="utf-8"))
    j["normalizer"] = {"type": "Lowercase"}
    bad.write_text(json.dumps(j), encoding="utf-8")
    r = run_nnpipe("tokenize", "--tokenizer", bad, "--text", "hi", check=False)
    assert r.returncode == 1 and "normalizer.type" in r.stderr and "not supported" in r.stderr


# --- the default tokenizer ----------------------------------------------------------------------------

@pytest.mark.parametrize("merges,corpus", [(256, None), (3000, "generated")])
def test_default_tokenizer_loads_in_hf_and_agrees(merges, corpus, texts, tmp_path):
    out = tmp_path / "default.json"
    args = ["tokenize", "--build-default", out, "--merges", merges]
    if corpus:
        c = tmp_path / "corpus.txt"
        c.write_text("\n".join(generated(800, seed=99)), encoding="utf-8")
        args += ["--corpus", c]
    run_nnpipe(*args)
    hf = Tokenizer.from_file(str(out))
    j = json.loads(out.read_text(encoding="utf-8"))
    vocab = j["model"]["vocab"]
    assert [vocab[BYTE_TO_CHAR[b]] for b in range(256)] == list(range(256))
    assert len(j["model"]["merges"]) == merges
    n = len(vocab)
    assert [(t["id"], t["content"], t["special"]) for t in j["added_tokens"]] == [
        (n, "<|endoftext|>", True), (n + 1, "<|im_start|>", True), (n + 2, "<|im_end|>", True)]
    assert hf.get_vocab_size(with_added_tokens=True) == n + 3
    ours = nnpipe_batch(out, texts, tmp_path=tmp_path)
    n_bad, msg = first_mismatches(texts, ours, hf_ids(hf, texts))
    assert n_bad == 0, msg
    # Deterministic: a second build is byte-identical.
    out2 = tmp_path / "default2.json"
    run_nnpipe(*[out2 if a == out else a for a in args])
    assert out.read_bytes() == out2.read_bytes()


# --- tokenizer.json options Qwen does not use ------------------------------------------------------

def _variant(kind):
    j = json.loads(QWEN.read_text(encoding="utf-8"))
    if kind == "ignore_merges":
        j["model"]["ignore_merges"] = True
    elif kind == "added_token_flags":
        flags = {"<|im_start|>": "lstrip", "<|im_end|>": "rstrip", "<|endoftext|>": "single_word"}
        for t in j["added_tokens"]:
            if t["content"] in flags:
                t[flags[t["content"]]] = True
        # normalized: true tokens are matched after NFC (their content NFC'd too). "Hello" is also a
        # vocab token: the ids must agree (HF would warn and take the vocab id; nnpipe refuses).
        j["added_tokens"].append({"id": 151669, "content": "e\u0301x", "single_word": False, "lstrip": False,
                                  "rstrip": False, "normalized": True, "special": False})
        j["added_tokens"].append({"id": 9707, "content": "Hello", "single_word": False, "lstrip": False,
                                  "rstrip": False, "normalized": True, "special": True})
    elif kind == "legacy_merges_no_normalizer":
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
        j["normalizer"] = None
    return j


@pytest.mark.parametrize("kind", ["ignore_merges", "added_token_flags", "legacy_merges_no_normalizer"])
def test_tokenizer_options_match_hf(kind, texts, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_variant(kind)), encoding="utf-8")
    hf = Tokenizer.from_file(str(path))
    extra = ["x <|im_start|>  y", "a <|im_end|> \n b", "word<|endoftext|>word", "a <|endoftext|> b",
             "<|endoftext|>", "caféx éx e\u0301x", "Hello, HelloHello sayHello", "\u00a0<|im_start|>\u3000"]
    sample = extra + texts[:2000]
    ours = nnpipe_batch(path, sample, tmp_path=tmp_path)
    n, msg = first_mismatches(sample, ours, hf_ids(hf, sample))
    assert n == 0, f"{n} of {len(sample)} differ:\n{msg}"
