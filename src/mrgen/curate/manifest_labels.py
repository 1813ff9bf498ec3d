"""The manifest's ``labels:`` and ``context:`` keys and the one mapping of the values the mask files hold
to the values curate stores (1..N for the labels, N+1.. for the context labels; docs/curate.md#label-values)."""

from __future__ import annotations

from dataclasses import dataclass

from mrgen.curate.errors import CurateError

MAX_STORED = 255  # stored masks are uint8


@dataclass
class Context:
    """A conditioning-only label: ``value`` where the subject's ``masks`` file is non-zero and the labels are 0."""

    value: int
    name: str
    masks: str  # path pattern with {subject} (or a glob matching one file), relative to the dataset root


def _label_value(k, where: str, what: str, example: str) -> int:
    """A label or context value as written in the user's files: any positive integer (0 is background)."""
    if isinstance(k, bool) or (isinstance(k, float) and not k.is_integer()):
        raise CurateError(f"{where}: {what} key {k!r} is not an integer label value; {example}")
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise CurateError(f"{where}: {what} key {k!r} is not an integer label value; {example}") from None
    if value == 0:
        key = "labels" if what == "label" else what
        raise CurateError(f"{where}: {what} value 0 is the background; leave it out of '{key}:' (every voxel not listed is background)")
    if value < 0:
        raise CurateError(f"{where}: {what} value {value} is negative; label values are the positive integers the mask files hold")
    return value


def label_spec(raw, where: str) -> dict:
    """The manifest's ``labels:`` -> ``{file value: name}``, sorted by value."""
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise CurateError(f"{where}: 'labels' must be a mapping like {{1: liver, 2: spleen}} (values as the mask files hold them)")
    out = {}
    for k, v in raw.items():
        value = _label_value(k, where, "label", "write labels as {1: liver, 2: spleen} or {200: LV myocardium, 500: LV blood pool}")
        if not isinstance(v, str) or not v.strip():
            raise CurateError(f"{where}: label {value} needs a name (e.g. {value}: liver)")
        out[value] = v.strip()
    return dict(sorted(out.items()))


CONTEXT_HELP = "write context: {5: {name: brain, masks: '{subject}/brainmask.nii.gz'}}"


def context_spec(raw, labels: dict, where: str) -> list:
    """The manifest's ``context:`` -> ``[Context]`` in manifest order; values must not be labels of this dataset."""
    if raw in (None, {}):
        return []
    if not isinstance(raw, dict):
        raise CurateError(f"{where}: 'context' must be a mapping of value -> {{name, masks}}; {CONTEXT_HELP}")
    out = []
    for k, v in raw.items():
        value = _label_value(k, where, "context", CONTEXT_HELP)
        if value in labels:
            raise CurateError(
                f"{where}: context value {value} ({v.get('name') if isinstance(v, dict) else v}) is also the label "
                f"{value}: {labels[value]}; a context label needs a value of its own — use one above the labels, "
                f"e.g. {max(labels) + 1}"
            )
        if not isinstance(v, dict):
            raise CurateError(f"{where}: context {value} must be a mapping with 'name' and 'masks'; {CONTEXT_HELP}")
        extra = set(v) - {"name", "masks"}
        if extra:
            raise CurateError(f"{where}: context {value} has unknown key(s) {sorted(extra)}; valid: name, masks")
        name, masks = v.get("name"), v.get("masks")
        if not isinstance(name, str) or not name.strip():
            raise CurateError(f"{where}: context {value} needs a name (e.g. name: brain)")
        if not isinstance(masks, str) or not masks.strip():
            raise CurateError(f"{where}: context {value} ({name}) needs 'masks': a path pattern with {{subject}}, "
                              f"e.g. '{{subject}}/brainmask.nii.gz'")
        out.append(Context(value, name.strip(), masks.strip()))
    return out


def value_map(datasets: list) -> dict:
    """File label value -> stored value, one mapping for the whole manifest.

    The segmentation label values of all datasets (their union, sorted) become 1..N, so one value
    means one label in every dataset, as in the files; the context values follow as N+1..N+M.
    Labels that are already 1..N (BraTS, CHAOS, the phantom) keep their values.
    """
    labels = sorted({v for ds in datasets for v in ds.labels})
    context = sorted({c.value for ds in datasets for c in ds.context})
    out = {v: i + 1 for i, v in enumerate(labels)}
    out.update({v: len(labels) + i + 1 for i, v in enumerate(context)})
    return out
