"""The resumable state of a training run as safetensors: weights, EMA, optimizer and RNG states.

``state.safetensors`` holds every tensor (optimizer moments flattened to ``optim/<i>/<name>``,
RNG states to ``rng/*``); the non-tensor parts (step, fingerprint, optimizer scalars, numpy and
python RNG states) are JSON in its metadata, copied to ``state.json`` for reading. No pickles.
Used by :func:`mrgen.train.fit`; ``load_state``/``save_state`` are also reachable as ``mrgen.train.*``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from mrgen import io

SCHEMA = 1  # of the checkpoint info (the ``state`` metadata and state.json)


def save_state(folder: Path, tensors: dict, info: dict) -> None:
    """``state.safetensors`` is the truth (info in its metadata); ``state.json`` is a readable copy."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    info = _readable(info)
    # one metadata key (safetensors orders several at random: equal states would differ in bytes)
    text = json.dumps({**info, "sha256": tensors_hash(tensors)}, default=io._json_default)
    with io.atomic_path(folder / "state.safetensors", suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"state": text})
    io.write_json(folder / "state.json", info)


def _readable(info: dict) -> dict:
    """What ``state.json`` holds: the checkpoint info with its schema first."""
    return {"schema": SCHEMA, **{k: v for k, v in info.items() if k != "schema"}}


def sync_copy(folder: Path, info: dict) -> None:
    """Rewrite ``state.json`` from the ``info`` loaded out of ``state.safetensors`` when they differ (a kill between
    the two writes of :func:`save_state` leaves the readable copy one checkpoint behind)."""
    want = _readable(info)
    path = folder / "state.json"
    try:
        same = json.loads(path.read_text()) == json.loads(json.dumps(want, default=io._json_default))
    except (OSError, ValueError):
        same = False
    if not same:
        io.write_json(path, want)


def load_state(folder: Path) -> tuple[dict, dict] | None:
    """``(tensors, info)`` saved by :func:`save_state` in ``folder``, or ``None`` when there is none."""
    from safetensors import safe_open

    path = folder / "state.safetensors"
    if not path.exists():
        return None
    fix = (f"delete {folder} and rerun: the stage trains again from step 0 (its finished model, if any, is "
           f"in {folder.parent})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            info = json.loads(meta["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own errors on a truncated/flipped file
        raise io.corrupt(path, exc, fix) from None
    want = info.pop("sha256", None) if isinstance(info, dict) else None
    if want and tensors_hash(tensors) != want:
        raise io.corrupt(path, "its tensors' sha256 differs from the one it records", fix)
    io.check_schema(info.get("schema") if isinstance(info, dict) else None, path, SCHEMA, fix)
    return tensors, info


def tensors_hash(tensors: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def optim_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer state as ``({"optim/<i>/<name>": tensor}, {"param_groups", "scalars"})``."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{i}/{k}"] = v
            else:
                scalars[f"{i}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optim_from_flat(opt: torch.optim.Optimizer, tensors: dict, info: dict) -> None:
    """Load into ``opt`` what :func:`optim_to_flat` gave (``tensors`` may hold other keys too)."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, i, k = key.split("/", 2)
            state.setdefault(int(i), {})[k] = v
    for key, v in info["scalars"].items():
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def rng_state() -> tuple[dict, dict]:
    """The torch, numpy and python global RNG states as ``({"rng/torch", "rng/numpy"}, json-able info)``."""
    np_state = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    return tensors, {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])], "python": random.getstate()}


def set_rng(tensors: dict, info: dict) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(tensors["rng/torch"])
    name, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = info["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
