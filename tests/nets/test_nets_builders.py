import pytest
import torch

from mrgen import nets
from mrgen.nets.builders import CONTROLLER_ONLY_PREFIXES


def _inputs(cfg, n, context_dim, seed=0, n_labels=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(nets.latent_shape(cfg, n), generator=g)
    t = torch.tensor([10, 500, 990][:n])
    ctx = torch.randn(n, cfg.text.max_length, context_dim, generator=g)
    sd = cfg.data.spatial_dims
    size = (cfg.data.image_size,) * 2 + ((cfg.data.depth,) if sd == 3 else ())
    mask = torch.randint(0, n_labels + 1, (n, *size), generator=g)
    return x, t, ctx, mask


def test_autoencoder_shapes(make_cfg, spatial_dims):
    cfg = make_cfg(spatial_dims)
    ae = nets.build_autoencoder(cfg)
    size = (16,) * spatial_dims
    img = torch.randn(2, 1, *size)
    z_mu, z_sigma = ae.encode(img)
    assert z_mu.shape == nets.latent_shape(cfg, 2) and z_mu.dtype == torch.float32
    assert ae.decode(z_mu).shape == (2, 1, *size)


def test_unet_shapes(make_cfg, spatial_dims):
    cfg = make_cfg(spatial_dims)
    unet = nets.build_unet(cfg, context_dim=16)
    x, t, ctx, _ = _inputs(cfg, 2, 16)
    out = unet(x=x, timesteps=t, context=ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert unet.context_dim == 16


def test_encode_mask(spatial_dims):
    size = (4,) * spatial_dims
    m = torch.zeros(2, *size, dtype=torch.long)
    m[0, 1] = 1
    m[1, 2] = 3
    merged = nets.encode_mask(m, "merged", 3)
    assert merged.shape == (2, 1, *size) and merged.dtype == torch.float32
    assert torch.allclose(merged[0, 0, 1], torch.tensor(1 / 3)) and bool((merged[1, 0, 2] == 1.0).all())
    assert merged[0, 0, 0].abs().sum() == 0
    oh = nets.encode_mask(m, "onehot", 3)
    assert oh.shape == (2, 4, *size)
    assert torch.equal(oh.argmax(1), m) and torch.equal(oh.sum(1), torch.ones(2, *size))
    with pytest.raises(ValueError, match="mask values"):
        nets.encode_mask(m + 4, "merged", 3)
    with pytest.raises(ValueError, match="encoding"):
        nets.encode_mask(m, "rgb", 3)


def test_mask_channels(make_cfg):
    assert nets.mask_channels(make_cfg(2), 5) == 1
    assert nets.mask_channels(make_cfg(2, "controller.mask_encoding=onehot"), 5) == 6


def test_controller_zero_convs_and_copy(make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims)
    unet = rand(nets.build_unet(cfg, 16), seed=1)
    ctrl = nets.build_controller(cfg, unet, n_labels=4, copy_weights=False)
    # MONAI zero-initialises every zero conv itself (ensure_zero_convs found nothing to fix)
    assert nets.ensure_zero_convs(ctrl) == 0
    names = nets.zero_conv_names(ctrl)
    assert any(k.startswith("controlnet_mid_block") for k in names)
    assert any(k.startswith("controlnet_cond_embedding.conv_out") for k in names)
    params = dict(ctrl.named_parameters())
    n_down = len([k for k in params if k.startswith("controlnet_down_blocks")])
    assert n_down > 0 and all(torch.count_nonzero(params[k]) == 0 for k in names)

    copied = nets.copy_unet_to_controller(unet, ctrl)
    u, c = unet.state_dict(), ctrl.state_dict()
    assert set(copied) == {k for k in c if not k.startswith(CONTROLLER_ONLY_PREFIXES)}
    for k in copied:
        assert torch.equal(c[k], u[k]), k
    assert any(k.startswith("time_embed.") for k in copied)
    assert any(k.startswith("conv_in.") for k in copied)
    assert any(k.startswith("down_blocks.") for k in copied)
    assert any(k.startswith("middle_block.") for k in copied)
    assert any("attn2.to_k" in k for k in copied)  # cross-attention copied too


def test_controller_mismatch_is_an_error(make_cfg):
    cfg = make_cfg(2)
    unet = nets.build_unet(cfg, 16)
    other = nets.build_unet(make_cfg(2, "ldm.channels=[8,16]"), 16)
    ctrl = nets.build_controller(make_cfg(2, "ldm.channels=[8,16]"), other, 4)
    with pytest.raises(nets.ControllerInitError, match="down_blocks"):
        nets.copy_unet_to_controller(unet, ctrl)


def test_fresh_controller_leaves_the_unet_unchanged(make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims)
    unet = rand(nets.build_unet(cfg, 16), seed=2)
    ctrl = nets.build_controller(cfg, unet, 4)
    x, t, ctx, mask = _inputs(cfg, 2, 16, seed=3)
    cond = nets.encode_mask(mask, "merged", 4)
    with torch.no_grad():
        plain = unet(x=x, timesteps=t, context=ctx)
        both = nets.ControlledUNet(unet, ctrl, 1.0).eps(x, t, ctx, cond)
        assert plain.abs().sum() > 0
        assert torch.equal(plain, both)  # zero convs: exactly the UNet
        # once the zero convs learn something, the mask changes the prediction
        rand(ctrl, seed=4)
        moved = nets.ControlledUNet(unet, ctrl, 1.0).eps(x, t, ctx, cond)
        assert not torch.allclose(plain, moved)


def test_controller_onehot_channels(make_cfg, spatial_dims):
    cfg = make_cfg(spatial_dims, "controller.mask_encoding=onehot")
    unet = nets.build_unet(cfg, 16)
    ctrl = nets.build_controller(cfg, unet, 3)
    x, t, ctx, mask = _inputs(cfg, 2, 16, n_labels=3)
    cond = nets.encode_mask(mask, "onehot", 3)
    assert cond.shape[1] == 4
    with torch.no_grad():
        down, mid = ctrl(x=x, timesteps=t, controlnet_cond=cond, context=ctx)
    assert mid.shape[0] == 2 and down[0].shape[-1] == x.shape[-1]  # mask pixel res -> latent res
