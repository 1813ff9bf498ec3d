"""mrgen.seeds: the one seed scheme. Golden values were computed with the code before the scheme moved
here (``sample.candidate_seed`` and ``train.step_seed`` at commit abaa5b8), so the demo's numbers hold."""

import pytest

from mrgen import seeds


def test_derive_reproduces_the_old_candidate_and_step_seeds():
    assert seeds.derive(0, "a", 1) == 1454584568  # candidate_seed(0, "a", 1)
    assert seeds.derive(7, "sub-01/z0003", 2) == 386537575  # candidate_seed(7, "sub-01/z0003", 2)
    assert seeds.derive(0, 3, 0, "") == 267748429  # step_seed(0, 3, 0, "")
    assert seeds.derive(5, 10, 1, "ae") == 1092644860  # step_seed(5, 10, 1, "ae")


def test_candidate_seed_is_the_shared_scheme():
    from mrgen.synthesize import candidate_seed

    assert candidate_seed(0, "a", 1) == 1454584568


def test_parts_are_joined_as_text_and_order_matters():
    assert seeds.derive(1, "a") == seeds.derive("1", "a")  # ids are compared as recorded text
    assert seeds.derive(1, 2) != seeds.derive(2, 1)
    assert seeds.derive("a|b") == seeds.derive("a", "b")  # documented: the join is plain "|"


def test_derive_needs_a_part():
    with pytest.raises(ValueError, match="at least one part"):
        seeds.derive()
