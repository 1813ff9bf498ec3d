"""Run by tests/test_launch.py, alone or under ``accelerate launch``: ``python launched_stages.py WORKDIR
STAGES [OVERRIDES...]`` runs ``mrgen.pipeline.run(only=STAGES)`` on the tiny preset and logs, per process, which
masks it rendered, which candidate files it scored and which test volumes it predicted (``WORKDIR/shares/<rank>.txt``),
so the test can check that the processes shared the work rather than each doing all of it."""

import os
import sys
from pathlib import Path

from mrgen import dist, pipeline, segment, synthesize
from mrgen.config import load_config
from mrgen.filter import stage as filter_stage

workdir, stages, overrides = Path(sys.argv[1]), tuple(sys.argv[2].split(",")), sys.argv[3:]
rank, _ = dist.launched()
log = workdir / "shares" / f"{rank}.txt"
log.parent.mkdir(parents=True, exist_ok=True)


def logged(what, fn, name):
    def wrapper(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{what} {name(*args)}\n")
        return fn(*args, **kwargs)
    return wrapper


synthesize._write_mask = logged("render", synthesize._write_mask, lambda cfg, gen, row, *a: row["key"])
filter_stage.score_candidates = logged("score", filter_stage.score_candidates, lambda scorer, images, mask, key, *a: key)
_predict = segment.predict_rows


def predict_rows(model, rows, root):
    for vol in _predict(model, rows, root):
        with open(log, "a") as fh:
            fh.write(f"predict {vol['key']}\n")
        yield vol


segment.predict_rows = predict_rows
pipeline.run(load_config("tiny", overrides=[f"run.workdir={workdir}", *overrides]), only=stages)
print(f"rank {rank} of {os.environ.get('WORLD_SIZE', '1')} done")
