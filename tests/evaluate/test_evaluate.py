"""evaluate: segmenter on a tiny fake curated index (3D Dice per stacked volume), image quality."""

import csv
import json

import numpy as np
import pytest

from mrgen import config as C
from mrgen import io

SIZE, Z = 16, 4


def _volume(rng, shift=0):
    m = np.zeros((Z, SIZE, SIZE), np.uint8)
    m[:, 4 + shift:10 + shift, 5:11] = 1
    img = np.where(m > 0, 0.5, -0.5) + 0.05 * rng.standard_normal(m.shape)
    return img.astype(np.float16), m


@pytest.fixture()
def fake_run(tmp_path):
    from mrgen.curate.index import write_index

    rng = np.random.default_rng(0)
    rows = []
    for subj, mod, split in [("s1", "T2", "test"), ("s2", "T2", "test"), ("s3", "T2", "train"), ("s3", "T1", "train"), ("s4", "T2", "train")]:
        img, m = _volume(rng, shift=int(subj[1]))
        io.save_npy(tmp_path / "curated" / "arrays" / f"{subj}_{mod}.npy", img)
        io.save_npy(tmp_path / "curated" / "arrays" / f"{subj}_{mod}_mask.npy", m)
        for z in range(Z):
            rows.append({"id": f"fake/{subj}/{mod}/z{z:04d}", "kind": "slice", "dataset": "fake", "subject": subj,
                         "modality": mod, "region": "brain", "organs": ["disk"], "labels": [1], "split": split,
                         "has_mask": True, "image": f"arrays/{subj}_{mod}.npy", "mask": f"arrays/{subj}_{mod}_mask.npy",
                         "slice": z, "shape": [SIZE, SIZE], "orig_shape": [2 * SIZE, 2 * SIZE, Z], "spacing": [1.0, 1.0, 3.0]})
    write_index(tmp_path / "curated" / "index.parquet", rows)
    io.write_json(tmp_path / "curated" / "labels.json", {"fake": {"1": "disk"}})
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "run.source_modality=T1", "run.target_modality=T2",
                                           "segment.channels=[8,8,8]", "segment.strides=[2,2]", "segment.train.steps=4",
                                           "segment.train.ckpt_every=0", "evaluate.max_images=8", "evaluate.overlays=2"])
    # a tiny trained segmenter and a kept synthetic candidate whose mask comes from s3's T1 slice 1
    from mrgen.segment import train_segmenter

    img, m = _volume(rng)
    train_segmenter([i.astype(np.float32) for i in img], list(m.astype(np.int64)), 2, cfg, tmp_path / "segment" / "engine")
    cand = tmp_path / "synth" / "candidates"
    cand.mkdir(parents=True)
    meta = [{"key": "k", "mask_id": "fake/s3/T1/z0001", "candidate": c, "seed": c} for c in range(2)]
    np.savez(cand / "k.npz", images=img[:2].astype(np.float16), mask=m[1], seeds=np.arange(2), meta=np.array(json.dumps(meta)))
    io.write_json(tmp_path / "filter" / "kept.json", {"kept": [{"key": "k", "candidate": 0, "mask_id": "fake/s3/T1/z0001"},
                                                             {"key": "k", "candidate": 1, "mask_id": "fake/s3/T1/z0001"}]})
    return cfg


def test_evaluate_run_writes_results_csv_figures_and_quality(fake_run):
    from mrgen import evaluate

    cfg = fake_run
    wd = cfg.workdir
    res = evaluate.run(cfg)
    out = wd / "eval" / "engine"
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["volumes"] == 2  # s1 and s2: 4 slices each stacked into one volume
    assert [c["slices"] for c in results["cases"]] == [4, 4]
    assert results["cases"][0]["spacing_zxy"] == [3.0, 2.0, 2.0]  # in-plane resampling 32 -> 16 px
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"volume", "dice_disk", "hd95_disk", "mean_dice"} <= set(rows[0])
    # one label: a case's mean Dice is its disk Dice, and the summary is the mean over the two volumes
    assert [float(r["mean_dice"]) for r in rows] == [float(r["dice_disk"]) for r in rows] == [c["dice_disk"] for c in results["cases"]]
    assert results["summary"]["mean_dice"] == pytest.approx((float(rows[0]["dice_disk"]) + float(rows[1]["dice_disk"])) / 2)
    assert (out / "figures" / "dice_per_label.png").stat().st_size > 1000
    assert (out / "figures" / "overlays.png").stat().st_size > 1000
    assert "| Dice (3D) |" in (out / "summary.md").read_text()
    summary = json.loads((wd / "eval" / "summary.json").read_text())
    assert "engine" in summary and "engine" in res
    iq = json.loads((wd / "eval" / "image_quality.json").read_text())
    # the synthetic slices are not the real ones: FD well above the 0 of identical sets (measured 60)
    assert iq["synthetic_images"] == 2 and iq["real_images"] == 4 and iq["FD-EffNetLite0"] > 1.0
    # both kept candidates come from mask fake/s3/T1/z0001, so each is paired with the real s3 T2 slice 1:
    # PSNR = 10·log10(range² / MSE) with range 2, computed here on the stored arrays
    synth = np.load(wd / "synth" / "candidates" / "k.npz")["images"].astype(np.float64)
    real = np.load(wd / "curated" / "arrays" / "s3_T2.npy")[1].astype(np.float64)
    want = np.mean([10 * np.log10(4.0 / np.mean((synth[c] - real) ** 2)) for c in (0, 1)])
    assert iq["paired"] == 2 and iq["PSNR"] == pytest.approx(want, rel=1e-6)
    assert 0.05 < iq["SSIM"] < 0.5  # the pair's boxes overlap in part (rows 4-9 vs 7-12): measured 0.15


def _evaluate_with(fake_run, monkeypatch, predicted, name):
    """``evaluate_segmenter`` on the test volumes, with each prediction replaced by ``predicted(gt)``."""
    from mrgen.curate.index import Index
    from mrgen.evaluate import evaluate_segmenter
    from mrgen.segment import volumes

    real = volumes.predict_rows

    def stand_in(model, rows, root):
        for v in real(model, rows, root):
            v["pred"] = predicted(v["gt"])
            yield v

    import mrgen.segment as seg

    monkeypatch.setattr(seg, "predict_rows", stand_in)
    wd = fake_run.workdir
    rows = Index(wd / "curated").query(modality="T2", split="test")
    return evaluate_segmenter(wd / "segment" / "engine", rows, wd / "curated", wd / "eval" / name, {1: "disk"})


def test_evaluate_segmenter_perfect_model_scores_one(fake_run, monkeypatch):
    """With predictions equal to the ground truth, 3D Dice is exactly 1 and HD95 0."""
    s = _evaluate_with(fake_run, monkeypatch, lambda gt: gt.copy(), "perfect")
    assert s["mean_dice"] == 1.0 and s["dice"] == {"disk": 1.0} and s["hd95"] == {"disk": 0.0}


def test_evaluate_segmenter_shifted_prediction_hand_computed(fake_run, monkeypatch):
    """Each test volume's disk is a 4 x 6 x 6 box; predicted one row off, 5 of its 6 rows overlap:
    Dice = 2 · (4·5·6) / (2 · 4·6·6) = 5/6, and no surface voxel is further than one row (2 mm after 32 -> 16 px)."""
    s = _evaluate_with(fake_run, monkeypatch, lambda gt: np.roll(gt, 1, axis=1), "shifted")
    assert s["volumes"] == 2 and s["dice"]["disk"] == pytest.approx(5 / 6) and s["mean_dice"] == pytest.approx(5 / 6)
    assert s["hd95"]["disk"] == pytest.approx(2.0)


def test_segment_run_predict_needs_curate_records(fake_run):
    """The fake index has no curate.json: without curate's records there is no way back to the source grid.
    (Predictions on the source grid: tests/segment/test_native_grid.py.)"""
    from mrgen.segment import run_predict

    with pytest.raises(FileNotFoundError, match=r"curate\.json not found: predictions go back .* run `mrgen curate`"):
        run_predict(fake_run)
    assert not (fake_run.workdir / "segment" / "engine" / "pred").exists()
