"""Label values as the files hold them (200/500/600, float masks) -> stored 1..N, the mapping recorded;
bad values are one clear error naming the file, the values and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from curate_helpers import cardiac_dataset, cardiac_stack, fails as _fails, save, short_axis_affine, write_manifest

from mrgen.curate import run
from mrgen.curate.dataset import load_mask
from mrgen.curate.index import Index
from mrgen.curate.labels import context_values, n_classes, n_labels, original_values, target_names


@pytest.mark.parametrize("dtype", [np.float64, np.int16])  # MS-CMRSeg: float64 masks in C0, int16 in LGE
def test_file_values_are_stored_as_1_to_n(tmp_path, make_cfg, dtype):
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [cardiac_dataset(tmp_path / "d", 50, mask_dtype=dtype)]))
    run(cfg)
    ix = Index(cfg.workdir)
    vol = ix.query(kind="volume", subject="p1")[0]
    stored = load_mask(ix.root, vol)
    assert set(np.unique(stored)) == {0, 1, 2, 3}
    # the same stack written with 1/2/3 (and declared so) curates to the same stored mask
    _, mask = cardiac_stack()
    save(tmp_path / "e" / "p1_gt.nii.gz", np.select([mask == 200, mask == 500, mask == 600], [1, 2, 3], 0).astype(dtype),
         short_axis_affine(50))
    save(tmp_path / "e" / "p1_img.nii.gz", cardiac_stack()[0], short_axis_affine(50))
    plain = dict(cardiac_dataset(tmp_path / "unused", 50, subjects=()), root=str(tmp_path / "e"),
                 labels={1: "LV myocardium", 2: "LV blood pool", 3: "right ventricle"})
    ref = make_cfg(write_manifest(tmp_path / "plain.yaml", [plain]), f"run.workdir={tmp_path / 'plain'}")
    run(ref)
    assert np.array_equal(stored, load_mask(ref.workdir / "curated", Index(ref.workdir).query(kind="volume")[0]))
    assert vol["labels"] == [1, 2, 3] and vol["organs"] == ["LV myocardium", "LV blood pool", "right ventricle"]
    cur = cfg.workdir / "curated"
    assert json.loads((cur / "labels.json").read_text()) == {"heart": {"1": "LV myocardium", "2": "LV blood pool", "3": "right ventricle"}}
    assert json.loads((cur / "label_values.json").read_text()) == {"heart": {"1": 200, "2": 500, "3": 600}}
    assert original_values(cfg.workdir) == {1: 200, 2: 500, 3: 600}
    assert target_names(cfg.workdir) == {1: "LV myocardium", 2: "LV blood pool", 3: "right ventricle"}
    assert n_classes(cfg.workdir) == 4 and n_labels(cfg.workdir) == 3
    summary = json.loads((cur / "curate.json").read_text())
    assert summary["label_values"] == {"heart": {"1": 200, "2": 500, "3": 600}}
    assert summary["summary"]["heart"]["geometry"]["labels"] == {"200": "1: LV myocardium", "500": "2: LV blood pool",
                                                                 "600": "3: right ventricle"}


def test_one_mapping_for_all_datasets_and_context_after_the_labels(tmp_path, make_cfg):
    a = cardiac_dataset(tmp_path / "a", 50, subjects=("p1",))
    a["labels"] = {200: "LV myocardium", 500: "LV blood pool"}
    _, mask = cardiac_stack()
    mask[mask == 600] = 200  # dataset a has no RV label
    save(tmp_path / "a" / "p1_gt.nii.gz", mask, short_axis_affine(50))
    body = np.zeros(mask.shape, np.uint8)
    body[1:-1, 1:-1] = 1
    save(tmp_path / "a" / "p1_body.nii.gz", body, short_axis_affine(50))
    a["context"] = {1000: {"name": "body", "masks": "{subject}_body.nii.gz"}}
    b = dict(cardiac_dataset(tmp_path / "b", 50, subjects=("p2",)), name="heart2")
    b["labels"] = {500: "LV blood pool", 600: "right ventricle", 200: "LV myocardium"}
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [a, b]))
    run(cfg)
    cur = cfg.workdir / "curated"
    # the union 200, 500, 600 -> 1, 2, 3 in both datasets (one value = one label, as in the files); context -> 4
    assert json.loads((cur / "label_values.json").read_text()) == {"heart": {"1": 200, "2": 500, "4": 1000},
                                                                    "heart2": {"1": 200, "2": 500, "3": 600}}
    assert json.loads((cur / "context.json").read_text()) == {"heart": {"4": "body"}}
    assert context_values(cfg.workdir) == {4} and n_labels(cfg.workdir) == 4 and n_classes(cfg.workdir) == 4
    ix = Index(cfg.workdir)
    sa = load_mask(ix.root, ix.query(kind="volume", dataset="heart")[0])
    sb = load_mask(ix.root, ix.query(kind="volume", dataset="heart2")[0])
    assert set(np.unique(sa)) == {0, 1, 2, 4} and set(np.unique(sb)) == {0, 1, 2, 3}
    assert np.array_equal(sa == 2, sb == 2)  # the same blood pool, the same stored value


def test_labels_already_1_to_n_keep_their_values(abdomen, make_cfg):
    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    run(cfg)
    assert original_values(cfg.workdir) == {1: 1, 2: 2, 3: 3, 4: 4}
    ix = Index(cfg.workdir)
    assert set(np.unique(load_mask(ix.root, ix.query(kind="volume", modality="T1")[0]))) == {0, 1, 2, 4}


def test_non_integer_mask_is_one_clear_error(tmp_path, make_cfg):
    ds = cardiac_dataset(tmp_path / "d", 50)
    _, mask = cardiac_stack()
    mask[3, 3, 2] = 250.5  # e.g. a mask resampled with linear interpolation
    save(tmp_path / "d" / "p2_gt.nii.gz", mask, short_axis_affine(50))
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"p2_gt\.nii\.gz: mask holds non-integer values \(1 voxels, e\.g\. 250\.5\)", "integer label values",
           "nearest-neighbour")
    assert not (cfg.workdir / "curated" / "index.parquet").exists()


def test_undeclared_value_is_one_clear_error(tmp_path, make_cfg):
    ds = cardiac_dataset(tmp_path / "d", 50)
    _, mask = cardiac_stack()
    mask[2:4, 2:4, 1] = 300
    save(tmp_path / "d" / "p1_gt.nii.gz", mask, short_axis_affine(50))
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"p1_gt\.nii\.gz: label value\(s\) \[300\] are not declared in the manifest labels "
                r"\{200: 'LV myocardium', 500: 'LV blood pool', 600: 'right ventricle'\}", "add them to 'labels:'")


@pytest.mark.parametrize("labels,message", [
    ({0: "background", 1: "liver"}, r"label value 0 is the background; leave it out of 'labels:'"),
    ({-2: "liver"}, r"label value -2 is negative"),
    ({2.5: "liver"}, r"label key 2\.5 is not an integer label value"),
    ({"LV": "liver"}, r"label key 'LV' is not an integer label value"),
    ({v: f"l{v}" for v in range(1, 258)}, r"257 distinct label and context values; curated masks hold at most 255"),
])
def test_bad_label_values_in_the_manifest(tmp_path, make_cfg, labels, message):
    ds = cardiac_dataset(tmp_path / "d", 50, subjects=("p1",))
    ds["labels"] = labels
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"m\.yaml", message)
    assert not (cfg.workdir / "curated").exists()


def test_pixel_spacing_overrides_the_header(tmp_path, make_cfg):
    ds = cardiac_dataset(tmp_path / "d", 50, subjects=("p1",))
    ds["series"][0]["pixel_spacing"] = 0.75
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]), "data.spacing=1.5")
    run(cfg)
    vol = Index(cfg.workdir).query(kind="volume")[0]
    assert vol["spacing"] == [0.75, 0.75, 8.0]
    aff = np.array(vol["affine"]).reshape(4, 4)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [0.75, 0.75, 8.0])
    geo = json.loads((cfg.workdir / "curated" / "curate.json").read_text())["volumes"]["heart/p1/bSSFP"]["geometry"]
    assert geo["header_spacing"] == [1.25, 1.25, 8.0] and geo["resampled"] == round(24 * 0.75 / 1.5)
    ds["series"][0]["pixel_spacing"] = [0.75, -1]
    _fails(make_cfg(write_manifest(tmp_path / "m2.yaml", [ds])), r"pixel_spacing must be one positive number or two")
