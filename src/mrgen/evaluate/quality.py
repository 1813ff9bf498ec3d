"""Image quality of the kept synthetic set against real target-modality images.

* **FD-EffNetLite0 / KID-EffNetLite0** (unpaired): kept synthetic slices vs real target
  slices of the train split (the unannotated target data the engine learned from).
* **PSNR / SSIM** (paired, "when available"): a kept candidate whose source mask has a
  co-registered target-modality slice of the same subject (e.g. BraTS FLAIR masks → T1c) is
  compared with that real slice. Evaluation only: the engine never reads these pairs.
"""

from __future__ import annotations

import numpy as np

from mrgen import io
from mrgen.evaluate.extractor import features
from mrgen.evaluate.metrics import frechet_distance, kid, psnr, ssim


def axial_indices(arr: np.ndarray, per_volume: int = 8) -> list:
    """Indices of ``per_volume`` axial slices of a 3D volume, evenly spaced over the slices that hold the object
    (more than 10 % of the voxels above the background level, -0.9); the middle slice when none does."""
    filled = np.flatnonzero((arr > -0.9).reshape(len(arr), -1).mean(1) > 0.1)
    if not len(filled):
        return [len(arr) // 2]
    return [int(i) for i in np.unique(np.linspace(filled[0], filled[-1], min(per_volume, len(filled))).round().astype(int))]


def _slices(arr: np.ndarray, mask: np.ndarray | None = None, per_volume: int = 8) -> list:
    """2D images of an item: itself (2D), or for a 3D volume its :func:`axial_indices` slices."""
    if arr.ndim == 2:
        return [arr]
    return [arr[i] for i in axial_indices(arr, per_volume)]


def _paired_id(mask_id: str, target: str) -> str:
    parts = str(mask_id).split("/")
    if len(parts) >= 3:
        parts[2] = target
    return "/".join(parts)


def image_quality(cfg, max_images: int | None = None) -> dict:
    """FD/KID (and paired PSNR/SSIM when possible) of kept synthetic vs real target images."""
    from mrgen.curate.dataset import load_image
    from mrgen.curate.index import Index
    from mrgen.pairs import kept_pairs
    from mrgen.roles import assign, kind_of

    wd = cfg.workdir
    n_max = max_images or cfg.evaluate.max_images
    if not (wd / "filter" / "kept.json").exists():
        return {"skipped": "no filter/kept.json"}
    index = Index(wd / "curated" / "index.parquet")
    root = wd / "curated"
    synth, kept_meta = [], []
    for item, img, mask, meta in kept_pairs(wd):
        synth += _slices(np.asarray(img, np.float32), np.asarray(mask))
        kept_meta.append((item, img))
        if len(synth) >= n_max:
            break
    roles = assign(index, cfg)
    rng = np.random.default_rng(cfg.run.seed)
    tgt_rows = roles.target
    if len(tgt_rows) > n_max:
        tgt_rows = [tgt_rows[i] for i in sorted(rng.choice(len(tgt_rows), n_max, replace=False))]
    real = [s for r in tgt_rows for s in _slices(load_image(root, r)[0])]
    out: dict = {"synthetic_images": len(synth), "real_images": len(real)}
    if len(synth) >= 2 and len(real) >= 2:
        name = "EffNetLite0" if cfg.evaluate.features in ("", "efficientnet-lite0") else cfg.evaluate.features_arch
        fs = features(synth, cfg.evaluate.features, cfg.evaluate.features_arch)
        fr = features(real, cfg.evaluate.features, cfg.evaluate.features_arch)
        out[f"FD-{name}"] = frechet_distance(fs, fr)
        out[f"KID-{name}"] = kid(fs, fr)
        out["features"] = {"weights": cfg.evaluate.features, "arch": cfg.evaluate.features_arch, "dim": int(fs.shape[1])}
    # paired PSNR / SSIM against the co-registered real target slice, when the index has one
    if kind_of(cfg) == "slice":
        by_id = {r["id"]: r for r in index.query(kind="slice", modality=cfg.run.target_modality)}
        ps, ss = [], []
        for item, img in kept_meta:
            r = by_id.get(_paired_id(item.get("mask_id", ""), cfg.run.target_modality))
            if r is None:
                continue
            ref = load_image(root, r)[0]
            if ref.shape == np.asarray(img).shape:
                ps.append(psnr(img, ref))
                ss.append(ssim(img, ref))
        if ps:
            out.update({"paired": len(ps), "PSNR": float(np.mean(ps)), "SSIM": float(np.mean(ss))})
    io.write_json(wd / "eval" / "image_quality.json", {"schema": 1, **out})
    return out
