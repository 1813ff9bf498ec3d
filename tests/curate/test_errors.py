"""Each bad input gives one CurateError naming the file and the fix, before anything is written."""

from __future__ import annotations

import numpy as np
from curate_helpers import abdomen_dataset, fails as _fails, save, write_manifest
from typer.testing import CliRunner

from mrgen.cli import app
from mrgen.curate import run


def _setup(tmp_path, **kw):
    ds = abdomen_dataset(tmp_path / "data", subjects=3, **kw)
    return ds, tmp_path / "data"


def _arrays(cfg, subject):
    return list((cfg.workdir / "curated" / "arrays").rglob(f"{subject}/*.npy"))


def test_corrupt_file(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    (root / "images" / "sub-02_T1.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"sub-02_T1\.nii\.gz", "corrupt")
    assert not _arrays(cfg, "sub-02") and not (cfg.workdir / "curated" / "index.parquet").exists()


def test_mask_shape_mismatch(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    save(root / "masks" / "sub-02.nii.gz", np.ones((20, 16, 5), np.uint8))
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"masks/sub-02\.nii\.gz: mask shape \(20, 16, 5\) differs", "resample the mask")
    assert not [p for p in _arrays(cfg, "sub-02") if "T1" in p.name]


def test_affine_mismatch(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    from curate_helpers import organ_mask

    save(root / "masks" / "sub-03.nii.gz", organ_mask(), np.diag([1.5, 1.5, 4.2, 1.0]))
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"sub-03\.nii\.gz: mask affine differs", "affine_tol")
    assert run(make_cfg(tmp_path / "m.yaml", "curate.affine_tol=1.0"))["volumes"] == 6  # a looser tolerance accepts it


def test_empty_mask(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    save(root / "masks" / "sub-01.nii.gz", np.zeros((20, 16, 6), np.uint8))
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"masks/sub-01\.nii\.gz: mask is empty", "drop this mask")


def test_undeclared_label(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    from curate_helpers import organ_mask

    m = organ_mask()
    m[0, 0, 0] = 7
    save(root / "masks" / "sub-02.nii.gz", m)
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"sub-02\.nii\.gz: label value\(s\) \[7\] are not declared", "add them to 'labels:'")


def test_unknown_modality(tmp_path, make_cfg):
    ds, _ = _setup(tmp_path)
    ds["series"][0]["modality"] = "T7"
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"m\.yaml", "unknown modality 'T7'", "MRGEN_MODALITIES")
    assert not (cfg.workdir / "curated").exists()


def test_nan_voxels(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    a = np.ones((20, 16, 6), np.float32)
    a[3, 3, 3] = np.nan
    a[4, 4, 4] = np.inf
    save(root / "images" / "sub-03_T2.nii.gz", a)
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"sub-03_T2\.nii\.gz: 2 NaN/Inf voxels")


def test_pattern_matches_nothing(tmp_path, make_cfg):
    ds, _ = _setup(tmp_path)
    ds["series"][1]["images"] = "images/*_FLAIR.nii.gz"
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"m\.yaml", r"images pattern 'images/\*_FLAIR\.nii\.gz' matches nothing", "fix the pattern")


def test_subject_regex_does_not_match(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    (root / "images" / "sub-02_T1.nii.gz").rename(root / "images" / "patient2_T1.nii.gz")
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"patient2_T1\.nii\.gz: subject_pattern", "fix the regex")


def test_missing_mask_and_bad_manifest_keys(tmp_path, make_cfg):
    ds, root = _setup(tmp_path)
    (root / "masks" / "sub-01.nii.gz").unlink()
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"masks/sub-01\.nii\.gz does not exist")
    ds2 = dict(ds, colour="red")
    _fails(make_cfg(write_manifest(tmp_path / "m2.yaml", [ds2])), r"m2\.yaml", r"unknown key\(s\) \['colour'\]")
    ds3 = dict(ds, region="elbow")
    _fails(make_cfg(write_manifest(tmp_path / "m3.yaml", [ds3])), "unknown region 'elbow'")
    _fails(make_cfg(tmp_path / "absent.yaml"), "absent.yaml does not exist")


def test_env_expansion_in_root(tmp_path, make_cfg, monkeypatch):
    ds, _ = _setup(tmp_path)
    ds["root"] = "${MRGEN_TEST_ROOT:-nowhere}/data"
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    _fails(make_cfg(manifest), r"root folder .*nowhere/data does not exist", "MRGEN_SHARED_DATA")
    monkeypatch.setenv("MRGEN_TEST_ROOT", str(tmp_path))
    assert run(make_cfg(manifest))["volumes"] == 6
    ds["root"] = "${MRGEN_UNSET_VAR}/data"
    monkeypatch.delenv("MRGEN_UNSET_VAR", raising=False)
    _fails(make_cfg(write_manifest(tmp_path / "m4.yaml", [ds])), "MRGEN_UNSET_VAR is not set")


def test_cli_exits_non_zero_and_names_the_file(tmp_path):
    ds, root = _setup(tmp_path)
    (root / "images" / "sub-02_T2.nii.gz").write_bytes(b"garbage")
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    res = CliRunner().invoke(app, ["curate", "-p", "tiny", "-w", str(tmp_path / "run"), f"curate.manifest={manifest}"])
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "CurateError" in out and "sub-02_T2.nii.gz" in out
