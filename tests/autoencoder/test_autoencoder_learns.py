"""The autoencoder learns: 30 steps on the tiny index cut the reconstruction loss to at most half."""


def test_autoencoder_learns(tiny_index, tiny_config, learned):
    from mrgen import autoencoder

    cfg = tiny_config(tiny_index, "autoencoder.train.steps=30", "autoencoder.train.ckpt_every=0")
    autoencoder.run(cfg)
    first, final = learned(tiny_index / "autoencoder")
    assert final <= 0.5 * first, (first, final)  # measured: 0.71 -> 0.11
