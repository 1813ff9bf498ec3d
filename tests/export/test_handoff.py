"""The nnU-Net hand-off: where `mrgen export nnunet` writes, when it refuses, what it prints, the nnunet backend."""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mrgen import config as C
from mrgen import export, io
from mrgen.cli import app
from mrgen.export import ExportError, exported_folder, read_dataset


def _fake_run(wd: Path, value: float = 0.5, kept=(2, 0)) -> None:
    """A run folder with what the export reads: 3 candidates of one mask, the kept ones, the labels."""
    cand = wd / "synth" / "candidates"
    cand.mkdir(parents=True, exist_ok=True)
    m = np.zeros((16, 16), np.uint8)
    m[4:10, 4:10] = 2
    m[11:14, 2:6] = 1
    imgs = np.stack([np.full((16, 16), v, np.float32) for v in (-0.5, 0.0, value)]).astype(np.float16)
    meta = [{"key": "k1", "mask_id": "ds/s/T1/z0003", "candidate": c, "seed": 40 + c, "prompt": "T2 MRI"} for c in range(3)]
    np.savez(cand / "k1.npz", images=imgs, mask=m, seeds=np.arange(3) + 40, meta=np.array(json.dumps(meta)))
    io.write_json(wd / "filter" / "kept.json", {"kept": [{"key": "k1", "candidate": c, "mean_iou": 0.9, "mean_conf": 0.9}
                                                       for c in kept]})
    io.write_json(wd / "curated" / "labels.json", {"ds": {"1": "liver", "2": "kidney"}})


def _cfg(wd: Path, *over: str) -> C.Config:
    return C.load_config("tiny", overrides=[f"run.workdir={wd}", "export.dataset_id=3", "export.name=Syn", *over])


def _sha_of_files(folder: Path) -> str:
    """An independent content hash: sha256 over (relative path, sha256 of bytes) of every file but the manifest."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and q.name != "mrgen_export.json"):
        h.update(f"{p.relative_to(folder).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}\n".encode())
    return h.hexdigest()[:16]


def _leftovers(root: Path) -> list:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_without_nnunet_raw_the_dataset_goes_into_the_run(tmp_path):
    _fake_run(tmp_path)
    res = export.run(_cfg(tmp_path))
    folder = tmp_path / "nnunet" / "Dataset003_Syn"
    assert res["status"] == "written" and res["cases"] == 2 and Path(res["folder"]) == folder
    manifest = json.loads((folder / "mrgen_export.json").read_text())
    assert manifest["content_hash"] == _sha_of_files(folder) and manifest["cases"] == 2
    assert json.loads((folder / "dataset.json").read_text())["name"] == "Dataset003_Syn"  # not the staging folder's
    assert (folder / "dataset_card.md").read_text().startswith("# Dataset003_Syn: dataset card")  # nor here (a pid)
    record = json.loads((tmp_path / "nnunet" / "export.json").read_text())
    assert Path(record["folder"]) == folder.resolve() and record["content_hash"] == manifest["content_hash"]
    assert _leftovers(tmp_path / "nnunet") == []


def test_with_nnunet_raw_the_dataset_goes_where_nnunet_looks_and_segment_train_finds_it(tmp_path, monkeypatch):
    from mrgen.segment import run_train

    raw, wd = tmp_path / "raw", tmp_path / "run"
    _fake_run(wd)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    res = export.run(_cfg(wd))
    assert Path(res["folder"]) == raw / "Dataset003_Syn" and (raw / "Dataset003_Syn" / "imagesTr" / "Syn_00001_0000.png").exists()
    assert not (wd / "nnunet" / "Dataset003_Syn").exists()
    monkeypatch.delenv("nnUNet_raw")  # a later shell without it: the run's record still knows where the dataset is
    cfg = _cfg(wd, "segment.channels=[8,8]", "segment.strides=[2]", "segment.train.steps=2",
               "segment.train.batch_size=2", "segment.train.ckpt_every=0")
    assert exported_folder(cfg) == (raw / "Dataset003_Syn").resolve()
    out = run_train(cfg)
    assert out["cases"] == 2 and (wd / "segment" / "engine" / "model.safetensors").exists()


def test_the_same_content_is_a_no_op_and_other_content_needs_overwrite(tmp_path):
    _fake_run(tmp_path)
    cfg = _cfg(tmp_path)
    folder = tmp_path / "nnunet" / "Dataset003_Syn"
    first = export.run(cfg)
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = export.run(cfg)
    assert again["status"] == "unchanged" and again["content_hash"] == first["content_hash"]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamp  # nothing rewritten

    _fake_run(tmp_path, value=0.9)  # other synthetic images: other content
    with pytest.raises(ExportError, match=r"already holds a different dataset .*export.overwrite=true"):
        export.run(cfg)
    assert _sha_of_files(folder) == first["content_hash"] and _leftovers(tmp_path / "nnunet") == []

    res = export.run(_cfg(tmp_path, "export.overwrite=true"))
    assert res["status"] == "replaced" and res["content_hash"] == _sha_of_files(folder) != first["content_hash"]
    images, _, _ = read_dataset(folder)
    assert abs(float(images[0].mean()) - 0.9) < 0.01 and _leftovers(tmp_path / "nnunet") == []


def test_a_folder_from_elsewhere_without_a_manifest_is_not_overwritten(tmp_path):
    _fake_run(tmp_path)
    folder = tmp_path / "nnunet" / "Dataset003_Syn"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "imagesTr" / "theirs_0000.png").write_bytes(b"not ours")
    with pytest.raises(ExportError, match="different dataset"):
        export.run(_cfg(tmp_path))
    assert (folder / "imagesTr" / "theirs_0000.png").read_bytes() == b"not ours"


def test_another_dataset_with_the_same_id_is_refused(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    (raw / "Dataset003_Other").mkdir(parents=True)
    _fake_run(tmp_path / "run")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    with pytest.raises(ExportError, match="Dataset003_Other with nnU-Net id 003.*another export.dataset_id"):
        export.run(_cfg(tmp_path / "run"))
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset003_Other"]


def test_the_cli_prints_the_next_commands(tmp_path):
    wd = tmp_path / "run"
    _fake_run(wd)
    res = CliRunner().invoke(app, ["export", "nnunet", "-p", "tiny", "-w", str(wd), "export.dataset_id=3", "export.name=Syn"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    base = (wd / "nnunet").resolve()
    for want in (f"export nnUNet_raw={base}", f"export nnUNet_preprocessed={base / 'preprocessed'}",
                 f"export nnUNet_results={base / 'results'}",
                 "nnUNetv2_plan_and_preprocess -d 3 --verify_dataset_integrity", "nnUNetv2_train 3 2d 0"):
        assert want in lines, (want, lines)
    again = CliRunner().invoke(app, ["export", "nnunet", "-w", str(wd)])
    assert again.exit_code == 0 and "status: unchanged" in again.output
    _fake_run(wd, value=0.9)
    refused = CliRunner().invoke(app, ["export", "nnunet", "-w", str(wd)])
    assert refused.exit_code == 2 and "ExportError" in refused.output and "export.overwrite=true" in refused.output


def test_3d_exports_train_3d_fullres():
    from mrgen.export.handoff import train_args

    plan, train = train_args(C.load_config("cpu3d", overrides=["export.dataset_id=42"]), device="cuda")
    assert plan == ["nnUNetv2_plan_and_preprocess", "-d", "42", "--verify_dataset_integrity"]
    assert train == ["nnUNetv2_train", "42", "3d_fullres", "0", "-device", "cuda"]


@pytest.mark.parametrize("bad,msg", [(["export.dataset_id=1000"], "1..999"), (["export.name=my data"], "letters, digits"),
                                     (["segment.backend=torch"], "segment.backend must be")])
def test_bad_export_settings_are_one_config_error(bad, msg):
    with pytest.raises(C.ConfigError, match=msg):
        C.load_config("tiny", overrides=bad)


def test_the_nnunet_backend_runs_nnunets_commands_or_says_how_to_install_it(tmp_path, monkeypatch):
    from mrgen.segment import nnunet, run_train

    _fake_run(tmp_path)
    cfg = _cfg(tmp_path, "segment.backend=nnunet")
    export.run(cfg)
    monkeypatch.setattr(nnunet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(nnunet.NnUNetError, match="needs nnU-Net v2 .*segment.backend=monai"):
        run_train(cfg)
    monkeypatch.setattr(nnunet, "missing", lambda: "")
    monkeypatch.setattr(nnunet.shutil, "which", lambda name, path=None: None)
    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, env):
        calls.append((cmd, env))
        return Done()

    res = nnunet.train(cfg, exported_folder(cfg), run=fake_run)
    (plan, _), (train, env) = calls  # no console scripts found: python -m <nnU-Net's entry module>
    assert plan == [sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "-d", "3",
                    "--verify_dataset_integrity"]
    assert train == [sys.executable, "-m", "nnunetv2.run.run_training", "3", "2d", "0", "-device", "cpu"]
    assert Path(env["nnUNet_raw"]) == (tmp_path / "nnunet").resolve() and Path(res["nnUNet_results"]).parent == Path(env["nnUNet_raw"])
    monkeypatch.setattr(nnunet.shutil, "which", lambda name, path=None: f"/venv/bin/{name}")
    assert nnunet.command(["nnUNetv2_train", "3", "2d", "0"]) == ["/venv/bin/nnUNetv2_train", "3", "2d", "0"]


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_recover_puts_back_a_dataset_moved_aside_by_a_killed_export_and_removes_its_staging(tmp_path):
    from mrgen.export.handoff import recover

    folder = tmp_path / "Dataset501_X"
    dead = _dead_pid()
    aside, staged = tmp_path / f".Dataset501_X.old-{dead}", tmp_path / f".Dataset501_X.tmp-{dead}"
    (aside / "imagesTr").mkdir(parents=True)
    (aside / "dataset.json").write_text("{}")
    (staged / "labelsTr").mkdir(parents=True)
    live = tmp_path / f".Dataset501_X.tmp-{os.getpid()}"  # a running export's staging folder stays
    live.mkdir()
    recover(folder)
    assert (folder / "dataset.json").read_text() == "{}" and (folder / "imagesTr").is_dir()
    assert not aside.exists() and not staged.exists() and live.exists()
    aside.mkdir()  # the new dataset arrived before the kill: the old copy is only removed
    recover(folder)
    assert not aside.exists() and (folder / "dataset.json").exists()
