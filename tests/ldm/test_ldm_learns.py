"""The LDM learns: on the tiny index's latents, 80 steps bring the ε-prediction loss from ~1 (the
zero-initialised output predicts no noise) to at most 0.6 of it."""


def test_ldm_learns(tiny_index, tiny_config, learned):
    from mrgen import autoencoder, ldm

    cfg = tiny_config(tiny_index, "ldm.train.steps=80", "ldm.train.lr=0.01", "ldm.train.batch_size=8",
                      "ldm.train.ckpt_every=0")
    autoencoder.run(cfg)
    ldm.run(cfg)
    first, final = learned(tiny_index / "ldm", last=20)
    assert 0.9 < first < 1.1 and final <= 0.6 * first, (first, final)  # measured: 0.99 -> 0.46
