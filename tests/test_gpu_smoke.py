"""benchmarks/gpu_smoke.py: its CPU dry run (--device cpu --tiny) through the real stages, in seconds."""

import json


def test_cpu_tiny_dry_run(tmp_path, capsys, bench_script):
    smoke = bench_script("gpu_smoke")
    out = smoke.main(["--device", "cpu", "--tiny", "--workdir", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")])
    assert out["error"] == "", out["error"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["preset"] == "tiny" and list(saved["stages"]) == list(smoke.STAGES)
    st = saved["stages"]
    for name in ("autoencoder", "ldm", "controller", "segment"):  # training stages: rates from their train logs
        assert st[name]["steps"] == 4 and st[name]["step_s"] > 0 and st[name]["images_per_s"] > 0, (name, st[name])
        assert st[name]["peak_gpu_mb"] is None and st[name]["peak_rss_mb"] > 0
    # --masks 4 x --candidates 4, rendered with the default solver at the tiny preset's 3 steps, then scored
    assert st["synthesize"]["images"] == 16 and st["synthesize"]["solver"] == "ddim" and st["synthesize"]["sampler_steps"] == 3
    assert st["filter"]["images"] == 16
    assert (tmp_path / "run" / "segment" / "engine" / "model.safetensors").exists()
    assert saved["wall_s"] >= sum(s["wall_s"] for s in st.values()) - 1.0
    table = capsys.readouterr().out
    assert "| ldm |" in table and "| **whole run** |" in table


def test_overrides_and_preflight(bench_script):
    smoke = bench_script("gpu_smoke")
    import argparse

    args = argparse.Namespace(workdir="w", tiny=False, steps=0, segment_steps=0, device="cuda", subjects=4, slices=4,
                              masks=4, candidates=4, ae_batch=8, ldm_batch=32, controller_batch=16, segment_batch=12,
                              text="", overrides=["ldm.train.lr=1.0e-4"])
    ov = smoke.overrides(args)
    assert "ldm.train.steps=200" in ov and "autoencoder.train.batch_size=8" in ov and "phantom.size=512" in ov
    assert ov[-1] == "ldm.train.lr=1.0e-4"  # extra overrides last, so they win
    from mrgen.config import load_config

    cfg = load_config("paper", overrides=ov)  # the smoke overrides resolve on the paper preset
    assert (cfg.data.image_size, cfg.autoencoder.latent_channels, cfg.ldm.train.precision) == (512, 16, "bf16")
    assert smoke.missing_modules("learned") == []  # this machine has every runtime dependency
