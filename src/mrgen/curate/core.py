"""``mrgen curate``: manifest -> normalised arrays + the Parquet index (docs/curate.md).

Resume: every finished volume is appended to ``curated/.progress.jsonl`` at once; its
record (source hashes, array-affecting settings, per-slice label pixel counts) lets a
rerun skip it. Index rows are a pure function of these records plus the manifest, so a
rerun on unchanged inputs rewrites nothing. Volumes that replace existing arrays are
written to ``curated/.staging`` and moved into place only when the new index is written,
so a failing run never damages what the old index points to.

The run's grid (``data.spacing`` or its median, :func:`mrgen.curate.report.plan_grid`) is decided
before any volume is read; each volume is cut along its acquisition and resampled onto it
(:mod:`mrgen.curate.geometry`), its mask values mapped to the stored 1..N (``label_values.json``).

Context labels (manifest ``context:``) are merged into the stored masks of annotated volumes
(see :mod:`mrgen.curate.volume`); they are listed in ``curated/context.json``, never in
``labels.json``, nor in a row's ``labels``/``organs``/prompt (see :mod:`mrgen.curate.labels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mrgen import io, prompts
from mrgen.config import Config
from mrgen.curate.geometry import Grid
from mrgen.curate.index import replace_if_changed, write_index
from mrgen.curate.inverse import source_grid
from mrgen.curate.labels import CONTEXT_FILE, LABELS_FILE, VALUES_FILE
from mrgen.curate.manifest import CurateError, DatasetSpec, VolumeSpec, load_manifest, volumes
from mrgen.curate.report import dataset_geometry, plan_grid, summary_lines, write_previews
from mrgen.curate.volume import array_paths, context_hash, context_sources, process, source_hash

SCHEMA = 1
PROGRESS = ".progress.jsonl"
STAGING = ".staging"


def manifest_path(cfg: Config) -> Path:
    return Path(cfg.curate.manifest) if cfg.curate.manifest else cfg.workdir / "phantom" / "manifest.yaml"


def _settings(spec: VolumeSpec, grid: Grid) -> dict:
    """Everything that changes the stored arrays (other settings only change index rows)."""
    ds = spec.dataset
    out = {"schema": SCHEMA, "image_size": grid.size, "normalize": ds.normalize, "has_mask": spec.mask is not None,
           **grid.settings(), "slice_axis": ds.slice_axis, "crop": ds.crop}
    if spec.mask is not None:  # file value -> stored value of every label and context label
        out["values"] = [[int(v), int(s)] for v, s in sorted(ds.value_map.items())]
    if spec.pixel_spacing:
        out["pixel_spacing"] = [float(v) for v in spec.pixel_spacing]
    if spec.context:  # the values context masks get (their files are hashed in context_hash)
        out["context"] = [int(ds.value_map.get(v, v)) for v, _ in spec.context]
    return out


def _load_records(curated: Path) -> dict:
    records = {}
    summary = curated / "curate.json"
    if summary.exists():
        try:
            records.update(io.read_json(summary).get("volumes", {}))
        except (ValueError, OSError):
            pass  # unreadable summary: everything is recomputed
    progress = curated / PROGRESS
    if progress.exists():
        for line in progress.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["key"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption
    return records


def _current(rec: dict | None, spec: VolumeSpec, hashes: tuple, grid: Grid, curated: Path) -> bool:
    if not rec or (rec.get("source_hash"), rec.get("mask_hash"), rec.get("context_hash", "")) != hashes \
            or rec.get("settings") != _settings(spec, grid):
        return False
    base = curated / STAGING if rec.get("staged") else curated
    return all((base / rel).exists() for rel in (rec.get("image"), rec.get("mask")) if rel) and bool(rec.get("image"))


def _recheck(rec: dict, spec: VolumeSpec) -> None:
    """Label checks that depend on the manifest, redone for volumes that are not re-read."""
    undeclared = [v for v in rec.get("mask_values", []) if v not in spec.dataset.labels]
    if undeclared:
        raise CurateError(
            f"{spec.mask}: label value(s) {undeclared} are not declared in the manifest labels {spec.dataset.labels} "
            f"of dataset '{spec.dataset.name}'; add them to 'labels:' or fix the mask"
        )


def split_subjects(subjects: list[str], fraction: float, seed: int, dataset: str) -> set:
    """Test subjects of one dataset: a seeded shuffle; >= 1 when there are >= 2 subjects and fraction > 0."""
    subjects = sorted(set(subjects))
    n = len(subjects)
    if n < 2 or fraction <= 0:
        return set()
    k = min(n - 1, max(1, int(round(fraction * n))))
    random.Random(f"{seed}:{dataset}").shuffle(subjects)
    return set(subjects[:k])


def _hash(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:16]


def rows_for(rec: dict, ds: DatasetSpec, split: str, min_px: int) -> list[dict]:
    """Index rows (one per slice + one for the volume) of one stored volume."""
    depth = int(rec["shape"][0])
    names = ds.stored_labels  # stored value -> name (context labels are not organs)
    counts = {int(k): v for k, v in rec.get("label_counts", {}).items() if int(k) in names}
    regions = ds.regions_for(depth)
    modality = rec["modality"]
    base = {
        "dataset": rec["dataset"], "subject": rec["subject"], "modality": modality,
        "attributes": prompts.attributes(modality), "split": split, "has_mask": bool(rec["mask"]),
        "image": rec["image"], "mask": rec["mask"], "orig_shape": rec["orig_shape"], "spacing": rec["spacing"],
        "affine": rec["affine"], "source": rec["source"], "mask_source": rec["mask_source"],
        "grid_spacing": rec["grid_spacing"],
    }

    def row(kind, rid, z, region, labels, shape, h):
        organs = [names[v] for v in labels]  # context labels are not organs: not listed, not in the prompt
        return {**base, "id": rid, "kind": kind, "region": region, "organs": organs, "labels": labels,
                "prompt": prompts.build_prompt(modality, region or None, organs), "slice": z, "shape": shape, "hash": h}

    vid = rec["key"]
    out = []
    for z in range(depth):
        labels = [v for v in sorted(counts) if counts[v][z] >= min_px]
        out.append(row("slice", f"{vid}/z{z:04d}", z, regions[z], labels, list(rec["shape"][1:]),
                       _hash(rec["image_hash"], rec["mask_hash_stored"], z)))
    vol_labels = [v for v in sorted(counts) if sum(counts[v]) >= min_px]
    vol_region = Counter(regions).most_common(1)[0][0] if regions else ds.region
    out.append(row("volume", vid, -1, vol_region, vol_labels, list(rec["shape"]), _hash(rec["image_hash"], rec["mask_hash_stored"])))
    return out


def run(cfg: Config) -> dict:
    """Curate the manifest's data into ``<workdir>/curated`` (see module docstring)."""
    man = load_manifest(manifest_path(cfg))
    specs = volumes(man)
    curated = cfg.workdir / "curated"
    cc = cfg.curate
    grid = plan_grid(cfg.data, specs)
    old = _load_records(curated)
    records: dict = {}
    todo: list = []
    for spec in specs:  # hash sources, decide what to (re)do
        hashes = (source_hash(spec.image), source_hash(spec.mask), context_hash(spec))
        rec = old.get(spec.key)
        if _current(rec, spec, hashes, grid, curated):
            _recheck(rec, spec)
            rec.update(source=os.path.abspath(spec.image), mask_source=os.path.abspath(spec.mask) if spec.mask else "",
                       context_source=context_sources(spec))
            if "source_grid" not in rec:  # curated before predictions went back to the files: headers only
                rec["source_grid"] = _source_grid(spec, rec)
            records[spec.key] = rec
        else:
            todo.append((spec, hashes))
    _curate(todo, records, curated, grid, cc.affine_tol, max(1, int(cc.workers)))
    return _commit(cfg, man, specs, records, curated, grid, processed=len(todo))


def _source_grid(spec: VolumeSpec, rec: dict) -> dict:
    """The file's own grid of a reused volume (``curate.json`` ``source_grid``), from its header."""
    try:
        g = io.read_geometry(spec.image)
    except io.ImageError as exc:
        raise CurateError(str(exc)) from exc
    return source_grid(g.shape, g.affine, rec.get("orientation", "RAS"))


def _one(spec: VolumeSpec, hashes: tuple, curated: Path, grid: Grid, tol: float) -> dict:
    img_rel, mask_rel = array_paths(spec)
    staged = (curated / img_rel).exists() or (curated / mask_rel).exists()
    rec = process(spec, grid, tol, curated, staged)
    rec.update(source_hash=hashes[0], mask_hash=hashes[1], context_hash=hashes[2], settings=_settings(spec, grid))
    return rec


def _curate(todo: list, records: dict, curated: Path, grid: Grid, tol: float, workers: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not todo:
        return
    curated.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("curate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar, open(curated / PROGRESS, "a") as log:
        task = bar.add_task("", total=len(todo))

        def done(rec: dict) -> None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            records[rec["key"]] = rec
            bar.update(task, advance=1, description=rec["key"])

        if workers == 1:
            for spec, hashes in todo:
                done(_one(spec, hashes, curated, grid, tol))
            return
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_one, spec, hashes, curated, grid, tol) for spec, hashes in todo]
            try:
                for fut in futures:
                    done(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


def _commit(cfg: Config, man, specs: list, records: dict, curated: Path, grid: Grid, processed: int) -> dict:
    cc = cfg.curate
    staging = curated / STAGING
    for spec in specs:  # move re-curated arrays into place, then publish the new index
        rec = records[spec.key]
        if rec.get("staged"):
            for rel in (rec["image"], rec["mask"]):
                if rel:
                    (curated / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / rel, curated / rel)
            rec["staged"] = False
    subjects: dict = {}
    for spec in specs:
        subjects.setdefault(spec.dataset.name, set()).add(spec.subject)
    test = {d: split_subjects(sorted(s), cc.test_fraction, cc.seed, d) for d, s in subjects.items()}
    rows, summary = [], {}
    for spec in specs:
        rec = records[spec.key]
        split = "test" if spec.subject in test[spec.dataset.name] else "train"
        vol_rows = rows_for(rec, spec.dataset, split, cc.min_label_pixels)
        rows.extend(vol_rows)
        s = summary.setdefault(spec.dataset.name, {"subjects": 0, "volumes": 0, "slices": 0, "modalities": [],
                                                   "test_subjects": sorted(test[spec.dataset.name]), "organs": {}})
        for value, name in spec.dataset.stored_context():  # slices holding each context label (no prompt, no segmenter)
            n = sum(1 for px in rec.get("label_counts", {}).get(str(value), []) if px >= cc.min_label_pixels)
            s.setdefault("context", {})[name] = s.get("context", {}).get(name, 0) + n
        s["volumes"] += 1
        s["slices"] += len(vol_rows) - 1
        if spec.modality not in s["modalities"]:
            s["modalities"].append(spec.modality)
        for r in vol_rows[:-1]:
            for o in r["organs"]:
                s["organs"][o] = s["organs"].get(o, 0) + 1
    for name, s in summary.items():
        s["subjects"] = len(subjects[name])
    for ds in man.datasets:
        summary[ds.name]["geometry"] = dataset_geometry(ds, [records[s.key] for s in specs if s.dataset is ds])
    write_index(curated / "index.parquet", rows)
    labels = {ds.name: {str(v): n for v, n in ds.stored_labels.items()} for ds in man.datasets}
    _write_json(curated / LABELS_FILE, labels)  # segmentation labels only, stored values
    context = {ds.name: {str(v): n for v, n in ds.stored_context()} for ds in man.datasets if ds.context}
    _write_json(curated / CONTEXT_FILE, context)  # conditioning-only labels ({} when there are none)
    values = {ds.name: {str(s): v for v, s in sorted(ds.value_map.items(), key=lambda kv: kv[1])} for ds in man.datasets}
    _write_json(curated / VALUES_FILE, values)  # stored value -> value in the user's mask files
    reoriented = {k: records[k]["orientation"] for k in sorted(records) if records[k].get("reoriented") and k in {s.key for s in specs}}
    _write_json(curated / "curate.json", {
        "schema": SCHEMA, "manifest": os.path.abspath(man.path), "manifest_hash": man.sha256,
        "settings": {"image_size": cfg.data.image_size, "min_label_pixels": cc.min_label_pixels,
                     "test_fraction": cc.test_fraction, "seed": cc.seed, "affine_tol": cc.affine_tol,
                     "spacing": cfg.data.spacing or "auto", "grid": grid.settings()},
        "summary": summary, "reoriented": reoriented, "label_values": values,
        "volumes": {s.key: records[s.key] for s in specs},
    })
    write_previews(curated, man.datasets, specs, records)
    (curated / PROGRESS).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    n_slices = sum(1 for r in rows if r["kind"] == "slice")
    return {
        "index": str(curated / "index.parquet"), "datasets": len(summary), "volumes": len(specs), "slices": n_slices,
        "curated": processed, "reused": len(specs) - processed,
        "split": {d: f"{len(subjects[d]) - len(t)} train / {len(t)} test subjects" for d, t in test.items()},
        **summary_lines(man.datasets, summary),
    }


def _write_json(path: Path, obj: dict) -> None:
    """Indented JSON, except that each entry of ``volumes`` stays on one line (keeps curate.json short)."""
    vols = obj.get("volumes")
    head = {k: v for k, v in obj.items() if k != "volumes"}
    text = json.dumps(head, indent=1, default=io._json_default)
    if vols is not None:
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, default=io._json_default)}" for k, v in vols.items())
        text = text[:-2] + (",\n" if head else "\n") + ' "volumes": {\n' + body + "\n }\n}"
    replace_if_changed(path, lambda tmp: tmp.write_text(text + "\n"))
