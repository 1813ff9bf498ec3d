"""End to end with a filter that rejects: tiny chain -> synthesize -> filter -> export -> segmenter training set.

The tiny preset turns the thresholds off (16-px renders of a 4-step renderer are noise), so here they are on,
and two candidates are planted in each mask's file after synthesis: a clean rendering of the mask (candidate
0; must pass) and the same rendering shifted by half the image (candidate 1; a mismatch). Candidate 2 stays the
renderer's own output. Measured classical-scorer mean IoU: planted clean 0.88, shifted 0.63-0.68, renders
0.45-0.55; the thresholds (organ 0.7, mean 0.75) fall in between.
"""

from __future__ import annotations

import json

import numpy as np

CONCAT = ("controller.mode=concat", "controller.pixel_channels=[8, 8]", "controller.pixel_attention=[false, true]")
STRICT = ("filter.thresholds=absolute", "filter.keep=1", "filter.relax=0.0", "filter.organ_iou=0.7", "filter.mean_iou=0.75")
T2 = (-0.8, -0.2, 0.7)  # the tiny index's T2 background, liver, spleen


def _plant(files) -> dict:
    """Overwrite candidates 0 (clean) and 1 (shifted) of every candidate file; returns {key: (clean image, mask)}."""
    clean = {}
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            data = dict(z)
        img = np.choose(data["mask"].astype(np.int64), T2).astype(np.float32)
        data["images"][0], data["images"][1] = img, np.roll(img, img.shape[1] // 2, axis=1)
        np.savez(f, **data)
        clean[f.stem] = data["images"][0].astype(np.float32), data["mask"].astype(np.int64)  # as stored (float16)
    return clean


def test_tiny_chain_filter_rejects_and_the_rejected_never_train(tiny_index, tiny_config):
    from mrgen import controller, export
    from mrgen import synthesize as sample
    from mrgen import filter as F
    from mrgen.export import dataset_folder, read_dataset
    from mrgen.segment import run_train

    cfg = tiny_config(tiny_index, *CONCAT, *STRICT)
    controller.run(cfg)
    sample.run(cfg)
    files = sorted((tiny_index / "synth" / "candidates").glob("*.npz"))
    assert len(files) == cfg.sample.max_masks == 2
    clean = _plant(files)
    res = F.run(cfg)
    assert res["candidates"] == 6 and res["kept"] == 2 and res["masks_dropped"] == 0

    kept = json.loads((tiny_index / "filter" / "kept.json").read_text())["kept"]
    assert sorted((k["key"], k["candidate"]) for k in kept) == [(key, 0) for key in sorted(clean)]
    scores = [json.loads(ln) for ln in (tiny_index / "filter" / "scores.jsonl").read_text().splitlines()]
    for key in clean:
        recs = {r["candidate"]: r for r in scores if r["key"] == key}
        assert recs[0]["kept"] and not recs[1]["kept"] and not recs[2]["kept"]
        for c in (1, 2):  # rejected for a threshold, not for the quota
            assert "<0.7" in recs[c]["reason"] and recs[c]["mean_iou"] < recs[0]["mean_iou"], recs[c]
        assert recs[0]["mean_iou"] >= 0.75  # the kept one is the best-scoring, and passes

    out = export.run(cfg)
    assert out["cases"] == 2
    folder = dataset_folder(tiny_index / "nnunet", cfg.export.dataset_id, cfg.export.name)
    prov = [json.loads(ln) for ln in (folder / "provenance.jsonl").read_text().splitlines()]
    assert sorted((p["key"], p["candidate"]) for p in prov) == sorted((k["key"], k["candidate"]) for k in kept)
    images, masks, _ = read_dataset(folder)
    by_key = {p["key"]: (im, m) for p, im, m in zip(prov, images, masks)}
    for key, (img, mask) in clean.items():  # the exported pixels are the kept (clean) candidate's, not a rejected one's
        im, m = by_key[key]
        assert np.abs(im - img).max() <= 1 / 127.5 + 1e-6 and np.array_equal(m, mask) and set(np.unique(m)) == {0, 1, 2}
    assert run_train(cfg)["cases"] == 2  # the segmenter's training set is the two kept pairs
