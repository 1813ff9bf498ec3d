"""Tiny nets (channels (8, 8), 16-px / 16³ images, norm groups 4) for fast CPU tests."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from mrgen.config import load_config

torch.set_num_threads(1)


def tiny_cfg(spatial_dims: int = 2, *overrides: str):
    return load_config("tiny", overrides=[f"data.spatial_dims={spatial_dims}", *overrides])


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05, skip: tuple = ()) -> torch.nn.Module:
    """Add seeded noise to every parameter (MONAI zero-inits output convs, making eps == 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in module.named_parameters():
            if not k.startswith(skip):
                p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


@pytest.fixture
def make_cfg():
    return tiny_cfg


@pytest.fixture
def rand():
    return randomize
