"""The label maps ``mrgen synthesize`` renders (``sample.masks``).

* ``source``: the annotated source-modality masks of the curated index (:func:`source_masks`);
* ``generated``: label maps from ``mrgen labelgen`` (``labelgen/labels/*.npz``);
* ``morphed``: label maps edited by the run's ``morph.recipe`` (``morph/labels/*.npz``).

Every item is a dict ``{id, key, kind, region, organs, hash, spacing, load}``; ``load()`` gives
the mask in the curated item layout (``(H, W)`` or ``(Z, H, W)``), int64. A source item also has
``image()``: its source image in that layout, float32 in [-1, 1] (the SDEdit start, ``sample.strength``).
"""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np

from mrgen.config import Config

FOLDERS = {"generated": ("labelgen", "labels"), "morphed": ("morph", "labels")}


def mask_key(mask_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", mask_id).strip("_")


def source_masks(index, cfg: Config) -> list[dict]:
    """Source rows whose mask holds at least one organ, subsampled to ``sample.max_masks`` (seeded); the
    source rows of ``sample.subjects`` instead of ``run.source_subjects`` when it is set."""
    import dataclasses

    from mrgen.roles import assign

    if cfg.sample.subjects:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, source_subjects=tuple(cfg.sample.subjects)))
    rows = [r for r in assign(index, cfg).source if r["organs"]]
    rows.sort(key=lambda r: r["id"])
    if cfg.sample.max_masks and len(rows) > cfg.sample.max_masks:
        rng = random.Random(cfg.sample.seed)
        rows = sorted(rng.sample(rows, cfg.sample.max_masks), key=lambda r: r["id"])
    return rows


def load_row_mask(cfg: Config, row: dict) -> np.ndarray:
    """The mask of curated ``row`` in the item shape (``(H, W)`` or ``(Z, H, W)``), int64."""
    from mrgen.curate.dataset import item_shape, load_row

    return load_row(cfg.workdir / "curated", row, item_shape(cfg), image=False)[1]


def load_row_image(cfg: Config, row: dict) -> np.ndarray:
    """The image of curated ``row`` in the item shape, float32 in [-1, 1]."""
    from mrgen.curate.dataset import item_shape, load_row

    return load_row(cfg.workdir / "curated", row, item_shape(cfg), mask=False)[0]


def _file_items(cfg: Config, kind: str) -> list[dict]:
    from mrgen.labelmaps import load_labels

    folder = cfg.workdir.joinpath(*FOLDERS[kind])
    items = []
    for f in sorted(folder.glob("*.npz")):
        meta = load_labels(f)["meta"]
        items.append({"id": meta["id"], "key": mask_key(meta["id"]), "kind": kind, "region": meta.get("region", ""),
                      "organs": list(meta.get("organs", [])), "hash": hashlib.sha256(f.read_bytes()).hexdigest()[:16],
                      "spacing": tuple(meta.get("spacing") or meta.get("record", {}).get("spacing") or ()), "file": str(f),
                      "origin": meta, "load": (lambda f=f: load_labels(f)["mask"])})
    return [i for i in items if i["organs"]]


def mask_items(cfg: Config, index=None, kinds: tuple | None = None) -> list[dict]:
    """The masks of ``kinds`` (default ``sample.masks``), source first, each sorted by id."""
    from mrgen.curate.index import Index
    from mrgen.labelmaps import item_spacing

    kinds = tuple(kinds or cfg.sample.masks)
    out: list[dict] = []
    if "source" in kinds:
        index = index or Index(cfg.workdir / "curated" / "index.parquet")
        for r in source_masks(index, cfg):
            out.append({"id": r["id"], "key": mask_key(r["id"]), "kind": "source", "region": r["region"] or "",
                        "organs": list(r["organs"]), "hash": r.get("hash", ""), "spacing": item_spacing(cfg, r),
                        "row": r, "load": (lambda r=r: load_row_mask(cfg, r)), "image": (lambda r=r: load_row_image(cfg, r))})
    for kind in ("generated", "morphed"):
        if kind in kinds:
            found = _file_items(cfg, kind)
            if not found:
                step = "mrgen labelgen" if kind == "generated" else "the morph stage of mrgen run"
                raise FileNotFoundError(f"sample.masks includes '{kind}' but {cfg.workdir.joinpath(*FOLDERS[kind])} "
                                        f"holds no label maps with organs; run {step} first")
            out += found
    return out


def find_item(cfg: Config, mask_id: str) -> dict:
    for kinds in (("source",), ("generated",), ("morphed",)):
        try:
            for item in mask_items(cfg, kinds=kinds):
                if item["id"] == mask_id:
                    return item
        except FileNotFoundError:
            continue
    raise ValueError(f"mask {mask_id} is neither in the curated index nor among the generated/morphed label maps; "
                     "re-curate the same data or rerun labelgen/morph")
