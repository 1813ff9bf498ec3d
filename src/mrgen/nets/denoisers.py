"""Denoisers: the diffusion nets wrapped so each declares its conditioning in its constructor
(as NVlabs EDM2's ``Precond`` does), with ONE method ``eps(x, t, context, cond) -> (N, C, *S)``.

* :class:`UNetDenoiser` ``(unet)``: the text-only LDM; ``cond`` must be None.
* :class:`ControlledUNet` ``(unet, controller, conditioning_scale)``: MRGen's mask ControlNet;
  its residuals, times ``conditioning_scale``, are added to the UNet's skip connections.
* :class:`ConcatUNet` ``(unet, cond_channels)``: Med-DDPM; ``cond`` is concatenated to ``x``.

The sampler (:func:`mrgen.diffusion.sample`) and the training loss
(:func:`mrgen.ldm.diffusion_loss`) take any of them and never ask which one it is.

The wrappers hold the MONAI nets as the attributes ``unet`` / ``controller``: train, EMA and
save those (``mrgen.nets.save_model``), never the wrapper, whose own ``state_dict`` would prefix
every key. Wrapping changes no parameter and no key, so checkpoints load exactly as before.

Shapes: ``x`` ``(N, C, *S)`` (latents, or images for :class:`ConcatUNet`), ``t`` ``(N,)`` long,
``context`` ``(N, L, dim)``, ``cond`` the encoded mask (``mrgen.nets.encode_mask``).
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from torch import nn


def _need_unet(unet, who: str) -> None:
    if not isinstance(unet, DiffusionModelUNet):
        raise TypeError(f"{who} wraps a MONAI DiffusionModelUNet (mrgen.nets.build_unet / build_pixel_unet), "
                        f"got {type(unet).__name__}")


def _check_batch(cond: torch.Tensor, x: torch.Tensor, who: str) -> None:
    if cond.ndim != x.ndim or cond.shape[0] != x.shape[0]:
        raise ValueError(f"{who}: cond {tuple(cond.shape)} must be (N, M, *S) with the batch N of x {tuple(x.shape)}; "
                         "encode the masks with mrgen.nets.encode_mask, one per sample")


class UNetDenoiser(nn.Module):
    """The text-conditioned LDM alone: ``eps = unet(x, t, context)``; no mask condition."""

    def __init__(self, unet: DiffusionModelUNet):
        super().__init__()
        _need_unet(unet, "UNetDenoiser")
        self.unet = unet

    def eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(N, C, *S)`` -> ε ``(N, C, *S)``; ``cond`` must be None (no mask input)."""
        if cond is not None:
            raise ValueError("UNetDenoiser has no mask input: pass cond=None, or wrap the nets in ControlledUNet "
                             "(ControlNet) or ConcatUNet (Med-DDPM) to condition on a mask")
        return self.unet(x=x, timesteps=t, context=context)


class ControlledUNet(nn.Module):
    """Diffusion UNet + mask ControlNet: ``eps = unet(x, t, context, + conditioning_scale * controller(x, t, cond))``.

    ``cond`` is the encoded mask ``(N, cond_channels, *S * cond_factor)`` at PIXEL resolution; the
    controller's conditioning embedding downsamples it ``cond_factor`` times to the latent size.
    ``conditioning_scale`` multiplies every residual (MONAI ``ControlNet(conditioning_scale=)``);
    training uses 1.0, rendering ``controller.conditioning_scale``.
    """

    def __init__(self, unet: DiffusionModelUNet, controller: ControlNet, conditioning_scale: float = 1.0):
        super().__init__()
        _need_unet(unet, "ControlledUNet")
        if not isinstance(controller, ControlNet):
            raise TypeError(f"ControlledUNet needs a MONAI ControlNet (mrgen.nets.build_controller), got {type(controller).__name__}")
        fix = "build the controller from this UNet with mrgen.nets.build_controller(cfg, unet, n_labels) and the same cfg.ldm"
        for attr in ("in_channels", "block_out_channels", "num_res_blocks", "attention_levels", "with_conditioning"):
            u, c = getattr(unet, attr), getattr(controller, attr)
            same = tuple(u) == tuple(c) if isinstance(u, (list, tuple)) else u == c
            if not same:
                raise ValueError(f"ControlledUNet: the controller's {attr}={c} does not match the UNet's {attr}={u}, so its "
                                 f"residuals cannot be added to the UNet's skip connections; {fix}")
        scale = float(conditioning_scale)
        if not math.isfinite(scale):
            raise ValueError(f"conditioning_scale must be a finite number (1.0 = as trained), got {conditioning_scale}")
        self.unet, self.controller, self.conditioning_scale = unet, controller, scale
        emb = controller.controlnet_cond_embedding
        self.cond_channels = int(emb.conv_in.conv.in_channels)
        self.cond_factor = 2 ** sum(int(b.conv.stride[0]) == 2 for b in emb.blocks)  # mask pixels per latent pixel

    def eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``x`` ``(N, C, *s)`` + encoded mask ``cond`` ``(N, cond_channels, *s * cond_factor)`` -> ε ``(N, C, *s)``."""
        if cond is None:
            raise ValueError("ControlledUNet needs cond, the encoded masks (mrgen.nets.encode_mask); for text only use UNetDenoiser")
        _check_batch(cond, x, "ControlledUNet")
        want = (self.cond_channels, *(s * self.cond_factor for s in x.shape[2:]))
        if tuple(cond.shape[1:]) != want:
            raise ValueError(f"ControlledUNet: cond must be (N, {want[0]}, *latent size x {self.cond_factor}) = (N, *{want}) "
                             f"for x {tuple(x.shape)}, got {tuple(cond.shape)}; check controller.mask_encoding and that the "
                             "masks have the trained item shape")
        down, mid = self.controller(x=x, timesteps=t, controlnet_cond=cond, conditioning_scale=self.conditioning_scale,
                                    context=context)
        return self.unet(x=x, timesteps=t, context=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)


class ConcatUNet(nn.Module):
    """Med-DDPM: ``eps = unet(cat[x (N, C, *S), cond (N, cond_channels, *S)] (N, C + cond_channels, *S), t, context)``.

    ``unet`` (:func:`mrgen.nets.build_pixel_unet`) has ``in_channels = out_channels + cond_channels``;
    ``x`` is the noisy image, ``cond`` the encoded mask at the same resolution.
    """

    def __init__(self, unet: DiffusionModelUNet, cond_channels: int):
        super().__init__()
        _need_unet(unet, "ConcatUNet")
        m = int(cond_channels)
        if m < 1 or unet.in_channels != unet.out_channels + m:
            raise ValueError(f"ConcatUNet: the UNet takes in_channels={unet.in_channels}, but out_channels={unet.out_channels} "
                             f"+ cond_channels={cond_channels} = {unet.out_channels + m}; build it with "
                             "mrgen.nets.build_pixel_unet(cfg, context_dim, n_labels) and pass "
                             "cond_channels=mrgen.nets.mask_channels(cfg, n_labels)")
        self.unet, self.cond_channels = unet, m

    def eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``x`` ``(N, C, *S)`` + encoded mask ``cond`` ``(N, cond_channels, *S)`` -> ε ``(N, C, *S)``."""
        if cond is None:
            raise ValueError("ConcatUNet (Med-DDPM) takes the encoded masks as input channels: give cond (mrgen.nets.encode_mask)")
        _check_batch(cond, x, "ConcatUNet")
        want = (self.cond_channels, *x.shape[2:])
        if tuple(cond.shape[1:]) != want:
            raise ValueError(f"ConcatUNet: cond must be (N, {want[0]}, *x.shape[2:]) = (N, *{want}) for x {tuple(x.shape)}, "
                             f"got {tuple(cond.shape)}; check controller.mask_encoding and the mask size")
        return self.unet(x=torch.cat([x, cond.to(x.dtype)], 1), timesteps=t, context=context)


DENOISERS = (UNetDenoiser, ControlledUNet, ConcatUNet)


def as_denoiser(net: nn.Module) -> nn.Module:
    """``net`` when it is a denoiser (:data:`DENOISERS`), else a clear error (a bare UNet is ``UNetDenoiser(unet)``)."""
    if isinstance(net, DENOISERS):
        return net
    raise TypeError(f"expected a denoiser (mrgen.nets.UNetDenoiser, ControlledUNet or ConcatUNet), got {type(net).__name__}; "
                    "wrap a bare UNet as UNetDenoiser(unet) and a ControlNet as ControlledUNet(unet, controller, scale)")