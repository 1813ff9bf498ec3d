"""The engine's second round in the benchmark (rounds.count=2) on the tiny fold, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen import io, pseudo
from mrgen.bench import run_one
from mrgen.bench import spec as S


def test_a_second_round_trains_its_controller_on_pseudo_labelled_target_items(tiny_fold, monkeypatch, bench_script):
    import mrgen.segment as seg_mod
    from mrgen.curate.index import Index

    _, roles, cfg = tiny_fold
    wd = cfg.workdir
    tree = {"name": "tiny", "config": {"preset": "tiny"}, "methods": {"mrgen": {}},
            "engine": {"preset": "tiny", "rounds": {"count": 2, "keep_fraction": 1.0}, "curate": {"min_label_pixels": 1}},
            "seed": 0}
    fold = S.Fold(0, ("sub-0", "sub-1"), ("sub-2",), ("sub-3",))
    spec = S.Spec("tiny", Path("tiny.yaml"), tree, wd, folds=[fold])
    labels = {int(k): v for d in io.read_json(wd / "curated" / "labels.json").values() for k, v in d.items()}
    trained = []
    real = seg_mod.train_segmenter
    monkeypatch.setattr(seg_mod, "train_segmenter", lambda *a, **k: trained.append(a[-1]) or real(*a, **k))
    index = Index(wd / "curated" / "index.parquet")
    result = run_one(spec, cfg, index, fold, "mrgen", labels, log=lambda *_: None)

    r1 = wd / "folds" / "0" / "engine"
    r2 = r1 / "round2"
    ids = pseudo.read(r1 / "pseudo" / pseudo.FILE)
    target = {r["id"] for r in roles.target}
    assert ids and set(ids) <= target  # only the fold's target items: never a test or source item
    assert all(i.startswith("toy/sub-2/T2/") for i in ids)
    meta = io.read_json(r2 / "controller" / "model.json")
    assert meta["pseudo_items"] == len(ids) and meta["pseudo_sha256"] == io.file_hash(r1 / "pseudo" / pseudo.FILE)
    before = io.read_json(r1 / "controller" / "model.json")
    assert meta["source_items"] == before["source_items"]  # the pseudo-labelled items are counted apart
    assert meta["target_items"] == before["target_items"] - len(ids)
    # round 2 shares the autoencoder and the LDM and renders again from the round-2 controller
    assert (r2 / "ldm").is_symlink() and (r2 / "autoencoder").is_symlink() and not (r2 / "controller").is_symlink()
    assert (r2 / "filter" / "kept.json").exists()
    import json

    prov = [json.loads(line) for line in (r2 / "synth" / "provenance.jsonl").read_text().splitlines() if line.strip()]
    assert prov and all(p["checkpoints"]["controller"] == meta["sha256"] for p in prov)  # rendered by round 2's controller
    assert meta["sha256"] != io.read_json(r1 / "controller" / "model.json")["sha256"]
    assert trained == ["round1", "mrgen"]  # the round-1 segmenter that labels, then the method's own
    c = result["compute"]
    assert {"engine_r2.pseudo", "engine_r2.controller", "engine_r2.synthesize", "engine_r2.filter"} <= set(c)
    assert result["notes"]["round2_pseudo"]["kept"] == len(ids)
    # engine_set=synthetic: the method's set is round 2's renders alone, its labeller's round 1's
    assert result["notes"]["training_set"]["pairs"] == {"synthetic": result["n_pairs"]}
    assert result["notes"]["round2_labeller_set"]["pairs"] == {"synthetic": len(io.read_json(r1 / "filter" / "kept.json")["kept"])}
    assert result["n_pairs"] == len(io.read_json(r2 / "filter" / "kept.json")["kept"])
    # a rerun is current: nothing trains again
    again = run_one(spec, cfg, index, fold, "mrgen", labels, log=lambda *_: None)
    assert again == result and trained == ["round1", "mrgen"]
    # the pseudo-labels hold the labels the round-1 segmenter predicted (0..2 here), no other value
    assert set(np.unique(np.concatenate([m.ravel() for m in ids.values()]))) <= {0, 1, 2}
    # the docs' figure of the two rounds draws from these folders
    out = bench_script("rounds_figure").main([str(r1), str(wd / "rounds.png"), "--masks", "2"])
    assert out.stat().st_size > 5000
