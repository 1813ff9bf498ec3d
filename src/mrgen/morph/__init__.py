"""Declarative label-map edits (2D/3D, in mm) to simulate pathology: ``mrgen morph``.

Deterministic ops (:mod:`mrgen.morph.ops`), their random versions
(:class:`RandomEdit`), YAML recipes (:func:`load_recipe`, :func:`apply_recipe`), the
standalone ``mrgen morph`` on NIfTI files (:func:`morph_files`) and the morph stage of
``mrgen run`` on curated / generated label maps (:func:`morph_run_masks`). See ``docs/morph.md``.
"""

from mrgen.morph.core import MorphError, n_components, volumes_mm3
from mrgen.morph.masks import morph_run_masks
from mrgen.morph.ops import OPS, dilate, erode, grow_lesion, remap, remove, scale, target_volume
from mrgen.morph.randomize import RandomEdit
from mrgen.morph.recipe import Recipe, apply_recipe, load_recipe, parse_recipe
from mrgen.morph.stage import morph_files

__all__ = [
    "MorphError", "OPS", "RandomEdit", "Recipe", "apply_recipe", "dilate", "erode", "grow_lesion",
    "load_recipe", "morph_files", "morph_run_masks", "n_components", "parse_recipe", "remap", "remove", "scale",
    "target_volume", "volumes_mm3",
]
