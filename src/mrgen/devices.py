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


def _bf16_ok(device: str) -> bool:
    import torch

    return not str(device).startswith("cuda") or bool(torch.cuda.is_bf16_supported())


def mixed_precision(precision: str, device: str) -> str:
    """``accelerate``'s ``mixed_precision`` for ``train.precision`` on ``device``: ``bf16`` or ``no`` (fp32)."""
    if precision != "bf16":
        return "no"
    if _bf16_ok(device):
        return "bf16"
    log.warning("train.precision=bf16 but %s has no bf16 support (torch.cuda.is_bf16_supported() is False: a GPU "
                "older than Ampere); training in fp32", device)
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
    out["bf16"] = "autocast" if _bf16_ok(dev) else "fp32 (no bf16 on this GPU)"
    return out
