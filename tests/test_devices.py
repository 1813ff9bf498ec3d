"""run.device=auto: the default everywhere, CPU here, recorded in config.yaml, never in a stage stamp."""

import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mrgen import config as C
from mrgen import contract, devices
from mrgen.cli import app


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.mark.parametrize("preset", C.PRESETS)
def test_every_preset_defaults_to_auto_and_picks_the_cpu_here(preset, no_cuda):
    cfg = C.load_config(preset)
    assert cfg.run.device == "auto" and C.RunCfg().device == "auto"
    assert devices.of(cfg) == "cpu"


def test_auto_picks_cuda_when_present_and_the_launchers_gpu(two_gpus, monkeypatch):
    assert devices.resolve("auto") == "cuda" and devices.resolve("cuda:1") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "1")  # accelerate launch / torchrun: each process its own GPU
    assert devices.resolve("auto") == "cuda:1" and devices.resolve("cuda") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "3")  # CUDA_VISIBLE_DEVICES left this process fewer GPUs than ranks
    assert devices.resolve("auto") == "cuda"
    with pytest.raises(C.ConfigError, match="has 2 CUDA device"):
        devices.resolve("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "mps", ""])
def test_an_unknown_device_is_one_config_error(bad):
    with pytest.raises(C.ConfigError, match="run.device must be auto .*cpu, cuda or cuda:N"):
        C.load_config("tiny", overrides=[f"run.device={bad}"])


def test_cuda_without_cuda_says_use_auto(no_cuda, tmp_path):
    with pytest.raises(C.ConfigError, match=r"run.device=cuda but torch.cuda.is_available\(\) is False.*run.device=auto"):
        devices.resolve("cuda")
    res = CliRunner().invoke(app, ["curate", "-p", "tiny", "-w", str(tmp_path), "run.device=cuda"])
    assert res.exit_code == 2 and "is_available() is False" in res.output
    res = CliRunner().invoke(app, ["curate", "-p", "tiny", "-w", str(tmp_path), "run.device=tpu"])
    assert res.exit_code == 2 and "run.device must be auto" in res.output


def test_the_saved_config_records_the_resolved_device_and_loads_back_as_auto(no_cuda, tmp_path):
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}"])
    path = C.save_resolved(cfg, tmp_path)
    tree = yaml.safe_load(path.read_text())
    assert tree["run"]["device"] == "auto"  # the setting: the folder still runs on a GPU machine
    assert tree["resolved"]["device"] == "cpu" and tree["resolved"]["requested"] == "auto"
    assert tree["resolved"]["cuda_available"] is False
    assert tree["resolved"]["bf16"] == ("autocast" if devices.cpu_bf16() else
                                        "fp32 (no bf16 on this CPU (neither AVX512-BF16 nor AMX: bf16 autocast "
                                        "would be emulated, about 9x slower))")
    assert C.to_dict(C.load_config("tiny", path)) == C.to_dict(cfg)


def test_the_device_is_in_no_stamp(no_cuda, tmp_path):
    assert "run.device" in contract.NO_EFFECT
    a = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "run.device=auto"])
    b = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "run.device=cpu"])
    assert contract.stamps(a) == contract.stamps(b)


def test_bf16_follows_the_device(monkeypatch, caplog):
    monkeypatch.setattr(devices, "_warned", set())
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # AMX: bf16 on this CPU
    assert devices.mixed_precision("bf16", "cpu") == "bf16" and devices.mixed_precision("fp32", "cpu") == "no"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # AVX2 only: emulated, so fp32
    with caplog.at_level(logging.WARNING, logger="mrgen.devices"):
        assert devices.mixed_precision("bf16", "cpu") == "no"
        assert devices.mixed_precision("bf16", "cpu") == "no"
    assert caplog.text.count("no bf16 on this CPU") == 1  # said once
    caplog.clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.mixed_precision("bf16", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mrgen.devices"):
        assert devices.mixed_precision("bf16", "cuda") == "no"
    assert "training in fp32" in caplog.text


def test_no_stage_reads_run_device_but_through_the_resolver():
    """Every stage, the sampler and the segmenter get their device from mrgen.devices.of(cfg)."""
    src = Path(devices.__file__).parent
    raw = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") if p.name != "devices.py"
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\w\.run\.device\b", line) and "devices.of(cfg)" not in line
           and "devices.check(cfg.run.device)" not in line]  # the config check (mrgen.checks) validates the name
    assert raw == []
