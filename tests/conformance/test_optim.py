"""AdamW, clip_grad_norm_ and learning-rate schedules against torch and transformers."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from conftest import run_nnpipe, run_nnpipe_json

SHAPES = {"w": (7, 5), "b": (5,), "emb": (33, 8)}


def make_inputs(path, steps, seed, grad_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for name, shape in SHAPES.items():
        t[f"p.{name}"] = torch.randn(shape, generator=g)
        for k in range(steps):
            t[f"g{k}.{name}"] = torch.randn(shape, generator=g) * grad_scale
    save_file(t, str(path))
    return t


def torch_adamw(t, steps, lr, wd, max_grad_norm=0.0, betas=(0.9, 0.999), eps=1e-8):
    params = {n: torch.nn.Parameter(t[f"p.{n}"].clone()) for n in SHAPES}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=wd, betas=betas, eps=eps,
                            foreach=False)
    norms = []
    for k in range(steps):
        for n, p in params.items():
            p.grad = t[f"g{k}.{n}"].clone()
        if max_grad_norm > 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm,
                                                               foreach=False)))
        opt.step()
    return params, opt, norms


@pytest.mark.parametrize("steps,lr,wd", [(1, 1e-3, 0.01), (5, 1e-2, 0.1), (20, 3e-4, 0.0)])
def test_adamw_matches_torch(tmp_path, steps, lr, wd):
    inp, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    t = make_inputs(inp, steps, seed=steps)
    run_nnpipe("dev-adamw", "--in", inp, "--out", out, "--lr", lr, "--wd", wd, "--steps", steps)
    got = load_file(str(out))
    params, opt, _ = torch_adamw(t, steps, lr, wd)
    for n, p in params.items():
        st = opt.state[p]
        assert int(st["step"]) == steps
        # fp32 element-wise math in torch's CPU kernels' order (lerp and addcmul as fma,
        # addcdiv as self + (value * t1) / t2): usually bit-identical; torch's vectorised sqrt
        # (not always correctly rounded) leaves rare 1-ulp differences (|p| < ~5: < 1e-6).
        torch.testing.assert_close(got[f"p.{n}"], p.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got[f"exp_avg.{n}"], st["exp_avg"], atol=1e-6, rtol=0)
        torch.testing.assert_close(got[f"exp_avg_sq.{n}"], st["exp_avg_sq"], atol=1e-6, rtol=0)


def test_adamw_state_resume_matches_uninterrupted(tmp_path):
    steps = 6
    inp = tmp_path / "in.safetensors"
    t = make_inputs(inp, steps, seed=11)
    # First 3 steps, save the state; then the remaining 3 from that state.
    first = {f"p.{n}": t[f"p.{n}"] for n in SHAPES}
    first.update({f"g{k}.{n}": t[f"g{k}.{n}"] for k in range(3) for n in SHAPES})
    save_file(first, str(tmp_path / "a.safetensors"))
    run_nnpipe("dev-adamw", "--in", tmp_path / "a.safetensors", "--out", tmp_path / "a_out.safetensors",
               "--lr", 1e-2, "--steps", 3, "--state-out", tmp_path / "state.safetensors")
    mid = load_file(str(tmp_path / "a_out.safetensors"))
    second = {f"p.{n}": mid[f"p.{n}"] for n in SHAPES}
    second.update({f"g{k}.{n}": t[f"g{k + 3}.{n}"] for k in range(3) for n in SHAPES})
    save_file(second, str(tmp_path / "b.safetensors"))
    run_nnpipe("dev-adamw", "--in", tmp_path / "b.safetensors", "--out", tmp_path / "b_out.safetensors",
               "--lr", 1e-2, "--steps", 3, "--state-in", tmp_path / "state.safetensors")
    got = load_file(str(tmp_path / "b_out.safetensors"))
    params, _, _ = torch_adamw(t, steps, 1e-2, 0.01)
    for n, p in params.items():
        torch.testing.assert_close(got[f"p.{n}"], p.detach(), atol=1e-6, rtol=0)


def test_adamw_with_clipping_matches_torch(tmp_path):
    steps = 4
    inp, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    t = make_inputs(inp, steps, seed=5, grad_scale=3.0)
    run_nnpipe("dev-adamw", "--in", inp, "--out", out, "--lr", 1e-2, "--steps", steps,
               "--max-grad-norm", 1.0)
    params, _, norms = torch_adamw(t, steps, 1e-2, 0.01, max_grad_norm=1.0)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        got_norms = json.loads(f.metadata()["grad_norms"])
    assert got_norms == pytest.approx(norms, rel=1e-6)
    got = load_file(str(out))
    for n, p in params.items():
        torch.testing.assert_close(got[f"p.{n}"], p.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(tmp_path, max_norm):
    g = torch.Generator().manual_seed(3)
    grads = {n: torch.randn(s, generator=g) * 2 for n, s in SHAPES.items()}
    save_file(grads, str(tmp_path / "g.safetensors"))
    r = run_nnpipe_json("dev-clip-grad", "--in", tmp_path / "g.safetensors", "--out",
                        tmp_path / "c.safetensors", "--max-norm", max_norm)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES.values()]
    for p, gr in zip(params, grads.values()):
        p.grad = gr.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    assert r["total_norm"] == pytest.approx(float(norm), rel=1e-6)
    got = load_file(str(tmp_path / "c.safetensors"))
    for p, n in zip(params, SHAPES):
        torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=0)


SCHEDULES = {
    "constant": lambda opt, w, t: get_constant_schedule_with_warmup(opt, w),
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("warmup,total", [(0, 100), (10, 100), (7, 33), (100, 100)])
def test_lr_schedule_matches_transformers(name, warmup, total):
    got = run_nnpipe_json("dev-lr", "--schedule", name, "--warmup", warmup, "--total", total,
                          "--steps", 100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = SCHEDULES[name](opt, warmup, total)
    want = []
    for _ in range(100):
        want.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert len(got) == 100
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= 1e-7, (i, a, b)
