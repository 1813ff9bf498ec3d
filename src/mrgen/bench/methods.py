"""The benchmark's methods: each ``pairs(ctx) -> (images, masks)`` makes one segmenter's training set.

Every method's set goes to the same segmenter (``config.segment`` of the benchmark), so the
methods differ only in their training pairs:

* ``source_only`` — real annotated source-modality pairs (the floor);
* ``oracle`` — real annotated target-modality pairs of the fold's target subjects (the ceiling;
  these masks are never given to any other method);
* ``intensity_aug`` — source pairs plus ``copies`` strong intensity/contrast draws of each image
  (Bézier curves, inversion, gamma, bias field, blur/sharpen, noise; DualNorm/BigAug family);
* ``domain_randomisation`` — SynthSeg-style images drawn from the source label maps only;
* ``histogram_match`` — source images mapped onto the pooled intensity distribution of the
  unannotated target images (per source volume, foreground only);
* ``cyclegan`` — source images translated by a CycleGAN trained on unpaired source/target slices;
* ``mrgen`` / ``mrgen_synthetic`` / ``mrgen_nofilter`` / ``mrgen_notarget`` — the engine (see :mod:`mrgen.bench.engine`).

Images are float32 in [-1, 1] (2D ``(H, W)`` or 3D ``(Z, H, W)`` as the curated data), masks int64.
Masks never hold context labels (conditioning-only, e.g. BraTS ``5: brain``): they are background
for every segmenter. ``domain_randomisation`` alone draws its images from the label maps *with*
the context labels (one more intensity class, like SynthSeg's whole-brain label maps;
``context: false`` turns that off) and then returns the masks without them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mrgen.bench.context import Ctx
from mrgen.pairs import real_pairs


def volume_groups(rows: list) -> list[list[int]]:
    """Indices of ``rows`` grouped by volume (dataset, subject, modality), in order."""
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["dataset"], r["subject"], r["modality"]), []).append(i)
    return list(groups.values())


def _params(ctx: Ctx, defaults: dict, name: str) -> dict:
    p = {k: v for k, v in ctx.params.items() if k != "budget_cpu_min"}
    bad = set(p) - set(defaults)
    if bad:
        raise ValueError(f"{name}: unknown parameter(s) {sorted(bad)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **p}


# ----------------------------------------------------------------------------- methods


def source_only(ctx: Ctx) -> tuple[list, list]:
    _params(ctx, {}, "source_only")
    return ctx.source_pairs()


def oracle(ctx: Ctx) -> tuple[list, list]:
    _params(ctx, {}, "oracle")
    rows = ctx.oracle_rows()
    if not rows:
        raise ValueError("oracle: the fold's target rows have no masks; the oracle needs an annotated target series")
    return real_pairs(ctx.cfg, rows)


def intensity_aug(ctx: Ctx) -> tuple[list, list]:
    from mrgen.randomise import INTENSITY_DEFAULTS, intensity_copies

    p = _params(ctx, {"copies": 4, "include_original": True, **INTENSITY_DEFAULTS}, "intensity_aug")
    copies, keep = int(p.pop("copies")), bool(p.pop("include_original"))
    images, masks = ctx.source_pairs()
    out_i, out_m = [], []
    for img, m, drawn in zip(images, masks, intensity_copies(images, copies, ctx.rng("intensity_aug"), **p)):
        out_i += ([img] if keep else []) + drawn
        out_m += [m] * ((1 if keep else 0) + len(drawn))
    return out_i, out_m


def domain_randomisation(ctx: Ctx) -> tuple[list, list]:
    from mrgen.randomise import RANDOMISE_DEFAULTS, label_copies

    from mrgen.curate.labels import context_values

    p = _params(ctx, {"copies": 4, "context": True, **RANDOMISE_DEFAULTS}, "domain_randomisation")
    copies, use_context = int(p.pop("copies")), bool(p.pop("context"))
    images, masks = ctx.source_pairs(keep_context=use_context)  # context labels: generation classes only
    use_image = int(p["background_classes"]) > 0
    return label_copies(masks, copies, ctx.rng("domain_randomisation"), context_values(ctx.root),
                        images if use_image else None, **p)


def histogram_match(ctx: Ctx) -> tuple[list, list]:
    from mrgen.randomise import match_to_reference, pooled_reference

    p = _params(ctx, {"exclude_background": True, "per": "volume", "max_values": 2_000_000}, "histogram_match")
    if p["per"] not in ("volume", "image"):
        raise ValueError(f"histogram_match: per must be 'volume' or 'image', got {p['per']!r}")
    ref = pooled_reference(ctx.target_images(), ctx.rng("histogram_match"), int(p["max_values"]), bool(p["exclude_background"]))
    images, masks = ctx.source_pairs()
    groups = volume_groups(ctx.roles.source) if p["per"] == "volume" else [[i] for i in range(len(images))]
    out = list(images)
    for idx in groups:
        stack = np.stack([images[i] for i in idx])
        matched = match_to_reference(stack, ref, bool(p["exclude_background"]))
        for j, i in enumerate(idx):
            out[i] = matched[j]
    return out, masks


def cyclegan(ctx: Ctx) -> tuple[list, list]:
    from mrgen.bench.cyclegan import DEFAULTS, CycleGAN, slices_of

    p = _params(ctx, DEFAULTS, "cyclegan")
    if not ctx.params.get("budget_cpu_min"):
        p["budget_cpu_min"] = float(ctx.budget_cpu_min)
    images, masks = ctx.source_pairs()
    gan = CycleGAN(p, seed=int(ctx.seed) + int(getattr(ctx.fold, "index", 0)))
    info = gan.fit(slices_of(images), slices_of(ctx.target_images()), ctx.out / "cyclegan", log=ctx.log)
    ctx.compute["cyclegan"] = {"step": info["step"], "stopped": info["stopped"]}
    return gan.translate(images), masks


def _engine(variant: str) -> Callable:
    def method(ctx: Ctx) -> tuple[list, list]:
        from mrgen.bench.engine import engine_pairs

        return engine_pairs(ctx, variant)

    method.__name__ = variant
    method.__doc__ = f"The mrgen engine, variant {variant} (see mrgen.bench.engine)."
    return method


METHODS: dict[str, Callable] = {
    "source_only": source_only,
    "oracle": oracle,
    "intensity_aug": intensity_aug,
    "domain_randomisation": domain_randomisation,
    "histogram_match": histogram_match,
    "cyclegan": cyclegan,
    "mrgen": _engine("mrgen"),
    "mrgen_synthetic": _engine("mrgen_synthetic"),
    "mrgen_nofilter": _engine("mrgen_nofilter"),
    "mrgen_notarget": _engine("mrgen_notarget"),
}
ENGINE_METHODS = ("mrgen", "mrgen_synthetic", "mrgen_nofilter", "mrgen_notarget")
