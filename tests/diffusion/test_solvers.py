"""DPM-Solver++(2M) and UniPC-bh2 pinned against float64 numpy references written here.

The references follow the papers' formulas (Lu et al. 2022 Alg. 2; Zhao et al. 2023, UniC with the
closed-form φ functions and a 2x2 solve), not the code under test. The toy denoisers are linear in
x with t-dependent coefficients, so float32 vs float64 is the only difference (~1e-6).
"""

import numpy as np
import pytest
import torch
from torch import nn

from mrgen.config import ConfigError, DiffusionCfg, load_config
from mrgen.diffusion import make_solver, sample
from mrgen.diffusion import sampler as sampler_mod

D = DiffusionCfg()
SHAPE = (3, 2, 4, 4)


def _levels(steps: int):
    """ᾱ at the hand-written leading timesteps k (1000 // S) + 1, then ᾱ_0 (DDIM's last target)."""
    ac = np.cumprod(1.0 - np.linspace(D.beta_start**0.5, D.beta_end**0.5, D.timesteps, dtype=np.float64) ** 2)
    ts = [k * (1000 // steps) + 1 for k in range(steps)][::-1]
    lv = np.array([ac[t] for t in ts] + [ac[0]])
    return ts, np.sqrt(lv), np.sqrt(1 - lv)


def _toy_eps(x, t):
    """A linear 'denoiser': ε = (0.2 + 0.6 t/1000) x + 0.3 cos(t/300)."""
    return (0.2 + 0.6 * t / 1000) * x + 0.3 * np.cos(t / 300)


def _dpmpp2m_np(x, steps, eps_fn):
    ts, a, s = _levels(steps)
    lam = np.log(a / s)
    out, prev = [], None
    for i, t in enumerate(ts):
        m = (x - s[i] * eps_fn(x, t)) / a[i]
        h = lam[i + 1] - lam[i]
        if prev is None:
            d = m
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * m - 1 / (2 * r) * prev
        x = s[i + 1] / s[i] * x - a[i + 1] * (np.exp(-h) - 1) * d
        prev = m
        out.append(x)
    return out


def _unipc_np(x, steps, eps_fn):
    ts, a, s = _levels(steps)
    lam = np.log(a / s)
    out, ms, last = [], [], None
    for i, t in enumerate(ts):
        m = (x - s[i] * eps_fn(x, t)) / a[i]  # at the predicted x_i
        if last is not None:  # UniC, of the order of the predictor that made x_i
            xc, p = last
            h = lam[i] - lam[i - 1]
            z = -h
            bh = np.exp(z) - 1
            base = s[i] / s[i - 1] * xc - a[i] * bh * ms[-1]
            if p == 1:
                x = base - a[i] * bh * 0.5 * (m - ms[-1])
            else:
                r1 = (lam[i - 2] - lam[i - 1]) / h
                phi2 = (np.exp(z) - 1 - z) / z**2
                phi3 = (np.exp(z) - 1 - z - z**2 / 2) / z**3
                rho = np.linalg.solve(np.array([[1.0, 1.0], [r1, 1.0]]), np.array([1 * z * phi2, 2 * z * phi3]) / bh)
                x = base - a[i] * bh * (rho[0] * (ms[-2] - ms[-1]) / r1 + rho[1] * (m - ms[-1]))
        ms.append(m)
        p = 1 if i == 0 else 2
        h = lam[i + 1] - lam[i]
        d = m if p == 1 else m + 0.5 * (ms[-2] - m) / ((lam[i - 1] - lam[i]) / h)  # UniP-2, ρ = 1/2
        last = (x, p)
        x = s[i + 1] / s[i] * x - a[i + 1] * (np.exp(-h) - 1) * d
        out.append(x)
    return out


def _ddim_np(x, steps, eps_fn):
    ts, a, s = _levels(steps)
    out = []
    for i, t in enumerate(ts):
        e = eps_fn(x, t)
        x = a[i + 1] * (x - s[i] * e) / a[i] + s[i + 1] * e
        out.append(x)
    return out


REFS = {"ddim": _ddim_np, "dpmpp2m": _dpmpp2m_np, "unipc": _unipc_np}


@pytest.mark.parametrize("steps", [5, 10])
@pytest.mark.parametrize("solver", ["dpmpp2m", "unipc"])
def test_every_step_matches_numpy(solver, steps):
    x0 = np.random.default_rng(1).standard_normal(SHAPE)
    want = REFS[solver](x0.copy(), steps, _toy_eps)
    sch = make_solver(D, steps, solver)
    assert [int(t) for t in sch.timesteps] == _levels(steps)[0]
    for chain in range(2):  # a second chain on the same solver object starts afresh
        x = torch.from_numpy(x0).float()
        for k, t in enumerate(sch.timesteps):
            x, _ = sch.step(torch.from_numpy(_toy_eps(x.double().numpy(), int(t))).float(), int(t), x)
            np.testing.assert_allclose(x.numpy(), want[k], rtol=1e-5, atol=1e-5, err_msg=f"{solver} step {k} chain {chain}")
    # the two solvers really differ (the corrector is live) and differ from DDIM
    other = REFS["unipc" if solver == "dpmpp2m" else "dpmpp2m"](x0.copy(), steps, _toy_eps)[-1]
    assert np.abs(other - want[-1]).max() > 1e-3
    assert np.abs(_ddim_np(x0.copy(), steps, _toy_eps)[-1] - want[-1]).max() > 1e-3


class Toy(nn.Module):
    """Stands in for a denoiser: ε = a(t) x + the first context value (cond and uncond rows differ)."""

    def __init__(self, eps_fn=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.eps_fn = eps_fn

    def eps(self, x, t, context, cond=None):
        if self.eps_fn is not None:
            return self.eps_fn(x.double(), t.double().view(-1, 1, 1, 1)).to(x.dtype)
        a = (0.2 + 0.6 * t.double() / 1000).view(-1, 1, 1, 1)
        return (a * x.double() + context[:, 0, 0].double().view(-1, 1, 1, 1)).to(x.dtype) + self.w


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(sampler_mod, "as_denoiser", lambda d: d)  # the toy is not a MONAI denoiser
    return Toy


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m", "unipc"])
def test_sample_with_guidance_matches_numpy(toy, solver):
    """The whole loop: CFG on ε (ε_u + w (ε_c - ε_u)) before each solver's update, 5 steps, seeded noise."""
    seeds, w = [3, 4, 5], 4.0
    ctx, unc = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1), torch.full((1, 1, 1), 0.05)
    got = sample(toy(), make_solver(D, 5, solver), ctx, unc, SHAPE, seeds, guidance=w)
    x = np.stack([torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(s)).double().numpy() for s in seeds])
    c = ctx.double().numpy().reshape(3, 1, 1, 1)

    def guided(x, t):
        e_c, e_u = (0.2 + 0.6 * t / 1000) * x + c, (0.2 + 0.6 * t / 1000) * x + 0.05
        return e_u + w * (e_c - e_u)

    np.testing.assert_allclose(got.numpy(), REFS[solver](x, 5, guided)[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m", "unipc"])
def test_sample_i_in_a_batch_equals_sample_i_alone(toy, solver):
    ctx, unc = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1), torch.zeros(1, 1, 1)
    batch = sample(toy(), make_solver(D, 10, solver), ctx, unc, SHAPE, [7, 8, 9], guidance=3.0)
    alone = sample(toy(), make_solver(D, 10, solver), ctx[1:2], unc, (1, *SHAPE[1:]), [8], guidance=3.0)
    assert torch.equal(batch[1:2], alone)  # elementwise solver: bit-identical with an elementwise denoiser


def test_high_order_beats_ddim_on_a_gaussian(toy):
    """Data x_0 ~ N(μ, s²) per channel: ε(x, t) is exact and the probability-flow ODE has a closed form
    ((x_t - sqrt(ᾱ_t) μ) / sqrt(ᾱ_t s² + 1 - ᾱ_t) is constant), so each solver's error is measurable."""
    mu = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1).double()
    var = torch.tensor([0.3, 0.05]).view(1, 2, 1, 1).double() ** 2
    ac = torch.from_numpy(np.cumprod(1.0 - np.linspace(D.beta_start**0.5, D.beta_end**0.5, D.timesteps) ** 2))

    def exact_eps(x, t):
        a = ac[t.long().flatten()].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * var + 1 - a)

    shape, seeds, err = (64, 2, 4, 4), list(range(64)), {}
    x_t = torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]).double()
    for steps in (5, 10):
        a_t, a_f = ac[_levels(steps)[0][0]], ac[0]
        want = a_f.sqrt() * mu + (a_f * var + 1 - a_f).sqrt() * (x_t - a_t.sqrt() * mu) / (a_t * var + 1 - a_t).sqrt()
        for solver in ("ddim", "dpmpp2m", "unipc"):
            got = sample(toy(exact_eps), make_solver(D, steps, solver), torch.zeros(1, 1, 1), None, shape, seeds,
                         guidance=1.0).double()
            err[solver, steps] = float((got - want).abs().mean())
    for steps in (5, 10):  # measured: DDIM 0.062 / 0.041, DPM-Solver++(2M) 0.014 / 0.016, UniPC 0.012 / 0.010
        assert err["dpmpp2m", steps] < 0.5 * err["ddim", steps], err
        assert err["unipc", steps] < 0.5 * err["ddim", steps], err


def test_order_of_convergence_on_a_uniform_log_snr_grid():
    """With steps uniform in λ (a schedule made for this test), halving the step size cuts the error of
    DPM-Solver++(2M) ~4x (order 2) and of UniPC-2 with its corrector ~8x (order 3). On the shipped
    leading t-spacing the last steps stay large in λ, which is why the Gaussian test above compares
    solvers at equal steps instead of rates."""
    from types import SimpleNamespace

    from mrgen.diffusion import DPMSolverPP2M, UniPC

    ac = torch.from_numpy(1 / (1 + np.exp(-2 * np.linspace(3.0, -3.0, 1000))))
    mu, var = 0.5, 0.09
    x_t = torch.randn(256, generator=torch.Generator().manual_seed(0)).double()
    err = {}
    for steps in (40, 80):
        ts = torch.flip(torch.arange(1, steps + 1) * (1000 // steps) - 1, [0])
        a_t, a_f = ac[int(ts[0])], ac[0]
        want = a_f.sqrt() * mu + (a_f * var + 1 - a_f).sqrt() * (x_t - a_t.sqrt() * mu) / (a_t * var + 1 - a_t).sqrt()
        for cls in (DPMSolverPP2M, UniPC):
            sch, x = cls(SimpleNamespace(alphas_cumprod=ac, timesteps=ts, num_train_timesteps=1000)), x_t.clone()
            for t in ts.tolist():
                x, _ = sch.step((1 - ac[t]).sqrt() * (x - ac[t].sqrt() * mu) / (ac[t] * var + 1 - ac[t]), t, x)
            err[cls.name, steps] = float((x - want).abs().mean())
    assert 3.0 < err["dpmpp2m", 40] / err["dpmpp2m", 80] < 5.5, err  # measured 4.2
    assert 6.0 < err["unipc", 40] / err["unipc", 80], err  # measured 9.2


def test_solver_errors(toy):
    sch = make_solver(D, 5, "dpmpp2m")
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="out of order"):
        sch.step(x, int(sch.timesteps[2]), x)
    with pytest.raises(ValueError, match="deterministic"):
        sch.step(x, int(sch.timesteps[0]), x, eta=0.5)
    with pytest.raises(ValueError, match="not one of"):
        sch.step(x, 500, x)
    with pytest.raises(ValueError, match="sample.solver must be one of ddim, dpmpp2m, unipc"):
        make_solver(D, 5, "euler")
    with pytest.raises(ValueError, match="deterministic"):  # through the loop: η goes to DDIM only
        sample(toy(), make_solver(D, 3, "unipc"), torch.zeros(1, 1, 1), None, SHAPE, [1, 2, 3], guidance=1.0, eta=0.3)
    with pytest.raises(ValueError, match="precision must be"):
        sample(toy(), make_solver(D, 3, "unipc"), torch.zeros(1, 1, 1), None, SHAPE, [1, 2, 3], guidance=1.0,
               precision="fp16")


def test_config_keys():
    cfg = load_config("tiny")
    assert (cfg.sample.solver, cfg.sample.precision) == ("ddim", "fp32")
    assert load_config("tiny", overrides=["sample.solver=unipc", "sample.precision=bf16"]).sample.solver == "unipc"
    for bad, msg in [("sample.solver=heun", "sample.solver must be one of"), ("sample.precision=fp16", "sample.precision"),
                     ("sample.ddim_steps=0", "sample.ddim_steps must be >= 1")]:
        with pytest.raises(ConfigError, match=msg):
            load_config("tiny", overrides=[bad])
    with pytest.raises(ConfigError, match="set sample.eta=0 or sample.solver=ddim"):
        load_config("tiny", overrides=["sample.solver=dpmpp2m", "sample.eta=0.5"])
