"""Noise schedules: MONAI's DDPM (training) and DDIM (sampling) with MRGen's settings.

Training: :func:`make_train_scheduler` = 1000-step DDPM, ``scaled_linear_beta`` betas from
0.00085 to 0.012 (``beta_t = linspace(sqrt(0.00085), sqrt(0.012), T)**2``, Stable Diffusion's
schedule as in MRGen's code); ``add_noise(x0, eps, t) = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps``;
the UNet predicts ε (``prediction_type="epsilon"``).

Sampling: :func:`make_ddim` = DDIM with ``clip_sample=False``, ``set_alpha_to_one=False``,
``steps_offset=1`` (MRGen / diffusers Stable Diffusion settings) and *leading* timestep spacing
``t_k = k * (T // S) + 1`` (S = steps), i.e. 981, 961, ..., 21, 1 for S = 50.

Why a subclass: MONAI 1.6's ``DDIMScheduler.set_timesteps`` rounds a ``linspace`` (999, 979,
958, ...; 999, 500, 1 for S = 3) while its ``step`` assumes the previous timestep is
``t - T // S`` (979, 959, 938, ...; 999 -> 666). The two disagree, so the sample would be moved
to one noise level and the UNet queried at another (badly so for few steps). With leading
spacing ``t - T // S`` *is* the next timestep. ``step`` itself is MONAI's, unchanged.

Code names of ``DDIMScheduler.step`` -> symbols of the DDIM paper (Song et al., eq. 12, 16),
also used by MRGen's Sec. 4.3 sampling (ε-prediction):

==========================  =====================================================
``alphas_cumprod[t]``       ᾱ_t = ∏_{s<=t} (1 - β_s)  (alpha_prod_t)
``alpha_prod_t_prev``       ᾱ_{t-Δ}, Δ = T // S; ᾱ_0 for the last step (set_alpha_to_one=False)
``model_output``            ε̂ = ε_θ(x_t, t, c) (after classifier-free guidance)
``pred_original_sample``    x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)   (no clipping)
``std_dev_t``               σ_t = η sqrt((1 - ᾱ_{t-Δ}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-Δ})
``eta``                     η (0 = deterministic DDIM, 1 = DDPM-like ancestral)
``pred_sample_direction``   sqrt(1 - ᾱ_{t-Δ} - σ_t²) ε̂   ("direction pointing to x_t")
``pred_prev_sample``        x_{t-Δ} = sqrt(ᾱ_{t-Δ}) x̂_0 + sqrt(1 - ᾱ_{t-Δ} - σ_t²) ε̂ + σ_t z,  z ~ N(0, I)
==========================  =====================================================
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

# MRGen / Stable Diffusion DDIM settings
DDIM_KW = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def _schedule_kw(dcfg) -> dict:
    return dict(
        num_train_timesteps=int(dcfg.timesteps),
        schedule=str(dcfg.schedule),
        beta_start=float(dcfg.beta_start),
        beta_end=float(dcfg.beta_end),
    )


def make_train_scheduler(dcfg) -> DDPMScheduler:
    """DDPM used for training (``add_noise``); ε-prediction; ``dcfg`` is a ``DiffusionCfg``."""
    return DDPMScheduler(prediction_type="epsilon", clip_sample=False, **_schedule_kw(dcfg))


class LeadingDDIMScheduler(DDIMScheduler):
    """MONAI DDIM whose timesteps use *leading* spacing, consistent with ``step``'s ``t - T // S``."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        T = self.num_train_timesteps
        if not 0 < num_inference_steps <= T:
            raise ValueError(f"DDIM steps must be in [1, {T}], got {num_inference_steps}")
        if self.steps_offset < 0 or self.steps_offset >= T:
            raise ValueError(f"`steps_offset`: {self.steps_offset} must be in range [0, {T}).")
        self.num_inference_steps = num_inference_steps
        ratio = T // num_inference_steps
        ts = (np.arange(0, num_inference_steps) * ratio)[::-1].astype(np.int64) + self.steps_offset
        if ts[0] > T - 1:  # only when T // S == 1 (e.g. the full chain): shift so t stays < T
            ts -= ts[0] - (T - 1)
        self.timesteps = torch.from_numpy(ts.copy()).to(device)

    def prev_timestep(self, timestep: int) -> int:
        """The timestep ``step`` moves to (``-k`` means 'final': uses ᾱ_0 here)."""
        return int(timestep) - self.num_train_timesteps // self.num_inference_steps


def make_ddim(dcfg, steps: int) -> LeadingDDIMScheduler:
    """DDIM sampler with MRGen's settings and ``set_timesteps(steps)`` already called."""
    sched = LeadingDDIMScheduler(**DDIM_KW, **_schedule_kw(dcfg))
    sched.set_timesteps(int(steps))
    return sched
