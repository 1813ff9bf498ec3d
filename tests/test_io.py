"""mrgen.io: readers (NIfTI, PNG) into canonical RAS, atomic writers (DICOM: tests/curate/test_curate.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mrgen import io


def test_nifti_canonical_and_orientation(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    io.write_nifti(tmp_path / "ras.nii.gz", a, np.diag([2.0, 1.0, 3.0, 1.0]))
    io.write_nifti(tmp_path / "las.nii.gz", a[::-1], np.diag([-2.0, 1.0, 3.0, 1.0]) @ np.eye(4))
    r = io.read_image(tmp_path / "ras.nii.gz")
    assert r.orientation == "RAS" and not r.reoriented and r.spacing == (2.0, 1.0, 3.0)
    las = io.read_image(tmp_path / "las.nii.gz")
    assert las.orientation == "LAS" and las.reoriented and np.array_equal(las.array, a)


def test_mask_must_hold_integers(tmp_path):
    io.write_nifti(tmp_path / "m.nii.gz", np.full((2, 2, 2), 0.5, np.float32))
    with pytest.raises(io.ImageError, match="non-integer"):
        io.read_image(tmp_path / "m.nii.gz", kind="mask")


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(io.ImageError, match="bad.nii.gz.*corrupt"):
        io.read_image(bad)
    with pytest.raises(io.ImageError, match="nope.nii.gz: file not found"):
        io.read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(io.ImageError, match="unsupported file type"):
        io.read_image(tmp_path / "x.txt")


def test_png_roundtrip(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 10
    io.write_png(tmp_path / "a.png", a)
    img = io.read_image(tmp_path / "a.png")
    assert img.array.shape == (3, 4, 1) and np.array_equal(img.array[..., 0], a)


def test_atomic_writes_leave_no_temp_files_and_normal_permissions(tmp_path):
    io.save_npy(tmp_path / "x.npy", np.ones(3))
    io.write_json(tmp_path / "x.json", {"a": np.int64(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npy"]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.npy").stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "y.npy") as tmp:
            np.save(tmp, np.ones(2))
            raise RuntimeError("interrupted")
    assert not (tmp_path / "y.npy").exists() and len(list(tmp_path.iterdir())) == 2
    assert np.array_equal(io.load_npy(tmp_path / "x.npy"), np.ones(3))


def test_write_npz_is_byte_identical_for_the_same_arrays_and_numpy_reads_it(tmp_path):
    import time as _time

    import numpy as np

    from mrgen import io as mio

    arrays = dict(images=np.arange(12, dtype=np.float16).reshape(3, 4), meta=np.array('{"a": 1}'))
    mio.write_npz(tmp_path / "a.npz", **arrays)
    _time.sleep(2.1)  # zip timestamps have a 2-s resolution: np.savez would differ now
    mio.write_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert np.array_equal(z["images"], arrays["images"]) and str(z["meta"]) == '{"a": 1}'
    mio.write_npz(tmp_path / "c.npz", images=arrays["images"] + 1, meta=arrays["meta"])
    assert (tmp_path / "c.npz").read_bytes() != (tmp_path / "a.npz").read_bytes()
