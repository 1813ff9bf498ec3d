"""THE denoising loop (DDIM or a multistep solver + classifier-free guidance + optional mask condition).

Written once; training previews, ``mrgen synthesize`` and the tests all call :func:`sample`.
The ``scheduler`` is DDIM (:func:`mrgen.diffusion.make_ddim`) or DPM-Solver++(2M) / UniPC on the
same timesteps (:func:`mrgen.diffusion.make_solver`, ``sample.solver``); the loop is the same.

Precision: ``precision="bf16"`` runs each denoiser evaluation under ``torch.autocast`` (bfloat16);
ε is cast back to float32 before guidance, and the solver's update runs in float32 either way.

Reproducibility: sample ``i`` draws its initial noise (and, for η > 0, its per-step noise)
from its own ``torch.Generator`` seeded with ``seeds[i]``; initial noise is drawn on the CPU and
then moved, so it is the same on every device and whatever the batch composition. (The UNet's
batched arithmetic may still differ from an unbatched call in the last float bits.)

Classifier-free guidance (Ho & Salimans): the unconditional branch uses the EMPTY-PROMPT
embedding (``mrgen.prompts.EMPTY_PROMPT``, the prompt trained with 10 % dropout), not MONAI's
``-1`` context. Conditional and unconditional halves run as ONE batch of ``2N``:
``ε̂ = ε_u + w (ε_c - ε_u)``; ``w == 1`` skips the unconditional pass (exactly ε_c).

One denoiser (:mod:`mrgen.nets.denoisers`) carries the whole condition: the loop calls
``denoiser.eps(x, t, context, cond)`` and never asks which kind it is. ``UNetDenoiser`` (text
only, ``cond=None``), ``ControlledUNet`` (ControlNet residuals, its ``conditioning_scale``;
``noise_shape`` = latent shape, ``cond`` at pixel resolution) or ``ConcatUNet`` (Med-DDPM;
``noise_shape`` = image shape ``(N, 1, *S)``, the loop runs in pixel space).

Mask + CFG: the same mask goes to BOTH halves (cond and uncond), as diffusers' ControlNet
pipeline does. The mask is a structural constraint, not part of the text condition, so guidance
only amplifies the *text* (modality) direction while both branches keep the layout; feeding no
mask to the uncond half would make guidance also push along the mask direction, i.e. act like
an extra, uncalibrated ``conditioning_scale``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from mrgen.nets.denoisers import as_denoiser


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def initial_noise(noise_shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """``(N, C, h, w[, d])`` float32 noise; row ``i`` from a CPU generator seeded ``seeds[i]``."""
    per = tuple(int(s) for s in noise_shape[1:])
    rows = [torch.randn(per, generator=torch.Generator(device="cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


def _expand(ctx: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if ctx.ndim != 3:
        raise ValueError(f"{name} must be (N, L, dim) or (1, L, dim), got shape {tuple(ctx.shape)}")
    if ctx.shape[0] == n:
        return ctx
    if ctx.shape[0] == 1:
        return ctx.expand(n, -1, -1)
    raise ValueError(f"{name} has batch {ctx.shape[0]}, expected {n} (one per seed) or 1")


@torch.no_grad()
def sample(
    denoiser: nn.Module,
    scheduler,
    context: torch.Tensor,
    uncond_context: torch.Tensor | None,
    noise_shape: Sequence[int],
    seeds: Sequence[int],
    guidance: float = 7.0,
    cond: torch.Tensor | None = None,
    eta: float = 0.0,
    precision: str = "fp32",
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the chain of ``scheduler`` (``make_ddim`` or ``make_solver``: timesteps already set).

    Args:
        denoiser: a :mod:`mrgen.nets.denoisers` wrapper (eval mode is the caller's job); a bare
            ``DiffusionModelUNet`` is taken as ``UNetDenoiser(unet)``.
        context: text embeddings ``(N, L, dim)`` or ``(1, L, dim)`` (broadcast).
        uncond_context: embedding of ``EMPTY_PROMPT``, ``(1, L, dim)`` or ``(N, L, dim)``;
            may be None only when ``guidance == 1``.
        noise_shape: full shape of ``x`` ``(N, C, *s)`` with ``N == len(seeds)``: latents, or the
            image shape ``(N, 1, *S)`` for a ``ConcatUNet``.
        seeds: one seed per sample.
        guidance: CFG weight w (1 = conditional only).
        cond: encoded masks ``(N, M, ...)`` (``mrgen.nets.encode_mask``), or None for a
            ``UNetDenoiser``; the denoiser checks its shape.
        eta: DDIM η (0 = deterministic); the multistep solvers refuse η > 0.
        precision: ``fp32`` or ``bf16`` (autocast of the denoiser evaluations).
        init: ``x_0`` to start from (SDEdit), of ``noise_shape``: the chain starts at the scheduler's first
            timestep ``t`` from ``sqrt(ᾱ_t) init + sqrt(1 - ᾱ_t) noise`` (the seeds' noise) instead of pure
            noise; give a scheduler whose timesteps were cut to the last ones (``make_solver(strength=...)``).
    Returns:
        ``x_0`` of ``noise_shape`` (latents, or images for a ``ConcatUNet``), float32 on the denoiser's device.
    """
    denoiser = as_denoiser(denoiser)
    noise_shape = tuple(int(s) for s in noise_shape)
    n = len(seeds)
    if len(noise_shape) not in (4, 5) or noise_shape[0] != n:
        raise ValueError(f"noise_shape must be (N, C, h, w[, d]) with N = len(seeds) = {n}, got {noise_shape}")
    if cond is not None and cond.shape[0] != n:
        raise ValueError(f"cond has batch {cond.shape[0]}, expected {n} (one encoded mask per seed)")
    w = float(guidance)
    use_cfg = w != 1.0
    if use_cfg and uncond_context is None:
        raise ValueError("guidance != 1 needs uncond_context (the embedding of the empty prompt)")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16' (sample.precision), got '{precision}'")
    device = _device_of(denoiser)
    dtype = next(denoiser.parameters()).dtype
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    ctx = _expand(context, n, "context").to(device, dtype)
    if use_cfg:
        unc = _expand(uncond_context, n, "uncond_context").to(device, dtype)
        ctx = torch.cat([unc, ctx])  # rows [0, N): uncond, [N, 2N): cond
    if cond is not None:
        cond = cond.to(device, dtype)
        if use_cfg:
            cond = torch.cat([cond, cond])  # same mask for both halves (see module docstring)

    x = initial_noise(noise_shape, seeds).to(device) * float(getattr(scheduler, "init_noise_sigma", 1.0))
    if init is not None:
        if tuple(init.shape) != noise_shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {noise_shape} (one x_0 per seed)")
        a = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
        x = a ** 0.5 * init.to(device).float() + (1.0 - a) ** 0.5 * x
    gens = None
    if eta > 0:  # per-sample generators for the η noise, on the sampling device
        gens = [torch.Generator(device=device).manual_seed(int(s) + 1) for s in seeds]

    for t in scheduler.timesteps:
        ti = int(t)
        xin = torch.cat([x, x]) if use_cfg else x
        tt = torch.full((xin.shape[0],), ti, device=device, dtype=torch.long)
        with autocast():
            eps = denoiser.eps(xin.to(dtype), tt, ctx, cond)
        eps = eps.float()
        if use_cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + w * (eps_c - eps_u)
        if gens is None:
            x, _ = scheduler.step(eps, ti, x, eta=0.0)
        else:
            x = torch.cat(
                [scheduler.step(eps[i : i + 1], ti, x[i : i + 1], eta=float(eta), generator=gens[i])[0] for i in range(n)]
            )
    return x


@torch.no_grad()
def decode(autoencoder: nn.Module, latents: torch.Tensor, scale_factor: float, batch_size: int = 0) -> torch.Tensor:
    """Latents ``(N, C, h, w[, d])`` -> images ``(N, 1, H, W[, D])`` via ``autoencoder.decode(z / scale_factor)``.

    ``scale_factor`` is the LDM's latent scaling (``1 / std`` of training latents, in ``model.json``).
    ``batch_size > 0`` decodes in chunks to bound memory.
    """
    device = _device_of(autoencoder)
    z = latents / float(scale_factor)
    chunks = z.split(batch_size) if batch_size and batch_size > 0 else (z,)
    return torch.cat([autoencoder.decode(c.to(device)) for c in chunks])
