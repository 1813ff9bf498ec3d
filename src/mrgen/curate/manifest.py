"""Read a curate manifest (see docs/curate.md) and list the volumes it names.

Everything that can be checked without reading image data is checked here, before
``curate`` writes anything: keys, modality names, regions, labels, context labels, glob
patterns that match nothing, subject ids the regex cannot find, missing mask or context
mask files, duplicates.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mrgen import prompts
from mrgen.curate.errors import CurateError
from mrgen.curate.manifest_labels import MAX_STORED, Context, context_spec, label_spec, value_map

__all__ = ["CurateError", "Context", "DatasetSpec", "VolumeSpec", "Manifest", "Series", "load_manifest", "volumes",
           "value_map", "expand_env"]

NORMALIZE = ("mr", "mr-fg", "ct", "minmax")
SLICE_AXES = ("auto", "axial", "coronal", "sagittal", "i", "j", "k")  # see mrgen.curate.geometry
CROPS = ("centre", "foreground")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)?([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Series:
    modality: str  # canonical modality name
    images: str  # glob relative to the dataset root
    masks: str = ""  # path pattern with {subject}; "" = unannotated
    pixel_spacing: tuple = ()  # (h, w) mm per pixel replacing the headers' in-plane spacing; () = the headers'


@dataclass
class DatasetSpec:
    name: str
    root: Path
    subject_pattern: str
    normalize: str
    labels: dict  # int -> organ name
    series: list
    region: str = ""
    region_by_slice: list = field(default_factory=list)  # [(start, end, region)], fractions from the top
    context: list = field(default_factory=list)  # [Context], in manifest order (the first wins where two overlap)
    slice_axis: str = "auto"  # one of SLICE_AXES (mrgen.curate.geometry.slice_axis)
    crop: str = "centre"  # centre | foreground: where the data.image_size window sits when a series is larger
    value_map: dict = field(default_factory=dict)  # file value -> stored value (labels and context), set by load_manifest

    @property
    def stored_labels(self) -> dict:
        """``{stored value: name}`` of the segmentation labels (what the curated masks hold)."""
        return {self.value_map.get(v, v): n for v, n in self.labels.items()}

    def stored_context(self) -> list:
        """``[(stored value, name)]`` of the context labels, in manifest order."""
        return [(self.value_map.get(c.value, c.value), c.name) for c in self.context]

    def regions_for(self, depth: int) -> list[str]:
        """Region of each z index (canonical RAS: z=0 is the most inferior slice)."""
        if not self.region_by_slice:
            return [self.region] * depth
        out = []
        for z in range(depth):
            frac = (depth - 1 - z + 0.5) / depth  # 0 at the superior end, 1 at the inferior end
            region = self.region
            for start, end, name in self.region_by_slice:
                if start <= frac < end or (end >= 1.0 and frac >= start):
                    region = name
                    break
            out.append(region)
        return out


@dataclass
class VolumeSpec:
    dataset: DatasetSpec
    subject: str
    modality: str
    image: Path
    mask: Path | None
    context: tuple = ()  # ((value, Path), ...) of the dataset's context masks; only for annotated volumes
    pixel_spacing: tuple = ()  # the series' pixel_spacing override (mm), () = the file header's

    @property
    def key(self) -> str:
        return f"{self.dataset.name}/{self.subject}/{self.modality}"


@dataclass
class Manifest:
    path: Path
    sha256: str
    datasets: list


def expand_env(text: str, where: str = "") -> str:
    """Expand ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` (default when unset or empty)."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value = os.environ.get(name)
        if m.group(2):  # has a default
            if value is None or (m.group(2) == ":-" and value == ""):
                return m.group(3)
            return value
        if value is None:
            raise CurateError(f"{where}: environment variable {name} is not set; set it or write ${{{name}:-default}}")
        return value

    return os.path.expanduser(_ENV.sub(sub, text))


def _pixel_spacing(raw, where: str) -> tuple:
    """``pixel_spacing: 0.75`` or ``[0.75, 0.75]`` -> (h, w) mm; absent -> ()."""
    if raw in (None, "", []):
        return ()
    vals = raw if isinstance(raw, (list, tuple)) else [raw, raw]
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 2 or not all(v > 0 for v in out):
        raise CurateError(f"{where}: pixel_spacing must be one positive number or two ([h, w]) in mm per pixel of the "
                          f"slice plane, got {raw!r}; leave it out to use the file headers")
    return out


def _region(name, where: str) -> str:
    if name in (None, ""):
        return ""
    try:
        prompts.region_text(str(name))
    except prompts.PromptError as exc:
        raise CurateError(f"{where}: {exc}") from None
    table = prompts.regions()
    return str(name) if name in table else next(k for k, e in table.items() if e["text"] == name)


def _dataset(raw: dict, i: int, mpath: Path) -> DatasetSpec:
    where = f"{mpath}: datasets[{i}]"
    if not isinstance(raw, dict):
        raise CurateError(f"{where} must be a mapping with name, root, subject_pattern, series")
    known = {"name", "root", "subject_pattern", "region", "region_by_slice", "normalize", "labels", "context", "series",
             "slice_axis", "crop"}
    extra = set(raw) - known
    if extra:
        raise CurateError(f"{where}: unknown key(s) {sorted(extra)}; valid keys: {', '.join(sorted(known))}")
    name = str(raw.get("name") or "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise CurateError(f"{where}: 'name' must be a non-empty id of letters, digits, '.', '_' or '-', got {name!r}")
    where = f"{mpath}: dataset '{name}'"
    root = Path(expand_env(str(raw.get("root", ".")), where))
    if not root.is_absolute():
        root = mpath.parent / root
    root = Path(os.path.normpath(root))
    if not root.is_dir():
        raise CurateError(f"{where}: root folder {root} does not exist; fix 'root' (relative to the manifest) or set the variable it uses (e.g. MRGEN_SHARED_DATA)")
    pattern = str(raw.get("subject_pattern") or "")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise CurateError(f"{where}: subject_pattern {pattern!r} is not a valid regex ({exc})") from None
    if "subject" not in rx.groupindex:
        raise CurateError(f"{where}: subject_pattern {pattern!r} needs a named group, e.g. '(?P<subject>sub-\\d+)'")
    normalize = str(raw.get("normalize", "mr"))
    if normalize not in NORMALIZE:
        raise CurateError(f"{where}: normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    region = _region(raw.get("region"), where)
    rules = []
    for rule in raw.get("region_by_slice") or []:
        if not (isinstance(rule, (list, tuple)) and len(rule) == 3):
            raise CurateError(f"{where}: region_by_slice entries look like [0.0, 0.3, lower_thorax], got {rule!r}")
        a, b = float(rule[0]), float(rule[1])
        if not 0.0 <= a < b <= 1.0:
            raise CurateError(f"{where}: region_by_slice range [{a}, {b}] must satisfy 0 <= start < end <= 1")
        rules.append((a, b, _region(rule[2], where)))
    labels = label_spec(raw.get("labels"), where)
    series_raw = raw.get("series")
    if not isinstance(series_raw, list) or not series_raw:
        raise CurateError(f"{where}: 'series' must list at least one {{modality: ..., images: ...}}")
    series, seen = [], set()
    for j, s in enumerate(series_raw):
        if not isinstance(s, dict) or not s.get("modality") or not s.get("images"):
            raise CurateError(f"{where}: series[{j}] needs 'modality' and 'images' (and optionally 'masks')")
        extra = set(s) - {"modality", "images", "masks", "pixel_spacing"}
        if extra:
            raise CurateError(f"{where}: series[{j}] has unknown key(s) {sorted(extra)}; valid: modality, images, masks, pixel_spacing")
        try:
            modality = prompts.canonical_modality(str(s["modality"]))
        except prompts.PromptError as exc:
            raise CurateError(f"{where}: series[{j}]: {exc}") from None
        if modality in seen:
            raise CurateError(f"{where}: modality {modality} appears in two series; merge them into one glob")
        seen.add(modality)
        masks = str(s.get("masks") or "")
        if masks and not labels:
            raise CurateError(f"{where}: series {modality} has masks but the dataset declares no 'labels'; add e.g. labels: {{1: liver}}")
        series.append(Series(modality, str(s["images"]), masks, _pixel_spacing(s.get("pixel_spacing"), f"{where}: series {modality}")))
    context = context_spec(raw.get("context"), labels, where)
    if context and not any(s.masks for s in series):
        raise CurateError(
            f"{where}: 'context' is given but no series has 'masks'; context labels are merged into the masks of "
            f"annotated series only — add 'masks' to a series or drop 'context'"
        )
    slice_axis = str(raw.get("slice_axis", "auto")).strip().lower()
    if slice_axis not in SLICE_AXES:
        raise CurateError(f"{where}: slice_axis must be one of {', '.join(SLICE_AXES)} (i/j/k: the file's first/second/third "
                          f"voxel axis), got {raw.get('slice_axis')!r}")
    crop = str(raw.get("crop", "centre")).strip().lower().replace("center", "centre")
    if crop not in CROPS:
        raise CurateError(f"{where}: crop must be 'centre' or 'foreground', got {raw.get('crop')!r}")
    return DatasetSpec(name, root, pattern, normalize, labels, series, region, rules, context, slice_axis, crop)


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"manifest {path} does not exist; give curate.manifest=<file.yaml> or run `mrgen phantom` first")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CurateError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list) or not raw["datasets"]:
        raise CurateError(f"{path}: a manifest needs 'version: 1' and a non-empty 'datasets:' list (see docs/curate.md)")
    if int(raw.get("version", 1)) != 1:
        raise CurateError(f"{path}: manifest version {raw.get('version')} is not supported; this mrgen reads version 1")
    datasets = [_dataset(d, i, path) for i, d in enumerate(raw["datasets"])]
    names = [d.name for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CurateError(f"{path}: dataset name(s) {dup} used twice; names must be unique")
    for ds in datasets:  # segmenters map context values to background in every dataset: no value may be both
        for c in ds.context:
            other = next((o for o in datasets if c.value in o.labels), None)
            if other is not None:
                raise CurateError(
                    f"{path}: context value {c.value} ({c.name}) of dataset '{ds.name}' is the label "
                    f"{c.value}: {other.labels[c.value]} of dataset '{other.name}'; context values are background for "
                    f"every segmenter, so give the context label a value no dataset uses as a label"
                )
    vmap = value_map(datasets)
    if len(vmap) > MAX_STORED:
        raise CurateError(f"{path}: the datasets declare {len(vmap)} distinct label and context values; curated masks "
                          f"hold at most {MAX_STORED} (uint8) — merge or drop labels")
    for ds in datasets:
        ds.value_map = {v: vmap[v] for v in [*ds.labels, *(c.value for c in ds.context)]}
    return Manifest(path, hashlib.sha256(text.encode()).hexdigest()[:16], datasets)


def _glob(root: Path, pattern: str) -> list[Path]:
    full = pattern if os.path.isabs(pattern) else os.path.join(glob.escape(str(root)), pattern)
    return sorted(Path(p) for p in glob.glob(full, recursive=True))


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def volumes(manifest: Manifest) -> list[VolumeSpec]:
    """Every (dataset, subject, modality) volume the manifest names, checked and sorted."""
    out = []
    for ds in manifest.datasets:
        rx = re.compile(ds.subject_pattern)
        for s in ds.series:
            where = f"{manifest.path}: dataset '{ds.name}' series {s.modality}"
            files = _glob(ds.root, s.images)
            if not files:
                raise CurateError(
                    f"{where}: images pattern '{s.images}' matches nothing under {ds.root}; "
                    f"fix the pattern or the dataset root (relative to the manifest, or via MRGEN_SHARED_DATA)"
                )
            by_subject: dict = {}
            for f in files:
                m = rx.search(_rel(f, ds.root))
                if not m or not m.group("subject"):
                    raise CurateError(
                        f"{f}: subject_pattern '{ds.subject_pattern}' does not match this path "
                        f"('{_rel(f, ds.root)}', relative to {ds.root}); fix the regex or narrow the images glob"
                    )
                subj = m.group("subject")
                if subj in by_subject:
                    raise CurateError(
                        f"{where}: subject '{subj}' matches two files ({by_subject[subj]} and {f}); "
                        f"narrow the images glob or make subject_pattern capture a unique id"
                    )
                by_subject[subj] = f
            for subj, f in sorted(by_subject.items()):
                mask = _mask_path(ds, s, subj, f) if s.masks else None
                context = tuple((c.value, _context_path(ds, c, subj, f)) for c in ds.context) if mask else ()
                out.append(VolumeSpec(ds, subj, s.modality, f, mask, context, s.pixel_spacing))
    return sorted(out, key=lambda v: v.key)


def _resolve(ds: DatasetSpec, pattern: str, subject: str, image: Path, noun: str, what: str, fix: str) -> Path:
    """The one file ``pattern`` (``{subject}`` filled in; a path or a glob under ``ds.root``) names."""
    pattern = pattern.replace("{subject}", subject)
    if glob.has_magic(pattern):
        hits = _glob(ds.root, pattern)
        if len(hits) != 1:
            raise CurateError(f"{image}: {what} pattern '{pattern}' matches {len(hits)} files under {ds.root} "
                              f"for subject '{subject}'; it must match exactly one")
        return hits[0]
    path = Path(pattern) if os.path.isabs(pattern) else ds.root / pattern
    if not path.exists():
        raise CurateError(f"{image}: its {noun} {path} does not exist ({what} '{pattern}', "
                          f"subject '{subject}'); {fix}")
    return path


def _mask_path(ds: DatasetSpec, s: Series, subject: str, image: Path) -> Path:
    return _resolve(ds, s.masks, subject, image, "mask", "masks pattern",
                    "fix the masks pattern or drop 'masks' for an unannotated series")


def _context_path(ds: DatasetSpec, c: Context, subject: str, image: Path) -> Path:
    return _resolve(ds, c.masks, subject, image, "context mask", f"context {c.value} ({c.name}) masks pattern",
                    f"fix the context masks pattern, or drop 'context' from dataset '{ds.name}'")
