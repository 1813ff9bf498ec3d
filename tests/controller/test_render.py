"""mrgen.controller.render: the renderers check what they are given (no training needed)."""

import pytest
import torch

from mrgen import nets
from mrgen.controller import LatentRenderer, PixelRenderer

DIM = 16


class _Text:  # stands in for a text encoder: fixed embeddings
    def encode(self, prompts, device="cpu"):
        return torch.ones(len(prompts), 8, DIM, device=device)


@pytest.fixture
def parts(make_cfg):
    cfg = make_cfg(2)
    unet = nets.build_unet(cfg, DIM).eval()
    onehot = nets.build_controller(make_cfg(2, "controller.mask_encoding=onehot"), unet, 2).eval()  # 3 mask channels
    return cfg, unet, onehot, nets.build_autoencoder(cfg).eval()


def test_mask_channels_must_match_the_config(parts, make_cfg):
    cfg, unet, onehot, ae = parts
    with pytest.raises(ValueError, match="take 3 mask channels.*mask_encoding=merged with 2 labels gives 1"):
        LatentRenderer(cfg, ae, nets.ControlledUNet(unet, onehot), _Text(), 1.0, 2, {})
    ok = LatentRenderer(make_cfg(2, "controller.mask_encoding=onehot"), ae, nets.ControlledUNet(unet, onehot, 0.4), _Text(),
                        1.0, 2, {"controller": "abc"})
    assert ok.conditioning_scale == 0.4 and ok.hashes == {"controller": "abc"}
    img = ok.generate(torch.zeros(2, 16, 16, dtype=torch.long), ["a", "b"], [1, 2], guidance=1.0, steps=2)
    assert img.shape == (2, 1, 16, 16) and img.dtype == torch.float32
    with pytest.raises(ValueError, match="item shape"):
        ok.generate(torch.zeros(1, 8, 8, dtype=torch.long), ["a"], [1], steps=2)
    with pytest.raises(ValueError, match="one mask, prompt and seed"):
        ok.generate(torch.zeros(2, 16, 16, dtype=torch.long), ["a"], [1, 2], steps=2)


def test_each_renderer_takes_its_own_denoiser(parts, make_cfg):
    cfg, unet, onehot, ae = parts
    pcfg = make_cfg(2, "controller.mode=concat")
    concat = nets.ConcatUNet(nets.build_pixel_unet(pcfg, DIM, 2), 1)
    with pytest.raises(TypeError, match="ControlledUNet"):
        LatentRenderer(cfg, ae, concat, _Text(), 1.0, 2, {})
    with pytest.raises(TypeError, match="ConcatUNet"):
        PixelRenderer(pcfg, nets.ControlledUNet(unet, onehot), _Text(), 2, {})
    pix = PixelRenderer(pcfg, concat, _Text(), 2, {})
    assert pix.conditioning_scale is None and pix.noise_shape(3, (16, 16)) == (3, 1, 16, 16)
