"""Issue 2's acceptance: `mrgen phantom` then `mrgen curate` give an index that matches the phantom."""

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from mrgen import prompts
from mrgen.cli import app
from mrgen.curate.dataset import load_mask
from mrgen.curate.index import Index


def test_phantom_then_curate_index_matches(tmp_path):
    runner = CliRunner()
    for cmd in ("phantom", "curate"):
        res = runner.invoke(app, [cmd, "-p", "tiny", "-w", str(tmp_path), "phantom.modalities=[T1, T2, FLAIR]"])
        assert res.exit_code == 0, res.output
    idx = Index(tmp_path / "curated" / "index.parquet")
    slices = idx.query(kind="slice")
    vols = idx.query(kind="volume")
    # 4 subjects x 3 modalities, 4 slices each
    assert len(vols) == 12 and len(slices) == 48
    assert {r["modality"] for r in slices} == {"T1", "T2", "FLAIR"}
    names = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
    for r in slices:
        assert r["attributes"] == prompts.attributes(r["modality"])
        assert r["region"] == "upper_abdomen" and r["has_mask"]
        m = load_mask(tmp_path / "curated", r)
        present = [v for v in sorted(names) if (m == v).sum() >= 1]
        assert set(r["labels"]) <= set(present)
        assert r["organs"] == [names[v] for v in r["labels"]]
        assert r["prompt"] == prompts.build_prompt(r["modality"], "upper_abdomen", r["organs"])
    # stored slices come from the phantom's own mask volume (z order kept)
    src = nib.as_closest_canonical(nib.load(tmp_path / "phantom" / "masks" / "sub-000.nii.gz")).get_fdata()
    row = [r for r in vols if r["subject"] == "sub-000" and r["modality"] == "T1"][0]
    stored = load_mask(tmp_path / "curated", row)
    assert stored.shape[0] == src.shape[2]
    for z in range(src.shape[2]):
        assert set(np.unique(stored[z])) <= set(np.unique(src[..., z]).astype(int))
    # split by subject: every subject's three series share one split
    by_subject = {}
    for r in vols:
        by_subject.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_subject.values()) and {"train", "test"} <= set().union(*by_subject.values())
    # one-call query
    liver_t2 = idx.query(modality="T2", region="upper_abdomen", organ="liver")
    assert liver_t2 and all("liver" in r["organs"] and r["modality"] == "T2" for r in liver_t2)
    assert len(liver_t2) == sum(1 for r in slices if r["modality"] == "T2" and "liver" in r["organs"])
