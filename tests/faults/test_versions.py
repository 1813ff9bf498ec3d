"""Versioned artefacts: a reader meeting a newer, older or unknown schema says so instead of misreading the file."""

import json

import numpy as np
import pytest
import torch

from mrgen import checkpoint, io, labelmaps, pairs
from mrgen.nets.store import load_model, read_meta, save_model

FAULT = pytest.mark.fault("artefact of another schema version",
                          action="upgrade mrgen, or delete the named file and rerun the stage that writes it")


@FAULT
def test_read_versioned_checks_the_version(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"schema": 2, "x": 1}))
    assert io.read_versioned(p, 2, "fix it")["x"] == 1
    with pytest.raises(io.ArtefactError, match=r"a.json has schema 2, newer than this mrgen reads \(up to 1\); upgrade mrgen, or fix it"):
        io.read_versioned(p, 1, "fix it")
    with pytest.raises(io.ArtefactError, match=r"schema 2, older than this mrgen reads \(from 3\); fix it"):
        io.read_versioned(p, 4, "fix it", oldest=3)
    p.write_text(json.dumps({"x": 1}))
    with pytest.raises(io.ArtefactError, match="unknown schema version None"):
        io.read_versioned(p, 1, "fix it")
    assert io.read_versioned(p, 1, "fix it", missing=1) == {"x": 1}  # written before versioning
    p.write_text("[1, 2]")
    with pytest.raises(io.ArtefactError, match="corrupt or truncated .expected a JSON object, found list.; fix it"):
        io.read_versioned(p, 1, "fix it")


@FAULT
def test_model_json_of_a_newer_schema(tmp_path):
    net = torch.nn.Linear(2, 2)
    save_model(tmp_path / "m", "segmenter", net, {"step": 1})
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**meta, "schema": 9}))
    with pytest.raises(io.ArtefactError, match="model.json has schema 9, newer than this mrgen reads"):
        load_model(tmp_path / "m", net)
    with pytest.raises(io.ArtefactError, match="and rerun the stage that trains it"):
        read_meta(tmp_path / "m")


@FAULT
def test_checkpoint_of_a_newer_schema(tmp_path):
    checkpoint.save_state(tmp_path, {"w": torch.zeros(2)}, {"step": 3})
    assert checkpoint.load_state(tmp_path)[1]["schema"] == checkpoint.SCHEMA
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "state.safetensors"), metadata={"state": json.dumps({"schema": 5})})
    with pytest.raises(io.ArtefactError, match="state.safetensors has schema 5, newer"):
        checkpoint.load_state(tmp_path)


@FAULT
def test_kept_json_and_label_map_of_a_newer_schema(tmp_path):
    (tmp_path / "filter").mkdir()
    pairs.kept_file(tmp_path).write_text(json.dumps({"schema": 2, "kept": []}))
    with pytest.raises(io.ArtefactError, match="kept.json has schema 2, newer than this mrgen reads .up to 1."):
        pairs.read_kept(tmp_path)
    pairs.kept_file(tmp_path).write_text(json.dumps({"schema": 1, "kept": [{"key": "a"}]}))  # a record without candidate
    with pytest.raises(io.ArtefactError, match="list of {key, candidate} records"):
        pairs.read_kept(tmp_path)
    labelmaps.save_labels(tmp_path / "m.npz", np.zeros((4, 4), np.uint8), {"id": "x"})
    with np.load(tmp_path / "m.npz") as z:
        mask = z["mask"]
    np.savez(tmp_path / "m.npz", mask=mask, meta=np.array(json.dumps({"schema": 7})))
    with pytest.raises(io.ArtefactError, match="m.npz has schema 7, newer than this mrgen reads"):
        labelmaps.load_labels(tmp_path / "m.npz")
