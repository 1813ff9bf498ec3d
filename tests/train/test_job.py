"""train.Job: what a stage hands to train.fit, validated up front with messages that say what to fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrgen import train
from mrgen.config import TrainCfg

TC = TrainCfg(steps=2, batch_size=2, lr=1e-2, ckpt_every=0, preview_every=0, log_every=1, ema_decay=0.0)
X, Y = torch.ones(4, 3), torch.zeros(4, 1)


def _job(tmp_path, **kw) -> train.Job:
    net = nn.Linear(3, 1)
    args = dict(stage="toy", out=tmp_path, modules={"net": net, "frozen": nn.Linear(1, 1)}, trainable=["net"],
                batch=lambda step, draw: (X[draw(4)], Y[draw(4)]), loss=lambda b, step: F.mse_loss(net(b[0]), b[1]),
                tcfg=TC, meta={"config": {"toy": 1}, "data_hash": "abc"})
    return train.Job(**{**args, **kw})


def test_valid_job_resolves_defaults(tmp_path):
    job = _job(tmp_path, out=str(tmp_path / "o"), trainable=("net",))
    assert job.out == tmp_path / "o" and isinstance(job.out, Path)
    assert job.trainable == ["net"]
    assert job.export == {"net": ("", "toy")}  # first trainable -> out/model.safetensors
    assert job.device == "cpu" and job.preview is None and job.finalize is None


@pytest.mark.parametrize("kw, words", [
    ({"trainable": ["ghost"]}, ["trainable", "'ghost'", "not in modules", "frozen", "net"]),
    ({"trainable": []}, ["trainable", "distinct names"]),
    ({"trainable": ["net", "net"]}, ["trainable", "distinct names"]),
    ({"meta": {"config": {}}}, ["meta", "'data_hash'", "missing"]),
    ({"meta": {"data_hash": "x"}}, ["meta", "'config'", "missing"]),
    ({"meta": None}, ["meta must be a dict"]),
    ({"modules": {}}, ["modules must be a non-empty dict"]),
    ({"modules": {"net": "not a module"}}, ["torch.nn.Module"]),
    ({"loss": 3.0}, ["loss must be a function", "float"]),
    ({"batch": None}, ["batch must be a function"]),
    ({"preview": "x.png"}, ["preview must be a function or None"]),
    ({"export": {"ghost": ("", "toy")}}, ["export", "ghost"]),
    ({"export": {"net": "toy"}}, ["export", "(subfolder, kind)"]),
    ({"tcfg": {"steps": 2}}, ["tcfg must be a mrgen.config.TrainCfg", "dict"]),
    ({"stage": ""}, ["stage must be a non-empty name"]),
])
def test_bad_job_says_what_is_wrong(tmp_path, kw, words):
    with pytest.raises(train.TrainError) as err:
        _job(tmp_path, **kw)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_fit_wants_a_job(tmp_path):
    with pytest.raises(train.TrainError, match=r"train\.fit takes a train\.Job, got str"):
        train.fit("toy")


def test_fit_runs_trains_only_trainable_and_skips_when_done(tmp_path):
    job = _job(tmp_path)
    frozen = job.modules["frozen"].weight.detach().clone()
    before = job.modules["net"].weight.detach().clone()
    res = train.fit(job)
    assert res["step"] == 2 and res["skipped"] is False and (tmp_path / "model.safetensors").exists()
    assert not torch.equal(job.modules["net"].weight, before)
    assert torch.equal(job.modules["frozen"].weight, frozen)
    calls = []
    again = replace(job, batch=lambda step, draw: calls.append(step))
    assert train.fit(again)["skipped"] is True and calls == []
