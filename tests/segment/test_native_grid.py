"""Predictions back on the user's files: curate's geometry inverted (``mrgen.curate.inverse``) and
``mrgen segment predict`` writing each test volume on its source file's grid, affine and label values.

The inputs are MS-CMRSeg-style short-axis stacks (tests/curate/curate_helpers.py): 24 x 20 voxels of
1.25 mm, 6 slices of 8 mm, an oblique affine with codes LSP (phi 40, slice order flipped) or PSR (phi 50),
labels 200/500/600."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "curate"))
from curate_helpers import CARDIAC, cardiac_dataset, write_manifest  # noqa: E402

from mrgen.config import load_config  # noqa: E402
from mrgen.curate import run as curate  # noqa: E402
from mrgen.curate.dataset import load_mask  # noqa: E402
from mrgen.curate.index import Index  # noqa: E402
from mrgen.curate.inverse import source_affine, to_source_grid  # noqa: E402

STORED = {200: 1, 500: 2, 600: 3}  # the manifest's values, sorted, become 1..3


def _curate(tmp_path, phi, *overrides, series=None, subjects=("p1",)):
    """Curate one cardiac dataset; returns (cfg, {key: curate.json record}, dataset dict)."""
    ds = cardiac_dataset(tmp_path / "data", phi, subjects=subjects)
    if series:
        ds["series"] = series
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    cfg = load_config("tiny", None, [f"run.workdir={tmp_path / 'run'}", f"curate.manifest={manifest}",
                                     "curate.min_label_pixels=3", *overrides])
    curate(cfg)
    return cfg, json.loads((cfg.workdir / "curated" / "curate.json").read_text())["volumes"], ds


def _back(cfg, records, subject="p1", modality="bSSFP"):
    """The stored ground truth of one volume mapped back with to_source_grid, in the file's values."""
    vol = Index(cfg.workdir).query(kind="volume", subject=subject, modality=modality)[0]
    back = to_source_grid(load_mask(cfg.workdir / "curated", vol), records[vol["id"]])
    lut = np.zeros(4, np.int64)
    for value, stored in STORED.items():
        lut[stored] = value
    return lut[back], records[vol["id"]]


def _file(ds, name="p1_gt.nii.gz"):
    f = nib.load(str(Path(ds["root"]) / name))
    return np.asarray(f.dataobj).astype(np.int64), f.affine


def _dice(a, b, v):
    return 2.0 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v))


@pytest.mark.parametrize("phi", [40, 50])
def test_no_resampling_maps_back_voxel_for_voxel(tmp_path, phi):
    # 1.25 mm is the files' own spacing: the 24 x 24 padded plane is not resampled, only padded to 32
    cfg, records, ds = _curate(tmp_path, phi, "data.image_size=32", "data.spacing=1.25")
    back, rec = _back(cfg, records)
    orig, affine = _file(ds)
    assert rec["geometry"]["resampled"] == 24 and rec["geometry"]["start"] == [-4, -4]
    assert rec["geometry"]["flipped"] == (phi == 40)  # LSP runs its slices the other way: both paths are taken
    assert back.shape == orig.shape == (24, 20, 6) and np.array_equal(back, orig)
    np.testing.assert_array_equal(source_affine(rec), affine)


@pytest.mark.parametrize("phi", [40, 50])
def test_crop_leaves_background_outside_the_window_only(tmp_path, phi):
    # 16 px of the 24 x 24 plane (j padded 2 + 20 + 2): the centre window keeps i 4..19 and padded j 4..19,
    # i.e. file j 2..17, on both sides alike whatever the in-plane directions
    cfg, records, ds = _curate(tmp_path, phi, "data.image_size=16", "data.spacing=1.25")
    back, _ = _back(cfg, records)
    orig, _ = _file(ds)
    want = np.zeros_like(orig)
    want[4:20, 2:18] = orig[4:20, 2:18]
    assert np.any(orig != want)  # the crop does cut labels away
    assert np.array_equal(back, want)


@pytest.mark.parametrize("phi", [40, 50])
def test_3d_slice_window_goes_back_to_its_own_slices(tmp_path, phi):
    # 3D: depth 19 x 1.25 mm covers round(23.75 / 8) = 3 of the 6 source slices, stored from slice 1. Both stacks
    # are stored in the file's k order (LSP: canonical RAS reverses k, the right-handed flip reverses it back), so
    # the window is k 1..3 for both; a flip undone twice or not at all would put it at k 2..4
    cfg, records, ds = _curate(tmp_path, phi, "data.image_size=32", "data.spacing=1.25", "data.spatial_dims=3",
                               "data.depth=19")
    back, rec = _back(cfg, records)
    orig, _ = _file(ds)
    assert rec["geometry"]["z_window"] == {"slices": 3, "start": 1}
    want = np.zeros_like(orig)
    want[..., 1:4] = orig[..., 1:4]
    assert np.array_equal(back, want)
    # a 3D model predicts at the item shape (depth 19): on_source_grid resamples it back to the 3 stored slices
    from mrgen.curate.dataset import resize_volume
    from mrgen.segment import on_source_grid

    vol = Index(cfg.workdir).query(kind="volume")[0]
    item = resize_volume(load_mask(cfg.workdir / "curated", vol), (19, 32, 32), order=0)
    assert np.array_equal(on_source_grid(item, [vol], rec, {s: v for v, s in STORED.items()}), want)


def test_resampled_volumes_keep_their_shape_affine_and_overlap(tmp_path):
    # 1.5 mm: the 30 mm plane is resampled 24 -> 20 px (nearest) and back 20 -> 24; measured Dice 0.90 (ring of
    # 2 voxels), 0.96 (blood pool), 0.85 (3 x 6 voxel RV patch); at 1.0 mm (24 -> 30 -> 24) nearest is exact
    cfg, records, ds = _curate(tmp_path / "a", 50, "data.image_size=32", "data.spacing=1.5")
    back, rec = _back(cfg, records)
    orig, affine = _file(ds)
    assert rec["geometry"]["resampled"] == 20 and back.shape == orig.shape
    np.testing.assert_array_equal(source_affine(rec), affine)
    dice = {v: _dice(back, orig, v) for v in STORED}
    assert min(dice.values()) > 0.8 and np.mean(list(dice.values())) > 0.9 and dice[500] > 0.95, dice
    cfg, records, _ = _curate(tmp_path / "b", 50, "data.image_size=32", "data.spacing=1.0")
    assert records["heart/p1/bSSFP"]["geometry"]["resampled"] == 30
    assert np.array_equal(_back(cfg, records)[0], orig)


def test_wrong_shape_and_old_record_are_clear_errors(tmp_path):
    cfg, records, _ = _curate(tmp_path, 50, "data.image_size=32", "data.spacing=1.25")
    rec = records["heart/p1/bSSFP"]
    with pytest.raises(ValueError, match=r"prediction shape \(6, 16, 16\) is not the stored shape \(6, 32, 32\); resample"):
        to_source_grid(np.zeros((6, 16, 16), np.uint8), rec)
    old = {k: v for k, v in rec.items() if k != "source_grid"}
    with pytest.raises(ValueError, match=r"no 'source_grid'.*re-run `mrgen curate`"):
        to_source_grid(np.zeros((6, 32, 32), np.uint8), old)


def test_recurate_completes_an_old_record_without_recomputing(tmp_path):
    cfg, records, _ = _curate(tmp_path, 40, "data.image_size=32", "data.spacing=1.25")
    path = cfg.workdir / "curated" / "curate.json"
    summary = json.loads(path.read_text())
    want = summary["volumes"]["heart/p1/bSSFP"].pop("source_grid")
    path.write_text(json.dumps(summary))  # as an older mrgen wrote it
    assert curate(cfg)["reused"] == 1
    assert json.loads(path.read_text())["volumes"]["heart/p1/bSSFP"]["source_grid"] == want


@pytest.mark.shared_data
def test_mscmrseg_masks_map_back_onto_their_files(tmp_path, monkeypatch):
    """Real short-axis stacks (PSR/LSP codes, C0 with the pixel_spacing override) from ../shared/data/mscmrseg:
    patient1's masks curated at 1 mm, 128 px (C0 0.75 mm 192 -> 144 px, LGE 0.76 mm -> 146 px, centre crop)
    and mapped back. Measured Dice 0.978-0.991 per label."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    shared = Path(os.environ.get("MRGEN_SHARED_DATA") or repo.parent / "shared" / "data")
    if not (shared / "mscmrseg").is_dir():
        pytest.skip(f"{shared / 'mscmrseg'} not present (set MRGEN_SHARED_DATA)")
    monkeypatch.setenv("MRGEN_SHARED_DATA", str(shared))
    man = yaml.safe_load((repo / "examples" / "mscmrseg.yaml").read_text())
    for series in man["datasets"][0]["series"]:
        series["images"] = series["images"].replace("patient*", "patient1")
    manifest = tmp_path / "mscmrseg.yaml"
    manifest.write_text(yaml.safe_dump(man, sort_keys=False))
    cfg = load_config("tiny", None, [f"run.workdir={tmp_path / 'run'}", f"curate.manifest={manifest}",
                                     "data.image_size=128", "data.spacing=1.0"])
    curate(cfg)
    records = json.loads((cfg.workdir / "curated" / "curate.json").read_text())["volumes"]
    for modality in ("bSSFP", "LGE"):
        back, rec = _back(cfg, records, "patient1", modality)
        f = nib.load(rec["mask_source"])
        orig = np.rint(np.asarray(f.dataobj)).astype(np.int64)
        assert back.shape == orig.shape and np.array_equal(source_affine(rec), f.affine)
        dice = {v: _dice(back, orig, v) for v in STORED}
        assert min(dice.values()) > 0.95, (modality, dice)


# ----------------------------------------------------------------------------- mrgen segment predict


def _image_labels(image):
    """A stand-in segmenter that reads the labels off the phantom's intensities: the files hold
    50 + 3 * value / 100, minmax-normalised per volume and stored as 2x - 1: 0 -> -1, 200 -> -1/3,
    500 -> 2/3, 600 -> 1 (the padding is -1)."""
    return np.digitize(np.asarray(image), [-0.6, 0.2, 0.85]).astype(np.int64)


def test_segment_predict_writes_the_source_grid_and_label_values(tmp_path, monkeypatch):
    import mrgen.segment as seg
    from mrgen.segment import run_predict, train_segmenter

    series = [{"modality": m, "images": "*_img.nii.gz", "masks": "{subject}_gt.nii.gz"} for m in ("bSSFP", "LGE")]
    overrides = ["data.image_size=32", "data.spacing=1.25", "curate.test_fraction=0.34", "run.source_modality=bSSFP",
                 "run.target_modality=LGE", "run.disjoint_subjects=false", "segment.channels=[8,8]",
                 "segment.strides=[2]", "segment.train.steps=2", "segment.train.batch_size=2", "segment.train.ckpt_every=0"]
    cfg, records, ds = _curate(tmp_path, 50, *overrides, series=series, subjects=("p1", "p2", "p3"))
    test = json.loads((cfg.workdir / "curated" / "curate.json").read_text())["summary"]["heart"]["test_subjects"]
    assert len(test) == 1
    vol = Index(cfg.workdir).query(kind="volume", subject=test[0], modality="LGE")[0]
    img = np.load(cfg.workdir / "curated" / vol["image"]).astype(np.float32)
    train_segmenter(list(img), list(load_mask(cfg.workdir / "curated", vol)), 4, cfg, cfg.workdir / "segment" / "engine")
    orig, affine = _file(ds, f"{test[0]}_gt.nii.gz")
    out = cfg.workdir / "segment" / "engine" / "pred"
    name = f"heart__{test[0]}__LGE.nii.gz"

    res = run_predict(cfg)  # the trained (tiny, untrained in effect) network: shape, affine, values
    assert (res["volumes"], res["items"], res["labels"]) == (1, 6, "original")
    nii = nib.load(str(out / name))
    assert nii.shape == orig.shape and np.array_equal(nii.affine, affine)
    assert set(np.unique(np.asarray(nii.dataobj)).tolist()) <= {0, *CARDIAC}
    rec = json.loads((out / "predictions.json").read_text())[0]
    assert rec["file"] == name and rec["shape"] == [24, 20, 6] and np.array_equal(rec["affine"], affine)

    monkeypatch.setattr(seg, "predict", lambda model, image: _image_labels(image))  # a perfect segmenter
    run_predict(cfg)
    nii = nib.load(str(out / name))
    assert nii.get_data_dtype() == np.uint16 and np.array_equal(np.asarray(nii.dataobj), orig)
    cfg.segment.original_labels = False
    assert run_predict(cfg)["labels"] == "stored"
    stored = np.asarray(nib.load(str(out / name)).dataobj)
    want = np.zeros_like(orig)
    for value, s in STORED.items():
        want[orig == value] = s
    assert stored.dtype == np.uint8 and np.array_equal(stored, want)


def test_segment_predict_with_a_3d_model_writes_each_input_grid_and_affine(tmp_path):
    """A 3D segmenter predicts at its item shape (depth 19); the NIfTI is back on the file: shape (24, 20, 6) and
    the file's oblique affine, voxels outside the 3-slice window background."""
    from mrgen.segment import run_predict, train_segmenter

    series = [{"modality": m, "images": "*_img.nii.gz", "masks": "{subject}_gt.nii.gz"} for m in ("bSSFP", "LGE")]
    overrides = ["data.image_size=32", "data.spacing=1.25", "data.spatial_dims=3", "data.depth=19",
                 "curate.test_fraction=0.34", "run.source_modality=bSSFP", "run.target_modality=LGE",
                 "run.disjoint_subjects=false", "segment.channels=[8,8]", "segment.strides=[2]", "segment.train.steps=1",
                 "segment.train.batch_size=1", "segment.train.ckpt_every=0"]
    cfg, records, ds = _curate(tmp_path, 40, *overrides, series=series, subjects=("p1", "p2", "p3"))
    test = json.loads((cfg.workdir / "curated" / "curate.json").read_text())["summary"]["heart"]["test_subjects"]
    vol = Index(cfg.workdir).query(kind="volume", subject=test[0], modality="LGE")[0]
    img = np.load(cfg.workdir / "curated" / vol["image"]).astype(np.float32)
    train_segmenter([img], [load_mask(cfg.workdir / "curated", vol)], 4, cfg, cfg.workdir / "segment" / "engine")
    res = run_predict(cfg)
    assert (res["volumes"], res["grid"]) == (1, "source")
    orig, affine = _file(ds, f"{test[0]}_gt.nii.gz")
    nii = nib.load(str(cfg.workdir / "segment" / "engine" / "pred" / f"heart__{test[0]}__LGE.nii.gz"))
    assert nii.shape == orig.shape == (24, 20, 6) and np.array_equal(nii.affine, affine)
    pred = np.asarray(nii.dataobj)
    assert not pred[..., [0, 4, 5]].any() and set(np.unique(pred).tolist()) <= {0, *CARDIAC}
