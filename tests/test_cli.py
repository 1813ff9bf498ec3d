from typer.testing import CliRunner

from mrgen.cli import app

runner = CliRunner()


def test_help_lists_stages_in_data_flow_order():
    out = runner.invoke(app, ["--help"]).output
    panel = out[out.index("Commands"):]
    order = ["phantom", "curate", "train", "synthesize", "filter", "segment", "audit", "export", "evaluate", "run", "demo"]
    pos = [panel.index("│ " + s + " ") for s in order]
    assert pos == sorted(pos)
    train = runner.invoke(app, ["train", "--help"]).output
    assert train.index("autoencoder") < train.index("ldm") < train.index("controller")


def test_every_subcommand_has_help_with_example():
    for cmd in (["phantom"], ["curate"], ["train", "ldm"], ["synthesize"], ["filter"], ["export", "nnunet"],
                ["segment", "train"], ["evaluate", "segmenter"], ["run"], ["demo"], ["morph"], ["audit"]):
        res = runner.invoke(app, cmd + ["--help"])
        assert res.exit_code == 0, cmd
        assert "Example" in res.output, cmd


def test_dry_run_prints_resolved_config(tmp_path):
    res = runner.invoke(app, ["curate", "--preset", "tiny", "--dry-run", "-w", str(tmp_path), "sample.candidates=9"])
    assert res.exit_code == 0
    assert "candidates: 9" in res.output and str(tmp_path) in res.output
    assert not (tmp_path / "config.yaml").exists()  # dry run writes nothing


def test_bad_override_is_one_clear_error(tmp_path):
    res = runner.invoke(app, ["curate", "-p", "tiny", "-w", str(tmp_path), "curate.bogus=1"])
    assert res.exit_code == 2
    assert "unknown config key 'curate.bogus'" in res.output


def test_stage_rerun_uses_the_runs_saved_config(tmp_path):
    res = runner.invoke(app, ["curate", "-p", "tiny", "-w", str(tmp_path), "--dry-run"])
    assert "preset: tiny" in res.output
    (tmp_path / "config.yaml").write_text("preset: tiny\nsample:\n  candidates: 11\n")
    res = runner.invoke(app, ["synthesize", "-w", str(tmp_path), "--dry-run"])  # no preset given
    assert res.exit_code == 0 and "preset: tiny" in res.output and "candidates: 11" in res.output
    res = runner.invoke(app, ["synthesize", "-w", str(tmp_path), "-p", "cpu", "--dry-run"])  # explicit wins
    assert "preset: cpu" in res.output and "candidates: 11" not in res.output
