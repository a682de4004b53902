"""Issue 13 (hostile and careless input) through the CLI: model files whose headers claim absurd
sizes (item 2), inputs whose errors used to name nothing (item 9) and two writers on one session
(item 7). Each error must name the input, exit 1 (never "unexpected error", rc 2) and come in
bounded time and memory. GGUF mutants are patched in place with gguf-py (the oracle's reader).
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, _bin, run_nnpipe, run_nnpipe_peak_rss

DATA = ROOT / "data" / "sample.json"


def run_peak(*args, timeout=60):
    """Runs nnpipe and returns (rc, stdout, stderr, peak RSS in MiB of that process alone)."""
    return run_nnpipe_peak_rss(*args, timeout=timeout)


def assert_named_error(rc, err, *parts):
    assert rc == 1, f"rc {rc}\n{err}"
    assert "unexpected error" not in err, err
    for part in parts:
        assert part in err, f"{part!r} not in:\n{err}"


@pytest.fixture(scope="module")
def f32_gguf(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "m.gguf"
    run_nnpipe("export-gguf", "--model", tiny_model, "--type", "f32", "--out", out)
    return out


def patched_gguf(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    r = gguf.GGUFReader(dst, "r+")
    edit(r)
    r.data.flush()
    del r
    return dst


def set_u32(key, value):
    def edit(r):
        f = r.fields[key]
        assert f.types == [gguf.GGUFValueType.UINT32], f.types
        f.parts[-1][0] = value
    return edit


# ---- item 2 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["infer", "export-gguf"])
def test_item2_config_huge_num_hidden_layers_is_refused(tiny_model, tmp_path, command):
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    cfg = json.loads((m / "config.json").read_text())
    cfg["num_hidden_layers"] = 1000000000000
    (m / "config.json").write_text(json.dumps(cfg))
    args = (["--prompt", "hi", "-n", "1", "--runs-dir", tmp_path / "runs"] if command == "infer"
            else ["--type", "f32", "--out", tmp_path / "x.gguf"])
    rc, _, err, peak = run_peak(command, "--model", m, *args)
    assert_named_error(rc, err, "config.json", "num_hidden_layers", "1000000000000")
    assert peak < 300, f"{peak:.0f} MiB"


def test_item2_config_layers_beyond_the_weights_are_refused(tiny_model, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    cfg = json.loads((m / "config.json").read_text())
    cfg["num_hidden_layers"] = 1000  # within the limit, but the weights hold 2
    (m / "config.json").write_text(json.dumps(cfg))
    rc, _, err, _ = run_peak("infer", "--model", m, "--prompt", "hi", "--runs-dir", tmp_path / "r")
    assert_named_error(rc, err, "num_hidden_layers is 1000", "only 2 of those layers", "model.layers.2")


@pytest.mark.parametrize("blocks", [2**32 - 1, 1_000_000])
def test_item2_gguf_huge_block_count_is_refused_before_allocating(f32_gguf, tmp_path, blocks):
    bad = patched_gguf(f32_gguf, tmp_path / "blocks.gguf", set_u32("qwen2.block_count", blocks))
    for cmd in (["infer", "--model", bad, "--prompt", "hi", "--runs-dir", tmp_path / "r"],
                ["eval", "--model", bad, "--ppl", DATA]):
        rc, _, err, peak = run_peak(*cmd)
        assert_named_error(rc, err, str(bad), "qwen2.block_count", str(blocks), "blk.2")
        assert peak < 300, f"{cmd[0]}: {peak:.0f} MiB"


def test_item2_gguf_bos_eos_outside_the_vocabulary_are_ignored_with_a_warning(f32_gguf, tmp_path):
    def edit(r):
        set_u32("tokenizer.ggml.bos_token_id", 10**9)(r)
        set_u32("tokenizer.ggml.eos_token_id", 10**9)(r)
    bad = patched_gguf(f32_gguf, tmp_path / "ids.gguf", edit)
    r = run_nnpipe("infer", "--model", bad, "--prompt", "hi", "-n", "2", "--runs-dir", tmp_path / "r")
    assert "tokenizer.ggml.bos_token_id = 1000000000 is outside the vocabulary" in r.stderr, r.stderr
    assert "tokenizer.ggml.eos_token_id = 1000000000 is outside the vocabulary" in r.stderr, r.stderr


def test_item2_gguf_bool_value_2_is_refused(f32_gguf, tmp_path):
    # A BOOL KV appended by gguf-py's writer, then its byte set to 2.
    src = gguf.GGUFReader(f32_gguf)
    w = gguf.GGUFWriter(tmp_path / "b.gguf", arch="qwen2")
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        t = field.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            vals = [field.contents(i) for i in range(len(field.data))]
            w.add_key_value(name, vals, t, sub_type=sub)
        else:
            w.add_key_value(name, field.contents(), t)
    w.add_bool("nnpipe.test_flag", True)
    for t in src.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed([int(d) for d in t.shape])), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray((tmp_path / "b.gguf").read_bytes())
    key = b"nnpipe.test_flag"
    at = data.index(key) + len(key) + 4  # key, then the value type (u32), then the byte
    assert data[at] == 1
    data[at] = 2
    (tmp_path / "b.gguf").write_bytes(bytes(data))
    r = run_nnpipe("gguf-info", tmp_path / "b.gguf", check=False)
    assert_named_error(r.returncode, r.stderr, "b.gguf", "nnpipe.test_flag", "bool byte is 2")


# ---- item 9 -------------------------------------------------------------------------------------

def test_item9a_gguf_token_with_invalid_utf8_is_named(f32_gguf, tmp_path):
    def edit(r):
        f = r.fields["tokenizer.ggml.tokens"]
        f.parts[f.data[100]][0] = 0xA0  # a lone continuation byte
    bad = patched_gguf(f32_gguf, tmp_path / "tok.gguf", edit)
    rc, _, err, _ = run_peak("infer", "--model", bad, "--prompt", "hi", "--runs-dir", tmp_path / "r")
    assert_named_error(rc, err, str(bad), "tokenizer.ggml.tokens[100]", "invalid UTF-8", "0xA0")
    summary = json.loads(next((tmp_path / "r").glob("*/run_inference/summary.json")).read_text())
    assert "tokenizer.ggml.tokens[100]" in summary["error"]


def test_item9b_session_id_not_utf8_is_refused(tiny_model, tmp_path):
    r = subprocess.run([str(_bin()), "infer", "--model", str(tiny_model), "--prompt", "hi", "-n", "1",
                        "--runs-dir", str(tmp_path / "r"), "--session", b"\xff\xfe"],
                       capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert_named_error(r.returncode, err, "session id", "not valid UTF-8")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    r = subprocess.run([str(_bin()), "status", "--runs-dir", str(tmp_path / "r"), "--json",
                        "--session", b"\xff\xfe"], capture_output=True, timeout=60)
    assert_named_error(r.returncode, r.stderr.decode(errors="replace"), "not valid UTF-8")


def test_item9b_status_json_survives_invalid_utf8_in_the_log(tiny_model, tmp_path):
    run_nnpipe("infer", "--model", tiny_model, "--prompt", "hi", "-n", "1", "--runs-dir", tmp_path,
               "--session", "s")
    with open(tmp_path / "s" / "pipeline.log", "ab") as f:
        f.write(b"a line with \xff\xfe bytes\n")
    st = json.loads(run_nnpipe("status", "--runs-dir", tmp_path, "--session", "s", "--json").stdout)
    assert any("\ufffd" in line for line in st["log"])


def as_nobody():
    """A preexec_fn dropping to uid/gid 65534 when we are root (root ignores permissions)."""
    if os.geteuid() != 0:
        return None

    def drop():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    return drop


@pytest.fixture
def world_dir():
    """A temporary folder that uid 65534 can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="nnpipe_hostile_"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def reachable_by_nobody(p):
    return all(os.stat(q).st_mode & 0o001 for q in [*p.parents][:-1]) and os.stat(p).st_mode & 0o005


def for_nobody(p, world_dir):
    """p itself when uid 65534 can read it, else a copy in world_dir (a checkout under a private
    folder, e.g. `mktemp -d`, is out of its reach)."""
    p = Path(p)
    if os.geteuid() != 0 or reachable_by_nobody(p):
        return p
    q = world_dir / "for_nobody" / p.name
    q.parent.mkdir(exist_ok=True)
    q.parent.chmod(0o755)
    shutil.copy2(p, q)
    q.chmod(0o755)
    return q


def test_item9c_read_only_session_folder_is_named(world_dir):
    nnpipe = for_nobody(_bin(), world_dir)
    runs = world_dir / "runs"
    (runs / "ro").mkdir(parents=True)
    (runs / "ro2").mkdir()
    # ro2 has a writable lock file (a session written before), but no pipeline.log can be created.
    (runs / "ro2" / ".lock").touch()
    (runs / "ro2" / ".lock").chmod(0o666)
    for d in (runs, runs / "ro", runs / "ro2"):
        d.chmod(0o555)
    try:
        for session, what in (("ro", ".lock"), ("ro2", "pipeline.log")):
            # finetune-lora opens its session before it reads the model.
            r = subprocess.run([str(nnpipe), "finetune-lora", "--model", str(world_dir / "none"),
                                "--data", str(DATA), "--runs-dir", str(runs), "--session", session],
                               capture_output=True, text=True, timeout=60, preexec_fn=as_nobody())
            assert_named_error(r.returncode, r.stderr, str(runs / session / what), "Permission denied")
    finally:
        for d in (runs, runs / "ro", runs / "ro2"):
            d.chmod(0o755)


def test_item9d_step_folder_not_writable_reports_the_cause_and_logs_it(tiny_model, world_dir):
    nnpipe, data = for_nobody(_bin(), world_dir), for_nobody(DATA, world_dir)
    model = world_dir / "m"
    shutil.copytree(tiny_model, model)
    for p in [model, *model.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    runs = world_dir / "runs"
    (runs / "s" / "finetune_lora").mkdir(parents=True)
    (runs / "s").chmod(0o777)
    (runs / "s" / "finetune_lora").chmod(0o555)
    r = subprocess.run([str(nnpipe), "finetune-lora", "--model", str(model), "--data", str(data),
                        "--max-steps", "1", "--runs-dir", str(runs), "--session", "s"],
                       capture_output=True, text=True, timeout=120, preexec_fn=as_nobody())
    assert_named_error(r.returncode, r.stderr, str(runs / "s" / "finetune_lora"), "not writable",
                       "Permission denied")
    log = (runs / "s" / "pipeline.log").read_text()
    assert "step finetune_lora failed" in log and "not writable" in log, log


# ---- item 7 -------------------------------------------------------------------------------------

def test_item7_second_writer_of_a_session_is_refused(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.Popen([str(_bin()), "finetune-lora", "--model", str(tiny_model), "--data", str(DATA),
                              "--max-steps", "100000", "--no-progress", "--runs-dir", str(runs),
                              "--session", "same"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = runs / "same" / ".lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        t0 = time.monotonic()
        for cmd in (["finetune-lora", "--model", tiny_model, "--data", DATA, "--max-steps", "2", "--seed", "7"],
                    ["infer", "--model", tiny_model, "--prompt", "hi", "-n", "1"]):
            r = run_nnpipe(*cmd, "--runs-dir", runs, "--session", "same", check=False, timeout=60)
            assert_named_error(r.returncode, r.stderr, f"session same is in use by pid {first.pid}",
                               "finetune-lora")
        assert time.monotonic() - t0 < 30  # refused at once, not after waiting
        # A reader does not need the lock.
        st = json.loads(run_nnpipe("status", "--runs-dir", runs, "--session", "same", "--json").stdout)
        assert st["session_id"] == "same"
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the lock with the killed process: the session is usable again.
    run_nnpipe("infer", "--model", tiny_model, "--prompt", "hi", "-n", "1", "--runs-dir", runs,
               "--session", "same")
