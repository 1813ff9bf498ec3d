import pytest

from mrgen import config as C


@pytest.mark.parametrize("preset", C.PRESETS)
def test_presets_resolve(preset):
    cfg = C.load_config(preset)
    assert cfg.preset == preset
    assert cfg.data.image_size % 2 ** (len(cfg.autoencoder.channels) - 1) == 0


def test_paper_preset_has_the_papers_numbers():
    cfg = C.load_config("paper")
    assert cfg.data.image_size == 512
    assert cfg.autoencoder.latent_channels == 16
    assert 2 ** (len(cfg.autoencoder.channels) - 1) == 8  # f8 autoencoder
    assert (cfg.sample.ddim_steps, cfg.sample.guidance, cfg.sample.candidates, cfg.filter.keep) == (50, 7.0, 20, 2)
    assert (cfg.diffusion.timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1000, 0.00085, 0.012)
    assert cfg.ldm.prompt_dropout == 0.1
    assert (cfg.filter.organ_iou, cfg.filter.organ_conf, cfg.filter.mean_iou, cfg.filter.mean_conf) == (0.7, 0.8, 0.8, 0.9)


def test_overrides_are_typed_and_nested():
    cfg = C.load_config("tiny", overrides=["ldm.train.steps=7", "sample.guidance=3", "autoencoder.channels=[4, 4]",
                                           "run.workdir=/tmp/x", "data.image_size=16"])
    assert cfg.ldm.train.steps == 7 and isinstance(cfg.ldm.train.steps, int)
    assert cfg.sample.guidance == 3.0 and isinstance(cfg.sample.guidance, float)
    assert cfg.autoencoder.channels == (4, 4)
    assert str(cfg.workdir) == "/tmp/x"


@pytest.mark.parametrize("bad,msg", [
    (["ldm.nope=1"], "unknown config key 'ldm.nope'"),
    (["ldm.train.steps=abc"], "expects an integer"),
    (["noequals"], "must look like section.key=value"),
    (["data.image_size=17"], "not divisible"),
    (["controller.mask_encoding=rgb"], "merged"),
    (["controller.target_mask=blank"], "'background' or 'unknown'"),
    (["controller.mask_encoding=merged", "controller.target_mask=unknown"], "set controller.mask_encoding=onehot"),
])
def test_bad_overrides_say_what_is_wrong(bad, msg):
    with pytest.raises(C.ConfigError, match=msg):
        C.load_config("tiny", overrides=bad)


def test_unknown_preset_lists_known():
    with pytest.raises(C.ConfigError, match="tiny, cpu, cpu3d, paper"):
        C.load_config("huge")


def test_config_file_and_resolved_roundtrip(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("preset: tiny\nsample:\n  candidates: 5\n")
    cfg = C.load_config("cpu", f, ["sample.batch_size=2"])
    assert cfg.preset == "tiny" and cfg.sample.candidates == 5 and cfg.sample.batch_size == 2
    path = C.save_resolved(cfg, tmp_path / "run")
    again = C.load_config("tiny", path)
    assert C.to_dict(again) == C.to_dict(cfg)


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2", "0/0"])
def test_sample_shard_must_be_auto_or_i_of_n(bad):
    with pytest.raises(C.ConfigError, match="sample.shard must be auto"):
        C.load_config("tiny", overrides=[f"sample.shard={bad}"])
    assert C.load_config("tiny").sample.shard == "auto"
    assert C.load_config("tiny", overrides=["sample.shard=1/2"]).sample.shard == "1/2"


def test_mrgen_run_refuses_a_hand_shard(tmp_path):
    from mrgen import pipeline

    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "sample.shard=0/2"])
    with pytest.raises(C.ConfigError, match="leave sample.shard=auto"):
        pipeline.run(cfg)
    assert not (tmp_path / "stages.json").exists()
