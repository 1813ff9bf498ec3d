"""Benchmark definitions (``benchmarks/*.yaml``): data, folds, segmenter settings, methods.

A benchmark file is its own format (no new config section): it embeds a curate manifest or
names a manifest file (``manifest: {file: ..., set: {<dataset>: {<key>: <value>}}}`` sets keys of
the file's datasets, e.g. ``crop: foreground``), an mrgen config (``preset`` + sections, shared by every method's segmenter), optional engine
settings for the ``mrgen*`` methods, the folds, the label groups reported and the methods
with their parameters. Dotted overrides (``config.segment.train.steps=50``,
``methods.cyclegan.steps=100``, ``data_root=/data``) apply to this tree. See docs/benchmarks.md.

Folds are ``rotate: {subjects, test, source, target[, engine_source: target]}`` — fold *i*
rotates the subject list by ``i * test`` and takes the test, source and target blocks in
turn, so every subject is tested exactly once — or an explicit ``list`` of
``{source, target, test[, engine_source, source_z, target_z, test_z]}``; ``*_z: [lo, hi]``
keeps only the slices whose fractional height lies in ``[lo, hi)`` (for a one-subject smoke
benchmark, where the target's unannotated and test halves come from one volume).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mrgen import config as C

KEYS = {"name", "description", "data_root", "manifest", "config", "engine", "folds", "evaluate", "methods",
        "budget_cpu_min", "examples", "seed"}


class BenchError(ValueError):
    """A benchmark definition is wrong; the message says how to fix it."""


@dataclass
class Fold:
    index: int
    source: tuple
    target: tuple
    test: tuple
    engine_source: tuple = ()  # subjects whose annotated pairs train the engine (default: source)
    source_z: tuple = ()
    target_z: tuple = ()
    test_z: tuple = ()

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class Spec:
    name: str
    path: Path
    tree: dict  # the whole resolved definition (after overrides)
    data_root: Path | None  # None: the manifest names only absolute roots
    folds: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)  # the curate manifest (roots as written)
    manifest_base: Path = Path(".")  # relative dataset roots are relative to this folder

    @property
    def methods(self) -> dict:
        return {k: dict(v or {}) for k, v in (self.tree.get("methods") or {}).items()}

    @property
    def groups(self) -> dict:
        """Reported label groups ``{name: [labels]}``; empty = every label on its own."""
        g = (self.tree.get("evaluate") or {}).get("groups") or {}
        return {str(k): sorted(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for k, v in g.items()}

    def budget(self, method: str) -> float:
        return float(self.methods.get(method, {}).get("budget_cpu_min", self.tree.get("budget_cpu_min", 0.0)) or 0.0)


def data_root(tree: dict, bench_path: Path) -> Path:
    """``data_root`` key, else ``$MRGEN_SHARED_DATA``, else ``<repo>/../shared/data``, else ``./../shared/data``."""
    cands = []
    if tree.get("data_root"):
        cands.append(Path(os.path.expanduser(str(tree["data_root"]))))
    elif os.environ.get("MRGEN_SHARED_DATA"):
        cands.append(Path(os.environ["MRGEN_SHARED_DATA"]))
    else:
        cands += [bench_path.resolve().parent.parent.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c.resolve()
    raise BenchError(f"benchmark data folder not found (tried {', '.join(map(str, cands))}); "
                     f"set MRGEN_SHARED_DATA or pass data_root=/path/to/shared/data")


_SHARED = ("${MRGEN_SHARED_DATA", "$MRGEN_SHARED_DATA")


def _needs_data_root(tree: dict, bench_path: Path) -> bool:
    """A data root is needed only when the manifest uses it: ``data_root`` is given, a dataset root names
    ``$MRGEN_SHARED_DATA``, or an embedded manifest has a relative root (relative to the data root)."""
    if tree.get("data_root"):
        return True
    raw = tree.get("manifest")
    mpath, _ = _manifest_ref(raw, bench_path)
    if mpath is None:
        roots = [str(d.get("root", ".")) for d in raw.get("datasets", [])]
        return any(any(v in r for v in _SHARED) or not Path(os.path.expanduser(r)).is_absolute() for r in roots)
    return mpath.is_file() and any(v in mpath.read_text() for v in _SHARED)


def load(path: str | Path, overrides: list | tuple = (), methods=()) -> Spec:
    """The benchmark at ``path`` with dotted ``overrides``; ``methods``: the known method names to check against."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"benchmark file {path} does not exist; see benchmarks/*.yaml")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise BenchError(f"{path}: a benchmark file is a mapping (name, manifest, config, folds, methods, ...)")
    tree = C._deep_update(tree, C.parse_overrides(list(overrides)))
    bad = set(tree) - KEYS
    if bad:
        raise BenchError(f"{path}: unknown key(s) {sorted(bad)}; valid keys: {', '.join(sorted(KEYS))}")
    for key in ("manifest", "config", "folds", "methods"):
        if not tree.get(key):
            raise BenchError(f"{path}: '{key}' is missing; see docs/benchmarks.md for the format")
    unknown = [m for m in tree["methods"] if methods and m not in methods]
    if unknown:
        raise BenchError(f"{path}: unknown method(s) {unknown}; known: {', '.join(methods)}")
    for sec in ("data", "curate"):
        if sec in (tree.get("engine") or {}):
            raise BenchError(f"{path}: engine.{sec} is not allowed; every method reads the same curated data (set config.{sec})")
    root = data_root(tree, path) if _needs_data_root(tree, path) else None
    spec = Spec(str(tree.get("name") or path.stem), path, tree, root)
    spec.manifest, spec.manifest_base = _manifest(tree["manifest"], path, root)
    run = (tree["config"].get("run") or {})
    same = _canon(run.get("source_modality", "T1")) == _canon(run.get("target_modality", "T2"))
    spec.folds = make_folds(tree["folds"], where=str(path), same_series=same)
    return spec


def _canon(modality: str) -> str:
    from mrgen import prompts

    try:
        return prompts.canonical_modality(str(modality))
    except prompts.PromptError as exc:
        raise BenchError(f"config.run: {exc}") from None


def _manifest_ref(raw, bench_path: Path) -> tuple[Path | None, dict]:
    """(the manifest file, or None for an embedded manifest; ``{dataset: {key: value}}`` to set in it)."""
    if isinstance(raw, dict) and "file" not in raw:
        return None, {}
    sets = {}
    if isinstance(raw, dict):
        bad = sorted(set(raw) - {"file", "set"})
        if bad:
            raise BenchError(f"{bench_path}: manifest: {{file, set}} has no key(s) {bad}; either embed a whole "
                             f"manifest (version, datasets) or name a file and the dataset keys to set")
        sets = raw.get("set") or {}
        if not isinstance(sets, dict) or not all(isinstance(v, dict) for v in sets.values()):
            raise BenchError(f"{bench_path}: manifest.set maps a dataset name to the keys to set, "
                             f"e.g. set: {{brats2013: {{crop: foreground}}}}")
        raw = raw["file"]
    mpath = Path(os.path.expanduser(str(raw)))
    return (mpath if mpath.is_absolute() else bench_path.parent / mpath), {str(k): v for k, v in sets.items()}


def _manifest(raw, bench_path: Path, root: Path) -> tuple[dict, Path]:
    """An embedded manifest (roots below the data root), a manifest file (e.g. ../examples/brats2013.yaml), or
    ``{file: <manifest file>, set: {<dataset>: {<key>: <value>}}}``: the file with those keys of its datasets set
    (``crop: foreground`` for one benchmark, without a second copy of the file's dataset entry)."""
    mpath, sets = _manifest_ref(raw, bench_path)
    if mpath is None:
        return copy.deepcopy(raw), root
    if not mpath.is_file():
        raise BenchError(f"{bench_path}: manifest file {mpath} does not exist")
    man = yaml.safe_load(mpath.read_text()) or {}
    by_name = {str(d.get("name")): d for d in man.get("datasets") or []}
    for name, keys in sets.items():
        if name not in by_name:
            raise BenchError(f"{bench_path}: manifest.set names dataset '{name}', but {mpath} has "
                             f"{sorted(by_name) or 'no datasets'}; use one of those names")
        by_name[name].update(copy.deepcopy(keys))
    return man, mpath.parent.resolve()


def _tuple(x) -> tuple:
    return tuple(str(s) for s in (x or ()))


def make_folds(raw: dict, where: str = "folds", same_series: bool = False) -> list[Fold]:
    if "rotate" in raw:
        r = raw["rotate"]
        subjects = [str(s) for s in r["subjects"]]
        nt, ns, ng = int(r["test"]), int(r["source"]), int(r["target"])
        if nt + ns + ng > len(subjects):
            raise BenchError(f"{where}: test+source+target = {nt + ns + ng} exceeds the {len(subjects)} subjects")
        k = int(r.get("folds", len(subjects) // nt))
        folds = []
        for i in range(k):
            order = subjects[i * nt:] + subjects[: i * nt]
            test, source, target = order[:nt], order[nt:nt + ns], order[nt + ns:nt + ns + ng]
            engine = {"target": target, "source": source}.get(str(r.get("engine_source", "source")))
            folds.append(Fold(i, tuple(source), tuple(target), tuple(test), tuple(engine)))
    elif "list" in raw:
        folds = [Fold(i, _tuple(f["source"]), _tuple(f["target"]), _tuple(f["test"]), _tuple(f.get("engine_source")),
                      tuple(f.get("source_z", ())), tuple(f.get("target_z", ())), tuple(f.get("test_z", ())))
                 for i, f in enumerate(raw["list"])]
    else:
        raise BenchError(f"{where}: give 'rotate: {{subjects, test, source, target}}' or 'list: [...]'")
    only = raw.get("only")
    if only is not None:
        only = [int(x) for x in (only if isinstance(only, (list, tuple)) else [only])]
        folds = [f for f in folds if f.index in only]
    for f in folds:
        check_fold(f, where, same_series)
    return folds


def _overlap(a: tuple, b: tuple) -> bool:
    return bool(a) and bool(b) and not (a[1] <= b[0] or b[1] <= a[0])


def check_fold(f: Fold, where: str = "folds", same_series: bool = False) -> None:
    """Test volumes are never seen in training (unless the z ranges split one volume disjointly).

    ``same_series``: source and target are one modality (in-domain), so a source subject's
    series *is* its test series. Otherwise a subject may be source (other contrast) and test.
    """
    for name, other, z in (("source", f.source, f.source_z), ("target", f.target, f.target_z),
                           ("engine_source", f.engine_source, ())):
        if name != "target" and not same_series:
            continue
        shared = set(other) & set(f.test)
        if shared and (not z or not f.test_z or _overlap(tuple(z), tuple(f.test_z))):
            raise BenchError(f"{where}: fold {f.index}: subject(s) {sorted(shared)} are both {name} and test; "
                             f"make them disjoint or give disjoint {name}_z / test_z slice ranges")
    for z in (f.source_z, f.target_z, f.test_z):
        if z and not (len(z) == 2 and 0.0 <= float(z[0]) < float(z[1]) <= 1.0):
            raise BenchError(f"{where}: fold {f.index}: z ranges look like [0.0, 0.5], got {list(z)}")


def rotation_covers(folds: list[Fold]) -> dict:
    """How often each subject is tested (a rotation tests every subject exactly once)."""
    counts: dict = {}
    for f in folds:
        for s in f.test:
            counts[s] = counts.get(s, 0) + 1
    return counts


# ----------------------------------------------------------------------------- configs


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """Nested dict -> ``section.key=<json>`` overrides (JSON is YAML, so types survive)."""
    out = []
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out += flatten(v, key)
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


def resolved_manifest(spec: Spec) -> dict:
    """The manifest with dataset roots made absolute; ``$MRGEN_SHARED_DATA`` in a root is the data root."""
    import re

    from mrgen.curate.manifest import expand_env

    man = copy.deepcopy(spec.manifest)
    var = re.compile(r"\$\{MRGEN_SHARED_DATA(:?-[^}]*)?\}|\$MRGEN_SHARED_DATA\b")
    for ds in man.get("datasets", []):
        text = var.sub(lambda _: str(spec.data_root), str(ds.get("root", ".")))
        root = Path(expand_env(text, f"{spec.path}: manifest"))
        ds["root"] = str(root if root.is_absolute() else (spec.manifest_base / root).resolve())
    return man


def manifest_identity(spec: Spec) -> dict:
    """The manifest as the result stamps see it: the data it selects, not how its roots are spelled. A root
    below the data root is written relative to it, so an embedded ``root: brats2013`` and a manifest file's
    ``${MRGEN_SHARED_DATA:-../../shared/data}/brats2013`` are the same data (and moving the data root
    keeps every result current)."""
    man = resolved_manifest(spec)
    for ds in man.get("datasets", []):
        root = Path(ds["root"])
        if spec.data_root is not None and root.is_relative_to(spec.data_root):
            ds["root"] = root.relative_to(spec.data_root).as_posix()
    return man


def write_manifest(spec: Spec, workdir: Path) -> Path:
    """``<workdir>/manifest.yaml``: :func:`resolved_manifest`, rewritten only when it changed."""
    path = workdir / "manifest.yaml"
    text = yaml.safe_dump(resolved_manifest(spec), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        C.atomic_write_text(path, text)
    return path


def bench_config(spec: Spec, workdir: Path, extra: list | tuple = ()) -> C.Config:
    """The config every method's segmenter uses (and the curate stage)."""
    tree = copy.deepcopy(spec.tree["config"])
    preset = tree.pop("preset", "cpu")
    ov = flatten(tree) + [f"run.workdir={json.dumps(str(workdir))}",
                          f"curate.manifest={json.dumps(str(workdir / 'manifest.yaml'))}", *extra]
    try:
        return C.load_config(preset, None, ov)
    except C.ConfigError as exc:
        raise BenchError(f"{spec.path}: config: {exc}") from None


def fold_overrides(fold: Fold, source: tuple | None = None) -> list[str]:
    return [f"run.source_subjects={json.dumps(list(source if source is not None else fold.source))}",
            f"run.target_subjects={json.dumps(list(fold.target))}", f"run.test_subjects={json.dumps(list(fold.test))}"]


def engine_config(spec: Spec, base: C.Config, workdir: Path, fold: Fold, extra: list | tuple = (),
                  source: tuple | None = None) -> C.Config:
    """The mrgen engine's config for a fold: bench config + ``engine`` tree, same data/curate/run modalities."""
    eng = copy.deepcopy(spec.tree.get("engine") or {})
    cfg_tree = copy.deepcopy(spec.tree["config"])
    preset = eng.pop("preset", cfg_tree.pop("preset", "cpu"))
    cfg_tree.pop("preset", None)
    cfg_tree.pop("segment", None)
    same = {"data": C.to_dict(base.data), "curate": C.to_dict(base.curate)}
    same["curate"]["manifest"] = base.curate.manifest
    ov = flatten(C._deep_update(C._deep_update(cfg_tree, eng), same)) + fold_overrides(fold, source)
    ov += [f"run.workdir={json.dumps(str(workdir))}", *extra]
    try:
        return C.load_config(preset, None, ov)
    except C.ConfigError as exc:
        raise BenchError(f"{spec.path}: engine: {exc}") from None


def stamp(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
