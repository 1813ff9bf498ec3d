"""nnU-Net v2 raw datasets: ``Dataset{id:03d}_{name}/{imagesTr,labelsTr,dataset.json,provenance.jsonl}``.

2D (the paper): ``imagesTr/<CASE>_0000.png`` with the image rescaled from [-1, 1] to uint8
[0, 255], ``labelsTr/<CASE>.png`` (uint8 labels); both written with :func:`mrgen.io.write_png`
(array axes (x, y), the same convention for image and label). NIfTI (``fmt="nifti"``, and
always for 3D): ``.nii.gz`` with the image kept as float32 in [-1, 1] (nnU-Net normalises MR
images itself) and the label as uint8; 3D arrays in the curated ``(Z, X, Y)`` layout are
written as ``(X, Y, Z)``. nnU-Net needs consecutive label values (0, 1, 2, …): non-consecutive
source values are renumbered and ``dataset.json`` keeps the map in ``mrgen_label_values``.
Context labels (conditioning-only, e.g. BraTS ``5: brain``; ``context=`` of :func:`export_pairs`)
are written as background (0) and never listed in ``dataset.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from mrgen import io

ENDINGS = {"png": ".png", "nifti": ".nii.gz"}


def dataset_folder(root: str | Path, dataset_id: int, name: str) -> Path:
    return Path(root) / f"Dataset{int(dataset_id):03d}_{name}"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> [0, 255] uint8 (the paper's PNG convention)."""
    return np.rint((np.clip(np.asarray(image, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_uint8`: [0, 255] -> [-1, 1] float32."""
    return np.asarray(image, np.float32) / 127.5 - 1.0


def label_map(labels: dict) -> tuple[dict, dict]:
    """``{value: name}`` -> (dataset.json ``labels`` {name: new value}, {original value: new value})."""
    vals = sorted(int(v) for v in labels if int(v) != 0)
    remap = {v: i + 1 for i, v in enumerate(vals)}
    names: dict = {"background": 0}
    for v in vals:
        n = str(labels.get(v, labels.get(str(v), f"label{v}")))
        names[n if n not in names else f"{n}_{v}"] = remap[v]
    return names, remap


def _write(path_noext: Path, array: np.ndarray, fmt: str, is_label: bool, spacing) -> None:
    if fmt == "png":
        if array.ndim != 2:
            raise ValueError(f"png export needs 2D arrays, got shape {array.shape}; use export.format=nifti for 3D")
        io.write_png(path_noext.with_name(path_noext.name + ".png"), array.astype(np.uint8) if is_label else to_uint8(array))
        return
    a = np.asarray(array)
    a = a.astype(np.uint8) if is_label else a.astype(np.float32)
    a = np.transpose(a, (1, 2, 0)) if a.ndim == 3 else a[..., None]
    sp = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    io.write_nifti(path_noext.with_name(path_noext.name + ".nii.gz"), a, spacing=sp)


def export_pairs(pairs: Iterable, out_dir: str | Path, labels: dict, modality: str, fmt: str = "png",
                 spacing=None, provenance: Iterable | None = None, description: str = "",
                 context: Iterable = (), name: str = "") -> dict:
    """Write ``(case_id, image [-1, 1], mask)`` pairs as an nnU-Net v2 raw dataset in ``out_dir``.

    ``labels``: ``{value: name}`` of the foreground labels; ``modality``: channel 0's name;
    ``fmt``: ``png`` (2D only) or ``nifti``; ``provenance``: optional records (one per pair,
    same order) written to ``provenance.jsonl`` as ``{"case": case_id, **record}``.
    ``context``: label values that condition the generator only (``curated/context.json``): written
    as 0 and left out of ``dataset.json`` even when ``labels`` names them. ``name``: ``dataset.json``'s name
    (default: the folder's name).
    Files of earlier exports that are not in ``pairs`` are removed. Returns a summary dict.
    """
    from mrgen.curate.labels import strip_context

    context = sorted({int(v) for v in context})
    labels = {k: v for k, v in labels.items() if int(k) not in context}
    if fmt not in ENDINGS:
        raise ValueError(f"export format must be one of {', '.join(ENDINGS)}, got '{fmt}'")
    out = Path(out_dir)
    img_dir, lab_dir = out / "imagesTr", out / "labelsTr"
    names, remap = label_map(labels)
    lut = np.zeros(max([0, *remap]) + 1, np.uint8)
    for v, n in remap.items():
        lut[v] = n
    prov = list(provenance) if provenance is not None else None
    cases, lines = [], []
    for i, (case, image, mask) in enumerate(pairs):
        mask = strip_context(np.asarray(mask).astype(np.int64), context)
        if np.asarray(image).shape != mask.shape:
            raise ValueError(f"case {case}: image shape {np.asarray(image).shape} != mask shape {mask.shape}")
        bad = np.setdiff1d(np.unique(mask), [0, *remap])
        if bad.size:
            raise ValueError(f"case {case}: mask holds label values {bad.tolist()} not in labels {sorted(remap)}")
        _write(img_dir / f"{case}_0000", image, fmt, False, spacing)
        _write(lab_dir / case, lut[mask], fmt, True, spacing)
        cases.append(case)
        if prov is not None:
            lines.append(json.dumps({"case": case, **(prov[i] if i < len(prov) else {})}, default=str))
    ending = ENDINGS[fmt]
    keep = {f"{c}_0000{ending}" for c in cases} | {f"{c}{ending}" for c in cases}
    for d in (img_dir, lab_dir):
        for f in d.glob("*") if d.exists() else []:
            if f.is_file() and f.name not in keep:
                f.unlink()
    if prov is not None:
        with io.atomic_path(out / "provenance.jsonl") as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines))
    ds = {
        "channel_names": {"0": modality},
        "labels": names,
        "numTraining": len(cases),
        "file_ending": ending,
        "name": name or out.name,
        "description": description or "mrgen export",
        "mrgen_label_values": {str(n): int(v) for v, n in remap.items()},  # nnU-Net value -> original value
        "mrgen_image_range": "png: uint8 = (x + 1) * 127.5 for x in [-1, 1]; nifti: float32 in [-1, 1]",
    }
    io.write_json(out / "dataset.json", ds)  # written last: its presence marks a complete export
    return {"folder": str(out), "cases": len(cases), "format": fmt, "labels": names}


def read_dataset(folder: str | Path) -> tuple[list, list, dict]:
    """Read an export back: (images in [-1, 1], masks with the ORIGINAL label values, dataset.json).

    Arrays come back in the layout they were given to :func:`export_pairs`.
    """
    folder = Path(folder)
    ds = io.read_json(folder / "dataset.json")
    ending = ds["file_ending"]
    back = {int(k): int(v) for k, v in ds.get("mrgen_label_values", {}).items()}
    lut = np.arange(max([0, *back]) + 1, dtype=np.int64)
    for k, v in back.items():
        lut[k] = v
    images, masks = [], []
    for lab_path in sorted((folder / "labelsTr").glob(f"*{ending}")):
        case = lab_path.name[: -len(ending)]
        img = io.read_image(folder / "imagesTr" / f"{case}_0000{ending}").array
        lab = io.read_image(lab_path, "mask").array.astype(np.int64)
        if ending == ".png":
            img, lab = from_uint8(img[..., 0]), lab[..., 0]
        else:
            img = np.transpose(img, (2, 0, 1)) if img.shape[-1] > 1 else img[..., 0]
            lab = np.transpose(lab, (2, 0, 1)) if lab.shape[-1] > 1 else lab[..., 0]
        images.append(np.asarray(img, np.float32))
        masks.append(lut[lab])
    return images, masks, ds
