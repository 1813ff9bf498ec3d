"""The stage contract (mrgen.contract) and the one driver (mrgen.pipeline.run).

* What a stage declares covers what it really reads: the tiny chain runs with every config read
  recorded per stage (ControlNet and concat mode).
* The driver over every stage x every config key, with stub stages: a rerun is skipped; a key a
  stage declares re-runs it and everything downstream; any other key re-runs nothing.
* The bugs this contract fixed, with hand-written expectations: the run.* subject settings,
  a sampling-only change, a moved run folder.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from mrgen import config as C
from mrgen import contract, pipeline

# ----------------------------------------------------------------------------- recording what stages read


class Recorder:
    """Patches the config dataclasses' attribute lookup to record ``{stage: {dotted key}}`` reads."""

    def __init__(self, cfg: C.Config):
        self.paths, self.reads, self.current, self.paused = {}, {}, None, 0
        self._walk(cfg, "")
        self.types = {type(o) for o in self._objects(cfg)}
        self.saved = {}

    def _walk(self, obj, prefix):
        self.paths[id(obj)] = prefix
        for f in dataclasses.fields(obj):
            v = object.__getattribute__(obj, f.name)
            if dataclasses.is_dataclass(v):
                self._walk(v, f"{prefix}.{f.name}" if prefix else f.name)

    def _objects(self, obj):
        yield obj
        for f in dataclasses.fields(obj):
            v = object.__getattribute__(obj, f.name)
            if dataclasses.is_dataclass(v):
                yield from self._objects(v)

    def __enter__(self):
        rec = self
        for t in self.types:
            names = {f.name for f in dataclasses.fields(t)}
            orig = t.__getattribute__

            def get(obj, name, _orig=orig, _names=names):
                value = _orig(obj, name)
                p = rec.paths.get(id(obj))
                if rec.current and not rec.paused and p is not None and name in _names and not dataclasses.is_dataclass(value):
                    rec.reads.setdefault(rec.current, set()).add(f"{p}.{name}" if p else name)
                return value

            self.saved[t] = orig
            t.__getattribute__ = get
        return self

    def __exit__(self, *exc):
        for t, orig in self.saved.items():
            t.__getattribute__ = orig


def _upstream(cfg, name) -> set:
    by = {s.name: s for s in contract.stages(cfg)}
    out, todo = set(), list(by[name].after)
    while todo:
        a = todo.pop()
        if a in by and a not in out:
            out.add(a)
            todo += list(by[a].after)
    return out


@pytest.mark.parametrize("mode", ["controlnet", "concat"])
def test_declared_reads_cover_every_config_read(tmp_path, monkeypatch, mode):
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", f"controller.mode={mode}"])
    fns = pipeline._functions()
    with Recorder(cfg) as rec:
        def unrecorded(fn):  # the fingerprint's own look-up of the declared keys is not a stage read
            def call(*a, **k):
                rec.paused += 1
                try:
                    return fn(*a, **k)
                finally:
                    rec.paused -= 1
            return call

        for name in ("declared", "stages"):
            monkeypatch.setattr(contract, name, unrecorded(getattr(contract, name)))
        for s in contract.stages(cfg):
            rec.current = s.name
            fns[s.name](cfg)
        rec.current = None
    assert set(rec.reads) >= {"curate", "controller", "synthesize", "filter", "segment", "audit", "evaluate"}
    for s in contract.stages(cfg):
        allowed = set(contract.declared(cfg, s.reads))
        for up in _upstream(cfg, s.name):
            allowed |= set(contract.declared(cfg, contract.stage(cfg, up).reads))
        undeclared = {k for k in rec.reads.get(s.name, set()) - allowed if not contract._matches(k, contract.NO_EFFECT)}
        assert not undeclared, f"stage {s.name} reads {sorted(undeclared)} but neither it nor a stage before it declares them"
    assert "evaluate.hd_percentile" in rec.reads["evaluate"]  # mrgen run's evaluation honours it


# ----------------------------------------------------------------------------- the driver with stub stages

# keys whose change alters the list of stages itself (tested by the stage-list tests, not here), and
# sample.shard, which mrgen run refuses unless auto (tests/test_config.py)
STRUCTURAL = {"controller.mode", "labelgen.enabled", "sample.masks", "morph.apply_to", "curate.manifest", "run.workdir",
              "sample.shard", "rounds.count", "controller.pseudo_labels"}  # the last two: tests/test_pseudo.py, test_pipeline.py


def _stub_functions(cfg, calls):
    def make(stage):
        def fn(c):
            calls.append(stage.name)
            out = c.workdir / stage.output
            out.parent.mkdir(parents=True, exist_ok=True)
            if stage.output.endswith(("/nnunet", "nnunet")):
                out.mkdir(exist_ok=True)
            elif not out.is_dir():
                out.write_text("{}")
            return {}
        return fn

    return {s.name: make(s) for s in contract.stages(cfg, every=True)}


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.125
    if value == "auto":  # run.device: another valid device
        return "cpu"
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value + (value[-1] if value else "x",)
    raise TypeError(value)


def _replace(cfg, dotted: str, value):
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value)})


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.fixture()
def stub_run(tmp_path, monkeypatch):
    calls: list = []
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path / 'run'}"])
    monkeypatch.setattr(pipeline, "_functions", lambda: _stub_functions(cfg, calls))

    def go(c, **kw):
        calls.clear()
        pipeline.run(c, log=lambda *_: None, **kw)
        return list(calls)

    assert go(cfg) == [s.name for s in contract.stages(cfg)]
    return cfg, go


KEYS = sorted(k for k in contract.leaves(C.load_config("tiny")) if k not in STRUCTURAL)


@pytest.mark.parametrize("key", KEYS)
def test_driver_reruns_exactly_the_stages_that_read_a_key(stub_run, key):
    cfg, go = stub_run
    assert go(cfg) == []  # a rerun is skipped
    new = _replace(cfg, key, _changed(_get(cfg, key)))
    readers = [s.name for s in contract.stages(cfg) if contract.declared(new, s.reads) != contract.declared(cfg, s.reads)]
    want = [s.name for s in contract.stages(cfg) if s.name in contract.downstream(cfg, readers)] if readers else []
    assert go(new) == want
    assert go(new) == []  # and then it is current


EXPECTED = {  # hand-written: what a user changes -> what must re-run (the bugs)
    # no image of a test subject trains the autoencoder or the LDM (a benchmark fold's test subjects may sit in the
    # curated train split), and the audit's baseline is the held-out test images
    "run.test_subjects": ["autoencoder", "ldm", "controller", "synthesize", "filter", "segment", "audit", "export",
                          "evaluate"],
    "run.source_subjects": ["ldm", "controller", "synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "run.target_datasets": ["ldm", "controller", "synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "run.seed": ["ldm", "controller", "synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "controller.conditioning_scale": ["synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "sample.guidance": ["synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "evaluate.hd_percentile": ["evaluate"],
    "segment.channels": ["segment", "audit", "export", "evaluate"],
    "export.format": ["export"],
    "audit.max_images": ["audit", "export"],  # the dataset card carries the audit
    "run.device": [],
    "ldm.train.log_every": [],
    "controller.target_mask": ["controller", "synthesize", "filter", "segment", "audit", "export", "evaluate"],
    "sample.strength": ["synthesize", "filter", "segment", "audit", "export", "evaluate"],
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_the_settings_users_change_rerun_what_they_should(stub_run, key):
    cfg, go = stub_run
    value = {"run.test_subjects": ("sub-007",), "run.source_subjects": ("sub-001",), "run.target_datasets": ("phantom",),
             "run.device": "cpu", "export.format": "nifti", "controller.target_mask": "unknown",
             "sample.strength": 0.5}.get(key, None)
    new = _replace(cfg, key, value if value is not None else _changed(_get(cfg, key)))
    assert go(new) == EXPECTED[key]


def test_moved_run_folder_reruns_nothing(stub_run, tmp_path):
    cfg, go = stub_run
    moved = tmp_path / "elsewhere"
    shutil.copytree(cfg.workdir, moved)
    assert go(_replace(cfg, "run.workdir", str(moved))) == []


def test_training_longer_resumes_in_place_and_retrains_downstream_afresh(stub_run):
    cfg, go = stub_run
    (cfg.workdir / "ldm" / "ckpt").mkdir(parents=True)
    new = _replace(cfg, "ldm.train.steps", cfg.ldm.train.steps + 5)
    assert go(new) == ["ldm", "controller", "synthesize", "filter", "segment", "audit", "export", "evaluate"]
    assert (cfg.workdir / "ldm" / "ckpt").is_dir()  # same identity: resumed, not moved aside
    assert not list(cfg.workdir.glob("ldm.stale-*"))
    assert list(cfg.workdir.glob("controller.stale-*"))  # its LDM changed: it starts afresh


def test_provided_and_only(stub_run):
    cfg, go = stub_run
    new = _replace(cfg, "ldm.prompt_dropout", 0.3)
    assert go(new, only=("controller",), provided=("ldm",)) == ["controller"]  # ldm's new stamp recorded, not run
    assert go(new) == ["synthesize", "filter", "segment", "audit", "export", "evaluate"]


def test_keys_added_later_enter_no_stamp_at_their_old_behaviour():
    cfg = C.load_config("tiny")
    assert contract.ADDED == {"controller.target_mask": "background", "sample.strength": 1.0, "rounds.count": 1,
                              "rounds.keep_fraction": 0.5, "rounds.min_confidence": 0.0, "segment.pseudo_pairs": False,
                              "run.test_subjects": []}
    assert "run.test_subjects" not in contract.config_of(cfg, "autoencoder")  # an autoencoder of a run without folds
    fold = _replace(cfg, "run.test_subjects", ("sub-3",))
    assert contract.config_of(fold, "autoencoder")["run.test_subjects"] == ["sub-3"]
    assert "segment.pseudo_pairs" not in contract.config_of(cfg, "segment")
    assert "controller.target_mask" not in contract.config_of(cfg, "controller")  # a controller trained before
    assert "sample.strength" not in contract.config_of(cfg, "synthesize")  # the key existed is still current
    new = _replace(cfg, "controller.target_mask", "unknown")
    assert contract.config_of(new, "controller")["controller.target_mask"] == "unknown"
    assert contract.stamps(new)["controller"] != contract.stamps(cfg)["controller"]


def test_fingerprint_config_is_the_declared_reads_without_step_counts():
    cfg = C.load_config("tiny")
    fp = contract.config_of(cfg, "ldm")
    assert "ldm.prompt_dropout" in fp and "text.encoder" in fp and "run.source_subjects" in fp
    assert "ldm.train.steps" not in fp and "ldm.train.log_every" not in fp and "run.workdir" not in fp
    assert "controller.conditioning_scale" not in contract.config_of(cfg, "controller")
    assert "autoencoder.channels" not in fp  # the autoencoder reaches the LDM through its weights' hash


def test_a_schema_1_run_folder_is_moved_aside_not_reused(stub_run):
    cfg, go = stub_run
    import json

    old = {s.name: "0123456789ab" for s in contract.stages(cfg)}
    (cfg.workdir / "stages.json").write_text(json.dumps(old))
    assert go(cfg) == [s.name for s in contract.stages(cfg)]
    assert (cfg.workdir / "synth.stale-schema1-0123456789ab").is_dir()
