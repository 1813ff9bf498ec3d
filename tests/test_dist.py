"""mrgen.dist without a launcher (one process), and how process 0's error is rebuilt on the others.
The launched 2-process run is tests/test_launch.py."""

import numpy as np
import pytest

from mrgen import dist
from mrgen.filter.stage import FilterStarved


def test_one_process_without_a_launcher(monkeypatch, tmp_path):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    p = dist.processes("cpu")
    assert (p.rank, p.world, p.main) == (0, 1, True) and dist.launched() == (0, 1)
    assert p.share([1, 2, 3]) == [1, 2, 3] and p.total(5) == 5
    assert p.on_main(lambda: {"a": 1}) == {"a": 1}
    p.put(tmp_path / "x", [{"case": 1}], {"img": np.arange(3)})
    [(meta, arrays)] = p.parts(tmp_path / "x")
    assert meta == [{"case": 1}] and arrays["img"].tolist() == [0, 1, 2]
    assert not (tmp_path / "x").exists()  # one process keeps its part in memory


def test_shares_are_disjoint_and_cover_everything():
    items = list(range(7))
    shares = [dist.Procs(r, 3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_errors_of_process_0_are_rebuilt_on_the_others():
    e = dist._rebuild("mrgen.filter.stage", "FilterStarved", "kept 0 of 4 masks")
    assert isinstance(e, FilterStarved) and isinstance(e, ValueError) and str(e) == "kept 0 of 4 masks"
    other = dist._rebuild("no.such.module", "Oops", "bad")
    assert isinstance(other, RuntimeError) and "Oops on process 0: bad" in str(other)
    with pytest.raises(ValueError, match="boom"):
        dist.Procs().on_main(lambda: (_ for _ in ()).throw(ValueError("boom")))
