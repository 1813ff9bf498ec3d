"""Recipes: a YAML chain of (random) edits with shared constraints.

```yaml
name: ventriculomegaly
labels: {ventricles: 1, cerebellum: 2, brainstem: 3, white_matter: 4, grey_matter: 5}
container: [1, 2, 3, 4, 5]   # default container of every growing edit (names or numbers)
protected: [2, 3]            # default protected classes of every growing edit
edits:
  - {op: target_volume, label: ventricles, factor: [1.3, 1.8]}   # [low, high] -> uniform draw
```

Each edit may override ``container`` / ``protected`` (``container: null`` lifts it) and
may carry ``p`` (probability it is applied). Everything is validated at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mrgen.morph.core import MorphError, as_spacing, check_labels, volumes_mm3
from mrgen.morph.ops import LABEL_PARAMS, NUMERIC_PARAMS, OPS
from mrgen.morph.randomize import RandomEdit, is_range, op_params

TOP_KEYS = ("name", "description", "labels", "container", "protected", "edits")


@dataclass
class Edit:
    op: str
    params: dict  # label names resolved to numbers; ranges left for RandomEdit
    p: float = 1.0


@dataclass
class Recipe:
    name: str
    labels: dict = field(default_factory=dict)  # name -> label number
    container: tuple | None = None
    protected: tuple = ()
    edits: list = field(default_factory=list)
    source: str = ""


def _label(value, names: dict, where: str) -> int:
    if isinstance(value, bool):
        raise MorphError(f"{where}: {value!r} is not a label")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if value in names:
            return int(names[value])
        if value.lstrip("-").isdigit():
            return int(value)
        known = ", ".join(f"{k}={v}" for k, v in names.items()) or "none (add a labels: mapping)"
        raise MorphError(f"{where}: unknown label '{value}'; known labels: {known}")
    raise MorphError(f"{where}: {value!r} is not a label name or number")


def _labels(value, names: dict, where: str):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_label(v, names, where) for v in value)
    return (_label(value, names, where),)


def _resolve(op: str, name: str, value, names: dict, where: str):
    """Label names -> numbers for one parameter (ranges and specials pass through)."""
    if name == "mapping":
        if not isinstance(value, dict) or not value:
            raise MorphError(f"{where}: mapping must be a non-empty {{old: new}} mapping")
        return {_label(k, names, where): _label(v, names, where) for k, v in value.items()}
    if name in NUMERIC_PARAMS:
        if not (is_range(name, value) or (isinstance(value, (int, float)) and not isinstance(value, bool))):
            raise MorphError(f"{where}: {name} must be a number or a range [low, high], got {value!r}")
        return value
    if name == "seed_point":
        if value is None or is_range(name, value):
            return value
        if not (isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)):
            raise MorphError(f"{where}: seed_point must be voxel indices like [x, y, z] or 'random', got {value!r}")
        return [int(v) for v in value]
    if name in LABEL_PARAMS and isinstance(value, dict) and list(value) == ["choice"] and isinstance(value["choice"], list):
        return {"choice": [_resolve(op, name, v, names, where) for v in value["choice"]]}
    if name not in LABEL_PARAMS or is_range(name, value):
        return value
    if name == "fill" and value == "nearest":
        return value
    if name in ("protected", "container", "host_label") or (name == "fill" and isinstance(value, (list, tuple))):
        res = _labels(value, names, where)
        return list(res) if res is not None else None
    return None if value is None else _label(value, names, where)


def parse_recipe(tree: dict, source: str = "<dict>") -> Recipe:
    """Validate a recipe mapping (see module docstring) and resolve label names."""
    if not isinstance(tree, dict):
        raise MorphError(f"recipe {source} must be a mapping with name/labels/edits")
    unknown = sorted(set(tree) - set(TOP_KEYS))
    if unknown:
        raise MorphError(f"recipe {source}: unknown key(s) {unknown}; valid keys: {', '.join(TOP_KEYS)}")
    names = tree.get("labels") or {}
    if not isinstance(names, dict) or not all(isinstance(k, str) for k in names):
        raise MorphError(f"recipe {source}: labels must map names to numbers, e.g. {{ventricles: 1}}")
    names = {k: _label(v, {}, f"recipe {source} labels.{k}") for k, v in names.items()}
    container = _labels(tree.get("container"), names, f"recipe {source} container")
    protected = _labels(tree.get("protected"), names, f"recipe {source} protected") or ()
    edits_in = tree.get("edits")
    if not isinstance(edits_in, list) or not edits_in:
        raise MorphError(f"recipe {source}: edits must be a non-empty list of {{op: ..., ...}}; known ops: {', '.join(sorted(OPS))}")
    edits = []
    for i, raw in enumerate(edits_in, 1):
        where = f"recipe {source} edit {i}"
        if not isinstance(raw, dict) or "op" not in raw:
            raise MorphError(f"{where}: each edit needs an op; known ops: {', '.join(sorted(OPS))}")
        raw = dict(raw)
        op = raw.pop("op")
        if op not in OPS:
            raise MorphError(f"{where}: unknown op '{op}'; known ops: {', '.join(sorted(OPS))}")
        p = raw.pop("p", 1.0)
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise MorphError(f"{where}: p must be a probability in [0, 1], got {p!r}")
        required, optional = op_params(op)
        bad = sorted(set(raw) - set(required) - set(optional))
        if bad:
            raise MorphError(f"{where} ({op}): unknown parameter(s) {bad}; {op} takes: {', '.join(required + optional)}")
        if "container" in optional and "container" not in raw and container is not None:
            raw["container"] = list(container)
        if "protected" in optional and "protected" not in raw and protected:
            raw["protected"] = list(protected)
        missing = [r for r in required if r not in raw]
        if missing:
            raise MorphError(f"{where} ({op}): missing parameter(s) {missing}; {op} takes: {', '.join(required + optional)}")
        params = {k: _resolve(op, k, v, names, f"{where} ({op}) {k}") for k, v in raw.items()}
        edits.append(Edit(op, params, float(p)))
    return Recipe(str(tree.get("name") or Path(source).stem), names, container, tuple(protected), edits, source)


def load_recipe(path) -> Recipe:
    """Read and validate a YAML recipe file (a :class:`Recipe` or a dict passes through)."""
    if isinstance(path, Recipe):
        return path
    if isinstance(path, dict):
        return parse_recipe(path)
    path = Path(path)
    builtin = Path(__file__).resolve().parent.parent / "data" / "morph" / f"{path.name}.yaml"
    if str(path) and not path.is_file() and path.suffix == "" and builtin.is_file():
        path = builtin  # a shipped recipe by name: ventriculomegaly | hypoplasia | tumour_growth
    if not str(path) or not path.is_file():
        shipped = sorted(p.stem for p in builtin.parent.glob("*.yaml"))
        raise MorphError(f"recipe file '{path}' not found; set morph.recipe to a YAML recipe or a shipped one: {', '.join(shipped)}")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MorphError(f"recipe {path}: not valid YAML ({exc})") from None
    return parse_recipe(tree, str(path))


def apply_recipe(labels, spacing, recipe, rng: np.random.Generator):
    """Apply every edit in order. Returns ``(labels, record)``.

    ``record`` = ``{recipe, labels, spacing, edits: [{op, params, p, applied, info,
    volumes_before, volumes_after}], volumes_before, volumes_after}`` with volumes in mm³
    per label number; ``params`` are the drawn values, so each edit can be replayed with
    ``OPS[op](labels, spacing, **params)``.
    """
    recipe = load_recipe(recipe)
    arr = check_labels(labels)
    sp = as_spacing(spacing, arr.ndim)
    first = volumes_mm3(arr, sp)
    entries = []
    for i, edit in enumerate(recipe.edits, 1):
        entry = {"op": edit.op, "params": None, "p": edit.p, "applied": True, "info": {}}
        if edit.p < 1.0:
            entry["applied"] = bool(rng.random() < edit.p)
        entry["volumes_before"] = volumes_mm3(arr, sp)
        if entry["applied"]:
            try:
                arr, entry["params"] = RandomEdit(edit.op, edit.params)(arr, sp, rng, info=entry["info"])
            except MorphError as exc:
                raise MorphError(f"recipe '{recipe.name}' edit {i} ({edit.op}): {exc}") from None
        entry["volumes_after"] = volumes_mm3(arr, sp)
        entries.append(entry)
    record = {"recipe": recipe.name, "labels": dict(recipe.labels), "spacing": list(sp), "edits": entries,
              "volumes_before": first, "volumes_after": volumes_mm3(arr, sp)}
    return arr, record
