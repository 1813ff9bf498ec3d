"""``mrgen morph``: apply a recipe to label NIfTI files, several random variants each.

Writes ``<workdir>/morph/<stem>_v<k>.nii.gz`` (the source's affine and voxel order),
``<workdir>/morph/records.jsonl`` (one line per output: source, seed, drawn params,
volumes) and ``<workdir>/morph/preview.png`` (first case, variant 0). A rerun skips an
output whose file exists and whose record has the same source hash, recipe hash and seed.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mrgen import seeds
from mrgen.io import atomic_path, file_hash, read_image, write_nifti
from mrgen.morph.core import MorphError
from mrgen.morph.preview import save_preview
from mrgen.morph.recipe import apply_recipe, load_recipe


def stem_of(path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def recipe_hash(recipe) -> str:
    tree = asdict(recipe)
    tree.pop("source", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_inputs(cfg) -> list:
    pattern = cfg.morph.inputs or str(Path(cfg.workdir) / "phantom" / "masks" / "*.nii.gz")
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if p.endswith((".nii", ".nii.gz")))
    if not paths:
        raise MorphError(f"morph.inputs '{pattern}' matches no NIfTI label files; set morph.inputs to a glob like 'labels/*.nii.gz'")
    stems: dict = {}
    for p in paths:
        other = stems.setdefault(stem_of(p), p)
        if other != p:
            raise MorphError(f"inputs {other} and {p} share the name '{stem_of(p)}'; outputs would collide — narrow morph.inputs")
    return paths


def read_records(path: Path) -> dict:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["output"]] = rec
    return out


def write_records(path: Path, records: dict) -> None:
    text = "".join(json.dumps(records[k], default=_json) + "\n" for k in sorted(records))
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    return str(o)


def _to_source_orientation(arr: np.ndarray, img) -> tuple:
    """Canonical (RAS+) array -> the source file's voxel order, affine, shape and integer dtype."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    nii = nib.load(img.path)
    dtype = np.dtype(nii.get_data_dtype())
    if np.issubdtype(dtype, np.integer) and arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
        dtype = np.dtype(np.int16)  # a remap produced labels the source dtype cannot hold
    elif not np.issubdtype(dtype, np.integer):
        dtype = np.dtype(np.int16)
    if len(nii.shape) == 2 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if img.reoriented and len(nii.shape) == 3:
        arr = apply_orientation(arr, ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(nii.affine)))
        return arr.astype(dtype), nii.affine
    return arr.astype(dtype), img.affine


def _morph_one(img, recipe, seed: int):
    arr = img.array
    flat = arr.ndim == 3 and arr.shape[2] == 1  # a 2D label map stored as (X, Y, 1)
    work, spacing = (arr[:, :, 0], img.spacing[:2]) if flat else (arr, img.spacing[: arr.ndim])
    new, record = apply_recipe(work, spacing, recipe, np.random.default_rng(seed))
    return (new[:, :, None] if flat else new), record


def morph_files(cfg) -> dict:
    """``mrgen morph``: every NIfTI label file of ``morph.inputs`` edited ``morph.variants`` times (see the module doc)."""
    m = cfg.morph
    if m.variants < 1:
        raise MorphError(f"morph.variants must be >= 1, got {m.variants}")
    if not m.recipe:
        raise MorphError("morph.recipe is empty; give a YAML recipe, e.g. morph.recipe=ventriculomegaly")
    recipe = load_recipe(m.recipe)
    rhash = recipe_hash(recipe)
    inputs = find_inputs(cfg)
    out_dir = Path(cfg.workdir) / "morph"
    rec_path = out_dir / "records.jsonl"
    records = read_records(rec_path)
    written = skipped = 0
    first_out = out_dir / f"{stem_of(inputs[0])}_v0.nii.gz"
    first_written = False
    for path in inputs:
        stem, src_hash, img = stem_of(path), file_hash(path), None
        for k in range(m.variants):
            out = out_dir / f"{stem}_v{k}.nii.gz"
            seed = seeds.derive(m.seed, stem, k)  # independent of the file order and of other cases
            old = records.get(out.name)
            if out.exists() and old and (old.get("seed"), old.get("recipe_hash"), old.get("source_hash")) == (seed, rhash, src_hash):
                skipped += 1
                continue
            img = img or read_image(path, kind="mask")
            try:
                new, record = _morph_one(img, recipe, seed)
            except MorphError as exc:
                raise MorphError(f"{path}: {exc}") from None
            data, affine = _to_source_orientation(new, img)
            write_nifti(out, data, affine=affine)
            records[out.name] = {"output": out.name, "source": str(path), "source_hash": src_hash, "variant": k,
                                 "seed": seed, "morph_seed": int(m.seed), "recipe": recipe.name,
                                 "recipe_file": recipe.source, "recipe_hash": rhash,
                                 "changed_voxels": int((new != img.array).sum()), **record}
            write_records(rec_path, records)  # after each output: an interrupted run keeps its records
            written += 1
            first_written |= out == first_out
    preview = out_dir / "preview.png"
    if first_written or not preview.exists():
        before = read_image(inputs[0], kind="mask")
        after = read_image(first_out, kind="mask")
        save_preview(before.array, after.array, before.spacing, preview,
                     title=f"{recipe.name}: {Path(inputs[0]).name} (seed {records[first_out.name]['seed']})",
                     names=recipe.labels)
    return {"inputs": len(inputs), "written": written, "skipped": skipped,
            "records": str(rec_path), "preview": str(preview)}
