"""The built-in segmenter network and its training augmentation (2D or 3D, CPU-practical).

Arrays are ``(H, W)`` (2D) or ``(Z, H, W)`` (3D, the curated volume layout); augmentation acts
on batches ``(B, 1, *spatial)`` in torch: random flips and rot90 in the in-plane axes, a small
affine (rotation ±15°, scale 0.9–1.1) with a coarse elastic field, one resampling for image
(bilinear) and label (nearest), then intensity scale/shift, gamma and Gaussian noise.
"""

from __future__ import annotations

import math

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


def _rand(b: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(b) * (hi - lo) + lo


def augment(x: torch.Tensor, y: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: ``x`` (B, 1, *S) float in [-1, 1], ``y`` (B, 1, *S) long. Uses torch's global RNG."""
    b, nd = x.shape[0], x.dim() - 2
    h_ax, w_ax = x.dim() - 2, x.dim() - 1  # in-plane axes (the last two)
    x, y = x.clone(), y.clone()
    for i in range(b):  # flips and rot90 per sample (exact, no resampling)
        for ax in range(2, x.dim()):
            if torch.rand(()) < 0.5:
                x[i] = x[i].flip(ax - 1)
                y[i] = y[i].flip(ax - 1)
        k = int(torch.randint(0, 4, ()))
        if k and x.shape[h_ax] == x.shape[w_ax]:
            x[i] = torch.rot90(x[i], k, (h_ax - 1, w_ax - 1))
            y[i] = torch.rot90(y[i], k, (h_ax - 1, w_ax - 1))
    do = torch.rand(b) < p
    if do.any():
        ang = _rand(b, -math.pi / 12, math.pi / 12) * do
        sc = 1.0 / torch.where(do, _rand(b, 0.9, 1.1), torch.ones(b))
        cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
        theta = torch.zeros(b, nd, nd + 1)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos  # (x=W, y=H) plane
        if nd == 3:
            theta[:, 2, 2] = 1.0
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        coarse = torch.randn(b, nd, *([4] * nd)) * 0.03 * do.view(b, *([1] * (nd + 1)))
        if nd == 3:
            coarse[:, 2] = 0.0  # no elastic motion across slices
        field = F.interpolate(coarse, size=x.shape[2:], mode="bilinear" if nd == 2 else "trilinear", align_corners=False)
        grid = grid + field.movedim(1, -1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        y = F.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
    shape = (b, *([1] * (nd + 1)))
    scale = torch.where(torch.rand(b) < p, _rand(b, 0.85, 1.15), torch.ones(b)).view(shape)
    shift = torch.where(torch.rand(b) < p, _rand(b, -0.1, 0.1), torch.zeros(b)).view(shape)
    gamma = torch.where(torch.rand(b) < p, torch.exp(_rand(b, math.log(0.7), math.log(1.5))), torch.ones(b)).view(shape)
    x = (((x.clamp(-1, 1) + 1) / 2) ** gamma) * 2 - 1
    x = x * scale + shift
    noise = torch.where(torch.rand(b) < p, _rand(b, 0.0, 0.05), torch.zeros(b)).view(shape)
    return x + noise * torch.randn_like(x), y


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple]:
    """Pad the spatial dims of ``x`` (B, C, *S) up to a multiple; returns (padded, original spatial shape)."""
    shape = tuple(x.shape[2:])
    pads = []
    for s in reversed(shape):
        pads += [0, (-s) % multiple]
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), shape
