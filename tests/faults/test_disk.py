"""A full disk: curate and synthesize on a small tmpfs stop with one clear error, keep what they wrote valid, and
after space is freed the rerun completes with the reference's results. Skips where mounting is not allowed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from compare import differences, validate_tree


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt, leave: int):
    """Leave about ``leave`` bytes free on ``mnt``; returns the filler file (delete it to free the space)."""
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


CASES = {  # stage -> (folders copied from the reference, the folder it writes, bytes left free)
    "curate": (("phantom",), "curated", 48 * 1024),
    "synthesize": (("phantom", "curated", "autoencoder", "ldm", "controller"), "synth", 24 * 1024),
}


@pytest.mark.fault("disk full during a stage", action="free space where the message says, rerun the same command")
@pytest.mark.parametrize("stage", CASES)
def test_full_disk_is_one_clear_error_and_the_rerun_completes(small_disk, reference, zygotes, stage):
    """The stage runs as the reference did (a child of the fork server, one thread): with another number of
    intra-op threads the renders would differ from the reference in their last bits whatever the disk did."""
    ref = reference[0]
    inputs, out, leave = CASES[stage]
    wd = small_disk / "run"
    wd.mkdir()
    shutil.copy(ref / "config.yaml", wd / "config.yaml")
    for f in inputs:
        shutil.copytree(ref / f, wd / f)
    filler = _fill(small_disk, leave)
    res = zygotes[0].mrgen(stage, "-w", str(wd))
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, res.stdout + res.stderr
    assert "disk full" in text and str(wd) in text and "free space there" in text and "Traceback" not in text
    assert text.count("error") == 1  # one error line
    assert not validate_tree(wd)  # what was written before the disk filled is valid (no partial file)
    filler.unlink()
    res = zygotes[0].mrgen(stage, "-w", str(wd))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not differences(wd / out, ref / out, roots=(wd, ref))
