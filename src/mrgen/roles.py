"""Which curated rows play which role in a cross-modality run.

* **source**: the annotated modality (``run.source_modality``), train split, with masks.
* **target**: the unannotated modality (``run.target_modality``), train split; its masks,
  if the data has any, are never read by the engine.
* **test**: the target modality, test split, with masks (evaluation only).

With ``run.disjoint_subjects`` (default) a subject that has both modalities in the train
split is given to the source side or the target side, never both, so the engine cannot
profit from two co-registered series of one subject (the BraTS benchmark's rule).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from mrgen.config import Config


@dataclass
class Roles:
    source: list = field(default_factory=list)
    target: list = field(default_factory=list)
    # the test rows, or a function that finds them: stages that use no test row never read the test settings
    _test: list | Callable = field(default_factory=list)

    @property
    def test(self) -> list:
        if callable(self._test):
            self._test = self._test()
        return self._test

    @test.setter
    def test(self, rows: list) -> None:
        self._test = rows


def kind_of(cfg: Config) -> str:
    return "slice" if cfg.data.spatial_dims == 2 else "volume"


def unseen_tests(rows: list, cfg: Config) -> list:
    """``rows`` without those of the explicit test subjects (``run.test_subjects``: a benchmark fold). A fold chooses
    its test subjects whatever the curated split says, so train-split rows of a test subject exist; the engine's
    unannotated training sets (autoencoder, LDM) drop them, every modality of them: no image of a test subject is
    ever trained on."""
    tests = set(map(str, cfg.run.test_subjects))
    return [r for r in rows if str(r["subject"]) not in tests] if tests else list(rows)


def _in(rows: list, datasets: tuple) -> list:
    return [r for r in rows if not datasets or r["dataset"] in datasets]


def assign(index, cfg: Config) -> Roles:
    """Split the index into source / target / test rows (see module docstring)."""
    kind = kind_of(cfg)
    r = cfg.run

    def pick(modality, subjects, split, datasets, **kw):
        if subjects:  # explicit fold: subjects decide, the curated split does not
            rows = index.query(kind=kind, modality=modality, **kw)
            return _in([x for x in rows if x["subject"] in set(map(str, subjects))], datasets)
        return _in(index.query(kind=kind, modality=modality, split=split, **kw), datasets)

    src = pick(r.source_modality, r.source_subjects, "train", r.source_datasets, has_mask=True)
    tgt = pick(r.target_modality, r.target_subjects, "train", r.target_datasets)
    if not src:
        raise ValueError(
            f"no annotated {cfg.run.source_modality} rows in the train split; check run.source_modality and that the "
            f"manifest gives that series a masks: pattern"
        )
    if not tgt:
        raise ValueError(f"no {cfg.run.target_modality} rows in the train split; check run.target_modality and the manifest")
    if cfg.run.disjoint_subjects:
        key = lambda r: (r["dataset"], r["subject"])  # noqa: E731
        shared = sorted({key(r) for r in src} & {key(r) for r in tgt})
        if shared:
            rng = random.Random(cfg.run.seed)
            rng.shuffle(shared)
            to_target = set(shared[: len(shared) // 2])
            to_source = set(shared) - to_target
            if not to_source and to_target:  # one shared subject only: keep the annotated side
                to_source, to_target = to_target, set()
            src = [r for r in src if key(r) not in to_target]
            tgt = [r for r in tgt if key(r) not in to_source]
    return Roles(src, tgt, lambda: pick(r.target_modality, r.test_subjects, "test", r.target_datasets, has_mask=True))
