"""The only code that reads and writes image files (NIfTI, DICOM series, PNG) and arrays.

Every writer is atomic (temp file in the same folder, then ``os.replace``), so an
interrupted run never leaves half a file behind and a rerun can trust what exists. Every
rename goes through :func:`_commit`, the fault-injection point of ``tests/faults``
(``MRGEN_FAULT_KILL_AT=k[:before|:after]`` SIGKILLs the process at its k-th atomic write,
before or after the rename). A full disk raises :class:`DiskFullError` naming the file; the
temp file is removed and the previous version of the file stays.

Arrays returned by :func:`read_image` are in RAS+ canonical orientation, indexed
``(x, y, z)`` with ``spacing`` in mm for each axis.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


class ImageError(ValueError):
    """An input image/mask is unusable; the message names the file and the fix."""


@dataclass
class Image:
    array: np.ndarray  # (X, Y, Z) float32 for images, integer for masks
    affine: np.ndarray  # 4x4, RAS+ after canonicalisation
    spacing: tuple  # mm per axis
    path: str
    reoriented: bool = False  # True when the file was not already in RAS+
    orientation: str = "RAS"  # axis codes of the file before canonicalisation (e.g. "LPS")
    axes: tuple = (0, 1, 2)  # voxel axis of the file (0 = i, 1 = j, 2 = k) that became each canonical axis


class DiskFullError(OSError, ValueError):
    """No space left on the device while writing a file; the message names the file and the fix."""


TMP_MARK = ".tmp"  # every temp file is ``.<name>.<random>.tmp<suffix>`` beside its target


_writes = 0  # atomic writes committed by this process (the fault hook counts them)


def _fault(moment: str, path: Path) -> None:
    """The fault hook of tests/faults. ``MRGEN_FAULT_KILL_AT=k[:before|:after]``: SIGKILL this process at its
    k-th atomic write; ``MRGEN_FAULT_LOG=file``: append ``{"k", "moment", "path", "time"}`` of every write (and of
    the kill) to ``file``."""
    log, spec = os.environ.get("MRGEN_FAULT_LOG"), os.environ.get("MRGEN_FAULT_KILL_AT")
    if not (log or spec):
        return
    k, _, when = (spec or "").partition(":")
    kill = bool(spec) and _writes == int(k) and (when or "before") == moment
    if log and (moment == "before" or kill):
        with open(log, "a") as fh:
            fh.write(json.dumps({"k": _writes, "moment": moment, "path": str(path), "time": time.time(),
                                 "kill": kill}) + "\n")
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)


def _commit(tmp: str | Path, path: Path) -> None:
    """The one rename of every atomic writer."""
    global _writes
    _writes += 1
    _fault("before", path)
    _public(tmp)
    os.replace(tmp, path)
    _fault("after", path)


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` says the device is full (an OSError with ENOSPC, or a library's wrapped "No space left")."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def _disk_full(path: Path, exc: BaseException) -> DiskFullError:
    try:
        import shutil

        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"disk full while writing {path} ({free} on the file system of {path.parent}); "
                         f"free space there (or move the run folder with -w), then rerun the same command: every file "
                         f"written before is intact and the stage resumes")


def write_npz(path: str | Path, **arrays) -> None:
    """Atomically write ``arrays`` as an uncompressed ``.npz`` that ``numpy.load`` reads, with **fixed** zip
    timestamps: the same arrays give the same bytes (``np.savez`` stamps the wall time, so the file hash of a
    rerun's identical candidates would differ)."""
    import zipfile

    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)

@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, keep_if_same: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``.

    ``keep_if_same``: leave ``path`` untouched (mtime too) when the new bytes equal it.
    A full disk raises :class:`DiskFullError` (the temp file is removed, ``path`` keeps its old content).
    """
    path = Path(path)
    sfx = suffix if suffix is not None else "".join(path.suffixes)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TMP_MARK}{sfx}")
        os.close(fd)
        yield Path(tmp)
        if not (keep_if_same and path.exists() and file_hash(tmp) == file_hash(path)):
            _commit(tmp, path)
    except DiskFullError:
        raise
    except Exception as exc:  # noqa: BLE001 - writers (numpy, pyarrow, safetensors) word a full disk differently
        if is_disk_full(exc):
            raise _disk_full(path, exc) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def is_temp(path: str | Path) -> bool:
    """A temp file of :func:`atomic_path` (``.<name>.<random>.tmp<suffix>``), never a finished artefact."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def sweep_temp(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed run left below ``folder`` (call it holding the folder's lock); returns them."""
    gone = []
    for p in Path(folder).rglob(".*"):
        if is_temp(p) and p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _public(path: str | Path) -> None:
    """mkstemp files are 0600; give the final file the usual 0666 & ~umask."""
    try:
        os.chmod(path, 0o666 & ~_UMASK)
    except OSError:
        pass


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


class ArtefactError(ValueError):
    """A file mrgen wrote cannot be used: corrupt, truncated, or of a schema this mrgen does not read.

    The message names the file and the fix (usually: delete it and rerun the stage that writes it).
    """


def corrupt(path: str | Path, exc: BaseException | str, fix: str) -> ArtefactError:
    """The one wording of "this file is damaged": what failed, and ``fix`` (e.g. "delete it and rerun `mrgen curate`")."""
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return ArtefactError(f"{path} is corrupt or truncated ({why}); {fix}")


def check_schema(found, path: str | Path, schema: int, fix: str, oldest: int = 1) -> int:
    """``found`` (a file's ``schema`` value) as an int in ``[oldest, schema]``, else an :class:`ArtefactError`."""
    if isinstance(found, bool) or not isinstance(found, int):
        raise ArtefactError(f"{path} has an unknown schema version {found!r} (this mrgen reads {oldest}..{schema}); "
                            f"it was not written by mrgen or is damaged: {fix}")
    if found > schema:
        raise ArtefactError(f"{path} has schema {found}, newer than this mrgen reads (up to {schema}); upgrade mrgen, "
                            f"or {fix}")
    if found < oldest:
        raise ArtefactError(f"{path} has schema {found}, older than this mrgen reads (from {oldest}); {fix}")
    return found


def read_versioned(path: str | Path, schema: int, fix: str, oldest: int = 1, missing: int | None = None) -> dict:
    """The JSON object in ``path`` (a versioned artefact: ``{"schema": N, ...}``) after checking N.

    ``fix``: what the user does when it cannot be read (e.g. "delete it and rerun `mrgen filter`");
    ``missing``: the version of a file without ``schema`` (written before versioning; ``None``: refuse).
    Raises :class:`ArtefactError` for unparsable JSON, a non-object, or a version outside ``[oldest, schema]``.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise corrupt(path, exc, fix) from None
    if not isinstance(raw, dict):
        raise corrupt(path, f"expected a JSON object, found {type(raw).__name__}", fix)
    check_schema(raw.get("schema", missing), path, schema, fix, oldest)
    return raw


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def load_npy(path: str | Path, mmap: bool = True, fix: str = "delete it and rerun the stage that wrote it") -> np.ndarray:
    """An array saved by :func:`save_npy`; a truncated or damaged header is an :class:`ArtefactError` with ``fix``."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError) as exc:
        raise corrupt(path, exc, fix) from None


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:16]


def folder_hash(folder: str | Path, skip: tuple = ()) -> str:
    """Content hash of every file under ``folder`` (relative paths and bytes; names in ``skip`` left out)."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in skip):
        h.update(f"{p.relative_to(root).as_posix()}\0{file_hash(p)}\n".encode())
    return h.hexdigest()[:16]


def array_hash(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- NIfTI


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(".nii") or path.name.endswith(".nii.gz")


def read_image(path: str | Path, kind: str = "image") -> Image:
    """Read a NIfTI file, a DICOM series folder (or one .dcm) or a PNG into canonical RAS+.

    ``kind`` is ``image`` (float32) or ``mask`` (integer labels; non-integer values are an error).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found; check the manifest's pattern and root folder")
    try:
        if path.is_dir() or path.suffix.lower() == ".dcm":
            img = _read_dicom(path)
        elif _is_nifti(path):
            img = _read_nifti(path)
        elif path.suffix.lower() == ".png":
            img = _read_png(path)
        else:
            raise ImageError(f"{path}: unsupported file type; use NIfTI (.nii/.nii.gz), DICOM (.dcm or a series folder) or PNG")
    except ImageError:
        raise
    except Exception as exc:  # nibabel/pydicom/PIL errors on corrupt files
        raise ImageError(f"{path}: cannot read ({type(exc).__name__}: {exc}); the file is corrupt or truncated — re-export or remove it") from exc
    if kind == "mask":
        img.array = _integer_labels(path, img.array)
    else:
        img.array = img.array.astype(np.float32)
    return img


def _integer_labels(path: Path, arr: np.ndarray) -> np.ndarray:
    """Mask voxels as int32; float masks are fine when every value is an integer (e.g. 500.0)."""
    if not np.all(np.isfinite(arr)):
        raise ImageError(f"{path}: mask has NaN/Inf voxels; masks must hold integer labels")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int32)
    rounded = np.rint(arr)
    off = np.abs(arr - rounded) > 1e-3
    if off.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(arr[off])[:5])
        raise ImageError(
            f"{path}: mask holds non-integer values ({int(off.sum())} voxels, e.g. {examples}); a mask must hold integer "
            f"label values. Is this an image, or a mask resampled with linear interpolation? Point 'masks:' at the label "
            f"file, or resample the mask with nearest-neighbour interpolation"
        )
    return rounded.astype(np.int32)


@dataclass
class Geometry:
    """What a file's header says about its canonical RAS+ grid (no voxel data read for NIfTI)."""

    shape: tuple  # (X, Y, Z) after canonicalisation
    spacing: tuple  # mm per canonical axis
    affine: np.ndarray  # 4x4 canonical affine
    axes: tuple  # file voxel axis of each canonical axis


def _canonical_axes(affine: np.ndarray) -> tuple:
    """``axes[c]`` = the voxel axis of a file with ``affine`` that ``as_closest_canonical`` puts at canonical axis c."""
    import nibabel as nib

    ornt = nib.io_orientation(affine)
    axes = [0, 1, 2]
    for i in range(3):
        axes[int(ornt[i, 0])] = i
    return tuple(axes)


def read_geometry(path: str | Path) -> Geometry:
    """The canonical grid of an image file: NIfTI from the header alone, other formats by reading them.

    Equals the ``shape``/``spacing``/``affine``/``axes`` that :func:`read_image` returns for the file.
    """
    path = Path(path)
    if _is_nifti(path) and path.is_file():
        import nibabel as nib

        try:
            nii = nib.load(str(path))
            shape = tuple(int(s) for s in nii.shape[:3]) + (1,) * (3 - len(nii.shape[:3]))
            zooms = tuple(float(z) for z in nii.header.get_zooms()[:3]) + (1.0,) * (3 - len(nii.shape[:3]))
            ornt = nib.io_orientation(nii.affine)
            affine = nii.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
        except Exception as exc:
            raise ImageError(f"{path}: cannot read the header ({type(exc).__name__}: {exc}); the file is corrupt — re-export or remove it") from exc
        axes = _canonical_axes(nii.affine)
        return Geometry(tuple(shape[a] for a in axes), tuple(round(zooms[a], 6) for a in axes),
                        np.asarray(affine, dtype=np.float64), axes)
    img = read_image(path)
    return Geometry(tuple(img.array.shape), tuple(img.spacing), np.asarray(img.affine), tuple(img.axes))


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    nii = nib.load(str(path))
    orig = nib.aff2axcodes(nii.affine)
    canon = nib.as_closest_canonical(nii)
    arr = np.asarray(canon.dataobj)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageError(f"{path}: expected a 2D or 3D volume, got shape {arr.shape}; split 4D series into 3D files")
    spacing = tuple(round(float(s), 6) for s in canon.header.get_zooms()[:3])  # float32 header -> 7.7, not 7.6999998
    if len(spacing) < 3:
        spacing = spacing + (1.0,) * (3 - len(spacing))
    return Image(arr, canon.affine.astype(np.float64), spacing, str(path), reoriented=orig != ("R", "A", "S"),
                 orientation="".join(orig), axes=_canonical_axes(nii.affine))


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None, spacing=None) -> None:
    """Write ``array`` (X, Y[, Z]) as NIfTI atomically. ``affine`` wins over ``spacing``."""
    import nibabel as nib

    if affine is None:
        affine = np.diag(list(spacing or (1.0, 1.0, 1.0)) + [1.0])
    nii = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    nii.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=".nii.gz" if str(path).endswith(".gz") else ".nii") as tmp:
        nib.save(nii, str(tmp))


# ----------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path) -> Image:
    import pydicom

    files = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        files = sorted(p for p in path.iterdir() if p.is_file())
    if not files:
        raise ImageError(f"{path}: DICOM folder holds no files")
    slices = [pydicom.dcmread(str(f)) for f in files]
    slices = [s for s in slices if hasattr(s, "pixel_array")]
    if not slices:
        raise ImageError(f"{path}: no DICOM image slices found")
    if len({s.get("SeriesInstanceUID") for s in slices}) > 1:
        raise ImageError(f"{path}: folder mixes several DICOM series; put one series per folder")
    ori = np.array(slices[0].get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    row, col = ori[:3], ori[3:]
    normal = np.cross(row, col)
    pos = [np.array(s.get("ImagePositionPatient", [0, 0, i]), dtype=float) for i, s in enumerate(slices)]
    order = np.argsort([float(p @ normal) for p in pos])
    slices = [slices[i] for i in order]
    pos = [pos[i] for i in order]
    ps = [float(x) for x in slices[0].get("PixelSpacing", [1.0, 1.0])]
    dz = float(np.linalg.norm(pos[1] - pos[0])) if len(pos) > 1 else float(slices[0].get("SliceThickness", 1.0))
    vol = np.stack(
        [s.pixel_array.astype(np.float32) * float(s.get("RescaleSlope", 1)) + float(s.get("RescaleIntercept", 0)) for s in slices],
        axis=-1,
    )  # (rows, cols, z)
    vol = np.transpose(vol, (1, 0, 2))  # (cols=i along row dir, rows=j along col dir, z)
    # DICOM patient coordinates are LPS; build the LPS affine then flip to RAS.
    aff = np.eye(4)
    aff[:3, 0] = row * ps[1]
    aff[:3, 1] = col * ps[0]
    aff[:3, 2] = normal * dz
    aff[:3, 3] = pos[0]
    aff = np.diag([-1, -1, 1, 1]) @ aff
    import nibabel as nib

    nii = nib.Nifti1Image(vol, aff)
    orig = nib.aff2axcodes(aff)
    canon = nib.as_closest_canonical(nii)
    spacing = tuple(round(float(s), 6) for s in canon.header.get_zooms()[:3])  # float32 header -> 7.7, not 7.6999998
    return Image(np.asarray(canon.dataobj), canon.affine, spacing, str(path), reoriented=orig != ("R", "A", "S"),
                 orientation="".join(orig), axes=_canonical_axes(aff))


# ----------------------------------------------------------------------------- PNG


def _read_png(path: Path) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im).astype(np.float32)
    # PNG rows run top-to-bottom; store as (x, y, 1) with y flipped so "up" is anterior-ish
    arr = np.flipud(arr).T[..., None]
    return Image(arr, np.eye(4), (1.0, 1.0, 1.0), str(path))


def write_png(path: str | Path, array2d: np.ndarray) -> None:
    """Write a 2D (X, Y) array as PNG, inverse of :func:`_read_png` (uint8 or uint16 as given)."""
    from PIL import Image as PILImage

    arr = np.asarray(array2d)
    img = np.flipud(arr.T)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: write_png expects uint8/uint16 data, got {arr.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        PILImage.fromarray(np.ascontiguousarray(img)).save(tmp)
