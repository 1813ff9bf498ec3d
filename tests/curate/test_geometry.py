"""Slice along the acquisition, one physical scale, crops, 3D windows, the geometry summary and preview."""

from __future__ import annotations

import json

import numpy as np
import pytest
from curate_helpers import NI, NJ, NK, cardiac_dataset, cardiac_stack, save, short_axis_affine, write_manifest
from typer.testing import CliRunner

from mrgen import io
from mrgen.curate import CurateError, run
from mrgen.curate.dataset import load_mask
from mrgen.curate.geometry import place, slice_axis, window
from mrgen.curate.index import Index

def _curate(tmp_path, make_cfg, name, ds, *overrides):
    cfg = make_cfg(write_manifest(tmp_path / f"{name}.yaml", [ds]), f"run.workdir={tmp_path / name}", *overrides)
    out = run(cfg)
    return cfg, out, json.loads((cfg.workdir / "curated" / "curate.json").read_text())


@pytest.mark.parametrize("phi,codes,world", [(50, "PSR", "R"), (40, "LSP", "A")])
def test_oblique_stack_is_cut_into_its_own_slices(tmp_path, make_cfg, phi, codes, world):
    import nibabel as nib

    assert "".join(nib.aff2axcodes(short_axis_affine(phi))) == codes
    cfg, out, summary = _curate(tmp_path, make_cfg, codes, cardiac_dataset(tmp_path / codes, phi))
    assert out["slices"] == 2 * NK  # one item per acquired slice (the old canonical-S cut gave NJ = 20)
    vol = Index(cfg.workdir).query(kind="volume", subject="p1")[0]
    assert vol["shape"] == [NK, 16, 16] and vol["orig_shape"] == [NI, NJ, NK] and vol["spacing"] == [1.25, 1.25, 8.0]
    geo = summary["volumes"]["heart/p1/bSSFP"]["geometry"]
    assert (geo["slice_axis"], geo["file_axis"], geo["rule"]) == (world, "k", "acquisition")
    stored = load_mask(cfg.workdir / "curated", vol)
    # the blood pool grows with k: stored slice z is acquired slice k = z (slice order kept, right-handed)
    pool = (stored == 2).sum(axis=(1, 2))
    assert np.all(np.diff(pool) > 0), pool
    # in-plane: H runs along -i (towards R/A), W along +j (S): the slice-0 marker (i high, j high) is at low H, high W
    hit = np.argwhere((stored[0] == 3) & (np.arange(16)[None, :] >= 11))
    assert len(hit) and hit[:, 0].max() < 8 and hit[:, 1].min() >= 11


def test_psr_and_lsp_stacks_of_one_anatomy_give_the_same_arrays(tmp_path, make_cfg):
    arrays = {}
    for phi in (40, 50):  # codes LSP / PSR: canonical RAS alone would transpose and reverse one of them
        cfg, _, summary = _curate(tmp_path, make_cfg, f"phi{phi}", cardiac_dataset(tmp_path / f"d{phi}", phi, subjects=("p1",)))
        vol = Index(cfg.workdir).query(kind="volume")[0]
        arrays[phi] = (np.load(cfg.workdir / "curated" / vol["image"]), load_mask(cfg.workdir / "curated", vol))
        assert summary["volumes"]["heart/p1/bSSFP"]["geometry"]["flipped"] == (phi == 40)
    assert np.array_equal(arrays[40][0], arrays[50][0]) and np.array_equal(arrays[40][1], arrays[50][1])


def test_slice_axis_override(tmp_path, make_cfg):
    ds = cardiac_dataset(tmp_path / "d", 50, subjects=("p1",), slice_axis="axial")
    cfg, out, summary = _curate(tmp_path, make_cfg, "axial", ds)
    assert out["slices"] == NJ  # j is the file's S axis
    assert summary["volumes"]["heart/p1/bSSFP"]["geometry"]["rule"] == "manifest"
    ds["slice_axis"] = "j"
    assert _curate(tmp_path, make_cfg, "j", ds)[1]["slices"] == NJ
    ds["slice_axis"] = "short-axis"
    with pytest.raises(CurateError, match=r"slice_axis must be one of auto, axial, coronal, sagittal, i, j, k"):
        _curate(tmp_path, make_cfg, "bad", ds)


def test_slice_axis_rule():
    eye = np.eye(4)
    assert slice_axis((20, 20, 6), (1.25, 1.25, 8.0), (0, 1, 2), eye).rule == "acquisition"
    iso = slice_axis((20, 20, 20), (1.0, 1.0, 1.4), (0, 1, 2), eye)  # < 1.5x: near-isotropic, canonical axial
    assert (iso.axis, iso.rule, iso.flip) == (2, "canonical", False)
    sag = slice_axis((6, 20, 20), (8.0, 1.25, 1.25), (2, 0, 1), eye)
    assert (sag.axis, sag.inplane, sag.file_axis) == (0, (1, 2), 2)
    assert slice_axis((20, 20, 1), (1.0, 1.0, 1.0), (0, 1, 2), eye).rule == "single slice"


def test_read_geometry_matches_read_image(tmp_path):
    img, _ = cardiac_stack()
    path = save(tmp_path / "x.nii.gz", img, short_axis_affine(50))
    g, full = io.read_geometry(path), io.read_image(path)
    assert g.shape == full.array.shape and g.spacing == full.spacing and g.axes == full.axes == (2, 0, 1)
    np.testing.assert_allclose(g.affine, full.affine)


def disk_dataset(root, radius_mm=10.0, offset_mm=(0.0, 0.0)) -> dict:
    """Two series of one disk of ``radius_mm``: T1 at 1.25 mm (80 mm field of view), T2 at 0.625 mm (40 mm)."""
    for mod, sp in (("T1", 1.25), ("T2", 0.625)):
        n = 64
        c = (np.arange(n) - (n - 1) / 2) * sp
        x, y = np.meshgrid(c - offset_mm[0], c - offset_mm[1], indexing="ij")
        disk = (np.hypot(x, y) <= radius_mm).astype(np.uint8)
        m = np.repeat(disk[..., None], 3, axis=2)
        aff = np.diag([sp, sp, 6.0, 1.0])
        save(root / f"s1_{mod}.nii.gz", (100.0 + 300.0 * m).astype(np.float32), aff)
        save(root / f"s1_{mod}_gt.nii.gz", m, aff)
    return {"name": "disk", "root": str(root), "subject_pattern": r"(?P<subject>s\d+)_", "normalize": "minmax",
            "labels": {1: "liver"}, "series": [{"modality": m, "images": f"s1_{m}.nii.gz", "masks": f"s1_{m}_gt.nii.gz"}
                                             for m in ("T1", "T2")]}


def _disk_pixels(cfg) -> dict:
    ix = Index(cfg.workdir)
    return {v["modality"]: int((load_mask(ix.root, v)[1] == 1).sum()) for v in ix.query(kind="volume")}


@pytest.mark.parametrize("spacing,mm_per_px", [("0", 1.875), ("2.0", 2.0)])
def test_disk_at_two_spacings_has_one_size_in_pixels(tmp_path, make_cfg, spacing, mm_per_px):
    # auto: median of the fields of view / image_size = median(80/32, 40/32) = 1.875 mm per pixel
    cfg, _, summary = _curate(tmp_path, make_cfg, "disk", disk_dataset(tmp_path / "d"), "data.image_size=32",
                              f"data.spacing={spacing}")
    px = _disk_pixels(cfg)
    expected = np.pi * (10.0 / mm_per_px) ** 2
    assert abs(px["T1"] - px["T2"]) <= 0.15 * expected, px  # nearest-neighbour edges; the old resize-to-fit gave T2 4x T1
    assert all(abs(p - expected) <= 0.15 * expected for p in px.values()), (px, expected)
    geo = {k.split("/")[-1]: v["geometry"] for k, v in summary["volumes"].items()}
    assert geo["T1"]["scale_mm"] == pytest.approx(mm_per_px, rel=0.03) and geo["T2"]["scale_mm"] == pytest.approx(mm_per_px, rel=0.03)
    assert geo["T1"]["resampled"] > 32 > geo["T2"]["resampled"]  # T1 cropped, T2 padded
    assert summary["settings"]["spacing"] == ("auto" if spacing == "0" else 2.0)
    assert Index(cfg.workdir).query(kind="volume", modality="T2")[0]["grid_spacing"] == [6.0, geo["T2"]["scale_mm"], geo["T2"]["scale_mm"]]


def test_foreground_crop_keeps_an_off_centre_disk_in_view(tmp_path, make_cfg):
    ds = disk_dataset(tmp_path / "d", radius_mm=6.0, offset_mm=(20.0, 0.0))  # T1: 20 mm off centre in an 80 mm field
    ds["series"] = ds["series"][:1]
    full = np.pi * (6.0 / 1.25) ** 2
    cfg, _, _ = _curate(tmp_path, make_cfg, "centre", ds, "data.image_size=32", "data.spacing=1.25")
    assert _disk_pixels(cfg)["T1"] < 0.7 * full  # a centre 40 mm window cuts the disk
    ds["crop"] = "foreground"
    cfg, _, summary = _curate(tmp_path, make_cfg, "fg", ds, "data.image_size=32", "data.spacing=1.25")
    assert abs(_disk_pixels(cfg)["T1"] - full) <= 0.1 * full
    assert summary["summary"]["disk"]["geometry"]["crop"] == "foreground"


def test_window_and_place():
    assert window(10, 4) == 3 and window(4, 10) == -3 and window(10, 4, (8, 10)) == 6 and window(10, 4, (0, 1)) == 0
    a = np.arange(10)[None]
    assert place(a, {1: 3}, 4, -1).tolist() == [[3, 4, 5, 6]]
    assert place(a[:, :4], {1: -3}, 10, -1).tolist() == [[-1, -1, -1, 0, 1, 2, 3, -1, -1, -1]]


def test_3d_keeps_the_slices_that_cover_depth_times_spacing(tmp_path, make_cfg):
    ds = disk_dataset(tmp_path / "d")  # 3 slices of 6 mm
    cfg, _, summary = _curate(tmp_path, make_cfg, "d3", ds, "data.spatial_dims=3", "data.depth=8", "data.spacing=1.5")
    vols = {v["modality"]: v for v in Index(cfg.workdir).query(kind="volume")}
    assert vols["T1"]["shape"] == [2, 16, 16]  # round(8 * 1.5 mm / 6 mm) = 2 source slices, centre window
    assert summary["settings"]["grid"] == {"spacing": 1.5, "depth": 8, "z_spacing": 1.5}
    assert summary["volumes"]["disk/s1/T1"]["geometry"]["z_window"] == {"slices": 2, "start": 0}


def test_summary_is_printed_and_preview_written(tmp_path):
    ds = cardiac_dataset(tmp_path / "d", 50)
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    res = CliRunner().invoke(app_(), ["curate", "-p", "tiny", "-w", str(tmp_path / "run"), f"curate.manifest={manifest}"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "geometry heart: slices along R (acquisition) x2 (6 per volume), in-plane AS" in out
    assert "labels 200->1: LV myocardium, 500->2: LV blood pool, 600->3: right ventricle" in out
    png = tmp_path / "run" / "curated" / "preview_heart.png"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 150


def app_():
    from mrgen.cli import app

    return app
