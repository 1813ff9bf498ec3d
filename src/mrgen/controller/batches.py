"""The controller stage's training data, shared by both renderers (``controller.mode`` controlnet and concat).

:func:`load_mix` splits the index into annotated source items (WITH masks) and target-modality
items (:func:`mrgen.autoencoder.data.target_items`: an all-zero or context-only mask, their
segmentation labels are never read); :func:`mixed_batch` draws one step's batch from the two
:class:`Side` s: ``round(size * controller.target_fraction)`` target items after the source items,
prompts dropped to the empty prompt with probability ``ldm.prompt_dropout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mrgen.autoencoder.data import Items, n_labels, no_organ_prompt, open_index, target_items
from mrgen.config import Config


@dataclass(frozen=True)
class Side:
    """One side of the mix, indexed by item: ``fields(idx)`` -> a tuple of per-item tensors ``(k, ...)``
    (images, or the latent posterior's mu and sigma), ``masks(idx)`` -> label maps ``(k, *S)`` long,
    ``ids`` prompt ids ``(n_items,)`` long (:meth:`mrgen.ldm.Conditioner.ids`)."""

    fields: Callable[[torch.Tensor], tuple]
    masks: Callable[[torch.Tensor], torch.Tensor]
    ids: torch.Tensor


@dataclass(frozen=True)
class Mix:
    """The two roles of the controller stage (rows sorted by id) and their items."""

    src: list[dict]  # annotated source-modality train rows (then a later round's pseudo-labelled target rows)
    tgt: list[dict]  # target-modality train rows, used without their segmentation labels
    src_items: Items  # with masks
    tgt_items: Items  # all-zero or context-only masks
    labels: int  # number of segmentation labels (mask values 1..labels)
    prompts: dict = field(default_factory=dict)  # row id -> prompt replacing the row's own (pseudo-labelled rows)

    @property
    def src_prompts(self) -> list[str]:
        return [self.prompts.get(r["id"], r["prompt"]) for r in self.src]

    @property
    def pseudo(self) -> int:
        """How many target rows carry pseudo-labels (``controller.pseudo_labels``)."""
        return len(self.prompts)

    @property
    def tgt_prompts(self) -> list[str]:
        return [no_organ_prompt(r) for r in self.tgt]

    def sides(self, cond, src_fields: Callable, tgt_fields: Callable) -> tuple[Side, Side]:
        """Source and target :class:`Side` with prompt ids from ``cond`` (a :class:`mrgen.ldm.Conditioner`)."""
        return (Side(src_fields, self.src_items.masks, cond.ids(self.src_prompts)),
                Side(tgt_fields, self.tgt_items.masks, cond.ids(self.tgt_prompts)))


def load_mix(cfg: Config) -> Mix:
    """Source and target rows of :func:`mrgen.roles.assign`; reads no image or mask yet.

    With ``controller.pseudo_labels`` (a later engine round, :mod:`mrgen.pseudo`) the target rows it labels join
    the annotated side after the source rows: their masks are the pseudo-labels, their prompts name the organs those
    hold (with the target modality); the other target rows stay unannotated."""
    from mrgen.roles import assign

    roles = assign(open_index(cfg), cfg)
    src = sorted(roles.source, key=lambda r: r["id"])
    tgt = sorted(roles.target, key=lambda r: r["id"])
    given, prompts = _pseudo(cfg, tgt)
    labelled = [r for r in tgt if r["id"] in given]
    tgt = [r for r in tgt if r["id"] not in given]
    src_items = Items(cfg, src + labelled, with_mask=True, given=given)
    return Mix(src + labelled, tgt, src_items, target_items(cfg, tgt), n_labels(cfg), prompts)


def _pseudo(cfg: Config, target_rows: list[dict]) -> tuple[dict, dict]:
    """``({row id: pseudo-label map}, {row id: prompt})`` of ``controller.pseudo_labels`` (empty without one)."""
    if not cfg.controller.pseudo_labels:
        return {}, {}
    from mrgen.autoencoder.data import curated_root
    from mrgen.labelmaps import label_names, organs_in
    from mrgen.prompts import build_prompt
    from mrgen.pseudo import read

    given = read(cfg.controller.pseudo_labels)
    rows = {r["id"]: r for r in target_rows}
    stray = sorted(set(given) - set(rows))
    if stray:
        raise ValueError(f"controller.pseudo_labels {cfg.controller.pseudo_labels} labels {len(stray)} item(s) that are "
                         f"not target items of this run (e.g. {stray[0]}); it belongs to another run or fold: rerun the "
                         f"round that writes it")
    names = label_names(curated_root(cfg))
    prompts = {i: build_prompt(rows[i]["modality"], rows[i].get("region") or None,
                               organs_in(m, names, cfg.curate.min_label_pixels)) for i, m in given.items()}
    return given, prompts


def _first(*fields: torch.Tensor) -> torch.Tensor:
    return fields[0]


def mixed_batch(draw, source: Side, target: Side, target_fraction: float, prompt_dropout: float, mask_encoding: str,
                n_labels: int, combine: Callable = _first, target_mask: str = "background") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch of ``draw.size`` items (``draw``: :class:`mrgen.train.Draw`).

    ``k = round(draw.size * target_fraction)`` target items (0 if ``target`` has none) follow
    ``draw.size - k`` source items; indices are drawn with ``salt=1`` (source) and ``salt=2`` (target).
    Returns ``(x, ids, cond)``: ``x = combine(*fields)`` of the concatenated fields (default: the first),
    ``ids`` ``(size,)`` after :func:`mrgen.ldm.drop_prompts`, ``cond`` the encoded masks ``(size, M, *S)``; with
    ``target_mask="unknown"`` the target items' unannotated pixels encode as no class (:func:`mrgen.nets.unknown_unannotated`).
    Global RNG: whatever ``combine`` draws, then ``torch.rand(size)`` for the dropout, in that order.
    """
    from mrgen.ldm import drop_prompts
    from mrgen.nets import encode_mask, unknown_unannotated

    if not 0.0 <= float(target_fraction) <= 1.0:
        raise ValueError(f"controller.target_fraction must lie in [0, 1] (share of target items per batch), got {target_fraction}")
    k_tgt = int(round(draw.size * float(target_fraction))) if len(target.ids) else 0
    i_s = draw(len(source.ids), draw.size - k_tgt, salt=1)
    parts = [(source, i_s)] + ([(target, draw(len(target.ids), k_tgt, salt=2))] if k_tgt else [])
    x = combine(*(torch.cat(col) for col in zip(*(side.fields(i) for side, i in parts))))
    masks = torch.cat([side.masks(i) for side, i in parts])
    ids = drop_prompts(torch.cat([side.ids[i] for side, i in parts]), prompt_dropout)
    cond = encode_mask(masks, mask_encoding, n_labels)
    if target_mask == "unknown" and k_tgt:
        cond = torch.cat([cond[:-k_tgt], unknown_unannotated(masks[-k_tgt:], cond[-k_tgt:])])
    return x, ids, cond
