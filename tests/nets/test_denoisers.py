"""mrgen.nets.denoisers: each wrapper's eps against the MONAI nets called by hand."""

import pytest
import torch

from mrgen import nets

DIM = 16


def _inputs(cfg, n=2, seed=0, n_labels=4, encoding="merged"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(nets.latent_shape(cfg, n), generator=g)
    t = torch.tensor([10, 500, 990][:n])
    ctx = torch.randn(n, cfg.text.max_length, DIM, generator=g)
    size = (cfg.data.image_size,) * 2 + ((cfg.data.depth,) if cfg.data.spatial_dims == 3 else ())
    mask = torch.randint(0, n_labels + 1, (n, *size), generator=g)
    return x, t, ctx, nets.encode_mask(mask, encoding, n_labels)


@pytest.fixture
def latent(make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims, "data.depth=16")
    unet = rand(nets.build_unet(cfg, DIM), seed=1).eval()
    ctrl = rand(nets.build_controller(cfg, unet, 4), seed=2).eval()  # non-zero zero convs: the residuals are live
    return cfg, unet, ctrl


def test_unet_denoiser_is_the_unet(latent):
    cfg, unet, _ = latent
    x, t, ctx, cond = _inputs(cfg)
    den = nets.UNetDenoiser(unet)
    with torch.no_grad():
        got = den.eps(x, t, ctx)
        assert torch.equal(got, unet(x=x, timesteps=t, context=ctx)) and float(got.abs().max()) > 0
    with pytest.raises(ValueError, match="no mask input"):
        den.eps(x, t, ctx, cond)
    with pytest.raises(TypeError, match="DiffusionModelUNet"):
        nets.UNetDenoiser(torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_controlled_unet_adds_scaled_residuals(latent, scale):
    cfg, unet, ctrl = latent
    x, t, ctx, cond = _inputs(cfg, seed=3)
    den = nets.ControlledUNet(unet, ctrl, scale)
    with torch.no_grad():
        got = den.eps(x, t, ctx, cond)
        down, mid = ctrl(x=x, timesteps=t, controlnet_cond=cond, context=ctx)  # unscaled residuals
        ref = unet(x=x, timesteps=t, context=ctx, down_block_additional_residuals=[d * scale for d in down],
                   mid_block_additional_residual=mid * scale)
        plain = unet(x=x, timesteps=t, context=ctx)
        off = nets.ControlledUNet(unet, ctrl, 0.0).eps(x, t, ctx, cond)
    assert got.shape == x.shape
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-4)  # the mask changes the prediction
    assert torch.equal(off, plain)  # scale 0: all residuals exactly zero


def test_controlled_unet_shapes_and_errors(latent, make_cfg, spatial_dims):
    cfg, unet, ctrl = latent
    den = nets.ControlledUNet(unet, ctrl)
    assert den.cond_channels == nets.mask_channels(cfg, 4) == 1 and den.cond_factor == nets.latent_factor(cfg) == 2
    assert den.conditioning_scale == 1.0
    # the wrapper adds no tensor of its own: checkpoints of the inner nets are untouched
    assert set(den.state_dict()) == {f"unet.{k}" for k in unet.state_dict()} | {f"controller.{k}" for k in ctrl.state_dict()}
    x, t, ctx, cond = _inputs(cfg)
    with pytest.raises(ValueError, match="needs cond"):
        den.eps(x, t, ctx, None)
    onehot = _inputs(cfg, encoding="onehot")[3]
    with pytest.raises(ValueError, match=r"cond must be \(N, 1"):
        den.eps(x, t, ctx, onehot)
    with pytest.raises(ValueError, match="cond must be"):
        den.eps(x, t, ctx, cond[..., :8])  # latent-size, not pixel-size, mask
    with pytest.raises(ValueError, match="batch"):
        den.eps(x, t, ctx, cond[:1])
    other_cfg = make_cfg(spatial_dims, "ldm.channels=[8,16]")
    other = nets.build_controller(other_cfg, nets.build_unet(other_cfg, DIM), 4)
    with pytest.raises(ValueError, match="block_out_channels.*build_controller"):
        nets.ControlledUNet(unet, other)
    with pytest.raises(TypeError, match="ControlNet"):
        nets.ControlledUNet(unet, unet)
    with pytest.raises(ValueError, match="finite"):
        nets.ControlledUNet(unet, ctrl, float("nan"))


@pytest.fixture
def pixel(make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims, "data.depth=8", "controller.mask_encoding=onehot")
    unet = rand(nets.build_pixel_unet(cfg, DIM, 2), seed=4).eval()
    return cfg, unet


def _pixel_inputs(cfg, n=2):
    g = torch.Generator().manual_seed(5)
    size = (16, 16) if cfg.data.spatial_dims == 2 else (8, 16, 16)
    x = torch.randn(n, 1, *size, generator=g)
    cond = nets.encode_mask(torch.randint(0, 3, (n, *size), generator=g), "onehot", 2)
    return x, torch.tensor([3, 700][:n]), torch.randn(n, cfg.text.max_length, DIM, generator=g), cond


def test_concat_unet_concatenates(pixel):
    cfg, unet = pixel
    den = nets.ConcatUNet(unet, nets.mask_channels(cfg, 2))
    assert den.cond_channels == 3
    x, t, ctx, cond = _pixel_inputs(cfg)
    with torch.no_grad():
        got = den.eps(x, t, ctx, cond)
        ref = unet(x=torch.cat([x, cond], 1), timesteps=t, context=ctx)
        other = den.eps(x, t, ctx, torch.zeros_like(cond))
    assert got.shape == x.shape and torch.equal(got, ref)
    assert not torch.allclose(got, other)  # the mask is read
    assert set(den.state_dict()) == {f"unet.{k}" for k in unet.state_dict()}


def test_concat_unet_errors(pixel):
    cfg, unet = pixel
    with pytest.raises(ValueError, match="in_channels=4.*mask_channels"):
        nets.ConcatUNet(unet, 1)  # merged-mask channel count for a one-hot UNet
    den = nets.ConcatUNet(unet, 3)
    x, t, ctx, cond = _pixel_inputs(cfg)
    with pytest.raises(ValueError, match="give cond"):
        den.eps(x, t, ctx, None)
    with pytest.raises(ValueError, match="cond must be"):
        den.eps(x, t, ctx, cond[:, :1])
    with pytest.raises(ValueError, match="cond must be"):
        den.eps(x, t, ctx, cond[..., :8])
    with pytest.raises(ValueError, match="batch"):
        den.eps(x, t, ctx, cond[:1])


def test_as_denoiser(latent):
    cfg, unet, ctrl = latent
    den = nets.ControlledUNet(unet, ctrl)
    assert nets.as_denoiser(den) is den
    with pytest.raises(TypeError, match="UNetDenoiser"):  # a bare UNet is wrapped by its caller, never guessed
        nets.as_denoiser(unet)
    with pytest.raises(TypeError, match="ControlledUNet"):
        nets.as_denoiser(ctrl)  # a bare ControlNet says nothing about the UNet it steers
