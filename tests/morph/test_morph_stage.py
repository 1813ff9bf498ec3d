"""`mrgen morph` stage: outputs, affines, records, reruns, preview, CLI errors."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from morph_helpers import CEREB, STEM, VENT, make_brain

from mrgen.config import load_config
from mrgen.io import read_image, write_nifti
from mrgen.morph import OPS, apply_recipe, morph_files
from mrgen.seeds import derive

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "mrgen" / "data" / "morph"


def _cfg(tmp_path, *extra):
    return load_config("tiny", overrides=[f"run.workdir={tmp_path / 'run'}", f"morph.inputs={tmp_path / 'labels'}/*.nii.gz",
                                          f"morph.recipe={EXAMPLES / 'ventriculomegaly.yaml'}", *extra])


def test_run_writes_variants_records_preview_and_skips(tmp_path):
    lab, sp = make_brain()
    write_nifti(tmp_path / "labels" / "case_a.nii.gz", lab.astype(np.uint8), spacing=sp)  # uint8 source: outputs keep it
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps[:3, 3] = [47.0, 47.0, 0.0]
    write_nifti(tmp_path / "labels" / "case_b.nii.gz", lab[::-1, ::-1].copy(), affine=lps)  # LPS voxel order
    cfg = _cfg(tmp_path, "morph.variants=2", "morph.seed=5")
    summary = morph_files(cfg)
    assert summary["inputs"] == 2 and summary["written"] == 4 and summary["skipped"] == 0
    out_dir = tmp_path / "run" / "morph"
    assert sorted(p.name for p in out_dir.glob("*.nii.gz")) == [f"case_{c}_v{k}.nii.gz" for c in "ab" for k in (0, 1)]
    for c in "ab":
        src = nib.load(tmp_path / "labels" / f"case_{c}.nii.gz")
        for k in (0, 1):
            out = nib.load(out_dir / f"case_{c}_v{k}.nii.gz")
            assert np.allclose(out.affine, src.affine) and out.shape == src.shape
            assert out.get_data_dtype() == src.get_data_dtype()
    records = [json.loads(x) for x in (out_dir / "records.jsonl").read_text().splitlines()]
    assert [r["output"] for r in records] == [f"case_{c}_v{k}.nii.gz" for c in "ab" for k in (0, 1)]
    assert len({r["seed"] for r in records}) == 4
    # the project's one seed scheme (mrgen.seeds, golden values in tests/test_seeds.py) of (morph.seed, stem, variant)
    assert [r["seed"] for r in records] == [derive(5, f"case_{c}", k) for c in "ab" for k in (0, 1)]
    for r in records:
        before = read_image(r["source"], kind="mask")
        after = read_image(out_dir / r["output"], kind="mask")
        assert np.array_equal(before.array, lab)  # canonical view of both sources is the same map
        (edit,) = r["edits"]
        factor = edit["params"]["factor"]
        assert 1.3 <= factor <= 1.8
        vent = r["volumes_after"][str(VENT)] / r["volumes_before"][str(VENT)]
        assert abs(vent / factor - 1) <= 0.05 and vent == (after.array == VENT).sum() / (lab == VENT).sum()
        for p in (CEREB, STEM):
            assert np.array_equal(after.array == p, lab == p)
        # the record alone reproduces the output: recipe + seed, or op + drawn params
        again, _ = apply_recipe(lab, before.spacing, EXAMPLES / "ventriculomegaly.yaml", np.random.default_rng(r["seed"]))
        assert np.array_equal(again, after.array)
        assert np.array_equal(OPS[edit["op"]](lab, before.spacing, **edit["params"]), after.array)
    from PIL import Image

    with Image.open(out_dir / "preview.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300
    mtimes = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.nii.gz")}
    assert morph_files(cfg)["skipped"] == 4
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.nii.gz")}
    summary = morph_files(_cfg(tmp_path, "morph.variants=3", "morph.seed=5"))
    assert (summary["written"], summary["skipped"]) == (2, 4)  # only the new variants
    summary = morph_files(_cfg(tmp_path, "morph.variants=3", "morph.seed=6"))
    assert summary["written"] == 6  # a new seed invalidates every output
    assert len((out_dir / "records.jsonl").read_text().splitlines()) == 6


def test_run_2d_label_map(tmp_path):
    lab, sp = make_brain()
    sl = lab[:, :, 12]
    assert (sl == VENT).sum() > 0
    write_nifti(tmp_path / "labels" / "slice.nii.gz", sl, spacing=(1.0, 1.0, 2.0))
    morph_files(_cfg(tmp_path))
    out = read_image(tmp_path / "run" / "morph" / "slice_v0.nii.gz", kind="mask").array
    (rec,) = [json.loads(x) for x in (tmp_path / "run" / "morph" / "records.jsonl").read_text().splitlines()]
    assert out.shape == sl.shape + (1,) and rec["spacing"] == [1.0, 1.0]
    assert nib.load(tmp_path / "run" / "morph" / "slice_v0.nii.gz").shape == sl.shape  # written 2D like its source
    ratio = (out == VENT).sum() / (sl == VENT).sum()
    assert abs(ratio / rec["edits"][0]["params"]["factor"] - 1) <= 0.05
    assert (tmp_path / "run" / "morph" / "preview.png").exists()


def test_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from mrgen.cli import app

    lab, sp = make_brain()
    write_nifti(tmp_path / "labels" / "case.nii.gz", lab, spacing=sp)
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: {ventricles: 1}\nedits:\n  - {op: dilate, label: ventricle, mm: 2}\n")
    res = CliRunner().invoke(app, ["morph", "-w", str(tmp_path / "run"), f"morph.recipe={bad}",
                                   f"morph.inputs={tmp_path / 'labels'}/*.nii.gz", "--preset", "tiny"])
    assert res.exit_code == 2
    assert "unknown label 'ventricle'; known labels: ventricles=1" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["morph", "-w", str(tmp_path / "run"), f"morph.recipe={EXAMPLES / 'hypoplasia.yaml'}",
                                   f"morph.inputs={tmp_path / 'none'}/*.nii.gz", "--preset", "tiny"])
    assert res.exit_code == 2 and "matches no NIfTI" in " ".join(res.output.split())
