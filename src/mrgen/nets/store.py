"""Weights on disk: ``<folder>/model.safetensors`` (tensors only) + ``<folder>/model.json``.

``model.json`` = ``{"schema": 1, "kind": name, **meta, "sha256": <hash of the safetensors
file>, "tensors": {key: shape}}``. Both files are written atomically; the JSON is written last,
so its presence marks a complete save. Loading is strict (same keys, same shapes) and never
unpickles anything (no ``torch.load``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mrgen.io import atomic_path, read_versioned, write_json

SCHEMA = 1
WEIGHTS = "model.safetensors"
META = "model.json"


class ModelLoadError(ValueError, RuntimeError):
    """Saved weights are missing, corrupted or do not fit the module; the message says which."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliased copies of ``module.state_dict()`` (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_model(folder: str | Path, name: str, module: nn.Module, meta: dict | None = None) -> dict:
    """Write ``module``'s weights + metadata to ``folder``; returns the written JSON dict.

    ``name`` is the kind (``autoencoder|ldm|controller|segmenter``); ``meta`` holds the stage
    extras (``config``, ``step``, ``data_hash``, ``scale_factor`` ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = state_tensors(module)
    with atomic_path(folder / WEIGHTS, suffix=".safetensors") as tmp:
        # one metadata key: safetensors writes several in random order, which would make equal weights hash differently
        save_file(tensors, str(tmp), metadata={"mrgen": json.dumps({"kind": str(name), "schema": SCHEMA}, sort_keys=True)})
        digest = sha256_file(tmp)
    info = {"schema": SCHEMA, "kind": str(name), **(meta or {})}
    info["sha256"] = digest
    info["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    write_json(folder / META, info)
    return info


def read_meta(folder: str | Path) -> dict:
    """The ``model.json`` of a saved model (raises ModelLoadError when absent)."""
    path = Path(folder) / META
    if not path.exists():
        raise ModelLoadError(f"{path} not found: no complete model saved in {folder} (train that stage first)")
    return read_versioned(path, SCHEMA, f"delete {folder} and rerun the stage that trains it (it resumes from its "
                                        f"checkpoint in {Path(folder) / 'ckpt'} when that is valid)")


def load_model(folder: str | Path, module: nn.Module, verify: bool = True, kind: str | None = None) -> dict:
    """Load ``<folder>/model.safetensors`` into ``module`` strictly; returns the ``model.json`` dict.

    Raises :class:`ModelLoadError` naming missing/unexpected keys and shape mismatches (usually
    a config that differs from the one used for training), a wrong ``kind`` or a sha256 mismatch.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    wpath = folder / WEIGHTS
    if not wpath.exists():
        raise ModelLoadError(f"{wpath} not found although {META} exists; retrain or restore the file")
    if kind is not None and meta.get("kind") != kind:
        raise ModelLoadError(f"{folder} holds a '{meta.get('kind')}' model, expected '{kind}'")
    if verify and meta.get("sha256") and sha256_file(wpath) != meta["sha256"]:
        raise ModelLoadError(f"{wpath}: sha256 differs from {META}; the file is corrupted or was replaced: delete {folder} and rerun the stage that trains it (it resumes from its checkpoint when that is valid)")
    saved = load_file(str(wpath), device="cpu")
    own = module.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = []
        if shapes:
            lines.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:8]))
        if missing:
            lines.append(f"{len(missing)} key(s) missing from the file: " + ", ".join(missing[:8]))
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s) in the file: " + ", ".join(unexpected[:8]))
        raise ModelLoadError(
            f"weights in {wpath} do not fit this {type(module).__name__}; the network config differs from the "
            f"one used for training (see the 'config' in {folder / META}):\n  " + "\n  ".join(lines)
        )
    module.load_state_dict(saved, strict=True)
    return meta
