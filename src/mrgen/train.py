"""One training loop for every trained stage (autoencoder, LDM, controller, segmenter).

:func:`fit` runs ``loss_fn(batch_fn(step, draw), step)`` for ``tcfg.steps`` steps on top of
``accelerate.Accelerator`` (1 process, several GPUs, or several CPU processes with gloo), with
fp32 or bf16 autocast, optional EMA, a rich progress bar, ``train_log.jsonl`` and PNG previews.

Resume = rerun the same command. Every ``ckpt_every`` steps ``ckpt/state.safetensors`` is
written atomically (weights + EMA + optimizer state flattened to tensors; step, RNG states,
data hash and config in its metadata, copied to ``ckpt/state.json``). No pickles. Randomness
is a pure function of ``(seed, step, rank)``: every step reseeds torch/numpy/random and
``draw`` gives the batch indices from a per-epoch permutation, so a resumed run sees the
same batches, noise and timesteps, and logs the same losses, as an uninterrupted one.

Multi-process: gradients of the trainable parameters are averaged with one all-reduce per
step (no DDP wrapper, so ``loss_fn`` may call the modules directly); ``tcfg.batch_size`` is
the global batch, each of the N processes draws ``batch_size // N``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mrgen import io, seeds

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
    """An ``Accelerator`` for this precision; safe to call again with another precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)  # keeps the process group
    GradientState._reset_state()
    return Accelerator(cpu=str(device).startswith("cpu"), mixed_precision="bf16" if precision == "bf16" else "no")


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


def save_state(folder: Path, tensors: dict, info: dict) -> None:
    """``state.safetensors`` is the truth (info in its metadata); ``state.json`` is a readable copy."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    text = json.dumps(info, default=io._json_default)
    with io.atomic_path(folder / "state.safetensors", suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"state": text})
    io.write_json(folder / "state.json", info)


def load_state(folder: Path) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    path = folder / "state.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, info


def _optim_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{i}/{k}"] = v
            else:
                scalars[f"{i}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_flat(opt: torch.optim.Optimizer, tensors: dict, info: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, i, k = key.split("/", 2)
            state.setdefault(int(i), {})[k] = v
    for key, v in info["scalars"].items():
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def _rng_state() -> tuple[dict, dict]:
    np_state = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    return tensors, {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])], "python": random.getstate()}


def _set_rng(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    name, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = info["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


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


# ----------------------------------------------------------------------------- the loop


def fit(
    stage: str,
    out_dir: str | Path,
    modules: dict[str, nn.Module],
    trainable: list[str],
    loss_fn: Callable,
    batch_fn: Callable,
    tcfg,
    meta: dict,
    preview_fn: Callable | None = None,
    export: dict[str, tuple[str, str]] | None = None,
    finalize: Callable | None = None,
    device: str = "cpu",
) -> dict:
    """Train ``modules[trainable]`` and export them with :func:`mrgen.nets.save_model`.

    ``batch_fn(step, draw) -> batch`` (``draw(n_items, k=None, salt=0)`` gives this process's
    indices), ``loss_fn(batch, step) -> scalar``, ``preview_fn(path, step)`` writes a PNG,
    ``finalize(modules) -> dict`` adds meta (runs on the EMA weights before export).
    ``export`` maps module name -> (subfolder of ``out_dir``, kind); default: first trainable ->
    ``("", stage)``, i.e. ``out_dir/model.safetensors`` + ``model.json``.
    ``meta`` must hold ``config`` and ``data_hash``. Returns a summary dict.
    """
    from mrgen.nets import save_model

    out = Path(out_dir)
    export = export or {trainable[0]: ("", stage)}
    fp = fingerprint(stage, meta, tcfg)
    done = out / next(iter(export.values()))[0] / "model.json"
    if done.exists():
        old = io.read_json(done)
        if old.get("fingerprint") == fp and old.get("step") == tcfg.steps:
            return {"stage": stage, "step": old["step"], "skipped": True, "out": str(out)}

    acc = make_accelerator(tcfg.precision, device)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    size = max(1, tcfg.batch_size // world)
    for name, m in modules.items():
        m.to(acc.device)
        m.train(name in trainable)
        m.requires_grad_(name in trainable)
    named = [(f"{n}/{k}", p) for n in trainable for k, p in modules[n].named_parameters()]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=0.0)
    ema = [p.detach().float().clone() for p in params] if tcfg.ema_decay > 0 else None

    start, ckpt = 0, out / CKPT
    state = load_state(ckpt)
    if state is not None and state[1].get("fingerprint") != fp:
        if main:
            acc.print(f"[{stage}] checkpoint in {ckpt} is for other data/config; starting fresh")
        state = None
    if state is not None:
        tensors, info = state
        for n in trainable:
            pre = f"model/{n}/"
            modules[n].load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
        _optim_from_flat(opt, tensors, info["optim"])
        if ema is not None:
            ema = [tensors[f"ema/{k}"].to(acc.device) for k, _ in named]
        _set_rng(tensors, info["rng"])
        start = int(info["step"])
    if world > 1:  # identical start weights on every rank
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, 0)
        if ema is not None:
            for e in ema:
                dist.broadcast(e, 0)

    log_path = out / LOG
    if main:
        out.mkdir(parents=True, exist_ok=True)
        kept = [ln for ln in (log_path.read_text().splitlines() if log_path.exists() else []) if json.loads(ln)["step"] <= start]
        with io.atomic_path(log_path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))

    def checkpoint(step: int) -> None:
        if not main:
            return
        tensors = {f"model/{n}/{k}": v for n in trainable for k, v in modules[n].state_dict().items()}
        if ema is not None:
            tensors.update({f"ema/{k}": e for (k, _), e in zip(named, ema)})
        ot, oinfo = _optim_to_flat(opt)
        rt, rinfo = _rng_state()
        tensors.update(ot)
        tensors.update(rt)
        info = {"schema": 1, "stage": stage, "step": step, "fingerprint": fp, "data_hash": meta.get("data_hash", ""),
                "config": meta.get("config", {}), "world": world, "optim": oinfo, "rng": rinfo}
        save_state(ckpt, tensors, info)

    def swap_ema() -> None:  # exchange live and EMA weights (call twice to undo)
        if ema is None:
            return
        with torch.no_grad():
            for p, e in zip(params, ema):
                live = p.detach().float().clone()
                p.copy_(e.to(p.dtype))
                e.copy_(live)

    def preview(step: int) -> None:
        if not (main and preview_fn):
            return
        swap_ema()
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            preview_fn(out / "previews" / f"step_{step:07d}.png", step)
        for n in trainable:
            modules[n].train()
        swap_ema()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
                   disable=not main)
    window, t0, last = [], time.perf_counter(), float("nan")
    with bar:
        task = bar.add_task(stage, total=tcfg.steps, completed=start, loss=float("nan"), ips=0.0)
        for step in range(start, tcfg.steps):
            seed_all(step_seed(tcfg.seed, step, rank))
            batch = batch_fn(step, Draw(tcfg.seed, step, rank, world, size))
            with acc.autocast():
                loss = loss_fn(batch, step)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            if world > 1:
                _allreduce_grads(acc, params)
            if getattr(tcfg, "grad_clip", 0) > 0:
                torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            opt.step()
            if ema is not None:
                ema_update(ema, params, ema_decay_at(tcfg.ema_decay, step))
            value = float(acc.reduce(loss.detach().float(), reduction="mean")) if world > 1 else float(loss.detach())
            if not np.isfinite(value):
                raise TrainError(f"[{stage}] loss became {value} at step {step + 1}; lower {stage}.train.lr or use precision=fp32")
            window.append(value)
            done_steps = step + 1
            if done_steps % max(1, tcfg.log_every) == 0 or done_steps == tcfg.steps:
                ips = len(window) * size * world / max(time.perf_counter() - t0, 1e-9)
                last = float(np.mean(window))
                if main:
                    rec = {"step": done_steps, "loss": last, "lr": tcfg.lr, "images_per_s": round(ips, 2), "time": time.time()}
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                bar.update(task, completed=done_steps, loss=last, ips=ips)
                window, t0 = [], time.perf_counter()
            if tcfg.ckpt_every and done_steps % tcfg.ckpt_every == 0 and done_steps < tcfg.steps:
                checkpoint(done_steps)
            if tcfg.preview_every and done_steps % tcfg.preview_every == 0:
                preview(done_steps)
    final = max(start, tcfg.steps)
    checkpoint(final)
    acc.wait_for_everyone()
    if main:
        swap_ema()  # export the EMA weights
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            extras = finalize(modules) if finalize else {}
        full = {**meta, **extras, "stage": stage, "step": final, "fingerprint": fp, "ema_decay": tcfg.ema_decay}
        for name, (sub, kind) in export.items():
            save_model(out / sub, kind, modules[name], full)
        swap_ema()
    acc.wait_for_everyone()
    return {"stage": stage, "step": final, "loss": last, "skipped": False, "out": str(out)}


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
