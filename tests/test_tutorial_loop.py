"""benchmarks/tutorial_loop.py at tiny size: both loops of both stages run and are reported against the tutorial loop."""

import json

import pytest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorial_loop") / "wd"  # prepared once (phantom, curate, AE, LDM), then reused


def test_tiny_tutorial_loop_against_the_stage_steps(tmp_path, workdir, bench_script):
    tl = bench_script("tutorial_loop")
    out = tmp_path / "r.json"
    assert tl.main(["--preset", "tiny", "--steps", "1", "--warmup", "1", "--rounds", "1",
                    "--workdir", str(workdir), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    names = list(res["settings"])
    tut = "tutorial loop (fp32, encode every batch, DataLoader)"
    assert names == [f"ldm: {tut}", "ldm: mrgen stage", f"controller: {tut}", "controller: mrgen stage"]
    for name, s in res["settings"].items():
        assert s["images_per_s"] > 0 and len(s["rounds"]) == 1, (name, s)
        if tut in name:
            assert s["ratio"] == 1.0
        else:  # the mrgen row is reported against its own stage's tutorial row
            base = res["settings"][f"{s['stage']}: {tut}"]["images_per_s"]
            assert abs(s["ratio"] - s["images_per_s"] / base) < 0.01


def test_captured_job_is_the_stage_job_and_does_not_train(workdir, bench_script):
    tl = bench_script("tutorial_loop")
    cfg = tl.prepare("tiny", workdir, [])
    from mrgen import controller

    job = tl.captured_job(controller.run, cfg)
    assert job.stage == "controller" and job.trainable == ["controller"]
    assert not (workdir / "controller" / "model.safetensors").exists()  # fit was not called
