"""``mrgen phantom``: a physics-based multi-contrast MRI phantom (the built-in data).

Writes into ``<workdir>/phantom/``:

* ``images/<subject>_<modality>.nii.gz`` float32 ``(X, Y, Z)`` in RAS, one per modality
  (modality names made filename-safe with :func:`safe_name`, e.g. ``T1_in-phase``);
* ``masks/<subject>.nii.gz`` uint8 organ labels (abdomen: 1 liver, 2 right kidney, 3 left
  kidney, 4 spleen; brain: 1 ventricles, 2 cerebellum, 3 brainstem, 4 white matter, 5 grey matter);
* ``tissues/<subject>.nii.gz`` uint8 ground-truth dominant tissue (codes in ``phantom.json``);
* ``manifest.yaml`` (curate input; every series carries the ``masks:`` pattern);
* ``phantom.json`` (tissue table with sources, sequences, per-subject seeds, shapes, parameters);
* ``preview.png`` (mid slice of every modality of the first subject, plus the mask).

Same config and seed -> byte-identical files. A rerun keeps files that exist (resume) unless the
generation parameters changed (fingerprint in ``phantom.json``), in which case all are redone.
See docs/phantom.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mrgen.phantom import signal as S
from mrgen.phantom import tissue as T
from mrgen.phantom.anatomy import LAYOUTS, Anatomy, draw_shapes, rasterize
from mrgen.phantom.signal import RENDERABLE, PhantomError, check_modalities

__all__ = ["run", "generate_subject", "render_modality", "safe_name", "subject_name", "affine",
           "Subject", "PhantomError", "RENDERABLE", "LAYOUTS"]

VERSION = 1  # bump when the generator's output changes for the same config


@dataclass
class Subject:
    """One phantom subject: drawn parameters plus (optionally) its rasterised anatomy."""

    name: str
    index: int
    layout: str
    seeds: dict
    shapes: dict
    params: dict  # {tissue: {t1, t2, pd, ff, adc, gd}}
    anatomy: Anatomy | None = None


def safe_name(modality: str) -> str:
    """Filename-safe modality: ``T1 in-phase`` -> ``T1_in-phase``, ``T2*`` -> ``T2star``."""
    s = str(modality).replace("*", "star").replace("+", "plus")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", s).strip("_")


def subject_name(index: int) -> str:
    return f"sub-{index:03d}"


def affine(shape: tuple, spacing) -> np.ndarray:
    """4x4 RAS affine, volume centred on the origin, voxel size ``spacing`` (mm)."""
    sp = np.asarray(list(spacing)[:3], dtype=np.float64)
    aff = np.diag(list(sp) + [1.0])
    aff[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * sp
    return aff


def _shape(cfg) -> tuple:
    return (int(cfg.phantom.size), int(cfg.phantom.size), int(cfg.phantom.slices))


def _noise_seed(cfg, index: int, modality: str) -> list:
    return [int(cfg.phantom.seed), int(index), 2, zlib.crc32(modality.encode())]


def generate_subject(cfg, index: int, raster: bool = True) -> Subject:
    """Draw subject ``index`` of ``cfg.phantom`` (and rasterise its anatomy unless ``raster=False``)."""
    pc = cfg.phantom
    layout = pc.layout
    if layout not in LAYOUTS:
        raise PhantomError(f"unknown phantom.layout '{layout}'; choose one of: {', '.join(LAYOUTS)}")
    seeds = {"anatomy": [int(pc.seed), int(index), 0], "tissue": [int(pc.seed), int(index), 1]}
    shapes = draw_shapes(layout, np.random.default_rng(seeds["anatomy"]))
    if layout == "brain" and float(pc.ventricle_scale) != 1.0:  # same subject, enlarged ventricles
        for v in shapes["ventricles"] + [shapes["third_ventricle"]]:
            v["r"] = [round(v["r"][0] * pc.ventricle_scale, 4), round(v["r"][1] * pc.ventricle_scale, 4), v["r"][2]]
    params = T.subject_parameters(np.random.default_rng(seeds["tissue"]), LAYOUTS[layout]["tissues"])
    subj = Subject(subject_name(index), int(index), layout, seeds, shapes, params)
    if raster:
        subj.anatomy = rasterize(layout, shapes, _shape(cfg))
    return subj


def render_modality(subject: Subject, modality: str, cfg, noise: bool = True) -> np.ndarray:
    """Image ``(X, Y, Z)`` float32 of ``subject`` for ``modality`` (canonical name or alias).

    ``noise=False`` gives the clean image (no bias, no noise) scaled like the stored one.
    """
    mod = check_modalities([modality])[0]
    if subject.anatomy is None:
        subject.anatomy = rasterize(subject.layout, subject.shapes, _shape(cfg))
    if not noise:
        return (S.clean_image(subject.anatomy, subject.params, mod) * S.SCALE).astype(np.float32)
    rng = np.random.default_rng(_noise_seed(cfg, subject.index, mod))
    return S.render(subject.anatomy, subject.params, mod, rng, cfg.phantom.noise, cfg.phantom.bias)


def _fingerprint(cfg) -> str:
    pc = cfg.phantom
    key = dict(version=VERSION, layout=pc.layout, size=pc.size, slices=pc.slices, spacing=[float(s) for s in pc.spacing],
               noise=float(pc.noise), bias=float(pc.bias), seed=int(pc.seed))
    if float(pc.ventricle_scale) != 1.0:  # only when set, so existing phantoms keep their fingerprint
        key["ventricle_scale"] = float(pc.ventricle_scale)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _files(root: Path, name: str, modalities: list) -> dict:
    files = {m: root / "images" / f"{name}_{safe_name(m)}.nii.gz" for m in modalities}
    files["__mask__"] = root / "masks" / f"{name}.nii.gz"
    files["__tissues__"] = root / "tissues" / f"{name}.nii.gz"
    return files


def _record(cfg, modalities: list, subjects: list) -> dict:
    pc = cfg.phantom
    spec = LAYOUTS[pc.layout]
    return {
        "schema": 1, "generator": "mrgen.phantom", "version": VERSION, "fingerprint": _fingerprint(cfg),
        "layout": pc.layout, "region": spec["region"], "field_strength_T": 1.5,
        "shape": list(_shape(cfg)), "spacing_mm": [float(s) for s in pc.spacing], "axes": "RAS (x: right, y: anterior, z: superior)",
        "noise": float(pc.noise), "bias": float(pc.bias), "seed": int(pc.seed), "intensity_scale": S.SCALE,
        "modalities": modalities, "files": {m: f"images/<subject>_{safe_name(m)}.nii.gz" for m in modalities},
        "labels": {str(k): v for k, v in spec["labels"].items()},
        "tissue_codes": {"0": "air", **{str(i + 1): t for i, t in enumerate(spec["tissues"])}},
        "tissues": T.table(spec["tissues"]), "constants": T.CONSTANTS,
        "sequences": {m: S.SEQUENCES[pc.layout][m] for m in RENDERABLE},
        "subjects": [{"name": s.name, "index": s.index,
                      "seeds": {**s.seeds, "noise": {m: _noise_seed(cfg, s.index, m) for m in modalities}},
                      "shapes": s.shapes, "tissue_parameters": s.params} for s in subjects],
    }


def _manifest(cfg, modalities: list) -> dict:
    spec = LAYOUTS[cfg.phantom.layout]
    series = [{"modality": m, "images": f"images/sub-*_{safe_name(m)}.nii.gz", "masks": "masks/{subject}.nii.gz"}
              for m in modalities]
    return {"version": 1, "datasets": [{
        "name": f"phantom_{cfg.phantom.layout}", "root": ".", "subject_pattern": r"(?P<subject>sub-\d+)",
        "region": spec["region"], "normalize": "mr", "labels": dict(spec["labels"]), "series": series}]}


def _write_json_if_changed(path: Path, obj) -> bool:
    from mrgen.io import write_json

    obj = json.loads(json.dumps(obj))
    if path.exists():
        try:
            if json.loads(path.read_text()) == obj:
                return False
        except ValueError:
            pass
    write_json(path, obj)
    return True


def _write_text_if_changed(path: Path, text: str) -> bool:
    from mrgen.io import atomic_path

    if path.exists() and path.read_text() == text:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


def _stale(root: Path, fingerprint: str) -> bool:
    """True when existing phantom files were made with other generation parameters (or unknown ones)."""
    meta = root / "phantom.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("fingerprint") != fingerprint
        except ValueError:
            return True
    return any((root / d).glob("sub-*.nii.gz") for d in ("masks", "tissues")) or any((root / "images").glob("sub-*.nii.gz"))


def run(cfg) -> dict:
    """Write the phantom of ``cfg.phantom`` into ``<cfg.run.workdir>/phantom/``; returns a summary."""
    from mrgen.io import write_nifti

    pc = cfg.phantom
    if pc.layout not in LAYOUTS:
        raise PhantomError(f"unknown phantom.layout '{pc.layout}'; choose one of: {', '.join(LAYOUTS)}")
    if len(pc.spacing) != 3 or min(float(s) for s in pc.spacing) <= 0:
        raise PhantomError(f"phantom.spacing must be three positive numbers (mm), got {list(pc.spacing)}")
    if pc.size < 8 or pc.slices < 1 or pc.subjects < 1:
        raise PhantomError(f"phantom needs size >= 8, slices >= 1, subjects >= 1 (got {pc.size}, {pc.slices}, {pc.subjects})")
    modalities = check_modalities(pc.modalities)
    root = Path(cfg.run.workdir) / "phantom"
    fp = _fingerprint(cfg)
    stale = _stale(root, fp)  # other parameters made these files: remove them so none is trusted by mistake
    for pattern in ("images/sub-*.nii.gz", "masks/sub-*.nii.gz", "tissues/sub-*.nii.gz"):
        for old in root.glob(pattern):
            m = re.match(r"sub-(\d+)", old.name)
            if stale or (m and int(m.group(1)) >= pc.subjects):  # also subjects beyond phantom.subjects
                old.unlink()
    subjects = [generate_subject(cfg, i, raster=False) for i in range(pc.subjects)]
    changed = _write_json_if_changed(root / "phantom.json", _record(cfg, modalities, subjects))
    aff = affine(_shape(cfg), pc.spacing)
    written, skipped = 0, 0
    for subj in subjects:
        files = _files(root, subj.name, modalities)
        missing = {k: p for k, p in files.items() if not p.exists()}
        if not missing:
            skipped += 1
            continue
        for key, path in missing.items():
            if key == "__mask__":
                arr = _anatomy(subj, cfg).mask
            elif key == "__tissues__":
                arr = _anatomy(subj, cfg).tissue_map
            else:
                arr = render_modality(subj, key, cfg)
            write_nifti(path, arr, affine=aff)
            written += 1
        subj.anatomy = None  # free memory
    manifest = yaml.safe_dump(_manifest(cfg, modalities), sort_keys=False)
    changed |= _write_text_if_changed(root / "manifest.yaml", manifest)
    preview = root / "preview.png"
    if written or changed or not preview.exists():
        from mrgen.phantom.preview import save_preview

        save_preview(cfg, generate_subject(cfg, 0), modalities, preview)
    return {"folder": str(root), "layout": pc.layout, "subjects": pc.subjects, "modalities": ", ".join(modalities),
            "files_written": written, "subjects_skipped": skipped, "manifest": str(root / "manifest.yaml")}


def _anatomy(subj: Subject, cfg) -> Anatomy:
    if subj.anatomy is None:
        subj.anatomy = rasterize(subj.layout, subj.shapes, _shape(cfg))
    return subj.anatomy
