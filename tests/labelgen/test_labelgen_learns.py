"""Labelgen learns (Duo-Diffusion step 1): its label autoencoder and then its label-map LDM, on the tiny index's masks."""


def test_labelgen_learns(tiny_index, tiny_config, learned):
    """30 autoencoder steps cut the label reconstruction loss to at most half; 60 LDM steps on its latents
    bring the ε-prediction loss from ~1 (zero-initialised output) to at most half."""
    from mrgen.autoencoder.data import n_labels
    from mrgen.labelgen import LabelItems, train_rows
    from mrgen.labelgen.stage import train_autoencoder, train_ldm

    cfg = tiny_config(tiny_index, "labelgen.enabled=true", "labelgen.ae_train.steps=30", "labelgen.ae_train.ckpt_every=0",
                      "labelgen.ldm_train.steps=60", "labelgen.ldm_train.lr=0.01", "labelgen.ldm_train.batch_size=8",
                      "labelgen.ldm_train.ckpt_every=0")
    rows = train_rows(cfg)
    items = LabelItems(cfg, rows, n_labels(cfg))
    train_autoencoder(cfg, rows, items)
    first, final = learned(tiny_index / "labelgen" / "autoencoder")
    assert final <= 0.5 * first, ("autoencoder", first, final)  # measured: 1.23 -> 0.19
    train_ldm(cfg, rows, items)
    first, final = learned(tiny_index / "labelgen" / "ldm", last=20)
    assert 0.9 < first < 1.1 and final <= 0.5 * first, ("ldm", first, final)  # measured: 1.02 -> 0.29
