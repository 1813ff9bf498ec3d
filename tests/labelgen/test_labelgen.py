"""Duo-Diffusion step 1 (label-map LDM), generated/morphed masks rendered by the engine, 3D run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrgen.cli import app
from mrgen.config import ConfigError, load_config
from mrgen.labelgen import decode_labels, encode_labels, n_channels


@pytest.mark.parametrize("encoding", ["onehot", "bits"])
def test_label_encoding_round_trips_exactly(encoding):
    k = 5
    mask = torch.from_numpy(np.random.default_rng(0).integers(0, k + 1, (3, 4, 6, 6)))
    code = encode_labels(mask, k, encoding)
    assert code.shape == (3, n_channels(k, encoding), 4, 6, 6)
    assert set(code.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(decode_labels(code, k, encoding), mask)


def test_bit_channels_and_invalid_codes():
    assert n_channels(5, "bits") == 3 and n_channels(7, "bits") == 3 and n_channels(8, "bits") == 4
    assert n_channels(5, "onehot") == 6
    code = torch.ones(1, 3, 2, 2)  # all bits set = 7 > k = 5 -> background
    assert decode_labels(code, 5, "bits").eq(0).all()
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        encode_labels(torch.tensor([[6]]), 5, "onehot")


def test_config_checks_mask_kinds():
    with pytest.raises(ConfigError, match="labelgen.enabled"):
        load_config("tiny", overrides=["sample.masks=[source, generated]"])
    with pytest.raises(ConfigError, match="morph.recipe"):
        load_config("tiny", overrides=["sample.masks=[morphed]"])
    with pytest.raises(ConfigError, match="source, generated, morphed"):
        load_config("tiny", overrides=["sample.masks=[real]"])


BRAIN3D = ["--preset", "tiny", "phantom.layout=brain", "phantom.slices=8", "data.spatial_dims=3", "data.image_size=16",
           "data.depth=8", "labelgen.enabled=true", "sample.masks=[source, generated, morphed]", "morph.recipe=ventriculomegaly",
           "run.baselines=[source_only, oracle, oracle_plus_engine]"]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run3d")
    res = CliRunner().invoke(app, ["run", *BRAIN3D, "-w", str(wd)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return wd, load_config("tiny", overrides=[a for a in BRAIN3D[2:]] + [f"run.workdir={wd}"])


def test_3d_run_has_every_stage_and_the_foscu_segmenter(run3d):
    wd, _ = run3d
    stages = list(json.loads((wd / "stages.json").read_text())["stages"])
    assert stages == ["phantom", "curate", "autoencoder", "ldm", "controller", "labelgen", "morph", "synthesize", "filter",
                      "segment", "audit", "export", "evaluate"]
    done = json.loads((wd / "segment" / "summary.json").read_text())
    n = {k: int(v.split()[0]) for k, v in done["sets"].items()}
    assert n["oracle_plus_engine"] == n["oracle"] + n["engine"]
    for fig in ("labelgen/labels.png", "morph/preview.png", "synth/samples.png"):
        assert (wd / fig).stat().st_size > 2000


def test_generated_label_maps_are_recorded_and_regenerate(run3d):
    from mrgen.labelgen import load_labels, regenerate

    wd, cfg = run3d
    files = sorted((wd / "labelgen" / "labels").glob("gen_*.npz"))
    assert len(files) == cfg.labelgen.count
    rec = load_labels(files[0])
    assert rec["mask"].shape == (8, 16, 16) and rec["mask"].max() <= 5 and rec["mask"].min() >= 0
    meta = rec["meta"]
    assert {"seed", "prompt", "checkpoints", "organs"} <= set(meta) and meta["kind"] == "generated"
    assert np.array_equal(regenerate(cfg, meta), rec["mask"])
    stats = json.loads((wd / "labelgen" / "stats.json").read_text())
    assert stats["generated_maps"] == cfg.labelgen.count and "ventricles" in stats["labels"]


def test_morphed_maps_follow_the_recipe(run3d):
    from mrgen.labelgen import load_labels
    from mrgen.synthesize.masks import find_item

    wd, cfg = run3d
    files = sorted((wd / "morph" / "labels").glob("*.npz"))
    assert files
    for f in files:
        rec = load_labels(f)
        src = find_item(cfg, rec["meta"]["origin"])["load"]()
        after = rec["mask"]
        for protected in (2, 3):  # cerebellum, brainstem never overwritten
            assert np.array_equal(src == protected, after == protected)
        grown = (after == 1) & (src != 1)
        assert np.all(src[grown] > 0)  # the ventricles stay inside the brain (container)
        ratio = (after == 1).sum() / max((src == 1).sum(), 1)
        drawn = rec["meta"]["record"]["edits"][0]["params"]["factor"]
        assert 1.3 <= drawn <= 1.8
        assert ratio > 1.0


def test_synthesized_candidates_record_their_mask_kind_and_regenerate(run3d):
    from mrgen.synthesize import load_candidates, regenerate

    wd, cfg = run3d
    kinds = {}
    for f in sorted((wd / "synth" / "candidates").glob("*.npz")):
        c = load_candidates(f)
        kinds.setdefault(c["meta"][0]["mask_kind"], (f, c))
    assert set(kinds) == {"source", "generated", "morphed"}
    f, c = kinds["generated"]
    rec = c["meta"][1]
    assert rec["mask_origin"]["prompt"] and rec["mask_hash"]
    img = regenerate(cfg, rec)
    assert np.allclose(img, c["images"][1], atol=2e-3)


def test_phantom_ventricle_scale_enlarges_only_the_ventricles():
    from mrgen.phantom import generate_subject

    base = load_config("tiny", overrides=["phantom.layout=brain", "phantom.slices=8"])
    big = load_config("tiny", overrides=["phantom.layout=brain", "phantom.slices=8", "phantom.ventricle_scale=1.3"])
    a, b = generate_subject(base, 0).anatomy.mask, generate_subject(big, 0).anatomy.mask
    ratio = (b == 1).sum() / (a == 1).sum()
    assert 1.3 < ratio < 2.2
    assert np.array_equal(a == 2, b == 2)  # the cerebellum is untouched
    inter = ((a == 3) & (b == 3)).sum()
    assert 2 * inter / ((a == 3).sum() + (b == 3).sum()) > 0.9  # the brainstem only loses its border to the ventricles

