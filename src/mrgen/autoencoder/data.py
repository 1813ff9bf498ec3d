"""Training items for the generative stages (shared by autoencoder, ldm and controller).

Items are curated rows loaded once into memory (float16 images, uint8 masks) when they fit in
``PRELOAD_BYTES``, else read per batch from the memory-mapped arrays. 2D: slice rows,
``(1, H, W)``. 3D: volume rows resampled to ``(1, depth, size, size)``, i.e. the stored
``(Z, H, W)`` layout; masks, latents and generated images keep that layout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrgen.config import Config
from mrgen.curate.dataset import item_shape, load_row  # item_shape: ldm, controller, labelgen import it from here

PRELOAD_BYTES = 2 << 30


def curated_root(cfg: Config) -> Path:
    return cfg.workdir / "curated"


def open_index(cfg: Config):
    from mrgen.curate.index import Index

    return Index(curated_root(cfg) / "index.parquet")


def kind_of(cfg: Config) -> str:
    return "slice" if cfg.data.spatial_dims == 2 else "volume"


def label_names(cfg: Config) -> list[str]:
    """Every label name of the curated run, sorted (organ words for the text vocabulary); ``[]`` before curation."""
    from mrgen.labelmaps import dataset_names

    return sorted({n for d in dataset_names(curated_root(cfg)).values() for n in d.values()})


def n_labels(cfg: Config) -> int:
    """Largest label value the curated masks may hold, context labels included (the generator is
    conditioned on them too): :func:`mrgen.curate.labels.n_labels`, refused when there are no labels."""
    from mrgen.curate.labels import n_labels as largest_label

    k = largest_label(curated_root(cfg))
    if not k:
        raise ValueError(f"{curated_root(cfg) / 'labels.json'} lists no labels; the manifest needs a labels: mapping "
                         "for the annotated series")
    return k


def data_hash(rows: list[dict], cfg: Config, *extra: str) -> str:
    """Hash of the item set (ids + content hashes) and the item shape."""
    h = hashlib.sha256(json.dumps([cfg.data.spatial_dims, list(item_shape(cfg)), *extra]).encode())
    for r in sorted(rows, key=lambda r: r["id"]):
        h.update(f"{r['id']}|{r.get('hash', '')}\n".encode())
    return h.hexdigest()[:16]


def no_organ_prompt(row: dict) -> str:
    from mrgen.prompts import build_prompt

    return build_prompt(row["modality"], row.get("region") or None, [], drop_organs=True)


def load_item(cfg: Config, row: dict, with_mask: bool = False, context: frozenset = frozenset(),
              with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``image`` float32 ``(1, *item_shape)`` (None without ``with_image``), ``mask`` int64 ``item_shape``
    (zeros if unannotated; with ``context`` values, only those context labels:
    :func:`mrgen.curate.labels.context_only`). See :func:`mrgen.curate.dataset.load_row`."""
    img, mask = load_row(curated_root(cfg), row, item_shape(cfg), image=with_image, mask=with_mask,
                         only_context=context)
    return (img[None] if img is not None else None), mask


class Items:
    """``rows`` as tensors: ``images(idx)`` float32 ``(k, 1, *shape)``, ``masks(idx)`` long ``(k, *shape)``
    (``given``: label maps by row id that replace those rows' own masks, e.g. a later round's pseudo-labels).

    Images and masks are loaded separately, on their first use: a caller that only needs masks
    (the controller once the latents are cached) never reads the images."""

    def __init__(self, cfg: Config, rows: list[dict], with_mask: bool = False, context: frozenset = frozenset(),
                 given: dict | None = None):
        self.cfg, self.rows, self.with_mask, self.context = cfg, list(rows), with_mask, frozenset(context)
        self.given = dict(given or {})  # row id -> a label map at the item shape that replaces the row's own mask
        self.preload = len(self.rows) * int(np.prod(item_shape(cfg))) * 3 <= PRELOAD_BYTES
        self._img = self._mask = None

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_item(self.cfg, self.rows[i])[0])

    def _mask_of(self, i: int) -> torch.Tensor:
        given = self.given.get(self.rows[i]["id"])
        if given is not None:
            return torch.as_tensor(np.asarray(given, np.int64))
        return torch.from_numpy(load_item(self.cfg, self.rows[i], True, self.context, with_image=False)[1])

    def images(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if not self.preload or not self.rows:
            return torch.stack([self._image(i) for i in idx.tolist()])
        if self._img is None:  # first use: every image, once
            self._img = torch.stack([self._image(i).half() for i in range(len(self.rows))])
        return self._img[idx].float()

    def masks(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if not self.with_mask:
            return torch.zeros((len(idx), *item_shape(self.cfg)), dtype=torch.long)
        if not self.preload or not self.rows:
            return torch.stack([self._mask_of(i) for i in idx.tolist()])
        if self._mask is None:  # first use: every mask, once, without reading an image
            self._mask = torch.stack([self._mask_of(i).to(torch.uint8) for i in range(len(self.rows))])
        return self._mask[idx].long()


def target_items(cfg: Config, rows: list[dict]) -> Items:
    """The controller's unannotated target items. With ``controller.target_context`` and context
    labels in the run (BraTS: the brain outline), each carries only its context labels
    (:func:`mrgen.curate.labels.context_only`: segmentation labels are never seen, their voxels
    take the surrounding context label); otherwise an all-zero mask, as in MRGen."""
    from mrgen.curate.labels import context_values

    ctx = frozenset(context_values(curated_root(cfg))) if cfg.controller.target_context else frozenset()
    return Items(cfg, rows, with_mask=bool(ctx), context=ctx)


# ----------------------------------------------------------------------------- augmentation (draw, then apply)

FLIP_ROT_OPS = ("h-flip", "v-flip", "rot180", "rot90", "rot270")  # op codes 0..4; -1 = unchanged


@dataclass(frozen=True)
class FlipRotParams:
    """``op`` long ``(B,)``: per item, -1 (unchanged) or an index into :data:`FLIP_ROT_OPS`."""

    op: torch.Tensor


def draw_flip_rot_params(generator: torch.Generator, shape: tuple, prob: float) -> FlipRotParams:
    """Per item of a batch of ``shape`` ``(B, C, *spatial)``, with probability ``prob``, one of the five
    in-plane ops, uniformly; 90/270° rotations only when the plane (last two axes) is square."""
    b, square = int(shape[0]), shape[-1] == shape[-2]
    apply = torch.rand(b, generator=generator) < prob
    choice = torch.randint(0, 5 if square else 3, (b,), generator=generator)
    return FlipRotParams(torch.where(apply, choice, torch.full_like(choice, -1)))


def apply_flip_rot(x: torch.Tensor, params: FlipRotParams) -> torch.Tensor:
    """``x`` ``(B, C, *spatial)`` with each item's op applied to its last two axes (depth order stays)."""
    ops = params.op.tolist()
    if len(ops) != x.shape[0]:
        raise ValueError(f"flip/rot params hold {len(ops)} items but the batch has {x.shape[0]}; draw them for this batch")
    if x.shape[-1] != x.shape[-2] and any(c >= 3 for c in ops):
        raise ValueError(f"90/270° rotations need square planes, got {tuple(x.shape[-2:])}; draw the params for this shape")
    x = x.clone()
    for i, c in enumerate(ops):
        if c == 0:
            x[i] = x[i].flip(-1)
        elif c == 1:
            x[i] = x[i].flip(-2)
        elif c == 2:
            x[i] = x[i].rot90(2, (-2, -1))
        elif c > 2:
            x[i] = x[i].rot90(1 if c == 3 else 3, (-2, -1))
    return x


def augment(x: torch.Tensor, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, FlipRotParams]:
    """Per item, with probability ``prob``: one of h-flip, v-flip, 90/180/270° rotation (in-plane, last two axes).

    ``x`` ``(B, C, *spatial)``; returns the augmented batch and the drawn :class:`FlipRotParams`
    (``apply_flip_rot(x, params)`` gives the same batch). Draws only from ``generator``.
    """
    params = draw_flip_rot_params(generator, tuple(x.shape), prob)
    return apply_flip_rot(x, params), params
