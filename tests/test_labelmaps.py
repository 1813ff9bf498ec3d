"""mrgen.labelmaps: the label-map file (round trip, schema versions, bad files), label names, organs, spacing."""

import json

import numpy as np
import pytest

from mrgen import labelmaps
from mrgen.config import load_config


def test_round_trip_keeps_mask_and_meta_and_records_the_schema(tmp_path):
    mask = np.arange(60).reshape(3, 4, 5) % 8
    meta = {"id": "morph/x_v0", "kind": "morphed", "seed": 12, "organs": ["liver"], "record": {"spacing": [2.0, 1.5, 1.5]}}
    f = tmp_path / "labels" / "x_v0.npz"
    labelmaps.save_labels(f, mask, meta)
    got = labelmaps.load_labels(f)
    assert got["mask"].dtype == np.int64 and np.array_equal(got["mask"], mask)
    assert got["meta"] == {**meta, "schema": 1}
    with np.load(f, allow_pickle=False) as z:
        assert z["mask"].dtype == np.uint8 and json.loads(str(z["meta"]))["schema"] == 1
    assert [p.name for p in f.parent.iterdir()] == ["x_v0.npz"]  # atomic: no temp file left


def _write_raw(path, meta, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays, meta=np.array(json.dumps(meta)))


def test_reader_refuses_a_newer_schema_and_reads_unversioned_files(tmp_path):
    mask = np.array([[0, 1], [2, 0]], np.uint8)
    _write_raw(tmp_path / "new.npz", {"id": "g", "schema": 2}, mask=mask)
    with pytest.raises(ValueError, match=r"schema 2, newer than this mrgen reads \(up to 1\); upgrade mrgen"):
        labelmaps.load_labels(tmp_path / "new.npz")
    _write_raw(tmp_path / "old.npz", {"id": "g"}, mask=mask)  # written before the schema field existed
    assert np.array_equal(labelmaps.load_labels(tmp_path / "old.npz")["mask"], mask)


def test_reader_names_a_file_that_is_no_label_map(tmp_path):
    _write_raw(tmp_path / "c.npz", [], images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"not a label map .*'images'"):
        labelmaps.load_labels(tmp_path / "c.npz")


@pytest.mark.parametrize("bad", [256, -1])
def test_writer_refuses_values_uint8_cannot_hold(tmp_path, bad):
    with pytest.raises(ValueError, match=r"0\.\.255"):
        labelmaps.save_labels(tmp_path / "m.npz", np.array([[0, bad]]), {})
    assert not (tmp_path / "m.npz").exists()


def test_label_names_and_organs_in(tmp_path):
    cur = tmp_path / "curated"
    cur.mkdir()
    (cur / "labels.json").write_text(json.dumps({"a": {"1": "liver", "2": "spleen"}, "b": {"2": "milz", "4": "kidney"}}))
    names = labelmaps.label_names(tmp_path)  # a run folder works, as does curated/
    assert names == {1: "liver", 2: "milz", 4: "kidney"} == labelmaps.label_names(cur)  # the last dataset names 2
    assert labelmaps.dataset_names(cur) == {"a": {1: "liver", 2: "spleen"}, "b": {2: "milz", 4: "kidney"}}
    mask = np.array([[1, 1, 1, 0], [2, 4, 4, 9], [9, 9, 0, 0]])
    assert labelmaps.organs_in(mask, names, min_voxels=2) == ["liver", "kidney"]  # 2: one voxel; 9: no name
    assert labelmaps.organs_in(mask, names, min_voxels=1) == ["liver", "milz", "kidney"]
    with pytest.raises(FileNotFoundError, match="run `mrgen curate` first"):
        labelmaps.label_names(tmp_path / "elsewhere")
    assert labelmaps.dataset_names(tmp_path / "elsewhere") == {}


def test_item_spacing_follows_curation():
    cfg = load_config("tiny", overrides=["data.spatial_dims=3", "data.image_size=16", "data.depth=8"])
    row = {"spacing": [1.5, 1.0, 5.0], "orig_shape": [32, 40, 4]}
    assert labelmaps.item_spacing(cfg, row) == pytest.approx((4 * 5.0 / 8, 48.0 / 16, 48.0 / 16))
    cfg2 = load_config("tiny")
    assert labelmaps.item_spacing(cfg2, row) == pytest.approx((3.0, 3.0))


def test_item_spacing_reads_the_curated_grid_when_the_index_has_it():
    # a cropped series: 192 px of 0.75 mm placed at 2.25 mm/px; the source shape alone would say 144 mm / 16 px
    row = {"spacing": [0.75, 0.75, 5.0], "orig_shape": [192, 192, 10], "shape": [10, 16, 16], "grid_spacing": [5.0, 2.25, 2.25]}
    assert labelmaps.item_spacing(load_config("tiny"), row) == pytest.approx((2.25, 2.25))
    cfg3 = load_config("tiny", overrides=["data.spatial_dims=3", "data.image_size=16", "data.depth=8"])
    assert labelmaps.item_spacing(cfg3, row) == pytest.approx((5.0 * 10 / 8, 2.25, 2.25))
    from mrgen.segment.volumes import _spacing

    assert _spacing(row, (16, 16)) == pytest.approx((5.0, 2.25, 2.25))
    assert _spacing({k: v for k, v in row.items() if k != "grid_spacing"}, (16, 16)) == pytest.approx((5.0, 9.0, 9.0))
