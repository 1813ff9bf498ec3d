"""Pseudo-labels of the unannotated target items: what a later engine round trains its controller on.

Round 1 of the engine never sees a target-modality image with a label: its controller learns the
target contrast from unannotated target items only. With ``rounds.count`` = 2 (issue 14's second engine
round) the segmenter trained on round 1's pairs labels the run's unannotated target train items
(:func:`label_targets`); the most confident of those become *target pairs* of the round-2 controller
(``controller.pseudo_labels``: :func:`mrgen.controller.batches.load_mix`), which then renders again.
No mask of a target or test subject is read: only the target items' images (and, as in round 1,
their context labels, e.g. BraTS' brain outline).

The file (:func:`write` is its one writer, :func:`read` its one reader), ``<folder>/labels.npz``:

* ``ids`` (str, k): the index row ids of the kept items, sorted;
* ``masks`` (uint8, k × item shape): the pseudo-label maps, stored labels 1..N where the segmenter
  predicts a label, else the item's context labels (0 where it has none);
* ``scores`` (float32, k): each item's confidence (below).

``<folder>/pseudo.json`` records how they were chosen; ``<folder>/preview.png`` shows the most and the
least confident kept items with their labels.

**Confidence and selection.** Per item, the segmenter's softmax ``p`` gives the label map
``argmax p``; an item whose predicted foreground has fewer than ``curate.min_label_pixels`` pixels is
not a candidate (nothing to teach). Its score is the mean of ``max p`` over the predicted foreground
pixels. The candidates are ranked by score (ties by id) and the best ``ceil(rounds.keep_fraction x
candidates)`` whose score is at least ``rounds.min_confidence`` are kept. The rest stay unannotated
target items of the controller, as in round 1.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from mrgen import io

FILE = "labels.npz"
RECORD = "pseudo.json"
SCHEMA = 1


def confidence(prob: np.ndarray, min_pixels: int) -> tuple[np.ndarray, float | None]:
    """``(labels, score)`` of one softmax ``prob`` ``(C, *S)``: the argmax label map and the mean max-probability
    over its foreground pixels; ``score`` is None when the foreground has fewer than ``min_pixels`` pixels."""
    prob = np.asarray(prob, np.float32)
    labels = prob.argmax(0).astype(np.int64)
    fg = labels > 0
    if int(fg.sum()) < max(1, int(min_pixels)):
        return labels, None
    return labels, float(prob.max(0)[fg].mean())


def select(scores: dict, keep_fraction: float, min_confidence: float) -> list[str]:
    """Ids kept from ``{id: score}`` (candidates only): the best ``ceil(keep_fraction x len)`` by score (ties by
    id) whose score is at least ``min_confidence``; sorted by id."""
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"rounds.keep_fraction must be in (0, 1], got {keep_fraction}")
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    top = ranked[: math.ceil(float(keep_fraction) * len(ranked))]
    return sorted(i for i in top if scores[i] >= float(min_confidence))


def label_targets(cfg, segmenter: str | Path, folder: str | Path) -> dict:
    """Label the run's unannotated target train items (:func:`mrgen.roles.assign` ``.target``) with the segmenter
    in ``segmenter`` and write the confident ones to ``folder`` (:func:`write`). Returns the record (``pseudo.json``).

    Raises when no item qualifies: a later round with no target pair would only repeat round 1."""
    from mrgen import devices
    from mrgen.autoencoder.data import load_item, open_index
    from mrgen.curate.labels import context_values
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
    _preview(Path(folder) / "preview.png", cfg, {r["id"]: r for r in rows}, kept, labelled, scores)
    return record


def _label_pixels(masks: list, context: frozenset) -> dict:
    values, counts = np.unique(np.concatenate([m.ravel() for m in masks]), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v and int(v) not in context}


def write(folder: str | Path, masks: dict, scores: dict, record: dict) -> Path:
    """The one writer: ``labels.npz`` (ids sorted) and ``pseudo.json`` in ``folder``; returns the npz path."""
    folder = Path(folder)
    ids = sorted(masks)
    path = folder / FILE
    io.write_npz(path, ids=np.array(ids, dtype=str), masks=np.stack([np.asarray(masks[i], np.uint8) for i in ids]),
                 scores=np.array([scores[i] for i in ids], np.float32))
    io.write_json(folder / RECORD, {**record, "file_sha256": io.file_hash(path)})
    return path


def read(path: str | Path) -> dict:
    """The one reader: ``{row id: int64 label map}`` of a ``labels.npz`` written by :func:`write`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"controller.pseudo_labels: {path} does not exist; it is written by a previous engine "
                                f"round (rounds.count >= 2) or by mrgen.pseudo.label_targets")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, masks = [str(i) for i in z["ids"]], z["masks"].astype(np.int64)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise io.corrupt(path, exc, "delete it and rerun the round that wrote it") from None
    if len(ids) != len(masks):
        raise io.corrupt(path, f"{len(ids)} ids but {len(masks)} masks", "delete it and rerun the round that wrote it")
    return dict(zip(ids, masks))


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
