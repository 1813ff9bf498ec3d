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


def test_the_engine_never_trains_on_an_image_of_a_fold_test_subject(tiny_index):
    """A benchmark fold names test subjects whatever the curated split says (sub-1 is in the train split here): the
    autoencoder's and the LDM's unannotated training rows drop every row of them, of every modality."""
    from mrgen.autoencoder import train_rows
    from mrgen.ldm import ldm_rows

    fold = ["run.source_subjects=[sub-0]", "run.target_subjects=[sub-2]", f"run.workdir={tiny_index}"]
    without = load_config("tiny", overrides=fold)
    cfg = load_config("tiny", overrides=[*fold, "run.test_subjects=[sub-1]"])
    assert "sub-1" in _subjects(train_rows(without)) and "sub-1" in _subjects(ldm_rows(without))  # what a fold used to see
    ae, ldm = train_rows(cfg), ldm_rows(cfg)
    assert "sub-1" not in _subjects(ae) | _subjects(ldm)
    assert _subjects(ae) == {"sub-0", "sub-2"} and {r["modality"] for r in ae} == {"T1", "T2"}
    assert {(r["subject"], r["modality"]) for r in ldm} == {("sub-0", "T1"), ("sub-2", "T2")}
