"""No network: the whole tiny pipeline (the suite's reference run) runs with every network socket blocked."""

import json
import subprocess
import sys

import pytest
from fault_helpers import BLOCK_NETWORK, env


@pytest.mark.fault("no network (sockets blocked)", action="nothing: mrgen never downloads at run time")
def test_whole_tiny_pipeline_runs_offline(reference):
    wd, _, _, _, net = reference
    stages = json.loads((wd / "stages.json").read_text())["stages"]
    assert list(stages) == ["phantom", "curate", "autoencoder", "ldm", "controller", "synthesize", "filter", "segment",
                            "audit", "export", "evaluate"]
    assert (wd / "eval" / "summary.json").exists()
    assert not net.exists() or net.read_text() == "", net.read_text()[:500]


def test_the_block_catches_and_logs_an_attempt(tmp_path):
    """The blocker the reference run ran under (the fork server's :data:`BLOCK_NETWORK`) does refuse a connection
    and log it, so an empty log above means no attempt, not an attempt that went unseen."""
    log = tmp_path / "net.log"
    code = BLOCK_NETWORK + (
        "\nimport socket\ntry:\n    socket.create_connection(('example.org', 80), timeout=1)\n"
        "except OSError as e:\n    print('refused', e)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ntry:\n    s.connect(('10.0.0.1', 80))\n"
        "except OSError as e:\n    print('refused', e)\n")
    res = subprocess.run([sys.executable, "-c", code], env=env(MRGEN_NET_LOG=str(log)), capture_output=True, text=True,
                         timeout=60)
    assert res.stdout.count("refused network access blocked by tests/faults") == 2, res.stdout + res.stderr
    assert len(log.read_text().splitlines()) == 2 and "10.0.0.1" in log.read_text()
