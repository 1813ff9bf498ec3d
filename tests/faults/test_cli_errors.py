"""Bad command lines: each is one clear line on stderr and exit code 2, never a traceback."""

import json

import pytest
from typer.testing import CliRunner

from mrgen.cli import app

runner = CliRunner()

FAULT = pytest.mark.fault("bad command line",
                          action="read the one-line error: it names the bad key/value/folder and the fix")


def _fails(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (args, res.output, repr(res.exception))
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    for n in needles:
        assert n in " ".join(res.output.split()), (n, res.output)
    return res


@pytest.mark.parametrize("args, needle", [
    (["synthesise"], "No such command 'synthesise'"),
    (["run", "-p", "tinyy"], "unknown preset 'tinyy'; choose one of: tiny"),
    (["run", "-p", "tiny", "ldm.train.stepz=3"], "unknown config key 'ldm.train.stepz'"),
    (["run", "-p", "tiny", "ldm.train.steps=four"], "config key 'ldm.train.steps' expects an integer, got 'four'"),
    (["run", "-p", "tiny", "ldm.train.steps"], "must look like section.key=value"),
])
@FAULT
def test_unknown_stage_preset_key_or_type(tmp_path, args, needle):
    _fails(args + ["-w", str(tmp_path / "new")] if args[0] == "run" else args, needle)
    assert not (tmp_path / "new").exists()  # nothing written


@pytest.mark.parametrize("stage", [["synthesize"], ["filter"], ["train", "ldm"], ["export", "nnunet"],
                                   ["segment", "train"], ["evaluate", "segmenter"]])
@FAULT
def test_missing_run_folder(tmp_path, stage):
    _fails(stage + ["-p", "tiny", "-w", str(tmp_path / "nope")], f"run folder {tmp_path / 'nope'} does not exist")
    assert not (tmp_path / "nope").exists()


@FAULT
def test_foreign_run_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    _fails(["run", "-p", "tiny", "-w", str(tmp_path)], "is not an mrgen run folder", "Give a new or empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    (tmp_path / "thesis.tex").unlink()
    (tmp_path / "file").write_text("")
    _fails(["run", "-p", "tiny", "-w", str(tmp_path / "file")], "is a file, not a folder")


@FAULT
def test_earlier_stage_missing_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("preset: tiny\n")
    _fails(["train", "ldm", "-w", str(tmp_path)], f"{tmp_path / 'autoencoder' / 'model.json'} not found",
           "train that stage first")


@pytest.mark.parametrize("schema, needle", [(0, "older than this mrgen reads (from 1)"),
                                            (3, "newer than this mrgen reads (up to 2); upgrade mrgen"),
                                            ("2", "unknown schema version '2'")])
@FAULT
def test_run_folder_of_another_schema_version(tmp_path, schema, needle):
    (tmp_path / "stages.json").write_text(json.dumps({"schema": schema, "stages": {}}))
    _fails(["run", "-p", "tiny", "-w", str(tmp_path)], f"{tmp_path / 'stages.json'} has", needle,
           f"rm {tmp_path / 'stages.json'}")


@FAULT
def test_a_folder_left_by_a_run_killed_at_its_first_write_is_mrgens(tmp_path):
    from mrgen import config as C
    from mrgen.cli import check_workdir

    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}"])
    (tmp_path / ".config.yaml.x1y2.tmp.yaml").write_text("pre")  # the temp file of its first atomic write
    check_workdir(cfg, creates=True)  # a temp file alone: not foreign
    (tmp_path / ".mrgen.lock").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    check_workdir(cfg, creates=True)  # its lock marks the folder as a run folder
