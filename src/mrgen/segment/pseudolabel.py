"""Pseudo-labelling of the unannotated target items by a trained segmenter (a later engine round's labels).

The file format and the selection rule are :mod:`mrgen.pseudo`; :func:`label_targets` applies them with a
segmenter of :mod:`mrgen.segment` to the run's target train items.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.pseudo import SCHEMA, confidence, select, write


def label_targets(cfg, segmenter: str | Path, folder: str | Path) -> dict:
    """Label the run's unannotated target train items (:func:`mrgen.roles.assign` ``.target``) with the segmenter
    in ``segmenter`` and write the confident ones to ``folder`` (:func:`write`). Returns the record (``pseudo.json``).

    Raises when no item qualifies: a later round with no target pair would only repeat round 1."""
    from mrgen import devices
    from mrgen.autoencoder.data import load_item, open_index
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.nets.store import read_meta
    from mrgen.roles import assign
    from mrgen.segment import load_segmenter, predict_proba

    rows = sorted(assign(open_index(cfg), cfg).target, key=lambda r: r["id"])
    ctx = frozenset(context_values(cfg.workdir / "curated")) if cfg.controller.target_context else frozenset()
    model = load_segmenter(segmenter, devices.of(cfg))
    labelled, scores = {}, {}
    for r in rows:
        image, context = load_item(cfg, r, with_mask=bool(ctx), context=ctx)
        labels, score = confidence(predict_proba(model, image[0]), cfg.curate.min_label_pixels)
        if score is None:
            continue
        scores[r["id"]] = score
        labelled[r["id"]] = np.where(labels > 0, labels, context if context is not None else 0)
    kept = select(scores, cfg.rounds.keep_fraction, cfg.rounds.min_confidence)
    if not kept:
        raise ValueError(f"pseudo-labels: none of the {len(rows)} target items qualifies ({len(scores)} have predicted "
                         f"anatomy of >= curate.min_label_pixels={cfg.curate.min_label_pixels} pixels, none scores >= "
                         f"rounds.min_confidence={cfg.rounds.min_confidence}); lower rounds.min_confidence or set "
                         f"rounds.count=1 (the round-1 segmenter in {segmenter} finds no confident target anatomy)")
    record = {"schema": SCHEMA, "segmenter": str(segmenter), "segmenter_sha256": read_meta(segmenter).get("sha256", ""),
              "target_items": len(rows), "candidates": len(scores), "kept": len(kept),
              "keep_fraction": float(cfg.rounds.keep_fraction), "min_confidence": float(cfg.rounds.min_confidence),
              "score_threshold": min(scores[i] for i in kept),
              "score_quantiles": {q: float(np.quantile(list(scores.values()), q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
              "label_pixels": _label_pixels([labelled[i] for i in kept], ctx)}
    write(folder, {i: labelled[i] for i in kept}, {i: scores[i] for i in kept}, record)
    shown = {i: strip_context(labelled[i], ctx) for i in kept}  # a context label (BraTS' brain) would hide the image
    _preview(Path(folder) / "preview.png", cfg, {r["id"]: r for r in rows}, kept, shown, scores)
    return record


def _label_pixels(masks: list, context: frozenset) -> dict:
    values, counts = np.unique(np.concatenate([m.ravel() for m in masks]), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v and int(v) not in context}


def _preview(path: Path, cfg, rows: dict, kept: list, labelled: dict, scores: dict) -> None:
    """The six most and six least confident kept items with their pseudo-labels (2D: slices; 3D: mid slices)."""
    from mrgen.autoencoder.data import load_item
    from mrgen.figures import slice_grid

    order = sorted(kept, key=lambda i: (-scores[i], i))
    picks = {"most confident": order[:6], "least confident kept": order[::-1][:6]}

    def mid(a):
        a = np.asarray(a)
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    grid = [{"name": name, "slices": [(f"{scores[i]:.2f}", mid(load_item(cfg, rows[i])[0][0]), mid(labelled[i]))
                                      for i in ids]} for name, ids in picks.items() if ids]
    fig = slice_grid(grid, title=f"pseudo-labels: {len(kept)} of {len(rows)} target items kept (score = mean max softmax)")
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
