"""Pseudo-labels of the unannotated target items: what a later engine round trains its controller on.

Round 1 of the engine never sees a target-modality image with a label: its controller learns the
target contrast from unannotated target items only. With ``rounds.count`` = 2 (issue 14's second engine
round) the segmenter trained on round 1's pairs labels the run's unannotated target train items
(:func:`mrgen.segment.pseudolabel.label_targets`); the most confident of those become *target pairs* of the round-2 controller
(``controller.pseudo_labels``: :func:`mrgen.controller.batches.load_mix`), which then renders again.
No mask of a target or test subject is read: only the target items' images (and, as in round 1,
their context labels, e.g. BraTS' brain outline).

The file (:func:`write` is its one writer, :func:`read` its one reader), ``<folder>/labels.npz``:

* ``ids`` (str, k): the index row ids of the kept items, sorted;
* ``masks`` (uint8, k × item shape): the pseudo-label maps, stored labels 1..N where the segmenter
  predicts a label, else the item's context labels (0 where it has none);
* ``scores`` (float32, k): each item's confidence (below).

``<folder>/pseudo.json`` records how they were chosen; ``<folder>/preview.png`` shows the most and the
least confident kept items with their labels. This module holds the file format and the selection rule and
imports no stage; the labelling itself (which needs a segmenter) is :mod:`mrgen.segment.pseudolabel`.

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


def write(folder: str | Path, masks: dict, scores: dict, record: dict) -> Path:
    """The one writer: ``labels.npz`` (ids sorted) and ``pseudo.json`` in ``folder``; returns the npz path."""
    folder = Path(folder)
    ids = sorted(masks)
    path = folder / FILE
    io.write_npz(path, ids=np.array(ids, dtype=str), masks=np.stack([np.asarray(masks[i], np.uint8) for i in ids]),
                 scores=np.array([scores[i] for i in ids], np.float32))
    io.write_json(folder / RECORD, {**record, "file_sha256": io.file_hash(path)})
    return path


def read(path: str | Path, with_scores: bool = False) -> dict | tuple[dict, dict]:
    """The one reader: ``{row id: int64 label map}`` of a ``labels.npz`` written by :func:`write` (``with_scores``:
    also ``{row id: score}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"controller.pseudo_labels: {path} does not exist; it is written by a previous engine "
                                f"round (rounds.count >= 2) or by mrgen.segment.pseudolabel.label_targets")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, masks, scores = [str(i) for i in z["ids"]], z["masks"].astype(np.int64), z["scores"].tolist()
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise io.corrupt(path, exc, "delete it and rerun the round that wrote it") from None
    if not len(ids) == len(masks) == len(scores):
        raise io.corrupt(path, f"{len(ids)} ids, {len(masks)} masks, {len(scores)} scores",
                         "delete it and rerun the round that wrote it")
    return (dict(zip(ids, masks)), dict(zip(ids, scores))) if with_scores else dict(zip(ids, masks))
