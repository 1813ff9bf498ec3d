"""benchmarks/sampling_sweep.py's bookkeeping: the grid, evaluations per kept sample, the engine copy, the comparison."""


import pytest


def test_grid_and_evaluations_per_kept_sample(bench_script):
    sw = bench_script("sampling_sweep")
    assert sw.parse_grid("ddim:50:4, dpmpp2m:10:8") == [("ddim", 50, 4), ("dpmpp2m", 10, 8)]
    assert sw.setting_name("unipc", 5, 20) == "unipc-5-c20"
    # 64 masks x 4 candidates x 25 steps x 2 (guidance 7) = 12800 passes for 22 kept pairs
    ev = sw.evaluations({"kept": 22}, 25, 4, 64, 7.0)
    assert ev == {"per_candidate": 50, "total": 12800, "per_kept": 581.82}
    # no guidance: one pass per step; MRGen's 20 x 50 x 2 per mask, 2 kept: 1000 per kept sample
    assert sw.evaluations({"kept": 8}, 10, 2, 4, 1.0)["total"] == 80
    assert sw.evaluations({"kept": 2}, 50, 20, 1, 7.0)["per_kept"] == 1000
    with pytest.raises(ValueError):
        sw.parse_grid("ddim:50")


def test_engine_copy_leaves_out_the_renders(tmp_path, bench_script):
    sw = bench_script("sampling_sweep")
    src = tmp_path / "a"
    for d in ("autoencoder", "ldm", "controller", "synth/candidates", "filter", "synth.stale-1"):
        (src / d).mkdir(parents=True)
        (src / d / "x.json").write_text("{}")
    (src / "compute.json").write_text("{}")
    sw.copy_engine(src, tmp_path / "b")
    got = sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*"))
    assert got == ["autoencoder", "autoencoder/x.json", "controller", "controller/x.json", "ldm", "ldm/x.json"]


def test_every_setting_is_compared_to_the_best_by_a_paired_bootstrap(bench_script):
    sw = bench_script("sampling_sweep")
    case = lambda v, d: {"volume": v, "dice_1": d}  # noqa: E731
    rows = [{"setting": "a", "mean_dice": 0.5, "per_case": [case("p1", 0.5), case("p2", 0.5)]},
            {"setting": "b", "mean_dice": 0.7, "per_case": [case("p1", 0.6), case("p2", 0.8)]}]
    sw.compare_to_best(rows, seed=0)
    assert [r["best"] for r in rows] == [False, True] and rows[1]["vs_best"] is None
    vb = rows[0]["vs_best"]
    # differences -0.1 and -0.3: mean -0.2; every resample lies in [-0.3, -0.1]
    assert vb["volumes"] == 2 and vb["mean_difference"] == pytest.approx(-0.2)
    assert -0.3 - 1e-9 <= vb["ci95"][0] <= vb["ci95"][1] <= -0.1 + 1e-9 and vb["p_not_better"] == 1.0
