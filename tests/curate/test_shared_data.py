"""The example manifests on the real data in ../shared/data (skipped when it is absent).

Fast tests curate 2 subjects at 32 px; the full runs are marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from mrgen.config import load_config
from mrgen.curate import load_manifest, run, volumes
from mrgen.curate.dataset import load_image, load_mask
from mrgen.curate.index import Index

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MRGEN_SHARED_DATA") or REPO.parent / "shared" / "data")
EXAMPLES = REPO / "examples"
pytestmark = pytest.mark.shared_data


def need(folder: str) -> Path:
    if not (SHARED / folder).is_dir():
        pytest.skip(f"{SHARED / folder} not present (set MRGEN_SHARED_DATA)")
    return SHARED / folder


@pytest.fixture(autouse=True)
def shared_env(monkeypatch):
    monkeypatch.setenv("MRGEN_SHARED_DATA", str(SHARED))


def subset(tmp_path: Path, example: str, images: dict) -> Path:
    """The example manifest with narrower image globs (series modality -> glob)."""
    man = yaml.safe_load((EXAMPLES / example).read_text())
    for s in man["datasets"][0]["series"]:
        s["images"] = images.get(s["modality"], s["images"])
    out = tmp_path / example
    out.write_text(yaml.safe_dump(man, sort_keys=False))
    return out


def cfg_for(tmp_path: Path, manifest: Path, size: int = 32):
    return load_config("tiny", None, [f"run.workdir={tmp_path / 'run'}", f"curate.manifest={manifest}", f"data.image_size={size}"])


@pytest.mark.parametrize("example,folder,n_volumes,n_subjects", [
    ("brats2013.yaml", "brats2013", 12, 6), ("chaos_t2.yaml", "chaos_t2", 20, 20), ("spinalcord.yaml", "spinalcord", 3, 1),
    ("mscmrseg.yaml", "mscmrseg", 70, 35)])
def test_example_manifests_find_every_volume(example, folder, n_volumes, n_subjects):
    need(folder)
    specs = volumes(load_manifest(EXAMPLES / example))
    assert len(specs) == n_volumes and len({v.subject for v in specs}) == n_subjects
    assert all(v.mask is not None and v.mask.exists() for v in specs)


def test_brats_two_subjects(tmp_path):
    need("brats2013")
    pats = {"FLAIR": "brats_2013_pat000[12]_1/Flair_subtrMeanDivStd.nii.gz", "T1c": "brats_2013_pat000[12]_1/T1c_subtrMeanDivStd.nii.gz"}
    cfg = cfg_for(tmp_path, subset(tmp_path, "brats2013.yaml", pats))
    out = run(cfg)
    assert out["volumes"] == 4 and out["slices"] == 4 * 155
    ix = Index(cfg.workdir)
    vols = ix.query(kind="volume")
    assert {v["modality"] for v in vols} == {"FLAIR", "T1c"} and all(v["shape"] == [155, 32, 32] for v in vols)
    splits = {v["subject"]: v["split"] for v in vols}
    assert sorted(splits.values()) == ["test", "train"]  # 2 subjects: one held out, same for both modalities
    assert all(v["split"] == splits[v["subject"]] for v in vols)
    for subj in splits:
        f, t = (ix.query(kind="volume", subject=subj, modality=m)[0] for m in ("FLAIR", "T1c"))
        assert np.array_equal(load_mask(ix.root, f), load_mask(ix.root, t))  # co-registered: same mask
        img = load_image(ix.root, t)
        assert img.min() == -1.0 and 0.75 < (img == -1.0).mean() < 0.9  # constant background -> exactly -1
    assert set(vols[0]["labels"]) == {1, 2, 3, 4} and vols[0]["region"] == "brain"
    assert ix.query(modality="T1c", organ="enhancing tumour")


def test_chaos_two_subjects(tmp_path):
    need("chaos_t2")
    cfg = cfg_for(tmp_path, subset(tmp_path, "chaos_t2.yaml", {"T2-SPIR": "image_[12].nii.gz"}))
    out = run(cfg)
    assert out["volumes"] == 2 and out["datasets"] == 1
    ix = Index(cfg.workdir)
    for v in ix.query(kind="volume"):
        assert v["organs"] == ["liver", "right kidney", "left kidney", "spleen"] and v["modality"] == "T2-SPIR"
        assert v["spacing"] == [1.25, 1.25, 7.7]
    assert ix.query(modality="T2SPIR", region="upper_abdomen", organ="spleen")


def test_spinalcord_example(tmp_path):
    need("spinalcord")
    cfg = cfg_for(tmp_path, EXAMPLES / "spinalcord.yaml")
    out = run(cfg)
    assert out["volumes"] == 3 and out["slices"] == 77 + 55 + 9
    summary = (cfg.workdir / "curated" / "curate.json").read_text()
    assert '"spinalcord/spinalcord/T2": "PSR"' in summary  # stored P-S-R on disk, reoriented
    rows = Index(cfg.workdir).query(modality="T2", organ="spinal cord")
    assert len(rows) == 55 and rows[0]["region"] == "neck" and rows[0]["prompt"].endswith("; neck and cervical spine; spinal cord")


def test_mscmrseg_as_the_files_come(tmp_path):
    """Patient 6 (codes PSR) and 7 (LSP): 200/500/600 float64 / int16 masks, short-axis stacks on R / A."""
    import nibabel as nib

    from mrgen.curate.labels import original_values

    need("mscmrseg")
    pats = {"bSSFP": "C0/patient[67]_C0.nii.gz", "LGE": "LGE/patient[67]_LGE.nii.gz"}
    cfg = cfg_for(tmp_path, subset(tmp_path, "mscmrseg.yaml", pats), 64)
    assert run(cfg)["volumes"] == 4
    ix = Index(cfg.workdir)
    area = {}
    for v in ix.query(kind="volume"):
        hdr = nib.load(v["source"]).header
        assert v["shape"][0] == hdr.get_data_shape()[int(np.argmax(hdr.get_zooms()[:3]))]  # the acquired slices
        m = load_mask(ix.root, v)
        assert set(np.unique(m)) == {0, 1, 2, 3}
        area.setdefault(v["modality"], []).extend(int(n) for n in (m == 2).sum(axis=(1, 2)) if n)
    assert original_values(cfg.workdir) == {1: 200, 2: 500, 3: 600}
    med = {k: float(np.median(a)) for k, a in area.items()}
    assert max(med.values()) / min(med.values()) < 1.6, med  # the LV blood pool at one scale in both sequences
    assert (cfg.workdir / "curated" / "preview_mscmrseg.png").stat().st_size > 10_000


@pytest.mark.slow
def test_full_examples(tmp_path):
    need("brats2013"), need("chaos_t2")
    b = cfg_for(tmp_path / "b", EXAMPLES / "brats2013.yaml", 64)
    assert run(b)["volumes"] == 12
    ix = Index(b.workdir)
    assert len({r["subject"] for r in ix.query(kind="volume", split="test")}) == 2
    c = cfg_for(tmp_path / "c", EXAMPLES / "chaos_t2.yaml", 64)
    out = run(c)
    assert out["volumes"] == 20 and out["slices"] == 718
    assert all(v["organs"] == ["liver", "right kidney", "left kidney", "spleen"] for v in Index(c.workdir).query(kind="volume"))
