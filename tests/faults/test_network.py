"""No network: the whole tiny pipeline (the suite's reference run) runs with every network socket blocked."""

import json

import pytest


@pytest.mark.fault("no network (sockets blocked)", action="nothing: mrgen never downloads at run time")
def test_whole_tiny_pipeline_runs_offline(reference):
    wd, _, _, _, net = reference
    stages = json.loads((wd / "stages.json").read_text())["stages"]
    assert list(stages) == ["phantom", "curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment",
                            "audit", "export", "evaluate"]
    assert (wd / "eval" / "summary.json").exists()
    assert not net.exists() or net.read_text() == "", net.read_text()[:500]
