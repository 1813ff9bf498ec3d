"""Reruns change nothing; an interrupted curate resumes; a failing run damages nothing."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_helpers import abdomen_dataset, save, write_manifest

import mrgen.curate.core as core
from mrgen.curate import CurateError, run
from mrgen.curate.dataset import load_image
from mrgen.curate.index import Index


def _snapshot(curated):
    return {p.relative_to(curated).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(curated.rglob("*")) if p.is_file()}


def test_rerun_changes_nothing(abdomen, make_cfg):
    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    first = run(cfg)
    before = _snapshot(cfg.workdir / "curated")
    second = run(cfg)
    assert first["curated"] == 8 and second["curated"] == 0 and second["reused"] == 8
    assert _snapshot(cfg.workdir / "curated") == before  # same bytes, not even rewritten


def test_settings_change_recurates_only_what_it_must(abdomen, make_cfg):
    manifest, _ = abdomen
    run(make_cfg(manifest))
    assert run(make_cfg(manifest, "curate.min_label_pixels=100"))["curated"] == 0  # rows only
    assert run(make_cfg(manifest, "data.image_size=8"))["curated"] == 8  # arrays change


def test_interrupted_curate_resumes(abdomen, make_cfg, monkeypatch, tmp_path):
    manifest, _ = abdomen
    cfg = make_cfg(manifest)
    real, calls = core.process, []

    def flaky(*a, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(core, "process", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert (cfg.workdir / "curated" / ".progress.jsonl").exists()
    assert not (cfg.workdir / "curated" / "index.parquet").exists()
    monkeypatch.setattr(core, "process", real)
    out = run(cfg)
    assert out["curated"] == 5 and out["reused"] == 3
    assert not (cfg.workdir / "curated" / ".progress.jsonl").exists()
    fresh = make_cfg(manifest, f"run.workdir={tmp_path / 'fresh'}")
    run(fresh)
    assert pq.read_table(cfg.workdir / "curated" / "index.parquet").equals(pq.read_table(fresh.workdir / "curated" / "index.parquet"))


def test_failing_run_keeps_the_old_index_and_arrays_valid(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=3)
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    cfg = make_cfg(manifest)
    run(cfg)
    curated = cfg.workdir / "curated"
    old_index = (curated / "index.parquet").read_bytes()
    row = Index(curated).query(kind="volume", id="abd/sub-01/T1")[0]
    old_img = load_image(curated, row)
    # sub-01 T1 changes (valid), then sub-03 T2 turns out corrupt: the run fails after re-curating sub-01
    rng = np.random.default_rng(5)
    save(tmp_path / "data" / "images" / "sub-01_T1.nii.gz", rng.normal(0, 1, (20, 16, 6)).astype(np.float32))
    (tmp_path / "data" / "images" / "sub-03_T2.nii.gz").write_bytes(b"broken")
    with pytest.raises(CurateError, match="sub-03_T2"):
        run(cfg)
    assert (curated / "index.parquet").read_bytes() == old_index
    assert np.array_equal(load_image(curated, row), old_img)  # what the old index points to is intact
    # fix the broken file: the staged sub-01 volume is reused and published with the new index
    save(tmp_path / "data" / "images" / "sub-03_T2.nii.gz", rng.normal(0, 1, (20, 16, 6)).astype(np.float32))
    out = run(cfg)
    assert out["curated"] == 1 and out["reused"] == 5
    new_row = Index(curated).query(kind="volume", id="abd/sub-01/T1")[0]
    assert new_row["hash"] != row["hash"] and not np.array_equal(load_image(curated, new_row), old_img)
    assert not (curated / ".staging").exists()


def test_removed_subject_leaves_the_index(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=3)
    manifest = write_manifest(tmp_path / "m.yaml", [ds])
    cfg = make_cfg(manifest)
    run(cfg)
    for p in (tmp_path / "data").rglob("sub-03*"):
        p.unlink()
    out = run(cfg)
    assert out["volumes"] == 4 and out["curated"] == 0
    assert {r["subject"] for r in Index(cfg.workdir).query(kind=None)} == {"sub-01", "sub-02"}
