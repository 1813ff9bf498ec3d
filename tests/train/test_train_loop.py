"""The shared training loop: checkpoints, exact resume, EMA, bf16, 2-process gloo."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mrgen import checkpoint, train
from mrgen.config import TrainCfg

N = 32
X = torch.randn(N, 3, generator=torch.Generator().manual_seed(1))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def _toy(tcfg, out, noisy=True, crash_at=None, device="cpu"):
    train.seed_all(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

    def batch_fn(step, draw):
        idx = draw(N)
        return X[idx], Y[idx]

    def loss_fn(batch, step):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        x, y = batch
        pred = net(x)
        if noisy:  # uses the global RNG: must be reproduced on resume
            pred = pred + 0.05 * torch.randn_like(pred)
        return F.mse_loss(pred.float(), y)

    meta = {"config": {"toy": 1, "train": {"steps": tcfg.steps}}, "data_hash": "abc"}
    return net, train.fit(train.Job("toy", out, {"net": net}, ["net"], batch_fn, loss_fn, tcfg, meta, device=device))


def _losses(out):
    return [json.loads(ln)["loss"] for ln in (Path(out) / train.LOG).read_text().splitlines()]


TC = TrainCfg(steps=6, batch_size=4, lr=1e-2, ckpt_every=2, preview_every=0, log_every=1, ema_decay=0.0)


def test_draw_is_epochwise_and_rank_disjoint():
    d0 = train.Draw(0, 0, 0, 2, 4)
    d1 = train.Draw(0, 0, 1, 2, 4)
    a, b = d0(8), d1(8)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(8))  # one epoch split over 2 ranks
    assert torch.equal(train.Draw(0, 3, 1, 2, 4)(8), train.Draw(0, 3, 1, 2, 4)(8))  # pure function
    single = train.Draw(0, 0, 0, 1, 8)(8)
    assert torch.equal(single, torch.cat([a, b]))  # same items as 1 process with the global batch


def test_checkpoint_round_trip(tmp_path):
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    ot, oinfo = checkpoint.optim_to_flat(opt)
    import numpy as np

    rt, rinfo = checkpoint.rng_state()
    first = (torch.rand(3), np.random.rand(3))
    tensors = {**{f"model/net/{k}": v for k, v in net.state_dict().items()}, **ot, **rt}
    checkpoint.save_state(tmp_path, tensors, {"step": 7, "optim": oinfo, "rng": rinfo})
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 7
    back, info = checkpoint.load_state(tmp_path)
    assert info["step"] == 7 and set(back) == set(tensors)
    for k in tensors:
        assert torch.equal(back[k], tensors[k].cpu()), k
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=1e-2)
    checkpoint.optim_from_flat(opt2, back, info["optim"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k])
    checkpoint.set_rng(back, info["rng"])  # back to the saved RNG state
    again = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_resume_after_crash_gives_same_losses(tmp_path):
    _toy(TC, tmp_path / "full")
    full = _losses(tmp_path / "full")
    assert len(full) == 6
    with pytest.raises(KeyboardInterrupt):
        _toy(TC, tmp_path / "crash", crash_at=3)  # checkpoint at step 2, crash inside step 4
    assert json.loads((tmp_path / "crash" / "ckpt" / "state.json").read_text())["step"] == 2
    net, res = _toy(TC, tmp_path / "crash")  # rerun the same command
    assert res["step"] == 6
    assert _losses(tmp_path / "crash") == full  # exactly, incl. the noise drawn in loss_fn
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "crash" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "crash" / "model.json").read_text())
    assert meta["step"] == 6 and meta["data_hash"] == "abc" and meta["kind"] == "toy"
    # a third run is a no-op; a longer run continues from the final checkpoint
    assert _toy(TC, tmp_path / "crash")[1]["skipped"]
    _toy(replace(TC, steps=8), tmp_path / "crash")
    _toy(replace(TC, steps=8), tmp_path / "full8")
    assert _losses(tmp_path / "crash") == _losses(tmp_path / "full8")


def test_changed_config_starts_fresh(tmp_path):
    _toy(replace(TC, steps=2), tmp_path)
    _, res = _toy(replace(TC, steps=2, lr=5e-3), tmp_path)  # lr is part of the fingerprint
    assert not res["skipped"] and len(_losses(tmp_path)) == 2


def test_ema_math_and_export(tmp_path):
    ema = [torch.zeros(2)]
    train.ema_update(ema, [torch.ones(2)], 0.9)
    assert torch.allclose(ema[0], torch.full((2,), 0.1))
    train.ema_update(ema, [torch.ones(2)], 0.9)
    assert torch.allclose(ema[0], torch.full((2,), 0.19))
    assert train.ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert train.ema_decay_at(0.9, 10_000) == 0.9
    # exported weights are the EMA of the trajectory, not the live weights
    tc = replace(TC, steps=3, ema_decay=0.5, lr=0.05)
    net, _ = _toy(tc, tmp_path)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert any(not torch.equal(saved[k], live[k]) for k in live)
    # replay the trajectory by hand
    train.seed_all(0)
    ref = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.0)
    shadow = [p.detach().clone() for p in ref.parameters()]
    for step in range(3):
        train.seed_all(train.step_seed(0, step, 0))
        idx = train.Draw(0, step, 0, 1, 4)(N)
        pred = ref(X[idx])
        pred = pred + 0.05 * torch.randn_like(pred)
        loss = F.mse_loss(pred, Y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0)
        opt.step()
        train.ema_update(shadow, list(ref.parameters()), train.ema_decay_at(0.5, step))
    for (k, _), s in zip(ref.named_parameters(), shadow):
        assert torch.allclose(saved[k], s, atol=1e-7), k


def test_bf16_runs(tmp_path):
    _, res = _toy(replace(TC, steps=3, precision="bf16"), tmp_path)
    losses = _losses(tmp_path)
    assert res["step"] == 3 and len(losses) == 3 and all(l == l for l in losses)


def test_preview_and_grid(tmp_path):
    calls = []
    grid = train.save_grid(tmp_path / "g.png", [torch.rand(3, 1, 8, 8) * 2 - 1, torch.zeros(2, 1, 4, 8, 8)])
    assert grid.exists()
    train.seed_all(0)
    net = nn.Linear(3, 1)
    tc = replace(TC, steps=2, preview_every=1, ema_decay=0.9)
    train.fit(train.Job("toy", tmp_path / "p", {"net": net}, ["net"], lambda s, d: (X[d(N)], Y[d(N)]),
                        lambda b, s: F.mse_loss(net(b[0]), b[1]), tc, {"config": {}, "data_hash": ""},
                        preview=lambda path, step: calls.append((path, step)) or train.save_grid(path, [torch.zeros(1, 1, 4, 4)])))
    assert [c[1] for c in calls] == [1, 2] and all(c[0].exists() for c in calls)


def _two_proc(out_dir):
    from accelerate.state import PartialState

    PartialState._reset_state()  # forked from a process that may hold single-process state
    torch.set_num_threads(1)
    _toy(replace(TC, steps=4, ckpt_every=2), Path(out_dir), noisy=False)


def test_two_process_gloo_matches_single_process(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_two_proc, args=(str(tmp_path / "ddp"),), num_processes=2)
    _toy(replace(TC, steps=4, ckpt_every=2), tmp_path / "single", noisy=False)
    ckpt = json.loads((tmp_path / "ddp" / "ckpt" / "state.json").read_text())
    assert ckpt["world"] == 2 and ckpt["step"] == 4
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    # each rank saw half of the global batch; averaged gradients == the 1-process gradient
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)


def test_a_kill_between_the_two_checkpoint_writes_leaves_a_readable_copy_that_resume_repairs(tmp_path):
    """``state.safetensors`` is renamed first, ``state.json`` second: killed in between, the copy is one checkpoint
    behind; the loop's resume rewrites it from the safetensors' own record, to the bytes a clean save writes."""
    import torch

    from mrgen.checkpoint import load_state, save_state, sync_copy

    save_state(tmp_path, {"w": torch.zeros(3)}, {"step": 2, "fingerprint": "f"})
    old = (tmp_path / "state.json").read_bytes()
    save_state(tmp_path, {"w": torch.ones(3)}, {"step": 4, "fingerprint": "f"})
    clean = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json").write_bytes(old)  # the kill: the second copy never renamed
    _, info = load_state(tmp_path)
    assert info["step"] == 4
    sync_copy(tmp_path, info)
    assert (tmp_path / "state.json").read_bytes() == clean != old
