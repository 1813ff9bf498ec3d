"""What the kill suite compares: a run folder after faults against the uninterrupted reference, and what it
checks after every kill (no damaged file where a later stage would read it as valid)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.curate.index import Index

# train_log fields that are wall-clock measurements, not results
CLOCK = ("time", "images_per_s")
# append-only logs whose readers drop a line cut by a kill (train_log is trimmed to the checkpoint on resume)
APPEND_LOGS = ("train_log.jsonl", ".progress.jsonl")


def _json(p: Path):
    return json.loads(p.read_text())


def validate_tree(wd: Path) -> list[str]:
    """Problems with the finished (non-temp) files below ``wd``: every one must parse completely."""
    from safetensors import safe_open

    bad = []
    for p in sorted(wd.rglob("*")):
        if not p.is_file() or io.is_temp(p) or p.name.startswith(".mrgen.lock"):
            continue
        try:
            if p.suffix == ".json":
                _json(p)
            elif p.suffix == ".jsonl" and p.name not in APPEND_LOGS:
                [json.loads(ln) for ln in p.read_text().splitlines()]
            elif p.suffix == ".safetensors":
                with safe_open(str(p), framework="pt") as f:
                    [f.get_tensor(k) for k in f.keys()]
            elif p.suffix == ".npz":
                with zipfile.ZipFile(p) as z:
                    assert z.testzip() is None
            elif p.suffix == ".npy":
                np.load(p, allow_pickle=False)
            elif p.suffix == ".parquet":
                Index(p).table
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{p.relative_to(wd)}: {type(exc).__name__}: {exc}")
    return bad


def _log(p: Path) -> list:
    return [{k: v for k, v in json.loads(ln).items() if k not in CLOCK} for ln in p.read_text().splitlines()]


def _safetensors(p: Path) -> tuple:
    from safetensors import safe_open

    with safe_open(str(p), framework="numpy") as f:
        return f.metadata(), {k: f.get_tensor(k).tobytes() for k in sorted(f.keys())}


def _npz(p: Path) -> dict:
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


TEXT = (".json", ".jsonl", ".yaml", ".md", ".csv", ".txt")


def differences(wd: Path, ref: Path, roots: tuple | None = None) -> list[str]:
    """Where ``wd`` differs from the reference run ``ref`` (empty: identical results).

    Byte level: weights, checkpoints, curated arrays, images; text artefacts (JSON, YAML, report) too, once the
    run folder's own path is replaced by ``<run>`` (config.yaml and curate.json record it). Content level: npz
    members (the zip records write times), the index rows, provenance records (as a set, with no duplicate),
    train logs without their clock fields. ``roots``: the two run folders when ``wd``/``ref`` are subfolders.
    """
    root = dict(zip((wd, ref), roots or (wd, ref)))

    def text(p: Path, top: Path) -> str:
        return p.read_text().replace(str(root[top]), "<run>")

    out = []
    ref_files = {p.relative_to(ref) for p in ref.rglob("*") if p.is_file()}
    got_files = {p.relative_to(wd) for p in wd.rglob("*") if p.is_file()}
    if ref_files != got_files:
        out.append(f"files missing {sorted(map(str, ref_files - got_files))[:5]}, extra "
                   f"{sorted(map(str, got_files - ref_files))[:5]}")
    for rel in sorted(ref_files & got_files):
        a, b = wd / rel, ref / rel
        name = rel.name
        if name == "train_log.jsonl":
            same = _log(a) == _log(b)
        elif name.endswith(".jsonl"):
            la, lb = text(a, wd).splitlines(), text(b, ref).splitlines()
            same = sorted(la) == sorted(lb) and len(set(la)) == len(la)
        elif name.endswith(TEXT):
            same = text(a, wd) == text(b, ref)
        elif name.endswith(".npz"):
            za, zb = _npz(a), _npz(b)
            same = za.keys() == zb.keys() and all(np.array_equal(za[k], zb[k]) for k in za)
        elif name.endswith(".safetensors"):  # tensors and metadata (a file with several keys orders them at random)
            same = _safetensors(a) == _safetensors(b)
        elif name.endswith(".parquet"):
            rows = [json.dumps(Index(p).table.to_pylist(), sort_keys=True).replace(str(root[r]), "<run>")
                    for p, r in ((a, wd), (b, ref))]
            same = rows[0] == rows[1]
        else:
            same = a.read_bytes() == b.read_bytes()
        if not same:
            out.append(str(rel))
    return out
