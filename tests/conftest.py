"""Shared test fixtures.

``tiny_index`` / :func:`build_tiny_index`: a curated index written directly in the
``docs/artefacts.md`` layout (``curated/index.parquet``, ``arrays/*.npy``, ``labels.json``), so
training-stage tests need neither the phantom nor the curate stage. Dataset ``toy``: subjects
``sub-0..3`` (``sub-3`` = test split), ``T1`` annotated (liver = 1, spleen = 2), ``T2`` unannotated.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrgen.config import load_config

TINY_LABELS = {1: "liver", 2: "spleen"}


@pytest.fixture(autouse=True)
def _no_nnunet_raw(monkeypatch):
    """A user's ``nnUNet_raw`` must not receive the tests' exports (mrgen export nnunet writes there when set)."""
    monkeypatch.delenv("nnUNet_raw", raising=False)
TINY_CONTRAST = {"T1": (-0.6, 0.5, 0.1), "T2": (-0.8, -0.2, 0.7)}  # background, liver, spleen


def _phantom_volume(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    z, x, y = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    c = size / 2 + rng.uniform(-1.5, 1.5, 2)
    mask = np.zeros((slices, size, size), np.uint8)
    r = size * (0.28 + 0.04 * np.sin(z / max(slices - 1, 1) * np.pi))
    mask[(x - c[0] + size * 0.1) ** 2 + (y - c[1]) ** 2 < r**2] = 1
    mask[(x - c[0] - size * 0.25) ** 2 + (y - c[1] - size * 0.2) ** 2 < (size * 0.12) ** 2] = 2
    return mask


def build_tiny_index(workdir: str | Path, subjects: int = 4, slices: int = 4, size: int = 16, seed: int = 0) -> Path:
    """Write a tiny curated index into ``<workdir>/curated``; returns that folder."""
    from mrgen.curate.index import write_index
    from mrgen.prompts import attributes, build_prompt

    root = Path(workdir) / "curated"
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(subjects):
        subject = f"sub-{s}"
        split = "test" if s == subjects - 1 else "train"
        mask = _phantom_volume(rng, slices, size)
        mask_rel = f"arrays/toy/{subject}_mask.npy"
        (root / "arrays" / "toy").mkdir(parents=True, exist_ok=True)
        np.save(root / mask_rel, mask)
        for mod, (bg, liver, spleen) in TINY_CONTRAST.items():
            img = np.choose(mask, [bg, liver, spleen]).astype(np.float32) + rng.normal(0, 0.05, mask.shape)
            img = np.clip(img, -1, 1).astype(np.float16)
            img_rel = f"arrays/toy/{subject}_{mod}.npy"
            np.save(root / img_rel, img)
            annotated = mod == "T1"
            base = {
                "dataset": "toy", "subject": subject, "modality": mod, "attributes": attributes(mod),
                "region": "upper_abdomen", "split": split, "has_mask": annotated, "image": img_rel,
                "mask": mask_rel if annotated else "", "orig_shape": [size, size, slices],
                "spacing": [1.5, 1.5, 5.0], "affine": np.diag([1.5, 1.5, 5.0, 1.0]).ravel().tolist(),
                "source": f"{subject}_{mod}.nii.gz", "mask_source": f"{subject}.nii.gz" if annotated else "",
            }
            vol_labels = sorted(int(v) for v in np.unique(mask) if v) if annotated else []
            organs = [TINY_LABELS[v] for v in vol_labels]
            rows.append({**base, "id": f"toy/{subject}/{mod}", "kind": "volume", "slice": -1, "labels": vol_labels,
                         "organs": organs, "prompt": build_prompt(mod, "upper_abdomen", organs),
                         "shape": [slices, size, size], "hash": f"v{s}{mod}"})
            for z in range(slices):
                labs = sorted(int(v) for v in np.unique(mask[z]) if v) if annotated else []
                org = [TINY_LABELS[v] for v in labs]
                rows.append({**base, "id": f"toy/{subject}/{mod}/z{z:04d}", "kind": "slice", "slice": z, "labels": labs,
                             "organs": org, "prompt": build_prompt(mod, "upper_abdomen", org),
                             "shape": [size, size], "hash": f"s{s}{mod}{z}"})
    write_index(root / "index.parquet", rows)
    (root / "labels.json").write_text(json.dumps({"toy": {str(k): v for k, v in TINY_LABELS.items()}}))
    (root / "curate.json").write_text(json.dumps({"rows": len(rows), "fixture": "tests/conftest.py:build_tiny_index"}))
    return root


@pytest.fixture
def tiny_index(tmp_path) -> Path:
    """A run folder holding a tiny 2D/3D curated index (see :func:`build_tiny_index`)."""
    build_tiny_index(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_config():
    """``tiny_config(workdir, *overrides)``: the ``tiny`` preset pointed at ``workdir``."""
    from mrgen.config import load_config

    def make(workdir, *overrides):
        return load_config("tiny", overrides=[f"run.workdir={workdir}", *overrides])

    return make


# ---- tiny nets (channels (8, 8), 16-px / 16³ images, norm groups 4), shared by tests/nets and tests/diffusion


def tiny_cfg(spatial_dims: int = 2, *overrides: str):
    return load_config("tiny", overrides=[f"data.spatial_dims={spatial_dims}", *overrides])


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05, skip: tuple = ()) -> torch.nn.Module:
    """Add seeded noise to every parameter (MONAI zero-inits output convs, making eps == 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in module.named_parameters():
            if not k.startswith(skip):
                p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


@pytest.fixture
def make_cfg():
    return tiny_cfg


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmark scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench_script():
    """``bench_script(name)`` -> the module of ``benchmarks/<name>.py`` (:func:`load_script`)."""
    return load_script


@pytest.fixture
def rand():
    return randomize


@pytest.fixture
def tiny_index_builder():
    """The :func:`build_tiny_index` function itself, for tests that need several fresh indexes."""
    return build_tiny_index


# ---- "the model learns" tests (tests/<stage>/test_<stage>_learns.py)


def loss_drop(folder: str | Path, last: int = 10) -> tuple[float, float]:
    """``(first, final)`` of ``<folder>/train_log.jsonl`` written with ``log_every=1``: the first step's
    loss (the untrained model) and the mean of the last ``last`` steps (one batch is noisy)."""
    losses = [json.loads(ln)["loss"] for ln in (Path(folder) / "train_log.jsonl").read_text().splitlines()]
    if len(losses) < last + 1:
        raise ValueError(f"{folder}: {len(losses)} logged steps, fewer than last={last} + 1; train with log_every=1")
    return losses[0], float(np.mean(losses[-last:]))


@pytest.fixture
def learned():
    """The :func:`loss_drop` function."""
    return loss_drop
