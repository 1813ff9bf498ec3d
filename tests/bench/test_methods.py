"""Each method's pair generator on a tiny synthetic fold: shapes, ranges, masks, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from mrgen.bench import methods as M
from mrgen import randomise as R

CHEAP = {
    "source_only": {},
    "oracle": {},
    "intensity_aug": {"copies": 2},
    "domain_randomisation": {"copies": 2, "deform": False},
    "histogram_match": {},
    "cyclegan": {"steps": 2, "channels": 4, "res_blocks": 1, "d_channels": 4, "batch_size": 2},
}
RANDOM = {"intensity_aug", "domain_randomisation", "cyclegan"}


def _same(a: tuple, b: tuple) -> bool:
    return len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))


@pytest.mark.parametrize("name", list(CHEAP))
def test_pairs_shapes_ranges_masks_and_seed(tiny_fold, name):
    ctx, roles, cfg = tiny_fold
    src_images, src_masks = ctx().source_pairs()
    images, masks = M.METHODS[name](ctx(CHEAP[name], name=name))
    assert len(images) == len(masks) > 0
    for im, m in zip(images, masks):
        assert im.shape == m.shape == (16, 16)
        assert im.dtype == np.float32 and np.isfinite(im).all()
        assert -1.0 - 1e-5 <= im.min() and im.max() <= 1.0 + 1e-5
        assert m.dtype == np.int64 and set(np.unique(m)) <= {0, 1, 2}
    if name == "oracle":
        assert len(images) == len(roles.target)  # the target subject's own annotated slices
        assert {r["modality"] for r in roles.target} == {"T2"}
    else:  # no spatial change: every source mask, in order, unchanged
        per = {"intensity_aug": 3, "domain_randomisation": 2}.get(name, 1)
        assert len(masks) == per * len(src_masks)
        expect = [m for m in src_masks for _ in range(per)]
        assert all(np.array_equal(a, b) for a, b in zip(masks, expect))
        changed = [not np.allclose(a, b) for a, b in zip(images, [s for s in src_images for _ in range(per)])]
        assert any(changed) == (name != "source_only")
    again = M.METHODS[name](ctx(CHEAP[name], name=name + "_again"))
    assert _same((images, masks), again), f"{name}: same seed must give the same pairs"
    if name in RANDOM:
        other = M.METHODS[name](ctx(CHEAP[name], seed=1, name=name + "_seed1"))
        assert not _same((images, masks), other), f"{name}: another seed must give other pairs"


def test_unknown_parameter_is_an_error(tiny_fold):
    ctx, _, _ = tiny_fold
    with pytest.raises(ValueError, match="unknown parameter"):
        M.intensity_aug(ctx({"copise": 2}))


def test_histogram_match_moves_source_towards_target(tiny_fold):
    ctx, _, _ = tiny_fold
    c = ctx()
    src, _ = c.source_pairs()
    tgt = np.concatenate([t.ravel() for t in c.target_images()])
    before = np.concatenate([s.ravel() for s in src])
    after = np.concatenate([s.ravel() for s in M.histogram_match(c)[0]])
    d0, d1 = wasserstein_distance(before, tgt), wasserstein_distance(after, tgt)
    assert d1 < 0.25 * d0, (d0, d1)


def test_histogram_match_keeps_constant_background():
    rng = np.random.default_rng(0)
    img = np.full((20, 20), -1.0, np.float32)
    img[5:15, 5:15] = rng.uniform(-0.5, 0.5, (10, 10))
    ref = rng.uniform(0.2, 0.9, 5000).astype(np.float32)
    out = R.match_to_reference(img, ref)
    assert np.all(out[img == -1.0] == -1.0)
    fg = out[5:15, 5:15]
    assert 0.15 < fg.min() and fg.max() < 0.95
    assert np.corrcoef(fg.ravel(), img[5:15, 5:15].ravel())[0, 1] > 0.99  # monotone mapping


def test_domain_randomisation_new_intensities_same_labels():
    mask = np.zeros((24, 24), np.int64)
    mask[4:12, 4:12], mask[14:20, 10:22] = 1, 2
    rng = np.random.default_rng(0)
    draws = [R.synthesize_from_labels(mask, rng, deform=False) for _ in range(4)]
    for img, m in draws:
        assert np.array_equal(m, mask) and img.shape == mask.shape and -1 <= img.min() <= img.max() <= 1
    means = np.array([[img[mask == k].mean() for k in (0, 1, 2)] for img, _ in draws])
    assert np.ptp(means, axis=0).min() > 0.05  # every label changes appearance between draws
    img, m = R.synthesize_from_labels(mask, np.random.default_rng(1), deform=True, rotate=15.0, elastic=0.04)
    assert set(np.unique(m)) == {0, 1, 2} and not np.array_equal(m, mask)
    for k in (1, 2):
        assert 0.6 < (m == k).sum() / (mask == k).sum() < 1.6
    a, _ = R.synthesize_from_labels(mask, np.random.default_rng(5))
    b, _ = R.synthesize_from_labels(mask, np.random.default_rng(5))
    assert np.array_equal(a, b)


def test_domain_randomisation_background_classes_use_the_image():
    mask = np.zeros((16, 16), np.int64)
    mask[4:10, 4:10] = 1
    img = np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16)
    gen = R.background_bins(img, mask, 3)
    assert set(np.unique(gen)) == {1, 100, 101, 102} and np.array_equal(gen == 1, mask == 1)
    x, m = R.synthesize_from_labels(mask, np.random.default_rng(0), image=img, deform=True, background_classes=3)
    assert set(np.unique(m)) <= {0, 1} and x.shape == mask.shape


def test_intensity_augmentation_changes_contrast_only():
    rng = np.random.default_rng(0)
    img = np.clip(np.random.default_rng(1).normal(0, 0.4, (32, 32)), -1, 1).astype(np.float32)
    outs = [R.augment_intensity(img, rng) for _ in range(8)]
    assert all(o.shape == img.shape and -1 <= o.min() <= o.max() <= 1 for o in outs)
    corr = [np.corrcoef(o.ravel(), img.ravel())[0, 1] for o in outs]
    assert min(corr) < 0.5 and max(corr) > 0.5  # strong changes, including inversions, but structure kept in some


def test_a_starved_filter_keeps_the_compute_of_the_stages_before_it(tmp_path, monkeypatch):
    """bench.engine.drive: the filter runs in a call of its own, so its FilterStarved loses no stage's compute."""
    from types import SimpleNamespace

    from mrgen import pipeline
    from mrgen.bench import engine as E
    from mrgen.filter import FilterStarved

    calls = []

    def fake_run(cfg, only, provided, meter, log):
        calls.append(only)
        if "filter" in only:
            raise FilterStarved("kept a candidate for 1 of 8 masks")
        return {"ran": {n: {"cpu_s": 10.0 + i} for i, n in enumerate(only)}}

    monkeypatch.setattr(pipeline, "run", fake_run)
    cfg = SimpleNamespace(workdir=tmp_path)
    with pytest.raises(FilterStarved):
        E.drive(cfg, E.STAGES, ())
    assert calls == [E.GENERATIVE + ("synthesize",), ("filter",)]
    rec = E.recorded(tmp_path, E.STAGES)
    assert rec == {"autoencoder": {"cpu_s": 10.0}, "ldm": {"cpu_s": 11.0}, "controller": {"cpu_s": 12.0},
                   "synthesize": {"cpu_s": 13.0}, "filter": None}


def test_a_starved_engine_filter_falls_back_to_unfiltered_candidates_and_says_so(monkeypatch, tmp_path):
    """bench: FilterStarved in the mrgen method -> the unfiltered candidates (as mrgen_nofilter), with a note."""
    from types import SimpleNamespace

    import numpy as np

    from mrgen.bench import engine as E
    from mrgen.filter import FilterStarved
    import mrgen.pairs as P

    def starve(ctx, variant):
        raise FilterStarved("the filter kept a candidate for 3 of 40 masks (7.5 %); training a segmenter on so few")

    cfg = SimpleNamespace(workdir=tmp_path / "engine", filter=SimpleNamespace(keep=2))
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "compute.json").write_text('{"synthesize": {"cpu_s": 5.0}, "filter": null}')
    monkeypatch.setattr(E, "prepare", starve)
    monkeypatch.setattr(E, "variant_config", lambda ctx, variant, round_=1: cfg)
    picked = {}

    def fake_random(workdir, keep, rng):
        picked.update(workdir=workdir, keep=keep)
        return [np.zeros((4, 4), np.float32)], [np.zeros((4, 4), np.int64)]

    monkeypatch.setattr(P, "random_candidates", fake_random)
    monkeypatch.setattr(P, "kept_arrays", lambda wd: pytest.fail("read the starved filter's kept set"))
    logs: list = []
    ctx = SimpleNamespace(params={}, compute={}, log=logs.append, rng=lambda name: np.random.default_rng(0),
                          cfg=SimpleNamespace(segment=SimpleNamespace(engine_set="synthetic", pseudo_pairs=False)))
    images, masks = E.engine_pairs(ctx, "mrgen")
    assert len(images) == 1 and picked == {"workdir": tmp_path / "engine", "keep": 2}
    # the stages that ran before the filter starved are in the method's compute; the filter is not
    assert ctx.compute["engine.synthesize"] == {"cpu_s": 5.0} and "engine.filter" not in ctx.compute
    note = ctx.compute["filter_fallback"]
    assert note.startswith("FILTER STARVED") and "3 of 40 masks" in note and "unfiltered" in note
    assert any("starved" in str(m) for m in logs)


def test_a_filter_starved_in_round_two_falls_back_to_round_two_candidates(monkeypatch, tmp_path):
    """bench, rounds.count=2: FilterStarved in round 2 -> round 2's unfiltered candidates; its stages' compute is
    recorded under engine_r2.*, beside round 1's, and the note names the round."""
    from types import SimpleNamespace

    import numpy as np

    from mrgen.bench import engine as E
    from mrgen.filter import FilterStarved
    import mrgen.pairs as P

    def starve(ctx, variant):
        exc = FilterStarved("the filter kept a candidate for 2 of 40 masks (5.0 %); training a segmenter on so few")
        exc.round = 2  # as next_round marks it
        raise exc

    folders = {1: tmp_path / "engine", 2: tmp_path / "engine" / "round2"}
    folders[2].mkdir(parents=True)
    (folders[2] / "compute.json").write_text('{"controller": {"cpu_s": 7.0}, "synthesize": {"cpu_s": 3.0}}')
    asked = []

    def config(ctx, variant, round_=1):
        asked.append(round_)
        return SimpleNamespace(workdir=folders[round_], filter=SimpleNamespace(keep=2))

    monkeypatch.setattr(E, "prepare", starve)
    monkeypatch.setattr(E, "variant_config", config)
    picked = []
    monkeypatch.setattr(P, "random_candidates", lambda wd, keep, rng: picked.append(wd) or ([np.zeros((4, 4))], [np.zeros((4, 4), np.int64)]))
    ctx = SimpleNamespace(params={}, compute={"engine.controller": {"cpu_s": 50.0}}, log=lambda *_: None,
                          rng=lambda name: np.random.default_rng(0),
                          cfg=SimpleNamespace(segment=SimpleNamespace(engine_set="synthetic", pseudo_pairs=False)))
    E.engine_pairs(ctx, "mrgen")
    assert asked == [2] and picked == [folders[2]]  # round 2's candidates, not round 1's
    assert ctx.compute["engine.controller"] == {"cpu_s": 50.0}  # round 1's controller is not overwritten
    assert ctx.compute["engine_r2.controller"] == {"cpu_s": 7.0} and ctx.compute["engine_r2.synthesize"] == {"cpu_s": 3.0}
    assert ctx.compute["filter_fallback"].startswith("FILTER STARVED in round 2")
