import pytest
import torch

from mrgen import nets
from mrgen.diffusion import decode, make_ddim, make_solver, sample
from mrgen.nets.builders import latent_shape

DIM = 16


@pytest.fixture
def models(make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims)
    unet = rand(nets.build_unet(cfg, DIM), seed=0).eval()
    ctrl = rand(nets.build_controller(cfg, unet, 4), seed=1).eval()
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(3, cfg.text.max_length, DIM, generator=g)
    unc = torch.randn(1, cfg.text.max_length, DIM, generator=g)
    size = (16,) * spatial_dims
    cond = nets.encode_mask(torch.randint(0, 5, (3, *size), generator=g), "merged", 4)
    return cfg, nets.ControlledUNet(unet, ctrl), ctx, unc, cond


def _run(cfg, den, ctx, unc, seeds, solver="ddim", steps=3, **kw):
    return sample(den, make_solver(cfg.diffusion, steps, solver), ctx, unc, latent_shape(cfg, len(seeds)), seeds, **kw)


def test_shapes_and_determinism(models):
    cfg, den, ctx, unc, cond = models
    a = _run(cfg, den, ctx, unc, [1, 2, 3], guidance=2.0, cond=cond)
    b = _run(cfg, den, ctx, unc, [1, 2, 3], guidance=2.0, cond=cond)
    assert a.shape == latent_shape(cfg, 3) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    c = _run(cfg, den, ctx, unc, [9, 2, 3], guidance=2.0, cond=cond)
    assert not torch.allclose(a[0], c[0]) and torch.allclose(a[1:], c[1:], atol=1e-4)


@pytest.mark.parametrize("solver,eta", [("ddim", 0.0), ("ddim", 0.5), ("dpmpp2m", 0.0), ("unipc", 0.0)])
def test_sample_independent_of_batch(models, solver, eta):
    cfg, den, ctx, unc, cond = models
    batch = _run(cfg, den, ctx, unc, [11, 12, 13], solver, 4, guidance=3.0, cond=cond, eta=eta)
    alone = _run(cfg, den, ctx[1:2], unc, [12], solver, 4, guidance=3.0, cond=cond[1:2], eta=eta)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=1e-4)  # batch-size kernel differences only
    if eta > 0:  # the η noise is live and also seeded
        det = _run(cfg, den, ctx[1:2], unc, [12], guidance=3.0, cond=cond[1:2], eta=0.0)
        assert not torch.allclose(alone, det)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_text_only_independent_of_batch(models, eta):
    cfg, den, ctx, unc, _ = models
    plain = nets.UNetDenoiser(den.unet)
    batch = _run(cfg, plain, ctx, unc, [11, 12, 13], guidance=3.0, eta=eta)
    alone = _run(cfg, plain, ctx[2:3], unc, [13], guidance=3.0, eta=eta)
    torch.testing.assert_close(batch[2:3], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[2])


def _manual(cfg, den, ctx, unc, cond, seeds, w):
    """Reference loop: separate cond / uncond passes through the UNet + controller by hand, no batching tricks."""
    sched = make_ddim(cfg.diffusion, 3)
    x = torch.stack([torch.randn(latent_shape(cfg, 1)[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])

    def eps(c):
        down, mid = den.controller(x=x, timesteps=tt, controlnet_cond=cond, context=c)
        return den.unet(x=x, timesteps=tt, context=c, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((len(seeds),), int(t))
            e_c = eps(ctx)
            if w == 1.0:
                e = e_c
            else:
                e_u = eps(unc.expand(len(seeds), -1, -1))
                e = e_u + w * (e_c - e_u)
            x, _ = sched.step(e, int(t), x)
    return x


def test_guidance_one_is_conditional_only(models):
    cfg, den, ctx, unc, cond = models
    got = _run(cfg, den, ctx, unc, [4, 5, 6], guidance=1.0, cond=cond)
    ref = _manual(cfg, den, ctx, unc, cond, [4, 5, 6], 1.0)
    assert torch.equal(got, ref)
    no_unc = _run(cfg, den, ctx, None, [4, 5, 6], guidance=1.0, cond=cond)
    assert torch.equal(got, no_unc)  # uncond pass skipped entirely


def test_guidance_matches_reference_loop(models):
    cfg, den, ctx, unc, cond = models
    got = _run(cfg, den, ctx, unc, [4, 5, 6], guidance=4.0, cond=cond)
    ref = _manual(cfg, den, ctx, unc, cond, [4, 5, 6], 4.0)
    # batched cond + uncond vs separate passes: float32 kernels differ by ~1e-5 with batch size and thread count,
    # amplified by the guidance; a wrong guidance rule differs by O(1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    w1 = _run(cfg, den, ctx, unc, [4, 5, 6], guidance=1.0, cond=cond)
    assert not torch.allclose(got, w1)  # guidance does something


def test_the_denoiser_carries_the_conditioning_scale(models):
    cfg, den, ctx, unc, cond = models
    off = _run(cfg, nets.ControlledUNet(den.unet, den.controller, 0.0), ctx, unc, [4, 5, 6], guidance=2.0, cond=cond)
    plain = _run(cfg, nets.UNetDenoiser(den.unet), ctx, unc, [4, 5, 6], guidance=2.0)
    assert torch.equal(off, plain)  # scale 0: exactly the text-only LDM
    assert not torch.allclose(_run(cfg, den, ctx, unc, [4, 5, 6], guidance=2.0, cond=cond), plain, atol=1e-4)


def test_text_only_and_errors(models):
    cfg, den, ctx, unc, cond = models
    out = _run(cfg, nets.UNetDenoiser(den.unet), ctx[:1], unc, [1, 2], guidance=2.0)  # (1, L, dim) broadcast
    assert out.shape == latent_shape(cfg, 2)
    assert torch.allclose(out[1:], _run(cfg, nets.UNetDenoiser(den.unet), ctx[:1], unc, [2], guidance=2.0), atol=1e-4)
    with pytest.raises(TypeError, match="UNetDenoiser"):  # a bare UNet is not a denoiser
        _run(cfg, den.unet, ctx[:1], unc, [1, 2], guidance=2.0)
    with pytest.raises(ValueError, match="uncond_context"):
        _run(cfg, den, ctx, None, [1, 2, 3], guidance=2.0, cond=cond)
    with pytest.raises(ValueError, match="needs cond"):
        _run(cfg, den, ctx, unc, [1, 2, 3])
    with pytest.raises(ValueError, match="no mask input"):
        _run(cfg, nets.UNetDenoiser(den.unet), ctx, unc, [1, 2, 3], cond=cond)
    with pytest.raises(ValueError, match="cond has batch 2"):
        _run(cfg, den, ctx, unc, [1, 2, 3], cond=cond[:2])
    with pytest.raises(TypeError, match="denoiser"):
        _run(cfg, den.controller, ctx, unc, [1, 2, 3], cond=cond)
    with pytest.raises(ValueError, match="noise_shape"):
        sample(den, make_ddim(cfg.diffusion, 3), ctx, unc, latent_shape(cfg, 2), [1, 2, 3], cond=cond)


def test_decode(models):
    cfg = models[0]
    ae = nets.build_autoencoder(cfg).eval()
    z = torch.randn(latent_shape(cfg, 3))
    img = decode(ae, z, scale_factor=0.5, batch_size=2)
    assert img.shape == (3, 1, *(16,) * cfg.data.spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(img, ae.decode(z / 0.5))


def test_strength_runs_the_last_steps_of_the_same_schedule(make_cfg):
    cfg = make_cfg(2)
    full = [int(t) for t in make_solver(cfg.diffusion, 10, "ddim").timesteps]
    assert full[-3:] == [201, 101, 1]  # leading spacing T // S = 100, offset 1 (T = 1000)
    for solver in ("ddim", "dpmpp2m", "unipc"):
        cut = make_solver(cfg.diffusion, 10, solver, strength=0.3)
        assert [int(t) for t in cut.timesteps] == [201, 101, 1]
    assert [int(t) for t in make_solver(cfg.diffusion, 10, "ddim", strength=0.55).timesteps] == full[-6:]  # round(5.5)
    with pytest.raises(ValueError, match="leaves no sampling step"):
        make_solver(cfg.diffusion, 10, "ddim", strength=0.04)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m"])
def test_sdedit_start_against_a_zero_denoiser(make_cfg, solver):
    """A denoiser that predicts ε = 0 (MONAI's zero-initialised output conv) makes x̂_0 = x_t / sqrt(ᾱ_t) at every
    step, so the chain ends at sqrt(ᾱ_0 / ᾱ_t0) x_t0 whatever the solver: with the SDEdit start
    x_t0 = sqrt(ᾱ_t0) init + sqrt(1 - ᾱ_t0) noise. ᾱ from the scaled-linear betas, in float64 numpy."""
    import numpy as np

    from mrgen.diffusion.sampler import initial_noise

    cfg = make_cfg(2)
    den = nets.UNetDenoiser(nets.build_unet(cfg, DIM).eval())  # not randomised: ε ≡ 0
    d = cfg.diffusion
    betas = np.linspace(np.sqrt(d.beta_start), np.sqrt(d.beta_end), d.timesteps, dtype=np.float64) ** 2
    ab = np.cumprod(1.0 - betas)
    shape = latent_shape(cfg, 2)
    init = torch.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    ctx = torch.zeros(1, cfg.text.max_length, DIM)
    out = sample(den, make_solver(d, 10, solver, strength=0.3), ctx, None, shape, [5, 6], guidance=1.0, init=init)
    t0 = 201
    noise = initial_noise(shape, [5, 6]).double()
    want = np.sqrt(ab[0] / ab[t0]) * (np.sqrt(ab[t0]) * init.double() + np.sqrt(1 - ab[t0]) * noise)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="init has shape"):
        sample(den, make_solver(d, 10, solver, strength=0.3), ctx, None, shape, [5, 6], guidance=1.0, init=init[:1])


def test_sdedit_sample_independent_of_batch(models):
    cfg, den, ctx, unc, cond = models
    shape = latent_shape(cfg, 3)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    sched = lambda: make_solver(cfg.diffusion, 6, "dpmpp2m", strength=0.5)  # noqa: E731
    batch = sample(den, sched(), ctx, unc, shape, [1, 2, 3], guidance=3.0, cond=cond, init=init)
    alone = sample(den, sched(), ctx[1:2], unc, latent_shape(cfg, 1), [2], guidance=3.0, cond=cond[1:2], init=init[1:2])
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=1e-4)
    other = sample(den, sched(), ctx, unc, shape, [1, 2, 3], guidance=3.0, cond=cond, init=init.flip(0))
    assert not torch.allclose(batch[0], other[0], atol=1e-3)  # the start image matters
