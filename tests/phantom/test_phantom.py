"""The built-in phantom: files, determinism, resume, labels and per-modality contrast (tiny, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mrgen.config import load_config
from mrgen.phantom import PhantomError, generate_subject, render_modality, run, safe_name

ALL = ["T1", "T1 in-phase", "T1 out-of-phase", "T1c", "T2", "T2-SPIR", "PD", "FLAIR", "DWI", "ADC"]


def _cfg(tmp_path, *overrides):
    return load_config("tiny", overrides=[f"run.workdir={tmp_path}", *overrides])


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_run_writes_images_masks_manifest(tmp_path):
    import nibabel as nib

    cfg = _cfg(tmp_path, "phantom.modalities=[T1,T2,T1 out-of-phase]")
    out = run(cfg)
    root = tmp_path / "phantom"
    assert out["subjects"] == 4 and out["files_written"] == 4 * 5
    for sub in ("sub-000", "sub-003"):
        for mod in ("T1", "T2", "T1_out-of-phase"):
            nii = nib.load(str(root / "images" / f"{sub}_{mod}.nii.gz"))
            assert nii.shape == (32, 32, 4) and nii.get_data_dtype() == np.float32
            assert np.allclose(nii.header.get_zooms(), cfg.phantom.spacing)
            assert nib.aff2axcodes(nii.affine) == ("R", "A", "S")
        mask = np.asarray(nib.load(str(root / "masks" / f"{sub}.nii.gz")).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 2, 3, 4}
    man = yaml.safe_load((root / "manifest.yaml").read_text())
    (ds,) = man["datasets"]
    assert man["version"] == 1 and ds["normalize"] == "mr" and ds["region"] == "upper_abdomen"
    assert ds["labels"] == {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
    assert [s["modality"] for s in ds["series"]] == ["T1", "T2", "T1 out-of-phase"]
    assert all(s["masks"] == "masks/{subject}.nii.gz" for s in ds["series"])
    for s in ds["series"]:  # each glob matches exactly this modality's files
        assert len(list(root.glob(s["images"]))) == 4
    meta = yaml.safe_load((root / "phantom.json").read_text())  # JSON is YAML
    assert meta["tissues"]["liver"]["source"] and len(meta["subjects"]) == 4
    assert (root / "preview.png").stat().st_size < 300_000


def test_rerun_keeps_files_and_same_seed_is_byte_identical(tmp_path):
    cfg = _cfg(tmp_path / "a")
    run(cfg)
    files = _files(tmp_path / "a" / "phantom")
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = run(cfg)
    assert again["files_written"] == 0 and again["subjects_skipped"] == 4
    assert {p: p.stat().st_mtime_ns for p in _files(tmp_path / "a" / "phantom")} == mtimes
    run(_cfg(tmp_path / "b"))
    for p in files:
        q = tmp_path / "b" / p.relative_to(tmp_path / "a")
        assert q.read_bytes() == p.read_bytes(), p.name
    # a removed file is regenerated identically, nothing else is touched
    victim = tmp_path / "a" / "phantom" / "images" / "sub-002_T2.nii.gz"
    data = victim.read_bytes()
    victim.unlink()
    assert run(cfg)["files_written"] == 1 and victim.read_bytes() == data


def test_changed_seed_regenerates_everything(tmp_path):
    run(_cfg(tmp_path))
    before = (tmp_path / "phantom" / "images" / "sub-000_T1.nii.gz").read_bytes()
    out = run(_cfg(tmp_path, "phantom.seed=7"))
    assert out["files_written"] == 16
    assert (tmp_path / "phantom" / "images" / "sub-000_T1.nii.gz").read_bytes() != before


def test_determinism_and_seed_dependence(tmp_path):
    cfg = _cfg(tmp_path)
    a, b = generate_subject(cfg, 1), generate_subject(cfg, 1)
    assert np.array_equal(a.anatomy.fractions, b.anatomy.fractions)
    assert np.array_equal(a.anatomy.mask, b.anatomy.mask)
    assert np.array_equal(render_modality(a, "T2", cfg), render_modality(b, "T2", cfg))
    other = generate_subject(_cfg(tmp_path, "phantom.seed=1"), 1)
    assert not np.array_equal(a.anatomy.mask, other.anatomy.mask)
    assert not np.array_equal(a.anatomy.mask, generate_subject(cfg, 2).anatomy.mask)
    # same anatomy, independent noise per modality
    t1, t1_clean = render_modality(a, "T1", cfg), render_modality(a, "T1", cfg, noise=False)
    assert not np.array_equal(t1, t1_clean) and np.corrcoef(t1.ravel(), t1_clean.ravel())[0, 1] > 0.9


def _means(cfg, layout_mods, seed_subjects=2, purity=0.9):
    """Mean stored intensity per (modality, tissue) over pure voxels (fraction >= purity), pooled over
    subjects; also per (modality, "label<k>") over the mask's label k."""
    sums: dict = {}
    for i in range(seed_subjects):
        s = generate_subject(cfg, i)
        frac, tissues = s.anatomy.fractions, s.anatomy.tissues
        for m in layout_mods:
            img = render_modality(s, m, cfg)
            regions = [(t, frac[k] >= purity) for k, t in enumerate(tissues)]
            regions += [(f"label{k}", s.anatomy.mask == k) for k in s.anatomy.labels]
            for t, sel in regions:
                acc = sums.setdefault((m, t), [0.0, 0])
                acc[0] += float(img[sel].sum())
                acc[1] += int(sel.sum())
    return {k: v[0] / v[1] for k, v in sums.items() if v[1] >= 5}


def test_abdomen_contrasts(tmp_path):
    cfg = _cfg(tmp_path, "phantom.size=48", "phantom.slices=6")
    m = _means(cfg, ALL)
    assert m["T1", "fat"] > m["T1", "liver"] > m["T1", "fluid"]
    assert m["T1", "liver"] > m["T1", "spleen"]  # (spleen ~ muscle on T1)
    assert m["T2", "fluid"] > m["T2", "spleen"] > m["T2", "liver"] > m["T2", "muscle"]
    assert m["T2-SPIR", "fat"] < 0.3 * m["T2", "fat"] and m["T2-SPIR", "fat"] < m["T2-SPIR", "spleen"]
    assert m["PD", "fat"] > m["PD", "muscle"]
    assert m["FLAIR", "fluid"] < m["FLAIR", "spleen"]
    assert m["T1c", "label2"] > 1.5 * m["T1", "label2"] and m["T1c", "liver"] > m["T1", "liver"]  # kidney enhances
    assert m["T1 out-of-phase", "marrow"] < 0.5 * m["T1 in-phase", "marrow"]  # fat + water in one voxel cancel
    assert m["DWI", "spleen"] > m["DWI", "liver"] and m["DWI", "fat"] < m["DWI", "spleen"]
    assert m["ADC", "fluid"] > m["ADC", "liver"] > m["ADC", "fat"]
    assert 2000 < m["ADC", "fluid"] < 3600  # stored in 1e-6 mm^2/s


def test_out_of_phase_dark_boundaries(tmp_path):
    cfg = _cfg(tmp_path, "phantom.size=48", "phantom.slices=6", "phantom.noise=0")
    s = generate_subject(cfg, 0)
    ip, op = render_modality(s, "T1 in-phase", cfg), render_modality(s, "T1 out-of-phase", cfg)
    frac = s.anatomy.fractions
    fat = frac[s.anatomy.tissues.index("fat")]
    air = 1 - frac.sum(0)
    mixed = (fat > 0.35) & (fat < 0.65) & (air < 0.02)  # fat-water interface voxels
    pure = fat > 0.95
    assert mixed.sum() > 20
    assert (op[mixed] / ip[mixed]).mean() < 0.75 * (op[pure] / ip[pure]).mean()


def test_brain_layout_contrasts_and_labels(tmp_path):
    cfg = _cfg(tmp_path, "phantom.layout=brain", "phantom.size=48", "phantom.slices=6")
    s = generate_subject(cfg, 0)
    assert set(np.unique(s.anatomy.mask)) == {0, 1, 2, 3, 4, 5}
    m = _means(cfg, ["T1", "T2", "FLAIR", "T1c"])
    assert m["T1", "wm"] > m["T1", "gm"] > m["T1", "csf"]
    assert m["T2", "csf"] > m["T2", "gm"] > m["T2", "wm"]
    assert m["FLAIR", "csf"] < 0.5 * m["FLAIR", "wm"] and m["FLAIR", "gm"] > m["FLAIR", "wm"]
    assert m["T1c", "label1"] < m["T1c", "label4"]  # ventricles stay dark, brain does not enhance
    f = _means(cfg, ["T1", "T2", "T2 FS", "T1c"], purity=0.6)  # the scalp is thin
    assert f["T1", "fat"] > f["T1", "wm"] and f["T2 FS", "fat"] < 0.3 * f["T2", "fat"]
    assert f["T1c", "blood"] > 3 * f["T1", "blood"]


def test_modality_names(tmp_path):
    with pytest.raises(ValueError, match="cannot render modality 'SWI'.*FLAIR"):
        run(_cfg(tmp_path, "phantom.modalities=[T1,SWI]"))
    with pytest.raises(PhantomError, match="Foo"):
        run(_cfg(tmp_path, "phantom.modalities=[Foo]"))
    assert not (tmp_path / "phantom" / "images").exists()
    out = run(_cfg(tmp_path, "phantom.modalities=[T1w,T2,T2]", "phantom.subjects=1"))  # alias, duplicate
    assert out["modalities"] == "T1, T2"
    assert safe_name("T1 out-of-phase") == "T1_out-of-phase" and safe_name("T2*") == "T2star"


def test_volume_use_same_code(tmp_path):
    cfg = _cfg(tmp_path, "phantom.size=24", "phantom.slices=24", "phantom.spacing=[2.0,2.0,2.0]", "phantom.subjects=1")
    out = run(cfg)
    import nibabel as nib

    img = nib.load(str(tmp_path / "phantom" / "images" / "sub-000_T1.nii.gz"))
    assert out["files_written"] == 4 and img.shape == (24, 24, 24)
    mask = np.asarray(nib.load(str(tmp_path / "phantom" / "masks" / "sub-000.nii.gz")).dataobj)
    present = [z for z in range(24) if (mask[:, :, z] == 4).any()]  # the spleen appears and disappears along z
    assert 0 < len(present) < 24


def test_fewer_subjects_removes_extra_files(tmp_path):
    run(_cfg(tmp_path))
    out = run(_cfg(tmp_path, "phantom.subjects=2"))
    assert out["files_written"] == 0
    root = tmp_path / "phantom"
    assert sorted(p.name for p in (root / "masks").iterdir()) == ["sub-000.nii.gz", "sub-001.nii.gz"]
    assert len(list(root.glob("images/sub-*_T1.nii.gz"))) == 2
