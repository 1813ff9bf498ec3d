"""``mrgen evaluate segmenter``: 3D Dice / HD95 of segmenters on the real target test split,
and image-quality metrics (FD/KID with EfficientNet-Lite0 features, paired PSNR/SSIM) of the
kept synthetic images.

Public API: :func:`evaluate_segmenter` (reusable for any segmenter folder), :func:`image_quality`,
:func:`run` (the CLI stage) and the metrics in :mod:`mrgen.evaluate.metrics`.
"""

from __future__ import annotations

from mrgen import devices, dist, io
from mrgen.evaluate.metrics import dice_per_label, frechet_distance, hd95, kid, psnr, ssim
from mrgen.evaluate.segmentation import evaluate_segmenter

__all__ = ["run", "evaluate_run", "evaluate_segmenter", "image_quality", "features", "dice_per_label", "hd95", "psnr", "ssim",
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


def evaluate_run(cfg, names: list | None = None) -> dict:
    """Evaluate the segmenters ``segment/<name>`` (default: every trained one) on the run's real target
    test volumes into ``eval/<name>/``; ``eval/summary.json`` (merged with earlier entries unless every
    segmenter is evaluated), ``eval/image_quality.json`` and ``report.md``. Returns the summary.

    Under ``accelerate launch`` the processes share each segmenter's test volumes; process 0 merges them, computes
    the image quality and writes the summary and report (:mod:`mrgen.dist`)."""
    from mrgen.curate.index import Index
    from mrgen.report import write_report
    from mrgen.roles import assign

    wd = cfg.workdir
    seg = wd / "segment"
    trained = sorted(f.name for f in seg.iterdir() if (f / "model.safetensors").exists()) if seg.exists() else []
    todo = [n for n in (names or trained) if n in trained]
    if not todo:
        raise FileNotFoundError(f"no trained segmenter {names or ''} under {seg}; run `mrgen segment train -w {wd}` first")
    rows = assign(Index(wd / "curated" / "index.parquet"), cfg).test
    labels = label_names(wd)
    procs = dist.processes(devices.of(cfg))
    summary = {n: evaluate_segmenter(seg / n, rows, wd / "curated", wd / "eval" / n, labels,
                                     cfg.evaluate.hd_percentile, cfg.evaluate.overlays, procs, device=devices.of(cfg)) for n in todo}

    def finish() -> dict:
        path = wd / "eval" / "summary.json"
        merged = {**io.read_json(path), **summary} if names and path.exists() else summary
        io.write_json(path, merged)
        try:
            iq = image_quality(cfg)  # FD / KID of kept synthetic vs real target images (axial slices in 3D)
        except (FileNotFoundError, ValueError) as exc:
            iq = {"skipped": str(exc)}
        io.write_json(wd / "eval" / "image_quality.json", {"schema": 1, **iq})
        write_report(cfg, merged, iq)
        return merged

    return procs.on_main(finish)


def run(cfg) -> dict:
    """``mrgen evaluate segmenter``: ``segment/<segment.name>`` when it exists, else every trained segmenter."""
    wd = cfg.workdir
    one = (wd / "segment" / cfg.segment.name / "model.safetensors").exists()
    summary = evaluate_run(cfg, [cfg.segment.name] if one else None)
    iq = io.read_json(wd / "eval" / "image_quality.json")
    out = {name: f"Dice {s['mean_dice']:.3f} ({s['volumes']} volumes) -> {wd / 'eval' / name}" for name, s in summary.items()}
    out["image_quality"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in iq.items() if k not in ("features", "schema")}
    return out
