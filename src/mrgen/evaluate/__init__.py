"""``mrgen evaluate segmenter``: 3D Dice / HD95 of segmenters on the real target test split,
and image-quality metrics (FD/KID with EfficientNet-Lite0 features, paired PSNR/SSIM) of the
kept synthetic images.

Public API: :func:`evaluate_segmenter` (reusable for any segmenter folder), :func:`image_quality`,
:func:`run` (the CLI stage) and the metrics in :mod:`mrgen.evaluate.metrics`.
"""

from __future__ import annotations

from mrgen import io
from mrgen.evaluate.metrics import dice_per_label, frechet_distance, hd95, kid, psnr, ssim
from mrgen.evaluate.segmentation import evaluate_segmenter

__all__ = ["run", "evaluate_segmenter", "image_quality", "features", "dice_per_label", "hd95", "psnr", "ssim",
           "frechet_distance", "kid", "label_names"]


def features(images, weights: str = "efficientnet-lite0", arch: str = "efficientnet-lite0"):
    from mrgen.evaluate.extractor import features as _f

    return _f(images, weights, arch)


def image_quality(cfg, max_images=None) -> dict:
    from mrgen.evaluate.quality import image_quality as _iq

    return _iq(cfg, max_images)


def label_names(workdir) -> dict:
    """``{value: name}`` over the datasets of ``curated/labels.json``."""
    from mrgen.export import run_labels

    return run_labels(workdir)


def run(cfg) -> dict:
    """Evaluate ``segment/<segment.name>`` (or, when absent, every trained segmenter of the run)
    into ``eval/<name>/``, plus ``eval/image_quality.json``; writes ``eval/summary.json``."""
    from mrgen.curate.index import Index
    from mrgen.roles import assign

    wd = cfg.workdir
    seg = wd / "segment"
    folders = [seg / cfg.segment.name] if (seg / cfg.segment.name / "model.safetensors").exists() else \
        sorted(f for f in seg.iterdir() if (f / "model.safetensors").exists()) if seg.exists() else []
    if not folders:
        raise FileNotFoundError(f"no trained segmenter under {seg}; run `mrgen segment train -w {wd}` first")
    rows = assign(Index(wd / "curated" / "index.parquet"), cfg).test
    labels = label_names(wd)
    summary = {}
    for f in folders:
        summary[f.name] = evaluate_segmenter(f, rows, wd / "curated", wd / "eval" / f.name, labels,
                                             cfg.evaluate.hd_percentile, cfg.evaluate.overlays)
    old = io.read_json(wd / "eval" / "summary.json") if (wd / "eval" / "summary.json").exists() else {}
    io.write_json(wd / "eval" / "summary.json", {**old, **summary})
    try:
        iq = image_quality(cfg)
    except (FileNotFoundError, ValueError) as exc:
        iq = {"skipped": str(exc)}
    out = {name: f"Dice {s['mean_dice']:.3f} ({s['volumes']} volumes) -> {wd / 'eval' / name}" for name, s in summary.items()}
    out["image_quality"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in iq.items() if k != "features"}
    return out
