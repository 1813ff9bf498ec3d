"""The image sets an audit compares, each a seeded subset of at most the ``audit.*`` sizes.

* **synthetic**: the filter's kept candidates (:func:`mrgen.pairs.kept_pairs`), with their conditioning
  masks (context labels -> background) and the key / candidate they came from.
* **training**: the engine's training images of the target modality: the target-modality rows of the
  autoencoder's and the LDM's training sets (:func:`mrgen.autoencoder.train_rows`,
  :func:`mrgen.ldm.ldm_rows`, i.e. :func:`mrgen.roles.assign`'s target side); in ``controller.mode=concat``
  (no autoencoder / LDM) the controller's target rows.
* **held-out**: the target-modality test rows (``roles.test``, never seen by the engine), with their masks.
* **target**: the real unannotated target rows (``roles.target``), the images the synthetic ones imitate.

Items keep their layout (``(H, W)`` or ``(Z, H, W)``); :func:`planes` gives the 2D images the pixel
comparisons use (a 3D item's axial slices through the object, as the FD of :mod:`mrgen.evaluate.quality`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrgen.config import Config


@dataclass
class ImageSet:
    name: str
    images: list = field(default_factory=list)  # float32 [-1, 1], item layout
    masks: list = field(default_factory=list)  # int64 label maps (zeros when unknown)
    ids: list = field(default_factory=list)  # curated row id, or "<key>#<candidate>" for synthetic items
    total: int = 0  # size of the set the subset was drawn from

    def __len__(self) -> int:
        return len(self.images)


def subset(n_total: int, n_max: int, rng: np.random.Generator) -> list:
    """Sorted indices of a seeded subset of at most ``n_max`` of ``range(n_total)``."""
    if n_total <= n_max:
        return list(range(n_total))
    return sorted(int(i) for i in rng.choice(n_total, n_max, replace=False))


def planes(images: list, masks: list | None = None) -> tuple[list, list, list]:
    """2D images, masks (empty without ``masks``) and the item each came from: a 2D item itself, a 3D item
    its axial slices through the object."""
    from mrgen.evaluate.quality import axial_indices

    out_i, out_m, owner = [], [], []
    for k, im in enumerate(images):
        im = np.asarray(im, np.float32)
        for z in ([None] if im.ndim == 2 else axial_indices(im)):
            out_i.append(im if z is None else im[z])
            owner.append(k)
            if masks is not None:
                out_m.append(np.asarray(masks[k]) if z is None else np.asarray(masks[k])[z])
    return out_i, out_m, owner


def synthetic(cfg: Config, rng: np.random.Generator, n_max: int | None = None) -> ImageSet:
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.pairs import kept_pairs, read_kept

    wd = cfg.workdir
    kept = read_kept(wd)["kept"]
    pick = set(subset(len(kept), cfg.audit.max_images if n_max is None else n_max, rng))
    drop = context_values(wd / "curated")
    out = ImageSet("synthetic", total=len(kept))
    for i, (item, image, mask, _meta) in enumerate(kept_pairs(wd)):
        if i in pick:
            out.images.append(np.asarray(image, np.float32))
            out.masks.append(np.asarray(strip_context(mask, drop), np.int64))
            out.ids.append(f"{item['key']}#{int(item['candidate'])}")
    return out


def training_rows(cfg: Config, roles) -> list:
    """The target-modality rows the engine trained its generative models on (see the module docstring)."""
    if cfg.controller.mode == "concat":
        rows = list(roles.target)
    else:
        from mrgen.autoencoder import train_rows
        from mrgen.ldm import ldm_rows

        rows = train_rows(cfg) + ldm_rows(cfg)
    target = cfg.run.target_modality
    return sorted({r["id"]: r for r in rows if r["modality"] == target}.values(), key=lambda r: r["id"])


def real(cfg: Config, name: str, rows: list, rng: np.random.Generator, with_masks: bool = False,
         n_max: int | None = None) -> ImageSet:
    """A seeded subset (``n_max``, default ``audit.max_real``, ``audit.max_reference`` for the training set) of
    curated ``rows``."""
    from mrgen.pairs import real_pairs

    if n_max is None:
        n_max = cfg.audit.max_reference if name == "training" else cfg.audit.max_real
    picked = [rows[i] for i in subset(len(rows), n_max, rng)]
    images, masks = real_pairs(cfg, picked)
    if not with_masks:
        masks = [np.zeros_like(m) for m in masks]
    return ImageSet(name, images, masks, [r["id"] for r in picked], len(rows))


def load_all(cfg: Config) -> dict:
    """``{synthetic, training, held_out, target}`` image sets of the run (each drawn with ``audit.seed``)."""
    from mrgen.curate.index import Index
    from mrgen.roles import assign

    roles = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg)
    seed = cfg.audit.seed
    return {
        "synthetic": synthetic(cfg, np.random.default_rng([seed, 0])),
        "training": real(cfg, "training", training_rows(cfg, roles), np.random.default_rng([seed, 1])),
        "held_out": real(cfg, "held_out", list(roles.test), np.random.default_rng([seed, 2]), with_masks=True),
        "target": real(cfg, "target", list(roles.target), np.random.default_rng([seed, 3])),
    }
