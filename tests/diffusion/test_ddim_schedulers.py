import numpy as np
import pytest
import torch

from mrgen.config import DiffusionCfg
from mrgen.diffusion import make_ddim, make_train_scheduler

D = DiffusionCfg()


def _alphas_cumprod_np():
    betas = np.linspace(D.beta_start**0.5, D.beta_end**0.5, D.timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_train_schedule_values():
    s = make_train_scheduler(D)
    ac = _alphas_cumprod_np()
    assert s.num_train_timesteps == 1000 and s.prediction_type == "epsilon"
    np.testing.assert_allclose(s.betas[[0, -1]].numpy(), [0.00085, 0.012], rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ac, rtol=1e-5)
    x0, eps, t = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), torch.tensor([500])
    want = np.sqrt(ac[500]) * 1 + np.sqrt(1 - ac[500]) * 2
    np.testing.assert_allclose(s.add_noise(x0, eps, t).numpy(), want, rtol=1e-5)


def test_ddim_timesteps_pinned():
    s = make_ddim(D, 50)
    ts = s.timesteps.tolist()
    assert ts[:5] == [981, 961, 941, 921, 901] and ts[-2:] == [21, 1] and len(ts) == 50
    assert make_ddim(D, 3).timesteps.tolist() == [667, 334, 1]
    # step() moves to t - T//S, which is exactly the next scheduled timestep
    for a, b in zip(ts[:-1], ts[1:]):
        assert s.prev_timestep(a) == b
    assert s.prev_timestep(ts[-1]) < 0  # last step uses ᾱ_0 (set_alpha_to_one=False)
    assert s.clip_sample is False and s.steps_offset == 1 and s.prediction_type == "epsilon"
    assert make_ddim(D, 1000).timesteps.max() == 999


def _ddim_np(x, eps, t, t_prev, eta, z):
    ac = _alphas_cumprod_np()
    a_t = ac[t]
    a_p = ac[t_prev] if t_prev >= 0 else ac[0]
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    sigma = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
    return np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma**2) * eps + sigma * z, x0


@pytest.mark.parametrize("t,eta", [(981, 0.0), (501, 0.0), (1, 0.0), (501, 0.7)])
def test_ddim_step_golden(t, eta):
    s = make_ddim(D, 50)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    eps = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    gen = torch.Generator().manual_seed(5)
    prev, x0 = s.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=eta, generator=gen)
    z = torch.randn(eps.shape, generator=torch.Generator().manual_seed(5)).numpy() if eta > 0 else 0.0
    want_prev, want_x0 = _ddim_np(x.astype(np.float64), eps.astype(np.float64), t, t - 20, eta, z)
    np.testing.assert_allclose(x0.numpy(), want_x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prev.numpy(), want_prev, rtol=1e-4, atol=1e-4)
