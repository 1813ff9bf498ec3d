"""`mrgen synthesize`: provenance, regeneration from a record, resume, shards (tiny preset)."""

import json

import numpy as np
import pytest
import torch

from mrgen import autoencoder, controller, curate, ldm, phantom
from mrgen import synthesize as sample
from mrgen.config import load_config
from mrgen.curate.index import Index


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("synth")
    cfg = load_config("tiny", overrides=[f"run.workdir={wd}"])
    for stage in (phantom, curate, autoencoder, ldm, controller):
        stage.run(cfg)
    return cfg


def test_candidates_have_provenance_and_regenerate(trained):
    cfg = trained
    out = sample.run(cfg)
    n_masks, n_cand = out["masks"], cfg.sample.candidates
    assert n_masks == cfg.sample.max_masks and out["candidates"] == n_masks * n_cand
    records = [json.loads(x) for x in (cfg.workdir / "synth" / "provenance.jsonl").read_text().splitlines()]
    assert len(records) == n_masks * n_cand
    r = records[1]
    assert r["seed"] == sample.candidate_seed(cfg.sample.seed, r["mask_id"], r["candidate"])
    assert r["prompt"].startswith("T2 MRI; ") and set(r["checkpoints"]) >= {"autoencoder", "ldm", "controller"}
    assert len({x["seed"] for x in records}) == len(records)  # every candidate its own seed
    stored = sample.load_candidates(cfg.workdir / "synth" / r["file"])
    assert stored["images"].shape[0] == n_cand and stored["mask"].shape == stored["images"].shape[1:]
    again = sample.regenerate(cfg, r)
    np.testing.assert_allclose(again, stored["images"][r["candidate"]], atol=2e-3)  # float16 storage
    other = {**r, "sampler": {**r["sampler"], "conditioning_scale": 0.5}}  # the renderer's scale is 1.0 (cfg)
    with pytest.raises(ValueError, match="conditioning_scale=0.5"):
        sample.regenerate(cfg, other)


def test_provenance_records_the_solver_and_regenerate_uses_it(trained):
    cfg = trained
    sample.run(cfg)
    r = json.loads((cfg.workdir / "synth" / "provenance.jsonl").read_text().splitlines()[0])
    assert r["sampler"]["solver"] == "ddim" and r["sampler"]["precision"] == "fp32"
    stored = sample.load_candidates(cfg.workdir / "synth" / r["file"])["images"][r["candidate"]]
    old = {**r, "sampler": {k: v for k, v in r["sampler"].items() if k not in ("solver", "precision")}}
    np.testing.assert_allclose(sample.regenerate(cfg, old), stored, atol=2e-3)  # records before solvers: DDIM fp32
    uni = sample.regenerate(cfg, {**r, "sampler": {**r["sampler"], "solver": "unipc"}})
    assert np.abs(uni - sample.regenerate(cfg, r)).max() > 1e-4  # another solver, another image: the renderer's UniPC one
    gen = controller.load_generator(cfg.workdir, cfg)
    s = r["sampler"]
    want = gen.generate(torch.from_numpy(sample.find_item(cfg, r["mask_id"])["load"]())[None], [r["prompt"]], [r["seed"]],
                        guidance=s["guidance"], steps=s["ddim_steps"], solver="unipc")
    np.testing.assert_allclose(uni, want[0, 0].numpy(), atol=1e-5)


def test_rerun_resumes_and_shards_partition(trained):
    cfg = trained
    first = (cfg.workdir / "synth" / "provenance.jsonl").read_text()
    out = sample.run(cfg)
    assert out["resumed"] == out["masks"]
    assert (cfg.workdir / "synth" / "provenance.jsonl").read_text() == first
    rows = sample.source_masks(Index(cfg.workdir / "curated"), cfg)
    shards = [rows[i::2] for i in range(2)]
    assert sorted(r["id"] for s in shards for r in s) == sorted(r["id"] for r in rows)
    with pytest.raises(ValueError, match="i/n"):
        sample.parse_shard("2/2")
    assert sample.parse_shard("auto") == (0, 1) and sample.parse_shard("1/3") == (1, 3)


def test_groups_fill_whole_batches_and_shards_compose():
    from mrgen.config import load_config
    from mrgen.dist import Procs

    rows = list(range(10))
    # lcm(3 candidates, batch 2) = 6 jobs = 2 masks per group; lcm(4, 8) = 8 = 2 masks; lcm(20, 20) = 1 mask
    assert sample.groups(rows, 3, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sample.groups(rows, 4, 8) == sample.groups(rows, 3, 2)
    assert sample.groups(rows[:3], 20, 20) == [[0], [1], [2]]
    assert sample.groups(rows, 5, 3) == [rows[:3], rows[3:6], rows[6:9], rows[9:]]  # lcm 15 = 3 masks

    def mine(shard, rank, world):
        cfg = load_config("tiny", overrides=["sample.candidates=3", "sample.batch_size=2", f"sample.shard={shard}"])
        return [r for g in sample.my_groups(cfg, rows, Procs(rank, world)) for r in g]

    assert mine("auto", 0, 1) == rows
    assert mine("auto", 0, 2) == [0, 1, 4, 5, 8, 9] and mine("auto", 1, 2) == [2, 3, 6, 7]
    assert mine("1/2", 0, 1) == [2, 3, 6, 7]
    # shard 0/2 split over 2 launcher processes: groups 0, 2, 4 -> process 0 takes 0 and 4, process 1 takes 2
    assert mine("0/2", 0, 2) == [0, 1, 8, 9] and mine("0/2", 1, 2) == [4, 5]


def test_sdedit_starts_from_the_source_image_records_and_regenerates(trained, tmp_path):
    import shutil

    cfg = trained
    sample.run(cfg)
    wd = tmp_path / "sdedit"
    shutil.copytree(cfg.workdir, wd, ignore=shutil.ignore_patterns("synth"))
    cut = load_config("tiny", overrides=[f"run.workdir={wd}", "sample.strength=0.5"])
    sample.run(cut)
    r = json.loads((wd / "synth" / "provenance.jsonl").read_text().splitlines()[0])
    assert r["sampler"]["strength"] == 0.5
    stored = sample.load_candidates(wd / "synth" / r["file"])["images"][r["candidate"]]
    np.testing.assert_allclose(sample.regenerate(cut, r), stored, atol=2e-3)
    plain = sample.load_candidates(cfg.workdir / "synth" / r["file"])["images"][r["candidate"]]
    assert np.abs(plain - stored).max() > 1e-2  # same mask, prompt and seed: the start image changed the render
    item = sample.find_item(cut, r["mask_id"])
    gen = controller.load_generator(wd, cut)
    mask = torch.from_numpy(item["load"]())[None]
    s = r["sampler"]
    want = gen.generate(mask, [r["prompt"]], [r["seed"]], guidance=s["guidance"], steps=s["ddim_steps"], strength=0.5,
                        images=torch.from_numpy(item["image"]())[None])
    np.testing.assert_allclose(stored, want[0, 0].numpy(), atol=2e-3)
    with pytest.raises(ValueError, match="one image per mask"):
        gen.generate(mask, [r["prompt"]], [r["seed"]], strength=0.5)


@pytest.mark.parametrize("overrides,match", [
    (["sample.strength=0"], "in \\(0, 1\\]"), (["sample.strength=1.5"], "in \\(0, 1\\]"),
    (["sample.strength=0.01"], "leaves no sampling step"),
    (["sample.strength=0.5", "labelgen.enabled=true", "sample.masks=[source,generated]"], "set sample.masks=\\[source\\]")])
def test_strength_config_errors(tmp_path, overrides, match):
    from mrgen.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides=[f"run.workdir={tmp_path}", *overrides])
