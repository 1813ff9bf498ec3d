"""The audit stage on a fake run folder: planted copies of training images are flagged, new images are not;
the record, figures, report section and dataset card hold what the issue asks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_run import fake_run  # noqa: F401  (fixture)

from mrgen import config as C


@pytest.fixture(scope="module")
def audited(fake_run):  # noqa: F811
    from mrgen.audit.stage import audit

    cfg, plan = fake_run
    return cfg, plan, audit(cfg)


def test_planted_training_images_are_flagged_and_new_ones_are_not(audited):
    cfg, plan, rec = audited
    mem = rec["memorisation"]
    assert sorted(mem["flagged_ids"]) == sorted(plan["copies"])
    assert mem["flagged"] == 3 and mem["held_out"]["flagged"] == 0
    by_id = {p["synthetic"]: p for p in mem["pairs"]}
    for c in plan["copies"]:  # an exact copy: SSIM 1 and cosine 1 with its training image
        assert by_id[c]["ssim"] == pytest.approx(1.0, abs=1e-6) and by_id[c]["cosine"] == pytest.approx(1.0, abs=1e-5)
    for n in plan["new"]:
        assert not by_id[n]["flagged"] and by_id[n]["ssim"] < mem["thresholds"]["ssim"]
    # the threshold: halfway from the held-out real images' largest nearest-neighbour SSIM to 1 (quantile 1, margin 0.5)
    top = mem["held_out"]["ssim"]["max"]
    assert mem["thresholds"]["ssim"] == pytest.approx(top + 0.5 * (1 - top))
    assert rec["sizes"]["training"]["audited"] == 12 and rec["sizes"]["held_out"]["audited"] == 4  # sub-0..2 / sub-3 T1


def test_record_has_every_section_and_its_figures(audited):
    cfg, _, rec = audited
    wd = cfg.workdir
    saved = json.loads((wd / "audit" / "audit.json").read_text())
    assert saved["schema"] == 1 and saved["headline"]["near_copies"] == "3 of 5"
    assert set(saved["fidelity"]["labels"]) == {"oracle"}  # no segmenter in this run: the oracle view only
    liver = saved["fidelity"]["labels"]["oracle"]["liver"]
    assert liver["w1"] >= 0 and liver["synthetic_pixels"] > 20 and liver["real_pixels"] > 20
    d = saved["diversity"]
    assert d["within_mask"]["pairs"] == 3 + 1 and d["kept"]["pairs"] == 10 and d["kept"]["metric"] == "SSIM"  # 16 px
    f = saved["faithfulness"]["filter"]
    assert f["kept"]["mean_iou"]["n"] == 5 and f["rejected"]["mean_iou"]["n"] == 1
    assert f["rejected"]["mean_iou"]["median"] == pytest.approx(0.1)
    assert "skipped" in saved["faithfulness"]["segmenter"]
    for name in ("memorisation", "fidelity", "diversity", "faithfulness"):
        assert (wd / saved["figures"][name]).stat().st_size > 1000


def test_report_section_and_dataset_card(audited, tmp_path):
    from mrgen.audit.card import write_card
    from mrgen.audit.section import markdown

    cfg, _, rec = audited
    text = "\n".join(markdown(rec))
    for title in ("### Memorisation", "### Fidelity per label", "### Diversity", "### Mask faithfulness"):
        assert title in text
    assert "**3 near-copies**" in text and "ORACLE VIEW" in text
    prov = [{"checkpoints": {"ldm": "abc"}, "seed": 7, "prompt": "T1 test", "sampler": {"ddim_steps": 3}}] * 2
    card = write_card(tmp_path, cfg.workdir, prov, "test set").read_text()
    assert "`abc`" in card and "Seeds: 2 recorded, 7 … 7; 1 distinct" in card and "near_copies: 3 of 5" in card
    assert "Scorer `classical`" in card
    assert json.loads((tmp_path / "audit.json").read_text())["headline"] == rec["headline"]


def test_segment_back_flags_what_the_segmenter_misses(monkeypatch):
    import mrgen.segment as seg
    from mrgen.audit.faithfulness import segment_back

    masks = [np.array([[0, 1], [1, 2]]), np.array([[1, 1], [0, 0]])]
    preds = iter([masks[0], np.zeros((2, 2), int)])  # the first segmented back exactly, the second not at all
    monkeypatch.setattr(seg, "predict", lambda model, image: next(preds))
    out = segment_back(None, [np.zeros((2, 2))] * 2, masks, {1: "a", 2: "b"}, 0.5)
    assert out["values"] == [1.0, 0.0] and out["flagged"] == 1 and out["flagged_index"] == [1]
    assert out["per_label"] == {"a": 0.5, "b": 1.0}


def test_audit_config_is_validated():
    with pytest.raises(C.ConfigError, match="audit.copy_quantile"):
        C.load_config("tiny", overrides=["audit.copy_quantile=1.5"])
    with pytest.raises(C.ConfigError, match="audit.max_images"):
        C.load_config("tiny", overrides=["audit.max_images=1"])
    with pytest.raises(C.ConfigError, match="audit.segmenter"):
        C.load_config("tiny", overrides=["audit.segmenter=../x"])


def test_a_run_that_kept_nothing_is_recorded_not_raised(tmp_path):
    from fake_run import build_tiny_index

    from mrgen import io
    from mrgen.audit.section import markdown
    from mrgen.audit.stage import audit

    build_tiny_index(tmp_path)
    io.write_json(tmp_path / "filter" / "kept.json", {"schema": 1, "kept": []})
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "run.target_modality=T1"])
    rec = audit(cfg)
    assert "keeps no candidate" in rec["skipped"] and json.loads((tmp_path / "audit" / "audit.json").read_text())["schema"] == 1
    assert markdown(rec)[2].startswith("Skipped:")
