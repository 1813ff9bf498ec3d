"""Training pairs for the segmenters: real curated pairs, the filter's kept synthetic pairs, random candidates.

The one reader of ``filter/kept.json`` (written by :mod:`mrgen.filter.stage`; schema in
``docs/artefacts.md``). Compatibility with older files lives here and nowhere else:
``kept.json`` of schema 0 (before the ``{"schema", "kept": [...]}`` layout) was a plain list of
``{key, candidate}`` records or a ``{key: [candidates]}`` mapping; both read as schema 1.

Images are float32 in [-1, 1], ``(H, W)`` or ``(Z, H, W)`` as the curated items; masks int64. A
mask's context labels (conditioning only, e.g. BraTS ``5: brain``) are background here unless a
caller asks to keep them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from mrgen import io
from mrgen.config import Config

KEPT = ("filter", "kept.json")
KEPT_SCHEMA = 1


def kept_file(workdir: str | Path) -> Path:
    return Path(workdir).joinpath(*KEPT)


def read_kept(workdir: str | Path) -> dict:
    """``filter/kept.json`` as schema 1: ``{"schema", "kept": [{key, candidate, ...}], ...}``."""
    path = kept_file(workdir)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `mrgen filter -w {Path(workdir)}` first")
    fix = f"delete it and rerun `mrgen filter -w {Path(workdir)}` (scores already computed are reused)"
    try:
        raw = io.read_json(path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise io.corrupt(path, exc, fix) from None
    if isinstance(raw, dict) and "kept" in raw:
        io.check_schema(raw.get("schema", KEPT_SCHEMA), path, KEPT_SCHEMA, fix)
        if not isinstance(raw["kept"], list) or not all(isinstance(k, dict) and {"key", "candidate"} <= set(k)
                                                        for k in raw["kept"]):
            raise io.corrupt(path, "'kept' must be a list of {key, candidate} records", fix)
        return raw
    if isinstance(raw, dict):  # schema 0: {key: [candidates]}
        records = [{"key": k, "candidate": int(c)} for k, cs in raw.items() for c in cs]
    else:  # schema 0: [{key, candidate}]
        records = [{"key": k["key"], "candidate": int(k["candidate"])} for k in raw]
    return {"schema": KEPT_SCHEMA, "kept": records}


def kept_pairs(workdir: str | Path) -> Iterator[tuple[dict, np.ndarray, np.ndarray, dict]]:
    """Yield ``(kept record, image, mask with context labels, provenance record)`` per kept candidate."""
    from mrgen.synthesize import load_candidates

    wd = Path(workdir)
    cache_key, cache = None, None
    for item in read_kept(wd)["kept"]:
        f = wd / "synth" / "candidates" / f"{item['key']}.npz"
        if f != cache_key:
            cache_key, cache = f, load_candidates(f)
        c = int(item["candidate"])
        meta = cache["meta"][c] if c < len(cache.get("meta", [])) else {}
        yield item, cache["images"][c], cache["mask"], meta


def kept_arrays(workdir: str | Path, kinds: tuple | None = None) -> tuple[list, list]:
    """The kept synthetic pairs (of the mask ``kinds``, default all: source / generated / morphed);
    context labels -> background."""
    from mrgen.curate.labels import context_values, strip_context

    drop = context_values(Path(workdir) / "curated")
    images, masks = [], []
    for _, image, mask, meta in kept_pairs(workdir):
        if kinds is not None and meta.get("mask_kind", "source") not in kinds:
            continue
        images.append(np.asarray(image, np.float32))
        masks.append(np.asarray(strip_context(mask, drop), np.int64))
    return images, masks


def random_candidates(workdir: str | Path, keep: int, rng: np.random.Generator) -> tuple[list, list]:
    """``keep`` random candidates per synthesized mask (no autofilter); context labels -> background."""
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.synthesize import load_candidates

    drop = context_values(Path(workdir) / "curated")
    images, masks = [], []
    for f in sorted((Path(workdir) / "synth" / "candidates").glob("*.npz")):
        c = load_candidates(f)
        pick = rng.choice(len(c["images"]), size=min(keep, len(c["images"])), replace=False)
        for i in sorted(int(x) for x in pick):
            images.append(np.asarray(c["images"][i], np.float32))
            masks.append(np.asarray(strip_context(c["mask"], drop), np.int64))
    return images, masks


def real_pairs(cfg: Config, rows: list[dict], keep_context: bool = False) -> tuple[list, list]:
    """Curated (image, mask) pairs of ``rows`` at the item shape; context labels -> background unless
    ``keep_context``."""
    from mrgen.curate.dataset import item_shape, load_row
    from mrgen.curate.labels import context_values

    root = cfg.workdir / "curated"
    drop = () if keep_context else tuple(sorted(context_values(root)))
    images, masks = [], []
    for r in rows:
        img, m = load_row(root, r, item_shape(cfg), drop_context=drop)
        images.append(img)
        masks.append(m)
    return images, masks


def pseudo_pairs(cfg: Config) -> tuple[list, list]:
    """The target items that ``controller.pseudo_labels`` labels (a later engine round, :mod:`mrgen.pseudo`) as
    segmenter pairs: the curated image and its pseudo-label, context labels -> background; ``([], [])`` without one."""
    from mrgen.curate.dataset import item_shape, load_row
    from mrgen.curate.index import Index
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.pseudo import read

    if not cfg.controller.pseudo_labels:
        return [], []
    given = read(cfg.controller.pseudo_labels)
    root = cfg.workdir / "curated"
    rows = {r["id"]: r for r in Index(root / "index.parquet").query(modality=cfg.run.target_modality) if r["id"] in given}
    missing = sorted(set(given) - set(rows))
    if missing:
        raise ValueError(f"{cfg.controller.pseudo_labels} labels {len(missing)} item(s) not in {root} (e.g. {missing[0]}); "
                         f"it belongs to another run: rerun the round that writes it")
    drop = context_values(root)
    images = [load_row(root, rows[i], item_shape(cfg), mask=False)[0] for i in sorted(given)]
    return images, [np.asarray(strip_context(given[i], drop), np.int64) for i in sorted(given)]


def engine_set(cfg: Config, synthetic: tuple[list, list], source: tuple[list, list],
               rng: np.random.Generator, pseudo: tuple[list, list] = ([], []), context=()) -> tuple[tuple[list, list], dict]:
    """The engine segmenter's training set (``segment.engine_set``) and its make-up ``{kind: pairs}``.

    ``synthetic``: the engine's pairs (the filter's kept ones); ``source``: the run's real annotated
    source-modality pairs. ``synthetic`` returns the synthetic pairs alone; ``source`` adds the source pairs;
    ``source+aug`` also adds ``segment.source_copies`` intensity-randomised copies of each source pair
    (:func:`mrgen.randomise.augment_intensity`, the ``intensity_aug`` baseline's draws, from ``rng``); ``source+dr``
    adds ``segment.source_copies`` SynthSeg-style images drawn from each source label map instead
    (:func:`mrgen.randomise.label_copies`, the ``domain_randomisation`` baseline's draws at its defaults, from ``rng``).
    ``source``'s masks may hold the ``context`` label values (e.g. BraTS' brain outline): background in the set,
    but ``source+dr`` draws them as intensity classes first, as the baseline does.
    ``pseudo`` (:func:`pseudo_pairs`, with ``segment.pseudo_pairs``): pseudo-labelled real target pairs, added after
    the synthetic ones whatever the kind.
    The one place that composes it: ``mrgen run``'s segment stage and ``mrgen bench``'s mrgen methods call it."""
    kind = cfg.segment.engine_set
    images, masks = list(synthetic[0]) + list(pseudo[0]), list(synthetic[1]) + list(pseudo[1])
    made = {"synthetic": len(synthetic[0]), **({"pseudo": len(pseudo[0])} if pseudo[0] else {})}
    if kind == "synthetic":
        return (images, masks), made
    from mrgen.curate.labels import strip_context

    src_masks = [strip_context(m, context) for m in source[1]]
    images += list(source[0])
    masks += src_masks
    made["source"] = len(source[0])
    if kind == "source+aug":
        from mrgen.randomise import intensity_copies

        for m, drawn in zip(src_masks, intensity_copies(source[0], cfg.segment.source_copies, rng)):
            images += drawn
            masks += [m] * len(drawn)
    elif kind == "source+dr":
        from mrgen.randomise import label_copies

        drawn_i, drawn_m = label_copies(source[1], cfg.segment.source_copies, rng, context)
        images += drawn_i
        masks += drawn_m
    if kind != "source":
        made["source_randomised"] = int(cfg.segment.source_copies) * len(source[0])
    return (images, masks), made
