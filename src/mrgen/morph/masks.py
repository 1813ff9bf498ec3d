"""Morphing inside ``mrgen run``: apply ``morph.recipe`` to the masks the engine renders.

``morph.apply_to=source`` morphs the annotated source masks, ``generated`` the label maps of
``mrgen labelgen``. Each mask gets ``morph.variants`` random draws; each draw is written to
``morph/labels/<key>_v<k>.npz`` (``mask`` in the curated item layout + ``meta``: id, origin
mask id, seed, recipe hash, drawn parameters, volumes), which ``mrgen synthesize`` renders when
``sample.masks`` includes ``morphed``. Distances are in mm: the voxel spacing of the curated
item layout is derived from the row's original spacing and shape (:func:`mrgen.labelmaps.item_spacing`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrgen import seeds
from mrgen.config import Config
from mrgen.labelmaps import label_names, load_labels, organs_in, save_labels
from mrgen.morph.core import MorphError
from mrgen.morph.recipe import apply_recipe, load_recipe
from mrgen.morph.stage import _json, recipe_hash

FOLDER = "morph"


def _inputs(cfg: Config) -> list[dict]:
    """``{id, region, organs, mask(), spacing}`` per mask to morph."""
    from mrgen.synthesize.masks import mask_items

    kind = cfg.morph.apply_to
    if kind not in ("source", "generated"):
        raise MorphError(f"morph.apply_to must be 'source' or 'generated', got '{kind}'")
    return mask_items(cfg, kinds=(kind,))


def morph_run_masks(cfg: Config) -> dict:
    """The morph stage of ``mrgen run``: ``morph.variants`` edits of every mask of ``morph.apply_to`` (module doc)."""
    if not cfg.morph.recipe:
        raise MorphError("morph.recipe is empty; give a YAML recipe, e.g. morph.recipe=ventriculomegaly")
    recipe = load_recipe(cfg.morph.recipe)
    rhash = recipe_hash(recipe)
    out = cfg.workdir / FOLDER / "labels"
    names = label_names(cfg.workdir)
    written = skipped = 0
    items = _inputs(cfg)
    for item in items:
        for k in range(cfg.morph.variants):
            key = f"{item['key']}_v{k}"
            seed = seeds.derive(cfg.morph.seed, item["id"], k)
            f = out / f"{key}.npz"
            if f.exists():
                old = load_labels(f)["meta"]
                if (old.get("seed"), old.get("recipe_hash"), old.get("origin_hash")) == (seed, rhash, item["hash"]):
                    skipped += 1
                    continue
            mask = item["load"]()
            try:
                new, record = apply_recipe(mask, item["spacing"], recipe, np.random.default_rng(seed))
            except MorphError as exc:
                raise MorphError(f"mask {item['id']}: {exc}") from None
            meta = {"id": f"morph/{key}", "kind": "morphed", "origin": item["id"], "origin_kind": item["kind"],
                    "origin_hash": item["hash"], "seed": seed, "recipe": recipe.name, "recipe_hash": rhash,
                    "region": item["region"], "organs": organs_in(new, names, cfg.curate.min_label_pixels),
                    "changed_voxels": int((new != mask).sum()), "record": record}
            save_labels(f, new, json.loads(json.dumps(meta, default=_json)))
            written += 1
    fig = figure(cfg, items)
    return {"masks": len(items), "variants": cfg.morph.variants, "written": written, "skipped": skipped,
            "figure": str(fig) if fig else ""}


def figure(cfg: Config, items: list[dict]) -> Path | None:
    """``morph/preview.png``: the first morphed mask before / after / changed, orthogonal views."""
    from mrgen.morph.preview import save_preview

    files = sorted((cfg.workdir / FOLDER / "labels").glob("*.npz"))
    if not files:
        return None
    rec = load_labels(files[0])
    src = next((i for i in items if i["id"] == rec["meta"]["origin"]), None)
    if src is None:
        return None
    before, after = src["load"](), rec["mask"]
    sp = src["spacing"]
    if before.ndim == 3:  # curated (Z, X, Y) -> (X, Y, Z) as the preview expects
        before, after, sp = before.transpose(1, 2, 0), after.transpose(1, 2, 0), (sp[1], sp[2], sp[0])
    return save_preview(before, after, sp, cfg.workdir / FOLDER / "preview.png",
                        title=f"{rec['meta']['recipe']}: {src['id']} (seed {rec['meta']['seed']})")
