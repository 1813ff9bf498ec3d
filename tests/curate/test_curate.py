"""Schema, normalisation, resampling, split, organs, regions, orientation and input formats."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_helpers import LABELS, abdomen_dataset, organ_mask, save, write_dicom_series, write_manifest

from mrgen import io
from mrgen.curate import run, split_subjects
from mrgen.curate.dataset import load_image, load_mask
from mrgen.curate.index import COLUMNS, Index
from mrgen.curate.volume import normalise, resize_inplane, square_pad

DOCS = Path(__file__).resolve().parents[2] / "docs" / "artefacts.md"


def doc_columns() -> list[str]:
    text = DOCS.read_text().split("## Curated index")[1].split("\n## ")[0]
    cols = []
    for line in text.splitlines():
        if line.startswith("| `"):
            cols += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return cols


def test_index_has_exactly_the_documented_columns(abdomen, make_cfg):
    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    out = run(cfg)
    table = pq.read_table(out["index"])
    assert table.column_names == list(COLUMNS)
    assert sorted(table.column_names) == sorted(doc_columns())
    assert out["volumes"] == 8 and out["slices"] == 8 * 6
    kinds = table.column("kind").to_pylist()
    assert kinds.count("volume") == 8 and kinds.count("slice") == 48
    curated = cfg.workdir / "curated"
    assert (curated / "labels.json").exists() and (curated / "curate.json").exists()
    # one array file per volume (image for all 8, mask for the 4 annotated T1 volumes), never per slice
    assert len(list((curated / "arrays").rglob("*.npy"))) == 8 + 4
    row = Index(curated).query(kind="volume", id="abd/sub-01/T1")[0]
    img = np.load(curated / row["image"])
    mask = np.load(curated / row["mask"])
    assert img.dtype == np.float16 and img.shape == (6, 16, 16) and row["shape"] == [6, 16, 16]
    assert mask.dtype == np.uint8 and mask.shape == (6, 16, 16)
    assert row["orig_shape"] == [20, 16, 6] and row["spacing"] == [1.5, 1.5, 4.0] and len(row["affine"]) == 16
    unannotated = Index(curated).query(kind="volume", modality="T2")
    assert all(not r["has_mask"] and r["mask"] == "" and r["organs"] == [] for r in unannotated)
    assert all(r["prompt"].startswith("T2 MRI;") and r["prompt"].endswith("upper abdomen") for r in unannotated)


def test_stored_images_are_in_minus1_1(abdomen, make_cfg):
    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    run(cfg)
    for f in (cfg.workdir / "curated" / "arrays").rglob("*_image.npy"):
        a = np.load(f).astype(np.float32)  # antialiased resampling softens the extremes a little
        assert -1.0 <= a.min() <= -0.9 and 0.9 <= a.max() <= 1.0


def test_normalise_modes():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, (20, 20, 10)).astype(np.float32)
    x[0, 0, 0], x[1, 1, 1] = 1e6, -1e6  # outliers are clipped by the percentiles
    y = normalise(x, "mr")
    assert y.min() == 0.0 and y.max() == 1.0 and 0.4 < np.median(y) < 0.6
    ct = normalise(np.array([-1000.0, -300.0, -50.0, 200.0, 3000.0]), "ct")
    np.testing.assert_allclose(ct, [0, 0, 0.5, 1, 1])
    mm = normalise(np.array([-2.0, 0.0, 2.0]), "minmax")
    np.testing.assert_allclose(mm, [0, 0.5, 1])
    # mr-fg: constant background ignored by the percentiles, mapped to exactly 0
    bg = np.full((40, 40, 4), -3.0, np.float32)
    bg[10:20, 10:20] = rng.normal(1, 0.3, (10, 10, 4))
    fg = normalise(bg, "mr-fg")
    assert (fg[bg == -3] == 0).all() and np.median(fg[10:20, 10:20]) > 0.3
    assert (normalise(np.ones((4, 4, 2)), "mr") == 0).all()  # constant volume: no division by zero


def test_square_pad_and_resize_keep_physical_aspect():
    a = np.ones((2, 10, 20), np.float32)
    p = square_pad(a, (1.0, 1.0), 0.0)
    assert p.shape == (2, 20, 20) and p[:, :5].sum() == 0 and p[:, 5:15].all()
    q = square_pad(np.ones((1, 10, 20)), (2.0, 1.0), 0.0)  # 20 mm x 20 mm already
    assert q.shape == (1, 10, 20)
    r = resize_inplane(np.ones((3, 20, 20), np.float32), 8, mask=False)
    assert r.shape == (3, 8, 8) and np.allclose(r, 1)
    m = resize_inplane(np.eye(20, dtype=np.float32)[None] * 3, 10, mask=True)
    assert set(np.unique(m)) <= {0.0, 3.0}


def test_split_by_subject(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=6)
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]), "curate.test_fraction=0.34")
    run(cfg)
    rows = Index(cfg.workdir).query(kind=None)
    split = {}
    for r in rows:
        assert split.setdefault(r["subject"], r["split"]) == r["split"]  # same for every modality and slice
    assert sorted(split.values()).count("test") == 2
    assert split_subjects(["a", "b"], 0.01, 0, "d") and not split_subjects(["a"], 0.5, 0, "d")
    assert split_subjects(list("abcdef"), 0.5, 1, "d") == split_subjects(list("fedcba"), 0.5, 1, "d")
    assert len(split_subjects(list("abcdefgh"), 0.25, 0, "d")) == 2
    assert split_subjects(["a", "b"], 0.0, 0, "d") == set()


def test_organs_per_slice_follow_min_label_pixels(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=2, shape=(16, 16, 6), modalities=("T1",))
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    for min_px, kidney in ((3, True), (5, False)):  # the kidney has 4 pixels, in slice 0 only
        cfg = make_cfg(manifest, f"curate.min_label_pixels={min_px}")
        run(cfg)
        rows = {r["slice"]: r for r in Index(cfg.workdir).query(subject="sub-01")}
        assert rows[0]["organs"] == (["liver", "right kidney"] if kidney else ["liver"])
        assert rows[0]["labels"] == ([1, 2] if kidney else [1])
        assert [z for z, r in rows.items() if "spleen" in r["organs"]] == [3, 4, 5]
        assert rows[4]["prompt"].endswith("upper abdomen; liver, spleen")
        vol = Index(cfg.workdir).query(kind="volume", subject="sub-01")[0]
        assert vol["organs"] == ["liver", "right kidney", "spleen"] if kidney else vol["organs"] == ["liver", "spleen"]


def test_region_by_slice(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=2, modalities=("T1",), shape=(16, 16, 10))
    del ds["region"]
    ds["region_by_slice"] = [[0.0, 0.3, "lower_thorax"], [0.3, 1.0, "upper_abdomen"]]
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    run(cfg)
    rows = {r["slice"]: r["region"] for r in Index(cfg.workdir).query(subject="sub-01")}
    # fractions run from the superior end (highest z in RAS): the top 30 % is lower thorax
    assert [rows[z] for z in range(10)] == ["upper_abdomen"] * 7 + ["lower_thorax"] * 3
    assert Index(cfg.workdir).query(kind="volume", subject="sub-01")[0]["region"] == "upper_abdomen"
    assert "lower thoracic region" in Index(cfg.workdir).query(subject="sub-01", slice=9)[0]["prompt"]


def test_lps_file_gives_the_same_arrays_as_its_ras_copy(tmp_path, make_cfg):
    rng = np.random.default_rng(1)
    mask = organ_mask((20, 16, 6))
    img = rng.normal(100, 30, mask.shape).astype(np.float32) + 200 * mask
    ras = np.diag([1.5, 1.5, 4.0, 1.0])
    ras[:3, 3] = (-10, 20, 5)
    # the same voxels stored L->R and P->A reversed: flip x and y, negate those axes, move the origin
    lps = ras.copy()
    lps[0, 0], lps[1, 1] = -1.5, -1.5
    lps[:3, 3] = ras[:3, :3] @ [19, 15, 0] + ras[:3, 3]
    for name, a, m, aff in (("ras", img, mask, ras), ("lps", img[::-1, ::-1], mask[::-1, ::-1], lps)):
        save(tmp_path / name / "images" / "sub-01_T1.nii.gz", np.ascontiguousarray(a), aff)
        save(tmp_path / name / "images" / "sub-02_T1.nii.gz", np.ascontiguousarray(a), aff)
        save(tmp_path / name / "masks" / "sub-01.nii.gz", np.ascontiguousarray(m), aff)
        save(tmp_path / name / "masks" / "sub-02.nii.gz", np.ascontiguousarray(m), aff)
    assert nib.aff2axcodes(lps) == ("L", "P", "S")
    out = {}
    for name in ("ras", "lps"):
        ds = abdomen_dataset(tmp_path / "unused" / name, subjects=0, modalities=("T1",))
        ds["root"] = str(tmp_path / name)
        cfg = make_cfg(write_manifest(tmp_path / f"{name}.yaml", [ds]), f"run.workdir={tmp_path / ('run_' + name)}")
        run(cfg)
        ix = Index(cfg.workdir)
        row = ix.query(kind="volume", subject="sub-01")[0]
        out[name] = (load_image(ix.root, row), load_mask(ix.root, row), row["affine"])
        summary = (cfg.workdir / "curated" / "curate.json").read_text()
        assert ('"LPS"' in summary) == (name == "lps")  # reorientation is recorded
    assert np.array_equal(out["ras"][0], out["lps"][0]) and np.array_equal(out["ras"][1], out["lps"][1])
    np.testing.assert_allclose(out["ras"][2], out["lps"][2], atol=1e-6)


def test_dicom_series_to_ras(tmp_path):
    rng = np.random.default_rng(0)
    pix = [rng.integers(0, 4000, (6, 5)).astype(np.uint16) for _ in range(3)]
    write_dicom_series(tmp_path / "s", pix)
    img = io.read_image(tmp_path / "s")
    # LPS rows/cols -> RAS: x (=columns) and y (=rows) both reversed
    expected = np.stack([p[::-1, ::-1].T for p in pix], -1).astype(np.float32)
    assert img.array.shape == (5, 6, 3) and np.array_equal(img.array, expected)
    assert img.spacing == (0.8, 0.9, 2.5) and img.reoriented and img.orientation == "LPS"
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_dicom_series_input(tmp_path, make_cfg):
    rng = np.random.default_rng(2)
    for i in (1, 2):
        pix = [rng.integers(0, 1000, (12, 10)).astype(np.uint16) for _ in range(4)]
        write_dicom_series(tmp_path / "dicom" / f"sub-0{i}" / "T1", pix)
    ds = {"name": "dcm", "root": "dicom", "subject_pattern": r"(?P<subject>sub-\d+)", "region": "upper_abdomen",
          "series": [{"modality": "T1", "images": "*/T1"}]}
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    out = run(cfg)
    assert out["volumes"] == 2 and out["slices"] == 8
    row = Index(cfg.workdir).query(kind="volume", subject="sub-01")[0]
    assert row["orig_shape"] == [10, 12, 4] and row["spacing"] == [0.8, 0.9, 2.5] and not row["has_mask"]
    assert load_image(cfg.workdir / "curated", row).shape == (1, 4, 16, 16)


def test_png_input(tmp_path, make_cfg):
    from mrgen.io import write_png

    for i in (1, 2, 3):
        img = np.zeros((24, 24), np.uint8)
        img[4:12, 4:20] = 200
        lab = (img > 0).astype(np.uint8)
        write_png(tmp_path / "png" / f"case{i}_img.png", img + i)
        write_png(tmp_path / "png" / f"case{i}_lab.png", lab)
    ds = {"name": "png", "root": "png", "subject_pattern": r"(?P<subject>case\d+)_img", "region": "upper_abdomen",
          "normalize": "minmax", "labels": {1: "liver"},
          "series": [{"modality": "T2", "images": "*_img.png", "masks": "{subject}_lab.png"}]}
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    out = run(cfg)
    assert out["slices"] == 3
    row = Index(cfg.workdir).query(subject="case2")[0]
    assert row["organs"] == ["liver"] and row["shape"] == [16, 16]
    img, mask = load_image(cfg.workdir / "curated", row), load_mask(cfg.workdir / "curated", row)
    assert img.shape == (1, 16, 16) and mask.shape == (16, 16)
    assert np.median(img[0][mask == 1]) > 0.9 and np.median(img[0][mask == 0]) < -0.9  # edges are blended


def test_labels_json(abdomen, make_cfg):
    import json

    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    run(cfg)
    labels = json.loads((cfg.workdir / "curated" / "labels.json").read_text())
    assert labels == {"abd": {str(k): v for k, v in LABELS.items()}}


@pytest.mark.parametrize("workers", [2])
def test_workers_give_the_same_index(abdomen, make_cfg, tmp_path, workers):
    manifest, _ = abdomen
    a = make_cfg(manifest, f"run.workdir={tmp_path / 'a'}")
    b = make_cfg(manifest, f"run.workdir={tmp_path / 'b'}", f"curate.workers={workers}")
    run(a), run(b)
    assert pq.read_table(a.workdir / "curated" / "index.parquet").equals(pq.read_table(b.workdir / "curated" / "index.parquet"))
