"""What a benchmark method gets for one fold: :class:`Ctx` (config, roles, folder, parameters, seeds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mrgen import seeds
from mrgen.bench.spec import Fold, Spec
from mrgen.config import Config
from mrgen.roles import Roles


@dataclass
class Ctx:
    cfg: Config  # the benchmark config for this fold (run.*_subjects set); cfg.workdir holds curated/
    roles: Roles  # mrgen.roles.assign after the fold's z ranges
    out: Path  # this (fold, method) folder, for the method's own files
    params: dict = field(default_factory=dict)
    seed: int = 0
    fold: Fold | None = None
    spec: Spec | None = None  # the mrgen* methods need it
    budget_cpu_min: float = 0.0
    log: Callable = print
    compute: dict = field(default_factory=dict)  # phases a method ran or reused, e.g. engine stages

    @property
    def root(self) -> Path:
        return self.cfg.workdir / "curated"

    def rng(self, salt: str = "") -> np.random.Generator:
        """The method's numpy generator: one seed per (benchmark seed, fold, salt), :func:`mrgen.seeds.derive`."""
        return np.random.default_rng(seeds.derive(self.seed, self.fold.index if self.fold else 0, salt))

    def source_pairs(self, keep_context: bool = False) -> tuple[list, list]:
        from mrgen.pairs import real_pairs

        return real_pairs(self.cfg, self.roles.source, keep_context)

    def oracle_rows(self) -> list:
        return [r for r in self.roles.target if r["has_mask"]]

    def target_images(self) -> list:
        """Unannotated target images (their masks, if any, are never read)."""
        from mrgen.curate.dataset import item_shape, load_row

        return [load_row(self.root, r, item_shape(self.cfg), mask=False)[0] for r in self.roles.target]
