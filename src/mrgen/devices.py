"""``run.device`` -> the torch device every stage, the sampler and the segmenter use, and the precision that follows.

``auto`` (every preset's default): ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. ``cuda`` under a
launcher (``accelerate launch``/``torchrun`` set ``LOCAL_RANK``) is the process's own GPU, ``cuda:<LOCAL_RANK>``, as
``accelerate`` places the trained nets. ``cuda:N`` is that GPU. Anything else is a :class:`ConfigError`.

Precision (``*.train.precision=bf16``, :func:`mixed_precision`): bf16 autocast on the CPU (fast with AMX,
Sapphire Rapids and newer; elsewhere it runs, emulated, and may be slower than fp32) and on GPUs where
``torch.cuda.is_bf16_supported()`` (Ampere and newer); on an older GPU the stage trains in fp32 with a logged note.
fp16 is not offered (no loss scaling in the loop). Sampling, filtering and prediction run in fp32 on every device.

The resolved device never enters a stage stamp (``run.device`` is in :data:`mrgen.contract.NO_EFFECT`): the
same run folder continues on another machine. :func:`describe` is what ``config.yaml`` records under ``resolved:``.
"""

from __future__ import annotations

import logging
import os
import re

from mrgen.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check(name: str) -> str:
    """``name`` if it is a device mrgen knows (auto | cpu | cuda | cuda:N), else one :class:`ConfigError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"run.device must be auto (CUDA when present, else CPU), cpu, cuda or cuda:N, got {name!r}; "
                          f"e.g. run.device=auto")
    return name


def resolve(name: str) -> str:
    """``run.device`` -> a torch device string (``cpu``, ``cuda``, ``cuda:N``); see the module docstring."""
    import torch

    check(name)
    if name == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if name == AUTO:
            return "cpu"
        raise ConfigError(f"run.device={name} but torch.cuda.is_available() is False here (torch {torch.__version__}); "
                          f"use run.device=auto (CPU here) or run.device=cpu")
    if name in (AUTO, "cuda"):
        local = os.environ.get("LOCAL_RANK", "")  # a launcher that shows each process one GPU: plain cuda
        return f"cuda:{int(local)}" if local.isdigit() and int(local) < torch.cuda.device_count() else "cuda"
    if int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"run.device={name} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); use run.device=auto")
    return name


def of(cfg) -> str:
    """The resolved device of a config (``cfg.run.device``)."""
    return resolve(cfg.run.device)


def cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 (AVX512-BF16 or AMX). Without either (an AVX2-only CPU) torch emulates
    bf16 autocast, and a training step is about 9x slower than in fp32 (docs/performance.md)."""
    import torch

    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


def _bf16_ok(device: str) -> bool:
    import torch

    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16()


def _no_bf16_reason(device: str) -> str:
    if str(device).startswith("cuda"):
        return "no bf16 on this GPU (torch.cuda.is_bf16_supported() is False: older than Ampere)"
    return "no bf16 on this CPU (neither AVX512-BF16 nor AMX: bf16 autocast would be emulated, about 9x slower)"


_warned: set = set()


def mixed_precision(precision: str, device: str) -> str:
    """``accelerate``'s ``mixed_precision`` for ``train.precision`` on ``device``: ``bf16`` or ``no`` (fp32).
    bf16 only where the hardware computes in it (:func:`cpu_bf16`, ``torch.cuda.is_bf16_supported``); else fp32,
    said once per device (``config.yaml`` records it under ``resolved.bf16``)."""
    if precision != "bf16":
        return "no"
    if _bf16_ok(device):
        return "bf16"
    if device not in _warned:
        _warned.add(device)
        log.warning("train.precision=bf16 but %s: %s; training in fp32", device, _no_bf16_reason(device))
    return "no"


def describe(cfg) -> dict:
    """What ``config.yaml`` records under ``resolved:``: the requested and the resolved device, torch, the GPU,
    and whether ``train.precision=bf16`` runs as bf16 autocast here."""
    import torch

    dev = of(cfg)
    out = {"device": dev, "requested": cfg.run.device, "torch": str(torch.__version__),
           "cuda_available": bool(torch.cuda.is_available())}
    if dev.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    out["bf16"] = "autocast" if _bf16_ok(dev) else f"fp32 ({_no_bf16_reason(dev)})"
    return out
