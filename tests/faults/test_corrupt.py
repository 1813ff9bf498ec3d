"""Corrupt and truncated files: each is detected on load with one error naming the file and the fix; none is used."""

import shutil

import pytest
import torch
from fault_helpers import mrgen

from mrgen import checkpoint, io, pairs
from mrgen.curate.dataset import load_array
from mrgen.curate.index import Index
from mrgen.nets.store import load_model
from mrgen.synthesize import load_candidates

FAULT = pytest.mark.fault("corrupt or truncated file",
                          action="delete the named file and rerun the named command (it redoes only that part)")


def truncate(path, at=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * at)])


def flip(path, at=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "flipped": flip, "flipped_early": lambda p, at=0.1: flip(p, at)}


def _model(wd):
    from mrgen.config import load_config
    from mrgen.nets.builders import build_autoencoder

    return build_autoencoder(load_config("tiny", overrides=[f"run.workdir={wd}"]))


@FAULT
@pytest.mark.parametrize("damage", DAMAGE)
def test_training_checkpoint(run_copy, damage):
    folder = run_copy / "ldm" / "ckpt"
    DAMAGE[damage](folder / "state.safetensors")
    with pytest.raises(io.ArtefactError, match=r"state.safetensors is corrupt or truncated .*; delete .*ckpt and rerun"):
        checkpoint.load_state(folder)


@FAULT
@pytest.mark.parametrize("damage", DAMAGE)
def test_model_weights_and_their_json(run_copy, damage):
    folder = run_copy / "autoencoder"
    DAMAGE[damage](folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: sha256 differs .*delete"):
        load_model(folder, _model(run_copy))
    shutil.copy(folder / "model.json", folder / "model.json.bak")
    DAMAGE[damage](folder / "model.json") if damage == "truncated" else (folder / "model.json").write_text(
        (folder / "model.json").read_text().replace('"', "'", 1))  # a flipped quote: not JSON any more
    with pytest.raises(io.ArtefactError, match=r"model.json is corrupt or truncated .*delete .*autoencoder and rerun"):
        load_model(folder, _model(run_copy))


@FAULT
def test_curated_index(run_copy):
    path = run_copy / "curated" / "index.parquet"
    good, data = Index(path).table, path.read_bytes()
    truncate(path)
    with pytest.raises(io.ArtefactError, match=r"index.parquet is corrupt or truncated .*rerun `mrgen curate -w"):
        Index(run_copy).table
    detected = 0
    for i in range(0, len(data), len(data) // 40):  # a byte flipped anywhere: refused, or it changed nothing read
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        try:
            assert Index(path).table.equals(good), f"byte {i} flipped: the index reads differently and was not refused"
        except io.ArtefactError as exc:
            assert "index.parquet is corrupt or truncated" in str(exc)
            detected += 1
    assert detected >= 20  # most bytes matter (measured: 221 of 306 positions refused, none misread)


@FAULT
@pytest.mark.parametrize("damage", DAMAGE)
def test_curated_array(run_copy, damage):
    rel = Index(run_copy).query(kind="volume")[0]["image"]
    DAMAGE[damage](run_copy / "curated" / rel, 0.9 if damage != "truncated" else 0.5)  # past the header: the data itself
    with pytest.raises(io.ArtefactError, match=rf"{rel} is corrupt or truncated .*only that volume is curated again"):
        load_array(run_copy / "curated", rel)


@FAULT
@pytest.mark.parametrize("damage", DAMAGE)
def test_candidates_file(run_copy, damage):
    f = sorted((run_copy / "synth" / "candidates").glob("*.npz"))[0]
    DAMAGE[damage](f)
    with pytest.raises(io.ArtefactError, match=rf"{f.name} is corrupt or truncated .*rerun `mrgen synthesize"):
        load_candidates(f)


@FAULT
def test_kept_json(run_copy):
    truncate(pairs.kept_file(run_copy))
    with pytest.raises(io.ArtefactError, match=r"kept.json is corrupt or truncated .*rerun `mrgen filter"):
        pairs.read_kept(run_copy)
    res = mrgen("export", "nnunet", "-w", str(run_copy))  # the CLI: one line, exit 2
    assert res.returncode == 2 and "kept.json is corrupt or truncated" in res.stderr and "Traceback" not in res.stderr


@FAULT
def test_the_fix_works_deleted_candidates_and_array_come_back_identical(run_copy, reference):
    f = sorted((run_copy / "synth" / "candidates").glob("*.npz"))[0]
    rel = Index(run_copy).query(kind="volume")[0]["image"]
    f.unlink()
    (run_copy / "curated" / rel).unlink()
    for stage in ("curate", "synthesize"):
        res = mrgen(stage, "-w", str(run_copy))
        assert res.returncode == 0, res.stderr[-2000:]
    ref = reference[0]
    assert (run_copy / "curated" / rel).read_bytes() == (ref / "curated" / rel).read_bytes()
    a, b = load_candidates(f), load_candidates(ref / "synth" / "candidates" / f.name)
    assert (a["images"] == b["images"]).all() and a["meta"] == b["meta"]
    assert torch.equal(torch.as_tensor(a["seeds"]), torch.as_tensor(b["seeds"]))
