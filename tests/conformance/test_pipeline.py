"""`nnpipe pipeline` and `nnpipe status` end to end: the session folder, summaries on success and
failure, the log, and ids that would escape runs/."""
import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from conftest import run_nnpipe


def test_pipeline_session(tmp_path):
    r = run_nnpipe("pipeline", "--session", "demo", cwd=tmp_path)
    run = tmp_path / "runs" / "demo"
    log = (run / "pipeline.log").read_text()
    for step in ("init_model", "prepare_data", "render_chat"):
        s = json.loads((run / step / "summary.json").read_text())
        assert s["status"] == "Success" and s["error"] is None and s["step"] == step
        assert s["start_time"] <= s["end_time"]
        assert f"[{step}] step {step} started" in log
    assert " debug [" in log and " debug [" not in r.stderr  # DEBUG to the file, INFO+ to the console
    model = run / "init_model" / "model"
    m, info = AutoModelForCausalLM.from_pretrained(model, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # the rendered prompt ends with the generation prompt and tokenizes as HF does
    prompt = (run / "render_chat" / "prompt.txt").read_text()
    assert prompt.endswith("<|im_start|>assistant\n")
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    summary = json.loads((run / "render_chat" / "summary.json").read_text())
    assert summary["metrics"]["prompt_tokens"] == len(tok.encode(prompt, add_special_tokens=False).ids)
    st = json.loads(run_nnpipe("status", "--session", "demo", "--json", cwd=tmp_path).stdout)
    assert [s["step"] for s in st["steps"]] == ["init_model", "prepare_data", "render_chat"]
    assert st["log"]
    human = run_nnpipe("status", "--session", "demo", "--log", cwd=tmp_path).stdout
    assert "prepare_data: Success" in human and "session demo opened" in human


def test_pipeline_failure_is_recorded(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"messages": [{"role": "user", "content": "hi"}]}]')
    r = run_nnpipe("pipeline", "--session", "broken", "--data", bad, cwd=tmp_path, check=False)
    assert r.returncode != 0
    assert "no \"assistant\" message" in r.stderr
    s = json.loads((tmp_path / "runs" / "broken" / "prepare_data" / "summary.json").read_text())
    assert s["status"] == "Failure" and "conversation 0" in s["error"] and str(bad) in s["error"]
    assert not (tmp_path / "runs" / "broken" / "prepare_data" / "tokenized.jsonl").exists()
    assert not (tmp_path / "runs" / "broken" / "render_chat").exists()
    st = run_nnpipe("status", "--session", "broken", cwd=tmp_path).stdout
    assert "prepare_data: Failure" in st and "no \"assistant\" message" in st


@pytest.mark.parametrize("sid", ["../escape", "a/b", "..", "", "x" * 129, "tab\there"])
def test_bad_session_ids(sid, tmp_path):
    r = run_nnpipe("pipeline", "--session", sid, cwd=tmp_path, check=False)
    assert r.returncode != 0 and "invalid session id" in r.stderr, r.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists() or \
        not any((tmp_path / "runs").iterdir())


def test_unknown_flags_and_help():
    r = run_nnpipe("pipeline", "--no-such-flag", check=False)
    assert r.returncode != 0 and "no-such-flag" in (r.stderr + r.stdout)
    top = run_nnpipe("--help").stdout
    for cmd in ("pipeline", "init-model", "tokenize", "render-chat", "data", "status", "inspect"):
        assert cmd in top
        assert "--help" in run_nnpipe(cmd, "--help").stdout
