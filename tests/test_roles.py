"""Which rows are source / target / test (mrgen.roles)."""

import pytest

from mrgen.config import load_config
from mrgen.curate.index import Index
from mrgen.roles import assign


def _subjects(rows):
    return {r["subject"] for r in rows}


def test_disjoint_subjects_and_test_split(tiny_index):
    idx = Index(tiny_index)
    roles = assign(idx, load_config("tiny", overrides=["run.seed=3"]))
    # sub-0..2 train (T1 annotated, T2 unannotated), sub-3 test
    assert _subjects(roles.source).isdisjoint(_subjects(roles.target))
    assert _subjects(roles.source) | _subjects(roles.target) == {"sub-0", "sub-1", "sub-2"}
    assert all(r["modality"] == "T1" and r["has_mask"] for r in roles.source)
    assert all(r["modality"] == "T2" for r in roles.target)
    assert roles.test == []  # the toy T2 has no masks, so nothing to evaluate on


def test_shared_subjects_kept_when_not_disjoint(tiny_index):
    roles = assign(Index(tiny_index), load_config("tiny", overrides=["run.disjoint_subjects=false"]))
    assert _subjects(roles.source) == _subjects(roles.target) == {"sub-0", "sub-1", "sub-2"}


def test_explicit_fold_subjects_replace_the_split(tiny_index):
    cfg = load_config("tiny", overrides=["run.source_subjects=[sub-3]", "run.target_subjects=[sub-0, sub-1]",
                                         "run.test_subjects=[sub-2]", "run.target_modality=T1"])
    roles = assign(Index(tiny_index), cfg)
    assert _subjects(roles.source) == {"sub-3"} and _subjects(roles.target) == {"sub-0", "sub-1"}
    assert _subjects(roles.test) == {"sub-2"} and all(r["has_mask"] for r in roles.test)


def test_missing_modality_is_a_clear_error(tiny_index):
    with pytest.raises(ValueError, match="no annotated FLAIR rows"):
        assign(Index(tiny_index), load_config("tiny", overrides=["run.source_modality=FLAIR"]))
