"""Test inputs written on the fly: tiny NIfTI datasets, DICOM series (no dependence on the phantom package)."""

from __future__ import annotations

import os
from pathlib import Path

import re

import nibabel as nib
import numpy as np
import pytest
import yaml

LABELS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def organ_mask(shape=(20, 16, 6)) -> np.ndarray:
    """Liver in every slice, spleen only in slices >= 3, kidneys tiny (4 px) in slice 0."""
    x, y, z = shape
    m = np.zeros(shape, np.uint8)
    m[2:10, 2:10, :] = 1
    m[12:18, 10:15, 3:] = 4
    m[14:16, 2:4, 0] = 2
    return m


def image_for(mask: np.ndarray, modality: str, rng) -> np.ndarray:
    base = {"T1": (100, 400, 250), "T2": (300, 150, 600)}[modality]
    img = np.full(mask.shape, 50.0, np.float32)
    for v, val in zip((1, 4, 2), base):
        img[mask == v] = val
    return img + rng.normal(0, 5, mask.shape).astype(np.float32)


def save(path: Path, arr: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 4.0, 1.0]) if affine is None else affine), str(path))
    return path


def fails(cfg, *patterns) -> str:
    """Curate ``cfg``: it must raise one CurateError (a ValueError) whose message matches every regex."""
    from mrgen.curate import CurateError, run

    with pytest.raises(CurateError) as exc:
        run(cfg)
    for p in patterns:
        assert re.search(p, str(exc.value)), str(exc.value)
    assert isinstance(exc.value, ValueError)
    return str(exc.value)


def write_manifest(path: Path, datasets: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "datasets": datasets}, sort_keys=False))
    return path


def abdomen_dataset(root: Path, subjects=4, modalities=("T1", "T2"), annotated=("T1",), shape=(20, 16, 6), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    for i in range(1, subjects + 1):
        mask = organ_mask(shape)
        save(root / "masks" / f"sub-{i:02d}.nii.gz", mask)
        for mod in modalities:
            save(root / "images" / f"sub-{i:02d}_{mod}.nii.gz", image_for(mask, mod, rng))
    series = []
    for mod in modalities:
        s = {"modality": mod, "images": f"images/*_{mod}.nii.gz"}
        if mod in annotated:
            s["masks"] = "masks/{subject}.nii.gz"
        series.append(s)
    return {"name": "abd", "root": os.path.relpath(root, root.parent), "subject_pattern": r"(?P<subject>sub-\d+)",
            "region": "upper_abdomen", "normalize": "mr", "labels": dict(LABELS), "series": series}


def write_dicom_series(folder: Path, pixels: list, spacing=(0.9, 0.8), dz=2.5) -> None:
    """One uint16 slice per file; rows x cols = pixel array shape; IOP = axial, z ascending."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for k, arr in enumerate(pixels):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "MR"
        ds.Rows, ds.Columns = arr.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelSpacing = list(spacing)  # row spacing, column spacing
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * dz]
        ds.SliceThickness = dz
        ds.PixelData = np.ascontiguousarray(arr, dtype=np.uint16).tobytes()
        # files named in reverse order: the reader must sort by position, not by name
        ds.save_as(folder / f"{len(pixels) - k:03d}.dcm", enforce_file_format=True)


# ----------------------------------------------------------------------------- MS-CMRSeg-style short-axis stacks

CARDIAC = {200: "LV myocardium", 500: "LV blood pool", 600: "right ventricle"}
NI, NJ, NK = 24, 20, 6  # in-plane i x j voxels, k slices (the acquisition's stack)


def short_axis_affine(phi_deg: float, inplane=1.25, thickness=8.0) -> np.ndarray:
    """An oblique short-axis grid: i between L and P, j = S, k (the stack) between R and P.

    phi = 40 gives axis codes LSP, phi = 50 gives PSR: one anatomy, 10 degrees apart."""
    phi = np.radians(phi_deg)
    i = -np.array([np.cos(phi), np.sin(phi), 0.0])
    j = np.array([0.0, 0.0, 1.0])
    k = np.array([np.sin(phi), -np.cos(phi), 0.0])
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = i * inplane, j * inplane, k * thickness
    aff[:3, 3] = (10.0, -20.0, 30.0)
    return aff


def cardiac_stack(dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) ``(NI, NJ, NK)``: per slice k a blood pool (500) of radius 2 + k voxels in a myocardium
    ring (200), an RV (600) patch at high i, and a marker (RV) at high i, high j only in slice 0."""
    ii, jj = np.meshgrid(np.arange(NI), np.arange(NJ), indexing="ij")
    r = np.hypot(ii - 10, jj - 10)
    mask = np.zeros((NI, NJ, NK), dtype)
    for k in range(NK):
        pool = 2 + k
        mask[..., k][r <= pool + 2] = 200
        mask[..., k][r <= pool] = 500
        mask[18:21, 6:12, k] = 600
    mask[20:23, 16:19, 0] = 600  # corner marker: i high, j high
    img = 50.0 + 3.0 * mask.astype(np.float32) / 100.0
    return img.astype(np.float32), mask


def cardiac_dataset(root, phi: float, mask_dtype=np.float64, subjects=("p1", "p2"), **extra) -> dict:
    img, mask = cardiac_stack(mask_dtype)
    for s in subjects:
        save(root / f"{s}_img.nii.gz", img, short_axis_affine(phi))
        save(root / f"{s}_gt.nii.gz", mask, short_axis_affine(phi))
    return {"name": "heart", "root": str(root), "subject_pattern": r"(?P<subject>p\d+)_img", "region": "cardiac",
            "normalize": "minmax", "labels": dict(CARDIAC), **extra,
            "series": [{"modality": "bSSFP", "images": "*_img.nii.gz", "masks": "{subject}_gt.nii.gz"}]}
