"""One training loop for every trained stage (autoencoder, LDM, controller, segmenter).

:func:`fit` takes a :class:`Job` (what a stage hands over) and runs
``job.loss(job.batch(step, draw), step)`` for ``job.tcfg.steps`` steps on top of
``accelerate.Accelerator`` (1 process, several GPUs, or several CPU processes with gloo), with
fp32 or bf16 autocast, optional EMA, a rich progress bar, ``train_log.jsonl`` and PNG previews.

Resume = rerun the same command. Every ``ckpt_every`` steps ``ckpt/state.safetensors`` is
written atomically (weights + EMA + optimizer state flattened to tensors; step, RNG states,
data hash and config in its metadata, copied to ``ckpt/state.json``). No pickles. Randomness
is a pure function of ``(seed, step, rank)``: every step reseeds torch/numpy/random and
``draw`` gives the batch indices from a per-epoch permutation, so a resumed run sees the
same batches, noise and timesteps, and logs the same losses, as an uninterrupted one.

Multi-process: gradients of the trainable parameters are averaged with one all-reduce per
step (no DDP wrapper, so ``job.loss`` may call the modules directly); ``tcfg.batch_size`` is
the global batch, each of the N processes draws ``batch_size // N``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mrgen import devices, io, seeds
from mrgen.checkpoint import load_state, optim_from_flat, optim_to_flat, rng_state, save_state, set_rng, sync_copy

CKPT = "ckpt"
LOG = "train_log.jsonl"
# TrainCfg fields that may change without invalidating a checkpoint (e.g. train longer).
_RESUMABLE = ("steps", "ckpt_every", "preview_every", "log_every", "num_workers")


class TrainError(ValueError):
    """Training cannot go on (non-finite loss, empty data); the message says what to change."""


# ----------------------------------------------------------------------------- seeding / data order


def step_seed(seed: int, step: int, rank: int = 0, salt: str = "") -> int:
    """The seed of one training step on one process (:func:`mrgen.seeds.derive`)."""
    return seeds.derive(seed, step, rank, salt)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@lru_cache(maxsize=8)
def _perm(n: int, seed: int, epoch: int, salt: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 0, f"perm{salt}")))


class Draw:
    """Batch indices for one step: ``draw(n_items, k=None, salt=0)``; epoch-wise shuffled, a pure
    function of (seed, step, rank), disjoint across ranks within an epoch."""

    def __init__(self, seed: int, step: int, rank: int, world: int, size: int):
        self.seed, self.step, self.rank, self.world, self.size = seed, step, rank, world, size

    def __call__(self, n: int, k: int | None = None, salt: int = 0) -> torch.Tensor:
        if n < 1:
            raise TrainError("no training items; check the curated index and the stage's row filters")
        k = self.size if k is None else k
        pos = (self.step * self.world + self.rank) * k + torch.arange(k)
        epochs = (pos // n).tolist()
        return torch.stack([_perm(n, self.seed, e, salt)[p] for e, p in zip(epochs, (pos % n).tolist())]) if k else pos


# ----------------------------------------------------------------------------- accelerate / EMA


def make_accelerator(precision: str = "fp32", device: str = "cpu"):
    """An ``Accelerator`` for ``precision`` on ``device`` (:func:`mrgen.devices.mixed_precision`); safe to call again."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)  # keeps the process group
    GradientState._reset_state()
    return Accelerator(cpu=str(device).startswith("cpu"), mixed_precision=devices.mixed_precision(precision, device))


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay with warm-up ``min(decay, (1 + step) / (10 + step))`` so short runs are not stuck at init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param``."""
    for e, p in zip(ema, params):
        e.mul_(decay).add_(p.detach().float(), alpha=1.0 - decay)


# ----------------------------------------------------------------------------- checkpoints


def _strip(cfg):
    if isinstance(cfg, dict):
        return {k: _strip(v) for k, v in cfg.items() if k not in _RESUMABLE}
    return cfg


def fingerprint(stage: str, meta: dict, tcfg=None) -> str:
    """What a checkpoint must match to be resumed: stage, data hash, config and TrainCfg (minus step counts)."""
    from mrgen.config import to_dict

    payload = {"stage": stage, "data_hash": meta.get("data_hash", ""), "config": _strip(meta.get("config", {})),
               "train": _strip(to_dict(tcfg)) if tcfg is not None else {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- previews


def save_grid(path: str | Path, rows: list[torch.Tensor]) -> Path:
    """PNG grid, one row per tensor ``(N, 1, H, W)`` or ``(N, 1, Z, H, W)`` (mid slice) in [-1, 1]."""
    tiles = []
    for t in rows:
        t = t.detach().float().cpu()
        if t.ndim == 5:
            t = t[:, :, t.shape[2] // 2]
        t = ((t[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (N, X, Y)
        pad = np.zeros((t.shape[0], t.shape[1], 1), np.uint8)
        tiles.append(np.concatenate([np.concatenate([a, p], 1) for a, p in zip(t, pad)], 1))
    width = max(t.shape[1] for t in tiles)
    grid = np.concatenate([np.pad(t, ((0, 2), (0, width - t.shape[1]))) for t in tiles[::-1]], 0)
    io.write_png(path, grid)  # (x, y) layout; rows[0] ends up at the top
    return Path(path)


# ----------------------------------------------------------------------------- the job


@dataclass
class Job:
    """What a stage hands to :func:`fit`.

    ``batch(step, draw) -> batch`` builds this process's batch (``draw(n_items, k=None, salt=0)``
    gives its indices); ``loss(batch, step) -> scalar`` tensor; ``preview(path, step)`` writes a
    PNG (called on the EMA weights, in eval mode, under ``no_grad``); ``finalize(modules) -> dict``
    adds meta (on the EMA weights, before export). ``export`` maps module name ->
    ``(subfolder of out, kind)``; ``None`` means first trainable -> ``("", stage)``, i.e.
    ``out/model.safetensors`` + ``model.json``. ``meta`` must hold ``config`` and ``data_hash``
    (both go into the resume fingerprint). ``tcfg`` is a :class:`mrgen.config.TrainCfg`.
    """

    stage: str
    out: Path
    modules: dict[str, nn.Module]
    trainable: list[str]
    batch: Callable
    loss: Callable
    tcfg: Any
    meta: dict
    preview: Callable | None = None
    finalize: Callable | None = None
    export: dict[str, tuple[str, str]] | None = None
    device: str = "cpu"

    def __post_init__(self):
        where = f"train.Job({self.stage!r})"
        if not isinstance(self.stage, str) or not self.stage:
            raise TrainError(f"train.Job: stage must be a non-empty name, got {self.stage!r}")
        self.out = Path(self.out)
        if not isinstance(self.modules, dict) or not self.modules or not all(
                isinstance(m, nn.Module) for m in self.modules.values()):
            raise TrainError(f"{where}: modules must be a non-empty dict name -> torch.nn.Module")
        self.trainable = list(self.trainable)
        unknown = [n for n in self.trainable if n not in self.modules]
        if not self.trainable or unknown or len(set(self.trainable)) != len(self.trainable):
            raise TrainError(f"{where}: trainable must list distinct names from modules {sorted(self.modules)}, "
                             f"got {self.trainable}" + (f" ({unknown} not in modules)" if unknown else ""))
        for name in ("batch", "loss"):
            if not callable(getattr(self, name)):
                raise TrainError(f"{where}: {name} must be a function, got {type(getattr(self, name)).__name__}")
        for name in ("preview", "finalize"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TrainError(f"{where}: {name} must be a function or None")
        missing = [k for k in ("config", "data_hash") if k not in (self.meta if isinstance(self.meta, dict) else {})]
        if missing:
            raise TrainError(f"{where}: meta must be a dict holding 'config' and 'data_hash' (the resume "
                             f"fingerprint); missing {missing}")
        if not all(hasattr(self.tcfg, k) for k in ("steps", "batch_size", "lr", "seed", "ema_decay")):
            raise TrainError(f"{where}: tcfg must be a mrgen.config.TrainCfg, got {type(self.tcfg).__name__}")
        self.export = dict(self.export or {self.trainable[0]: ("", self.stage)})
        bad = {n: v for n, v in self.export.items()
               if n not in self.modules or not (isinstance(v, (tuple, list)) and len(v) == 2)}
        if bad:
            raise TrainError(f"{where}: export must map names from modules {sorted(self.modules)} to "
                             f"(subfolder, kind); bad entries {bad}")


# ----------------------------------------------------------------------------- the loop


class _Loop:
    """The live state of one :func:`fit` run: accelerator, optimizer, EMA and checkpoint folder."""

    def __init__(self, job: Job, fp: str):
        self.job, self.fp, self.ckpt = job, fp, job.out / CKPT
        self.acc = acc = make_accelerator(job.tcfg.precision, job.device)
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.size = max(1, job.tcfg.batch_size // self.world)
        for name, m in job.modules.items():
            m.to(acc.device)
            m.train(name in job.trainable)
            m.requires_grad_(name in job.trainable)
        self.named = [(f"{n}/{k}", p) for n in job.trainable for k, p in job.modules[n].named_parameters()]
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(self.params, lr=job.tcfg.lr, weight_decay=0.0)
        self.ema = [p.detach().float().clone() for p in self.params] if job.tcfg.ema_decay > 0 else None
        self.log_path = job.out / LOG

    def resume(self) -> int:
        """Load a matching checkpoint (if any), sync ranks, trim the log; returns the start step."""
        job, start = self.job, 0
        state = load_state(self.ckpt)
        if state is not None and state[1].get("fingerprint") != self.fp:
            if self.main:
                self.acc.print(f"[{job.stage}] checkpoint in {self.ckpt} is for other data/config; starting fresh")
            state = None
        if state is not None:
            tensors, info = state
            for n in job.trainable:
                pre = f"model/{n}/"
                job.modules[n].load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
            optim_from_flat(self.opt, tensors, info["optim"])
            if self.ema is not None:
                self.ema = [tensors[f"ema/{k}"].to(self.acc.device) for k, _ in self.named]
            set_rng(tensors, info["rng"])
            start = int(info["step"])
            if self.main:
                sync_copy(self.ckpt, info)
        if self.world > 1:  # identical start weights on every rank
            import torch.distributed as dist

            for t in self.params + (self.ema or []):
                dist.broadcast(t.data, 0)
        if self.main:  # drop log lines past the checkpoint so a resumed log equals an uninterrupted one
            job.out.mkdir(parents=True, exist_ok=True)
            old = self.log_path.read_text().splitlines() if self.log_path.exists() else []
            kept = [ln for ln in old if _logged_step(ln) <= start]
            if kept != old or not self.log_path.exists():
                with io.atomic_path(self.log_path) as tmp:
                    tmp.write_text("".join(ln + "\n" for ln in kept))
        return start

    def step(self, step: int) -> float:
        """One optimizer step; returns the (process-averaged) loss."""
        job, tcfg, acc = self.job, self.job.tcfg, self.acc
        seed_all(step_seed(tcfg.seed, step, self.rank))
        batch = job.batch(step, Draw(tcfg.seed, step, self.rank, self.world, self.size))
        with acc.autocast():
            loss = job.loss(batch, step)
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if self.world > 1:
            _allreduce_grads(acc, self.params)
        if getattr(tcfg, "grad_clip", 0) > 0:
            torch.nn.utils.clip_grad_norm_(self.params, tcfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            ema_update(self.ema, self.params, ema_decay_at(tcfg.ema_decay, step))
        value = float(acc.reduce(loss.detach().float(), reduction="mean")) if self.world > 1 else float(loss.detach())
        if not np.isfinite(value):
            raise TrainError(f"[{job.stage}] loss became {value} at step {step + 1}; "
                             f"lower {job.stage}.train.lr or use precision=fp32")
        return value

    def log(self, step: int, loss: float, ips: float) -> None:
        if self.main:
            rec = {"step": step, "loss": loss, "lr": self.job.tcfg.lr, "images_per_s": round(ips, 2), "time": time.time()}
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    def checkpoint(self, step: int) -> None:
        if not self.main:
            return
        job = self.job
        tensors = {f"model/{n}/{k}": v for n in job.trainable for k, v in job.modules[n].state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema/{k}": e for (k, _), e in zip(self.named, self.ema)})
        ot, oinfo = optim_to_flat(self.opt)
        rt, rinfo = rng_state()
        tensors.update(ot)
        tensors.update(rt)
        info = {"stage": job.stage, "step": step, "fingerprint": self.fp,
                "data_hash": job.meta.get("data_hash", ""), "config": job.meta.get("config", {}),
                "world": self.world, "optim": oinfo, "rng": rinfo}
        save_state(self.ckpt, tensors, info)

    def swap_ema(self) -> None:
        """Exchange live and EMA weights (call twice to undo)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                live = p.detach().float().clone()
                p.copy_(e.to(p.dtype))
                e.copy_(live)

    def preview(self, step: int) -> None:
        job = self.job
        if not (self.main and job.preview):
            return
        self.swap_ema()
        for m in job.modules.values():
            m.eval()
        with torch.no_grad():
            job.preview(job.out / "previews" / f"step_{step:07d}.png", step)
        for n in job.trainable:
            job.modules[n].train()
        self.swap_ema()

    def export(self, step: int) -> None:
        """Save the EMA weights of every exported module with :func:`mrgen.nets.save_model`."""
        from mrgen.nets import save_model

        job = self.job
        if not self.main:
            return
        self.swap_ema()
        for m in job.modules.values():
            m.eval()
        with torch.no_grad():
            extras = job.finalize(job.modules) if job.finalize else {}
        full = {**job.meta, **extras, "stage": job.stage, "step": step, "fingerprint": self.fp,
                "ema_decay": job.tcfg.ema_decay}
        for name, (sub, kind) in job.export.items():
            save_model(job.out / sub, kind, job.modules[name], full)
        self.swap_ema()


def _logged_step(line: str) -> float:
    """The step of a train_log line; a line cut short by a kill counts as past any checkpoint (it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def fit(job: Job) -> dict:
    """Train ``job.modules[job.trainable]`` for ``job.tcfg.steps`` steps and export them (EMA weights).

    Skips (returns ``skipped: True``) when the export is already there for the same fingerprint
    and step count. Returns ``{"stage", "step", "loss", "skipped", "out"}``.
    """
    if not isinstance(job, Job):
        raise TrainError(f"train.fit takes a train.Job, got {type(job).__name__}; wrap the stage's arguments "
                         "in train.Job(stage=..., out=..., modules=..., trainable=..., batch=..., loss=..., ...)")
    tcfg, stage = job.tcfg, job.stage
    fp = fingerprint(stage, job.meta, tcfg)
    done = job.out / next(iter(job.export.values()))[0] / "model.json"
    if done.exists():
        from mrgen.nets.store import read_meta

        old = read_meta(done.parent)
        if old.get("fingerprint") == fp and old.get("step") == tcfg.steps:
            return {"stage": stage, "step": old["step"], "skipped": True, "out": str(job.out)}

    loop = _Loop(job, fp)
    start = loop.resume()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
                   disable=not loop.main)
    window, t0, last = [], time.perf_counter(), float("nan")
    with bar:
        task = bar.add_task(stage, total=tcfg.steps, completed=start, loss=float("nan"), ips=0.0)
        for step in range(start, tcfg.steps):
            window.append(loop.step(step))
            done_steps = step + 1
            if done_steps % max(1, tcfg.log_every) == 0 or done_steps == tcfg.steps:
                ips = len(window) * loop.size * loop.world / max(time.perf_counter() - t0, 1e-9)
                last = float(np.mean(window))
                loop.log(done_steps, last, ips)
                bar.update(task, completed=done_steps, loss=last, ips=ips)
                window, t0 = [], time.perf_counter()
            if tcfg.ckpt_every and done_steps % tcfg.ckpt_every == 0 and done_steps < tcfg.steps:
                loop.checkpoint(done_steps)
            if tcfg.preview_every and done_steps % tcfg.preview_every == 0:
                loop.preview(done_steps)
    final = max(start, tcfg.steps)
    if start < final:  # a rerun killed after the last checkpoint only exports again
        loop.checkpoint(final)
    loop.acc.wait_for_everyone()
    loop.export(final)
    loop.acc.wait_for_everyone()
    return {"stage": stage, "step": final, "loss": last, "skipped": False, "out": str(job.out)}


def _allreduce_grads(acc, params: list[torch.Tensor]) -> None:
    """Average gradients over processes with one flat all-reduce (missing grads count as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    flat = acc.reduce(flat, reduction="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n
