"""Benchmark definitions: fold rotation, disjointness, the shipped YAML files, configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrgen.bench import spec as S
from mrgen.bench.methods import METHODS

REPO = Path(__file__).resolve().parents[2]
BRATS = [f"brats_2013_pat000{i}_1" for i in range(1, 7)]


def test_rotation_tests_every_subject_once_and_keeps_roles_disjoint():
    folds = S.make_folds({"rotate": {"subjects": BRATS, "test": 2, "source": 2, "target": 2}})
    assert len(folds) == 3
    assert S.rotation_covers(folds) == {s: 1 for s in BRATS}
    for f in folds:
        assert len(f.source) == len(f.target) == len(f.test) == 2
        assert not (set(f.source) & set(f.target) or set(f.source) & set(f.test) or set(f.target) & set(f.test))
    assert sorted(s for f in folds for s in f.source) == sorted(BRATS)  # each subject is source once
    assert sorted(s for f in folds for s in f.target) == sorted(BRATS)  # ... and unannotated target once


def test_rotation_with_engine_subjects_and_only():
    subj = [str(i) for i in range(20)]
    folds = S.make_folds({"rotate": {"subjects": subj, "test": 5, "source": 5, "target": 10, "engine_source": "target"}},
                         same_series=True)
    assert len(folds) == 4 and S.rotation_covers(folds) == {s: 1 for s in subj}
    assert all(f.engine_source == f.target and not set(f.engine_source) & set(f.source) for f in folds)
    only = S.make_folds({"rotate": {"subjects": BRATS, "test": 2, "source": 2, "target": 2}, "only": [1]})
    assert [f.index for f in only] == [1]


def test_overlaps_are_rejected_unless_z_ranges_split_the_volume():
    with pytest.raises(S.BenchError, match="both target and test"):
        S.make_folds({"list": [{"source": ["a"], "target": ["b"], "test": ["b"]}]})
    with pytest.raises(S.BenchError, match="both source and test"):  # in-domain: the source series is the test series
        S.make_folds({"list": [{"source": ["a"], "target": ["b"], "test": ["a"]}]}, same_series=True)
    with pytest.raises(S.BenchError, match="both target and test"):
        S.make_folds({"list": [{"source": ["a"], "target": ["b"], "test": ["b"], "target_z": [0, 0.6], "test_z": [0.5, 1]}]})
    ok = S.make_folds({"list": [{"source": ["a"], "target": ["a"], "test": ["a"], "target_z": [0, 0.5], "test_z": [0.5, 1]}]})
    assert ok[0].target_z == (0, 0.5)


def test_zfilter_splits_a_volume():
    from mrgen.bench import zfilter

    rows = [{"kind": "slice", "dataset": "d", "subject": "s", "modality": "T1", "slice": z} for z in range(10)]
    lo, hi = zfilter(rows, (0.0, 0.5)), zfilter(rows, (0.5, 1.0))
    assert [r["slice"] for r in lo] == [0, 1, 2, 3, 4] and [r["slice"] for r in hi] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.yaml")) + sorted((REPO / "benchmarks" / "ablations").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_benchmarks_load_and_resolve(path, tmp_path):
    from mrgen.bench.methods import ENGINE_METHODS

    spec = S.load(path, [f"data_root={tmp_path}"])
    assert spec.folds and spec.methods
    man = S.write_manifest(spec, tmp_path)
    assert str(tmp_path) in man.read_text()  # dataset roots below the data root
    base = S.bench_config(spec, tmp_path / "wd")
    assert base.curate.manifest.endswith("manifest.yaml")
    covers = S.rotation_covers(spec.folds)
    assert set(covers.values()) == {1} or any(f.test_z for f in spec.folds)
    if any(m in ENGINE_METHODS for m in spec.methods):
        f = spec.folds[0]
        eng = S.engine_config(spec, base, tmp_path / "eng", f)
        assert eng.data == base.data and list(eng.run.test_subjects) == list(f.test)
        assert eng.run.source_modality == base.run.source_modality
        nt = S.engine_config(spec, base, tmp_path / "eng", f, ["controller.target_fraction=0"])
        assert nt.controller.target_fraction == 0.0


def test_brats_benchmarks_groups_and_direction():
    a = S.load(REPO / "benchmarks" / "brats_flair_to_t1c.yaml", ["data_root=/"])
    b = S.load(REPO / "benchmarks" / "brats_t1c_to_flair.yaml", ["data_root=/"])
    assert a.groups == {"edema": [2], "tumour core": [1, 3, 4], "whole tumour": [1, 2, 3, 4]} == b.groups
    ra, rb = a.tree["config"]["run"], b.tree["config"]["run"]
    assert (ra["source_modality"], ra["target_modality"]) == (rb["target_modality"], rb["source_modality"])
    assert set(a.methods) >= {"source_only", "oracle", "intensity_aug", "domain_randomisation", "histogram_match",
                              "cyclegan", "mrgen", "mrgen_nofilter", "mrgen_notarget"}


# what a user's `mrgen run` does by default (the cpu preset) and what a budget may change: the recipe
RECIPE = ("controller.mask_encoding", "controller.target_mask", "controller.conditioning_scale",
          "controller.target_fraction", "controller.target_context", "filter.scorer", "filter.thresholds",
          "filter.selection", "filter.keep", "filter.calibration_quantile", "filter.floor_quantile", "rounds.count",
          "rounds.keep_fraction", "rounds.min_confidence", "sample.solver", "sample.ddim_steps", "sample.guidance",
          "sample.strength")


@pytest.mark.parametrize("name", [
    "brats_flair_to_t1c", "mscmr_bssfp_to_lge", "ablations/brats_t1c_to_flair_crop",
    pytest.param("brats_t1c_to_flair", marks=pytest.mark.xfail(strict=True, reason=(
        "still the 3.75 mm definition of 2026-12-01 (merged masks, absolute thresholds, one round) until its 3-fold "
        "run with the window and recipe (ablations/brats_t1c_to_flair_crop) completes"))),
])
def test_cross_modality_benchmarks_run_the_default_recipe(name, tmp_path):
    """Issue 14 judges `mrgen run`'s default recipe: the cross-modality definitions may give the engine another budget
    (steps, masks, candidates), not another recipe than the cpu preset's."""
    from mrgen import config as C
    from mrgen.contract import leaves

    preset = leaves(C.load_config("cpu"))
    spec = S.load(REPO / "benchmarks" / f"{name}.yaml", ["data_root=/"])
    base = S.bench_config(spec, tmp_path / "wd")
    engine = leaves(S.engine_config(spec, base, tmp_path / "eng", spec.folds[0]))
    assert {k: engine[k] for k in RECIPE} == {k: preset[k] for k in RECIPE}
    for key in ("engine_set", "pseudo_pairs", "source_copies"):  # the mrgen method's training set
        assert getattr(base.segment, key) == getattr(C.load_config("cpu").segment, key)
    assert preset["filter.thresholds"] == "calibrated" and preset["rounds.count"] == 2  # not MRGen's (paper preset)


def test_overrides_and_errors(tmp_path):
    path = REPO / "benchmarks" / "spinalcord_t2_to_t1.yaml"
    spec = S.load(path, [f"data_root={tmp_path}", "config.segment.train.steps=7", "methods.cyclegan={steps: 3}"])
    assert S.bench_config(spec, tmp_path).segment.train.steps == 7 and spec.methods["cyclegan"] == {"steps": 3}
    with pytest.raises(S.BenchError, match="unknown method"):
        S.load(path, [f"data_root={tmp_path}", "methods.pix2pix={}"], METHODS)
    with pytest.raises(S.BenchError, match="unknown key"):
        S.load(path, [f"data_root={tmp_path}", "folds_=1"])
    with pytest.raises(S.BenchError, match="data folder not found"):
        S.load(path, [f"data_root={tmp_path / 'nope'}"])


def test_a_data_root_is_needed_only_when_the_manifest_uses_it(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("MRGEN_SHARED_DATA", str(tmp_path / "nowhere"))
    tree = yaml.safe_load((REPO / "benchmarks" / "spinalcord_t2_to_t1.yaml").read_text())
    tree.pop("data_root", None)
    tree["manifest"] = yaml.safe_load((REPO / "examples" / "spinalcord.yaml").read_text())  # embedded
    for ds in tree["manifest"]["datasets"]:
        ds["root"] = str(tmp_path / "data" / "spinalcord")  # absolute: no data root involved
    absolute = tmp_path / "absolute.yaml"
    absolute.write_text(yaml.safe_dump(tree))
    spec = S.load(absolute)
    assert spec.data_root is None
    assert S.write_manifest(spec, tmp_path).read_text().count(str(tmp_path / "data" / "spinalcord")) == len(tree["manifest"]["datasets"])
    for ds in tree["manifest"]["datasets"]:
        ds["root"] = "spinalcord"  # relative to the data root, which does not exist
    relative = tmp_path / "relative.yaml"
    relative.write_text(yaml.safe_dump(tree))
    with pytest.raises(S.BenchError, match="data folder not found"):
        S.load(relative)


def _bench_with_manifest(tmp_path, name, manifest) -> Path:
    import yaml

    tree = yaml.safe_load((REPO / "benchmarks" / "brats_flair_to_t1c.yaml").read_text())
    tree["manifest"] = manifest
    path = tmp_path / "benchmarks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_definition_sets_keys_of_a_manifest_files_datasets(tmp_path):
    """``manifest: {file, set}``: the file's dataset entry with the keys set, nothing else changed; a wrong
    dataset name or key is one clear error."""
    import yaml

    example = str(REPO / "examples" / "brats2013.yaml")
    plain = S.load(_bench_with_manifest(tmp_path, "plain", example), [f"data_root={tmp_path}"])
    cropped = S.load(_bench_with_manifest(tmp_path, "crop", {"file": example, "set": {"brats2013": {"crop": "foreground"}}}),
                     [f"data_root={tmp_path}"])
    a, b = plain.manifest["datasets"][0], cropped.manifest["datasets"][0]
    assert "crop" not in a and b["crop"] == "foreground"
    assert {k: v for k, v in b.items() if k != "crop"} == a
    assert yaml.safe_load(S.write_manifest(cropped, tmp_path).read_text())["datasets"][0]["crop"] == "foreground"
    # the shipped FLAIR -> T1c definition uses it, and a dotted override reaches it
    spec = S.load(REPO / "benchmarks" / "brats_flair_to_t1c.yaml", [f"data_root={tmp_path}", "manifest.set.brats2013.crop=none"])
    assert spec.manifest["datasets"][0]["crop"] == "none"
    with pytest.raises(S.BenchError, match="names dataset 'brats'.*brats2013"):
        S.load(_bench_with_manifest(tmp_path, "wrong", {"file": example, "set": {"brats": {"crop": "foreground"}}}),
               [f"data_root={tmp_path}"])
    with pytest.raises(S.BenchError, match="has no key"):
        S.load(_bench_with_manifest(tmp_path, "key", {"file": example, "sets": {}}), [f"data_root={tmp_path}"])
    with pytest.raises(S.BenchError, match="maps a dataset name"):
        S.load(_bench_with_manifest(tmp_path, "notmap", {"file": example, "set": {"brats2013": "foreground"}}),
               [f"data_root={tmp_path}"])
    with pytest.raises(S.BenchError, match="does not exist"):
        S.load(_bench_with_manifest(tmp_path, "nofile", {"file": str(tmp_path / "none.yaml")}), [f"data_root={tmp_path}"])


def test_result_stamps_see_the_data_a_manifest_selects_not_its_spelling(tmp_path):
    """An embedded manifest whose root is relative to the data root and a manifest file spelling the same root
    through ``${MRGEN_SHARED_DATA:-...}`` give one stamp; a changed dataset key or another data root's
    absolute path gives another."""
    import yaml

    from mrgen import bench as B

    example = REPO / "examples" / "brats2013.yaml"
    embedded = yaml.safe_load(example.read_text())
    embedded["datasets"][0]["root"] = "brats2013"
    embedded["datasets"][0]["crop"] = "foreground"
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    ov = [f"data_root={tmp_path / 'data'}"]
    specs = {
        "embedded": S.load(_bench_with_manifest(tmp_path, "embedded", embedded), ov),
        "file": S.load(_bench_with_manifest(tmp_path, "file", {"file": str(example), "set": {"brats2013": {"crop": "foreground"}}}), ov),
        "nocrop": S.load(_bench_with_manifest(tmp_path, "nocrop", str(example)), ov),
    }
    moved = dict(embedded, datasets=[dict(embedded["datasets"][0], root=str(tmp_path / "other" / "brats2013"))])
    specs["elsewhere"] = S.load(_bench_with_manifest(tmp_path, "elsewhere", moved), ov)
    assert S.manifest_identity(specs["embedded"])["datasets"][0]["root"] == "brats2013"
    assert S.manifest_identity(specs["elsewhere"])["datasets"][0]["root"] == str(tmp_path / "other" / "brats2013")

    def stamp(spec):
        base = S.bench_config(spec, tmp_path / "wd")
        return B.stamps(spec, base, spec.folds[0], "source_only", {1: "x"})[0]

    got = {k: stamp(s) for k, s in specs.items()}
    assert got["embedded"] == got["file"]
    assert len({got["file"], got["nocrop"], got["elsewhere"]}) == 3
