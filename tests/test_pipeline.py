"""One end-to-end run of the whole chain at the tiny preset (phantom -> report)."""

import json

import pytest
from typer.testing import CliRunner

from mrgen.cli import app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(app, ["demo", "--preset", "tiny", "-w", str(wd)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return wd, res.output


def test_demo_writes_report_and_every_stage(tiny_run):
    wd, out = tiny_run
    assert "report:" in out and "Dice" in out
    stages = json.loads((wd / "stages.json").read_text())["stages"]
    assert list(stages) == ["phantom", "curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment",
                            "audit", "export", "evaluate"]
    report = (wd / "report.md").read_text()
    summary = json.loads((wd / "eval" / "summary.json").read_text())
    assert set(summary) == {"engine", "source_only", "oracle"}
    for name, m in summary.items():
        dice = list(m["dice"].values())  # every test volume holds every label: none undefined
        assert m["volumes"] == summary["oracle"]["volumes"] > 0 and None not in dice
        assert m["mean_dice"] == pytest.approx(sum(dice) / len(dice))  # mean over labels
        assert f"| {name} | {m['mean_dice']:.3f} |" in report  # the report shows these numbers
    assert (wd / "synth" / "samples.png").stat().st_size > 1000
    # the trust audit: its record, its four report sections with figures, and the exported dataset's card
    audit = json.loads((wd / "audit" / "audit.json").read_text())
    assert audit["schema"] == 1 and audit["faithfulness"]["segmenter"]["images"] > 0  # segment/engine segmented back
    for title in ("### Memorisation", "### Fidelity per label", "### Diversity", "### Mask faithfulness"):
        assert title in report
    assert "![memorisation](audit/memorisation.png)" in report and (wd / "audit" / "memorisation.png").exists()
    card = next((wd / "nnunet").glob("Dataset*/dataset_card.md")).read_text()
    assert "## Provenance" in card and f"near_copies: {audit['headline']['near_copies']}" in card


def test_rerun_skips_current_stages(tiny_run):
    wd, _ = tiny_run
    before = (wd / "stages.json").read_text()
    res = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(wd)])
    assert res.exit_code == 0, res.output
    assert res.output.count("is current") == 11
    assert (wd / "stages.json").read_text() == before


def test_changed_stage_config_reruns_from_there_and_keeps_old(tiny_run):
    wd, _ = tiny_run
    res = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(wd), "filter.keep=2"])
    assert res.exit_code == 0, res.output
    assert "synthesize is current" in res.output and "filter is current" not in res.output
    assert list(wd.glob("filter.stale-*"))


def test_engine_set_with_source_pairs_reruns_the_segment_stage_and_records_its_make_up(tiny_run):
    from mrgen.pairs import read_kept

    wd, _ = tiny_run
    before = json.loads((wd / "segment" / "summary.json").read_text())
    kept = len(read_kept(wd)["kept"])
    assert before["engine_set"]["kind"] == "synthetic" and before["engine_set"]["pairs"] == {"synthetic": kept}
    assert before["sets"]["engine"] == f"{kept} pairs"
    res = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(wd), "filter.keep=2", "segment.engine_set=source+aug",
                                   "segment.source_copies=1"])
    assert res.exit_code == 0, res.output
    assert "filter is current" in res.output and "segment is current" not in res.output
    after = json.loads((wd / "segment" / "summary.json").read_text())
    n_source = int(after["sets"]["source_only"].split()[0])
    assert after["engine_set"]["pairs"] == {"synthetic": kept, "source": n_source, "source_randomised": n_source}
    assert after["sets"]["engine"] == f"{kept + 2 * n_source} pairs"


def test_two_engine_rounds_run_the_second_in_its_own_folder(tmp_path):
    """rounds.count=2: round 1's engine segmenter pseudo-labels the target items; round2/ retrains the controller on
    them, renders, filters, segments and reports; a rerun is current; a changed rounds setting re-runs round 2 only."""
    from mrgen import io, pseudo

    wd = tmp_path / "run"
    args = ["demo", "--preset", "tiny", "-w", str(wd), "rounds.count=2", "rounds.keep_fraction=1", "curate.min_label_pixels=1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    r2 = wd / "round2"
    assert f"report: {r2 / 'report.md'}" in res.output
    top = json.loads((wd / "stages.json").read_text())["stages"]
    assert list(top) == ["phantom", "curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment", "rounds"]
    inner = json.loads((r2 / "stages.json").read_text())["stages"]
    assert list(inner) == ["curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment", "audit",
                           "export", "evaluate"]
    labels = pseudo.read(wd / "pseudo" / pseudo.FILE)
    assert labels and all("/T2/" in i for i in labels)  # target items only
    assert io.read_json(r2 / "controller" / "model.json")["pseudo_items"] == len(labels)
    assert (r2 / "ldm").is_symlink() and (r2 / "segment" / "source_only").is_symlink()
    summary = json.loads((r2 / "eval" / "summary.json").read_text())
    assert set(summary) == {"engine", "source_only", "oracle"} and not (wd / "eval").exists()
    again = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(wd), *args[5:]])
    assert again.exit_code == 0, again.output
    assert again.output.count("is current") == 9 and "report:" in again.output
    before = (r2 / "stages.json").read_text()
    changed = CliRunner().invoke(app, ["run", "--preset", "tiny", "-w", str(wd), *args[5:6], "rounds.keep_fraction=0.5",
                                       "curate.min_label_pixels=1"])
    assert changed.exit_code == 0, changed.output
    assert changed.output.count("is current") == 8  # round 1's stages; the rounds stage re-ran
    after = json.loads((r2 / "stages.json").read_text())["stages"]
    assert after["controller"] != json.loads(before)["stages"]["controller"]  # fewer pseudo-labels: new controller
    assert len(pseudo.read(wd / "pseudo" / pseudo.FILE)) == -(-len(labels) // 2)
