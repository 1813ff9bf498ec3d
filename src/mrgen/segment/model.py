"""The built-in segmenter network and its training augmentation (2D or 3D, CPU-practical).

Arrays are ``(H, W)`` (2D) or ``(Z, H, W)`` (3D, the curated volume layout); augmentation acts
on batches ``(B, 1, *spatial)`` in torch: random flips and rot90 in the in-plane axes, a small
affine (rotation ±15°, scale 0.9–1.1) with a coarse elastic field, one resampling for image
(bilinear) and label (nearest), then intensity scale/shift, gamma and Gaussian noise. As in
TorchIO, :func:`draw_segment_aug_params` draws the values from a ``torch.Generator`` and
:func:`apply_segment_aug` applies them deterministically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Segmenter(nn.Module):
    """MONAI ``UNet`` (1 input channel, ``n_classes`` outputs) plus the metadata to rebuild it."""

    def __init__(self, spatial_dims: int, n_classes: int, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                 num_res_units: int = 1, dropout: float = 0.0):
        super().__init__()
        from monai.networks.nets import UNet

        if len(strides) != len(channels) - 1:
            raise ValueError(f"segment.strides needs len(segment.channels)-1 = {len(channels) - 1} entries, got {list(strides)}")
        self.config = {"spatial_dims": int(spatial_dims), "n_classes": int(n_classes), "channels": [int(c) for c in channels],
                       "strides": [int(s) for s in strides], "num_res_units": int(num_res_units), "dropout": float(dropout)}
        self.net = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=n_classes, channels=tuple(channels),
                        strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)

    @property
    def spatial_dims(self) -> int:
        return self.config["spatial_dims"]

    @property
    def n_classes(self) -> int:
        return self.config["n_classes"]

    @property
    def multiple(self) -> int:
        return int(math.prod(self.config["strides"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- augmentation (draw, then apply)

ELASTIC_GRID = 4  # coarse displacement points per axis
ELASTIC_SD = 0.03  # displacement sd in normalised [-1, 1] grid units (0.03 = 1.5 % of the size)


@dataclass(frozen=True)
class SegmentAugParams:
    """One batch's drawn augmentation, ``B`` items, ``nd`` spatial dims; identity values where a step is off.

    ``flips`` bool ``(B, nd)`` (flip spatial axis d); ``rot90`` long ``(B,)`` quarter turns in-plane
    (applied only to square planes); ``affine`` bool ``(B,)``; ``angle`` ``(B,)`` radians; ``zoom``
    ``(B,)`` (the grid is scaled by ``1 / zoom``); ``elastic`` ``(B, nd, 4, ...)`` coarse
    displacement in normalised grid units; ``scale``, ``shift``, ``gamma``, ``noise_std`` ``(B,)``;
    ``noise`` unit-normal ``(B, 1, *spatial)``.
    """

    flips: torch.Tensor
    rot90: torch.Tensor
    affine: torch.Tensor
    angle: torch.Tensor
    zoom: torch.Tensor
    elastic: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor
    noise_std: torch.Tensor
    noise: torch.Tensor


def _uniform(g: torch.Generator, b: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(b, generator=g) * (hi - lo) + lo


def _maybe(g: torch.Generator, b: int, p: float, lo: float, hi: float, off: float) -> torch.Tensor:
    """Per item: with probability ``p`` a value uniform in ``[lo, hi)``, else ``off`` (the identity)."""
    on = torch.rand(b, generator=g) < p
    return torch.where(on, _uniform(g, b, lo, hi), torch.full((b,), off))


def draw_segment_aug_params(generator: torch.Generator, shape: tuple, p: float = 0.5) -> SegmentAugParams:
    """Draw the augmentation of a batch of ``shape`` ``(B, 1, *spatial)``: per item each axis flips
    with probability 0.5 and the plane turns by 0-3 quarter turns; with probability ``p`` each: a
    small affine (rotation ±15°, scale 0.9-1.1) with a coarse elastic field, intensity scale
    0.85-1.15, shift ±0.1, gamma 0.7-1.5 (log-uniform), Gaussian noise of sd 0-0.05."""
    g, b, nd = generator, int(shape[0]), len(shape) - 2
    flips = torch.rand(b, nd, generator=g) < 0.5
    rot90 = torch.randint(0, 4, (b,), generator=g)
    affine = torch.rand(b, generator=g) < p
    angle = _uniform(g, b, -math.pi / 12, math.pi / 12) * affine
    zoom = torch.where(affine, _uniform(g, b, 0.9, 1.1), torch.ones(b))
    elastic = torch.randn(b, nd, *([ELASTIC_GRID] * nd), generator=g) * ELASTIC_SD * affine.view(b, *([1] * (nd + 1)))
    if nd == 3:
        elastic[:, 2] = 0.0  # no elastic motion across slices (grid component 2 is the depth axis)
    scale = _maybe(g, b, p, 0.85, 1.15, 1.0)
    shift = _maybe(g, b, p, -0.1, 0.1, 0.0)
    gamma = torch.exp(_maybe(g, b, p, math.log(0.7), math.log(1.5), 0.0))
    noise_std = _maybe(g, b, p, 0.0, 0.05, 0.0)
    noise = torch.randn(tuple(shape), generator=g)
    return SegmentAugParams(flips, rot90, affine, angle, zoom, elastic, scale, shift, gamma, noise_std, noise)


def _resample(x: torch.Tensor, y: torch.Tensor, prm: SegmentAugParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One resampling of the affine + elastic grid: image bilinear (border), label nearest (zeros)."""
    b, nd = x.shape[0], x.dim() - 2
    cos, sin = torch.cos(prm.angle) / prm.zoom, torch.sin(prm.angle) / prm.zoom
    theta = torch.zeros(b, nd, nd + 1)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos  # (x=W, y=H) plane
    if nd == 3:
        theta[:, 2, 2] = 1.0
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    field = F.interpolate(prm.elastic.to(x.device), size=x.shape[2:], mode="bilinear" if nd == 2 else "trilinear",
                          align_corners=False)
    grid = grid + field.movedim(1, -1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
    return x, y


def apply_segment_aug(x: torch.Tensor, y: torch.Tensor, params: SegmentAugParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, 1, *S) float in [-1, 1] and ``y`` (B, 1, *S) long with the drawn ``params`` applied
    (deterministic): flips and rot90 (exact), the affine + elastic resampling for the items that
    draw it, then gamma (on [0, 1]), scale, shift and noise on the image."""
    if tuple(params.noise.shape) != tuple(x.shape) or x.shape != y.shape:
        raise ValueError(f"augmentation params drawn for {tuple(params.noise.shape)}, got image {tuple(x.shape)} "
                         f"and label {tuple(y.shape)}; draw them for this batch")
    b, nd = x.shape[0], x.dim() - 2
    h_ax, w_ax = x.dim() - 2, x.dim() - 1  # in-plane axes (the last two)
    x, y = x.clone(), y.clone()
    for i in range(b):  # per item, on (1, *S): spatial axis d is dim d + 1
        for d in torch.nonzero(params.flips[i]).flatten().tolist():
            x[i], y[i] = x[i].flip(d + 1), y[i].flip(d + 1)
        k = int(params.rot90[i])
        if k and x.shape[h_ax] == x.shape[w_ax]:
            x[i] = torch.rot90(x[i], k, (h_ax - 1, w_ax - 1))
            y[i] = torch.rot90(y[i], k, (h_ax - 1, w_ax - 1))
    if params.affine.any():  # skipped entirely otherwise: an identity resampling is not exact
        x, y = _resample(x, y, params)
    view = lambda t: t.to(x.device).view(b, *([1] * (nd + 1)))  # noqa: E731
    x = (((x.clamp(-1, 1) + 1) / 2) ** view(params.gamma)) * 2 - 1
    x = x * view(params.scale) + view(params.shift)
    return x + view(params.noise_std) * params.noise.to(x.device), y


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, p: float = 0.5
            ) -> tuple[torch.Tensor, torch.Tensor, SegmentAugParams]:
    """Augment a batch: ``x`` (B, 1, *S) float in [-1, 1], ``y`` (B, 1, *S) long; draws only from
    ``generator``. Returns ``(x', y', params)``; ``apply_segment_aug(x, y, params)`` gives ``(x', y')``."""
    params = draw_segment_aug_params(generator, tuple(x.shape), p)
    return (*apply_segment_aug(x, y, params), params)


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple]:
    """Pad the spatial dims of ``x`` (B, C, *S) up to a multiple; returns (padded, original spatial shape)."""
    shape = tuple(x.shape[2:])
    pads = []
    for s in reversed(shape):
        pads += [0, (-s) % multiple]
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), shape
