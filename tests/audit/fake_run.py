"""Test helper (imported by tests/audit/test_*.py): a run folder for the audit without any training: the tiny curated index (tests/conftest.py) plus
hand-written synthesize / filter outputs whose "synthetic" images include exact training images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrgen import io

# in-domain (T1 masks -> T1), so the held-out test split has masks: the baseline and the oracle view exist
OVERRIDES = ("run.target_modality=T1", "audit.max_images=16", "audit.max_reference=32", "audit.max_real=8",
             "audit.pairs=20", "audit.figure_pairs=3")
COPIES = ("toy/sub-0/T1/z0001", "toy/sub-1/T1/z0002", "toy/sub-2/T1/z0000")  # planted exact training images


def _smooth_noise(rng, size: int = 16) -> np.ndarray:
    from scipy import ndimage as ndi

    return np.clip(ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 2) * 3, -1, 1).astype(np.float32)


def write_fake_run(workdir, builder) -> dict:
    """Curated index + ``synth/candidates/{k0,k1}.npz`` + ``filter/{kept.json,scores.jsonl}``; returns the plan."""
    from mrgen.curate.dataset import load_row
    from mrgen.curate.index import Index

    builder(workdir)
    index = Index(workdir / "curated" / "index.parquet")
    by_id = {r["id"]: r for r in index.query(kind="slice")}
    rng = np.random.default_rng(0)
    copies = [load_row(workdir / "curated", by_id[i]) for i in COPIES]
    groups = {"k0": [copies[0], copies[1], (_smooth_noise(rng), copies[0][1])],
              "k1": [copies[2], (_smooth_noise(rng), copies[2][1])]}
    (workdir / "synth" / "candidates").mkdir(parents=True)
    kept, scores = [], []
    for key, items in groups.items():
        meta = [{"key": key, "mask_id": f"toy/sub-0/T1/z000{c}", "mask_kind": "source", "candidate": c, "seed": 100 + c,
                 "prompt": "T1 test", "sampler": {"ddim_steps": 3}, "checkpoints": {"ldm": "abc"}} for c in range(len(items))]
        np.savez(workdir / "synth" / "candidates" / f"{key}.npz", images=np.stack([im for im, _ in items]).astype(np.float16),
                 mask=items[0][1].astype(np.uint8), seeds=np.arange(len(items)), meta=np.array(json.dumps(meta)))
        for c in range(len(items)):
            kept.append({"key": key, "candidate": c, "mask_id": meta[c]["mask_id"], "seed": 100 + c})
            scores.append({"key": key, "candidate": c, "mean_iou": 0.9 - 0.1 * c, "mean_conf": 0.8})
    scores.append({"key": "k9", "candidate": 0, "mean_iou": 0.1, "mean_conf": 0.2})  # a rejected candidate
    io.write_json(workdir / "filter" / "kept.json", {"schema": 1, "scorer": "classical", "thresholds": {"mean_iou": 0.5},
                                                     "threshold_mode": "absolute", "selection": {"keep": 3},
                                                     "kept": kept, "summary": {"kept": 5, "candidates": 6, "masks": 3}})
    (workdir / "filter" / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    # the planted copies' ids, as the audit names kept items
    return {"copies": ["k0#0", "k0#1", "k1#0"], "new": ["k0#2", "k1#1"]}


def build_tiny_index(*args, **kwargs):
    """tests/conftest.py's ``build_tiny_index``, loaded by path: ``from conftest import ...`` finds whichever
    conftest.py is first on sys.path (tests/faults/ puts its own there in a full run)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "_mrgen_tests_root_conftest"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "conftest.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod.build_tiny_index(*args, **kwargs)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """``(cfg, plan)`` of a fresh fake run folder (one per test module)."""
    wd = tmp_path_factory.mktemp("audit_run")
    plan = write_fake_run(wd, build_tiny_index)
    from mrgen.config import load_config

    cfg = load_config("tiny", overrides=[f"run.workdir={wd}", *OVERRIDES])
    return cfg, plan
