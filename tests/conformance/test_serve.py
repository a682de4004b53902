"""`nnpipe serve` against the real openai client (and raw HTTP where the client hides the wire).

A tiny random model with the Qwen tokenizer and chat template, two random PEFT adapters, and
servers started as subprocesses on free localhost ports (always killed). Greedy outputs are
compared with `nnpipe infer` on the same model and stack; concurrent outputs with the same requests
run one at a time; then the error table of issue 15 item 5, one test per row. Every loop is
bounded in count, every wait in time.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

import conftest
from conftest import _bin, run_nnpipe, run_nnpipe_json

CTX = 512
N = 12  # generated tokens per request
CHAT = [{"role": "user", "content": "Hello, who are you?"}]
PROMPT = "The quick brown fox"
STACKS = {  # stack name -> the infer --lora arguments that mean the same (None: the base)
    None: [],
    "a": ["peft0"],
    "b": ["peft1"],
    "ab": ["peft0:0.7", "peft1:1.5"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_peft(model_dir, out, seed, r, alpha):
    return conftest.make_peft(model_dir, out, seed, r, alpha, b_std=0.5)


class Server:
    """`nnpipe serve` on a free port; stderr goes to a file (the log tests read)."""

    def __init__(self, work, *args):
        self.port = free_port()
        self.log = work / f"serve-{self.port}.log"
        self.err = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(_bin()), "serve", "--port", str(self.port), "--threads", "2", *map(str, args)],
            stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=work)
        line = self._readline(60)
        if "listening on" not in line:
            self.close()
            raise AssertionError(f"nnpipe serve did not start: {line!r}\n{self.log.read_text()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _readline(self, timeout):
        out = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return out[0] if out else ""

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120,
                             **kw)

    def request(self, method, path, body=None, headers=None, raw=None):
        """(status, headers dict, body bytes) over a fresh connection."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        c.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                      **(headers or {})})
        r = c.getresponse()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        c.close()
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.err.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory, fixtures_dir):
    d = tmp_path_factory.mktemp("serve")
    model = d / "tiny"
    run_nnpipe("init-model", "--preset", "tiny", "--seed", "2", "--out", model,
               "--tokenizer", fixtures_dir / "qwen-tokenizer" / "tokenizer.json")
    make_peft(model, d / "peft0", 0, 4, 8)
    make_peft(model, d / "peft1", 1, 8, 8)
    return d, model


@pytest.fixture(scope="module")
def server(work):
    d, model = work
    s = Server(d, "--model", model, "--ctx-size", CTX, "--parallel", 4, "--max-body", 65536,
               "--lora", f"a={d / 'peft0'}", "--lora", f"b={d / 'peft1'}",
               "--lora", f"ab={d / 'peft0'}:0.7+{d / 'peft1'}:1.5")
    yield s
    s.close()


def infer(work, stack, chat, text=None, n=N):
    """`nnpipe infer` greedy with the stack's adapters: (text, generated token count)."""
    d, model = work
    lora = []
    for spec in STACKS[stack]:
        lora += ["--lora", str(d / spec)]
    args = ["infer", "--model", model, "--prompt", text or (CHAT[0]["content"] if chat else PROMPT),
            "--max-tokens", n, "--ignore-eos", "--json", "--ctx-size", CTX, "--threads", 2, *lora]
    if chat:
        args.append("--chat")
    r = run_nnpipe_json(*args, cwd=d)
    return r["outputs"]["text"], r["outputs"]["new_tokens"]


def greedy(server, stack=None, chat=True, text=None, n=N, lora=None):
    """The server's greedy answer: (text, completion_tokens, finish_reason)."""
    extra = {"ignore_eos": True}
    if lora is not None:
        extra["lora"] = lora
    c = server.client()
    model = stack or "tiny"
    if chat:
        msgs = [{"role": "user", "content": text}] if text else CHAT
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0,
                                      extra_body=extra)
        return r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason
    r = c.completions.create(model=model, prompt=text or PROMPT, max_tokens=n, temperature=0,
                             extra_body=extra)
    return r.choices[0].text, r.usage.completion_tokens, r.choices[0].finish_reason


def error_of(body):
    e = json.loads(body)["error"]
    assert set(e) >= {"message", "type", "code"}, e
    return e


# ---- the API ---------------------------------------------------------------------------------


def test_chat_completion(server):
    c = server.client()
    r = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=N, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == N
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # A seed makes sampling reproducible.
    kw = dict(model="tiny", messages=CHAT, max_tokens=N, temperature=1.0, top_p=1.0, seed=1234,
              extra_body={"top_k": 0, "min_p": 0.0})
    a = c.chat.completions.create(**kw)
    b = c.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completion(server):
    r = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=N,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == N
    # max_tokens absent: the generation runs until the context is full (ignore_eos).
    r = server.client().completions.create(model="tiny", prompt=PROMPT, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert CTX <= r.usage.prompt_tokens + r.usage.completion_tokens <= CTX + 1


def test_stop_string_finishes_with_stop(server, work):
    text, _ = infer(work, None, chat=False)
    stop = text[4:8]
    assert stop
    r = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=N,
                                           temperature=0, stop=[stop],
                                           extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.find(stop)]


@pytest.mark.parametrize("chat", [True, False])
def test_streaming_with_usage(server, chat):
    c = server.client()
    want, _, _ = greedy(server, chat=chat)
    kw = dict(model="tiny", max_tokens=N, temperature=0, stream=True,
              stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    if chat:
        chunks = list(c.chat.completions.create(messages=CHAT, **kw))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        chunks = list(c.completions.create(prompt=PROMPT, **kw))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == want
    finals = [ch.choices[0].finish_reason for ch in chunks
              if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == N
    assert all(ch.usage is None for ch in chunks[:-1])
    # On the wire: server-sent events ending in data: [DONE].
    status, headers, body = server.request(
        "POST", "/v1/completions" if not chat else "/v1/chat/completions",
        {"model": "tiny", "max_tokens": 3, "stream": True,
         **({"messages": CHAT} if chat else {"prompt": PROMPT})})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("chat", [True, False])
def test_equals_infer(server, work, stack, chat):
    text, n, finish = greedy(server, stack, chat)
    assert (text, n) == infer(work, stack, chat)
    assert finish == "length"


def test_stacks_by_model_and_by_lora_field(server, work):
    by_model = greedy(server, "ab")
    by_lora = greedy(server, lora=[{"name": "a", "scale": 0.7}, {"name": "b", "scale": 1.5}])
    assert by_lora == by_model
    # ids follow load order: a is 0.
    assert greedy(server, lora=[{"id": 0, "scale": 1.0}]) == greedy(server, "a")
    # The adapters change the output (else every equality above is vacuous).
    assert len({greedy(server, s)[0] for s in STACKS}) == len(STACKS)
    # Scale 0 is the base.
    assert greedy(server, lora=[{"name": "a", "scale": 0.0}]) == greedy(server)


def test_models_health_metrics(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids[0] == "tiny"
    assert {"a", "b", "ab"} <= set(ids)
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    greedy(server)
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in ["nnpipe_requests_total{", "nnpipe_generated_tokens_total",
                 "nnpipe_prompt_tokens_total", "nnpipe_queue_depth", "nnpipe_batch_rows",
                 "nnpipe_time_to_first_token_seconds_bucket", "nnpipe_token_latency_seconds_count",
                 "nnpipe_lora_adapters_loaded", "nnpipe_kv_cache_bytes", "nnpipe_slots_active"]:
        assert name in text, name
    gen = [line for line in text.splitlines() if line.startswith("nnpipe_generated_tokens_total ")]
    assert float(gen[0].split()[1]) >= N


def test_32_concurrent_clients_with_mixed_adapters(server):
    # A shared prefix in every prompt: KV reused across different stacks would show here.
    prefix = "Once upon a time in a land far away, there lived "
    jobs = []
    for i in range(32):
        stack = list(STACKS)[i % 4]
        lora = [{"name": "b", "scale": 0.5}] if i % 8 == 7 else None
        jobs.append(dict(stack=None if lora else stack, chat=i % 3 != 0,
                         text=f"{prefix}{['a cat', 'a dog', 'an owl', 'a fox'][i % 4]} no. {i}",
                         n=4 + i % 5, lora=lora))
    sequential = [greedy(server, **j) for j in jobs]
    with ThreadPoolExecutor(32) as ex:
        concurrent = list(ex.map(lambda j: greedy(server, **j), jobs))
    assert concurrent == sequential
    assert all(n == j["n"] for (_, n, _), j in zip(concurrent, jobs))


def test_load_unload_under_load(server, work):
    d, _ = work
    expected = {s: greedy(server, s) for s in ["a", None]}
    want_c = greedy(server, "b")
    errors, results = [], []

    def hammer(stack):
        for _ in range(6):
            try:
                results.append(greedy(server, stack) == expected[stack])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in ["a", None, "a", None]]
    for t in threads:
        t.start()
    try:
        status, _, body = server.request("POST", "/v1/load_lora_adapter",
                                         {"lora_name": "c", "lora_path": str(d / "peft1")})
        assert status == 200, body
        assert greedy(server, "c") == want_c
        assert "c" in [m.id for m in server.client().models.list().data]
        status, _, body = server.request("GET", "/lora-adapters")
        assert "c" in [a["name"] for a in json.loads(body)]
        status, _, body = server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "c"})
        assert status == 200, body
        with pytest.raises(openai.NotFoundError):
            greedy(server, "c")
        status, _, body = server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "c"})
        assert status == 404 and error_of(body)["code"] == "adapter_not_found"
    finally:
        for t in threads:
            t.join(300)
    assert errors == [] and results == [True] * 24


def test_prompt_cache_never_mixes_adapters(server, work):
    """llama.cpp #26207 and vLLM #42125 over HTTP: the same long prompt under adapter stacks one
    after the other (each request finds the previous one's KV for that prefix in a slot), then a
    name reloaded with a different file: every output equals `nnpipe infer` with its own stack."""
    d, _ = work
    text = "In the beginning the model read a long shared prefix, word after word, and then " * 3
    outs = {}
    for stack in ["a", "b", None, "ab", "a"]:
        outs[stack] = greedy(server, stack, chat=False, text=text)[:2]
        assert outs[stack] == infer(work, stack, False, text), stack
    assert len({o[0] for o in outs.values()}) == 4  # the stacks differ here: the test can fail
    try:
        for path, like in [(d / "peft0", "a"), (d / "peft1", "b")]:
            status, _, body = server.request("POST", "/v1/load_lora_adapter",
                                             {"lora_name": "x", "lora_path": str(path)})
            assert status == 200, body
            got = greedy(server, "x", chat=False, text=text)[:2]
            assert got == infer(work, like, False, text), path
            server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "x"})
    finally:
        server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "x"})


def test_bad_adapter_is_refused_by_name(server, work):
    d, model = work
    for path in [d / "missing.gguf", model / "config.json"]:
        status, _, body = server.request("POST", "/v1/load_lora_adapter",
                                         {"lora_name": "bad", "lora_path": str(path)})
        assert status == 400, body
        e = error_of(body)
        assert "bad" in e["message"] and str(path.name) in e["message"]
    assert "bad" not in [m.id for m in server.client().models.list().data]


def test_global_scales_of_lora_adapters(server):
    status, _, body = server.request("GET", "/lora-adapters")
    a = [x for x in json.loads(body) if x["name"] == "a"][0]
    try:
        status, _, body = server.request("POST", "/lora-adapters", [{"id": a["id"], "scale": 1.0}])
        assert status == 200, body
        assert greedy(server) == greedy(server, "a")
    finally:
        server.request("POST", "/lora-adapters", [{"id": a["id"], "scale": 0.0}])
    assert greedy(server) != greedy(server, "a")


# ---- the error table: one test per row --------------------------------------------------------


def test_error_malformed_json_400(server):
    status, _, body = server.request("POST", "/v1/chat/completions", raw=b'{"messages": [')
    assert status == 400 and error_of(body)["code"] == "invalid_json"


def test_error_wrong_type_400(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="tiny", messages=CHAT, temperature="hot")
    assert e.value.body["code"] == "invalid_type" and "temperature" in e.value.body["message"]


def test_error_unknown_field_ignored_with_warning(server):
    status, _, body = server.request("POST", "/v1/completions",
                                     {"prompt": PROMPT, "max_tokens": 2, "frobnicate": 1})
    assert status == 200, body
    for _ in range(50):
        if "frobnicate" in server.log.read_text():
            break
        time.sleep(0.1)
    assert "ignored unknown field(s): frobnicate" in server.log.read_text()


def test_error_unknown_model_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="nope", messages=CHAT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_error_prompt_longer_than_context_400(server):
    status, _, body = server.request("POST", "/v1/completions",
                                     {"prompt": [1] * (CTX + 10), "max_tokens": 2})
    assert status == 400
    e = error_of(body)
    assert e["code"] == "context_length_exceeded"
    assert str(CTX + 10) in e["message"] and str(CTX) in e["message"]


def test_error_body_too_large_413(server):
    big = json.dumps({"prompt": "x" * 100_000, "max_tokens": 1}).encode()
    status, _, body = server.request("POST", "/v1/completions", raw=big)
    assert status == 413 and error_of(body)["code"] == "request_too_large"


def test_error_unknown_route_404(server):
    status, _, body = server.request("GET", "/v1/nothing")
    assert status == 404 and error_of(body)["type"] == "not_found_error"


def test_error_n_above_1_400(server):
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="tiny", messages=CHAT, n=2, max_tokens=2)


def test_error_api_key_401(work):
    d, model = work
    (d / "key").write_text("s3cret\n")
    s = Server(d, "--model", model, "--ctx-size", 128, "--api-key-file", d / "key")
    try:
        for key in ["wrong", "s3cre", "s3cret2"]:
            with pytest.raises(openai.AuthenticationError) as e:
                s.client(key).completions.create(model="tiny", prompt=PROMPT, max_tokens=1)
            assert e.value.body["code"] == "invalid_api_key"
        status, headers, body = s.request("GET", "/v1/models")
        assert status == 401 and error_of(body)["type"] == "authentication_error"
        assert s.client("s3cret").completions.create(model="tiny", prompt=PROMPT, max_tokens=1)
        assert s.request("GET", "/health")[0] == 200  # health needs no key
    finally:
        s.close()


def test_error_queue_full_429_with_retry_after(work):
    d, model = work
    s = Server(d, "--model", model, "--ctx-size", CTX, "--parallel", 1, "--max-queue", 1)
    try:
        barrier = threading.Barrier(8)

        def one(_):
            barrier.wait(30)
            return s.request("POST", "/v1/completions",
                             {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True})

        with ThreadPoolExecutor(8) as ex:
            out = list(ex.map(one, range(8)))
        refused = [o for o in out if o[0] == 429]
        assert refused, [o[0] for o in out]
        assert all(o[0] in (200, 429) for o in out)
        for _, headers, body in refused:
            assert int(headers["retry-after"]) >= 1
            assert error_of(body)["type"] == "rate_limit_error"
    finally:
        s.close()


def test_client_disconnect_mid_stream_cancels(work):
    d, model = work
    long_ctx = 2048  # the tiny model's whole context: seconds of generation left to cancel
    s = Server(d, "--model", model, "--ctx-size", long_ctx, "--parallel", 1)
    try:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        body = json.dumps({"prompt": PROMPT, "stream": True, "ignore_eos": True}).encode()
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        sock.sendall(head + body)
        seen = b""
        for _ in range(100):
            seen += sock.recv(4096)
            if b"data: " in seen:
                break
        assert b"data: " in seen
        sock.close()
        cancelled = 0
        for _ in range(300):
            text = s.request("GET", "/metrics")[2].decode()
            line = [x for x in text.splitlines()
                    if x.startswith('nnpipe_jobs_finished_total{reason="cancelled"}')]
            cancelled = float(line[0].split()[1]) if line else 0
            if cancelled:
                break
            time.sleep(0.1)
        assert cancelled == 1
        generated = [x for x in text.splitlines() if x.startswith("nnpipe_generated_tokens_total ")]
        assert float(generated[0].split()[1]) < long_ctx - 100  # it did not run to the end
        # The slot is free: the next request is served.
        assert s.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    finally:
        s.close()


def test_sigterm_drains_then_exits(work):
    d, model = work
    s = Server(d, "--model", model, "--ctx-size", CTX, "--parallel", 1)
    try:
        got = {}
        started = threading.Event()

        def stream():
            chunks = []
            for ch in s.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=200,
                                                    temperature=0, stream=True,
                                                    extra_body={"ignore_eos": True}):
                chunks.append(ch)
                started.set()
            got["chunks"] = chunks

        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(60)
        s.proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert s.proc.wait(120) == 0
        finals = [c.choices[0].finish_reason for c in got["chunks"] if c.choices[0].finish_reason]
        assert finals == ["length"]
        assert "draining" in s.log.read_text()
    finally:
        s.close()


def test_config_file_same_keys(work):
    d, model = work
    cfg = d / "serve.json"
    cfg.write_text(json.dumps({"model": str(model), "ctx_size": 256, "lora": [f"a={d / 'peft0'}"],
                               "alias": "base"}))
    s = Server(d, "--config", cfg)
    try:
        ids = [m.id for m in s.client().models.list().data]
        assert ids[0] == "base" and "a" in ids
        r = s.client().models.list().data[0]
        assert r.model_extra["meta"]["n_ctx"] == 256
    finally:
        s.close()
    r = run_nnpipe("serve", "--config", d / "nope.json", check=False)
    assert r.returncode != 0 and "nope.json" in r.stderr
