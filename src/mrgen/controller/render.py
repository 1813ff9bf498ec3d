"""Renderers: the trained chain that turns label maps + prompts + seeds into target-modality images.

* :class:`LatentRenderer` (``controller.mode=controlnet``, MRGen): autoencoder + a
  :class:`~mrgen.nets.ControlledUNet` (whose ``conditioning_scale`` is fixed when it is built,
  from ``controller.conditioning_scale``) + the LDM's latent scale factor; samples latents, decodes.
* :class:`PixelRenderer` (``controller.mode=concat``, Med-DDPM): a :class:`~mrgen.nets.ConcatUNet`;
  samples images directly, nothing to decode, no conditioning scale.

Both share :class:`Renderer` (prompt encoding with the empty prompt for guidance, mask checks,
the provenance ``hashes``) and ``generate(masks, prompts, seeds, guidance, steps, eta, solver, precision,
strength, images)``.
"""

from __future__ import annotations

import torch

from mrgen.autoencoder.data import item_shape
from mrgen.config import Config
from mrgen.prompts import EMPTY_PROMPT


class Renderer:
    """Base: ``denoiser`` (a :mod:`mrgen.nets.denoisers` wrapper taking the encoded mask) + text encoder.

    ``hashes``: sha256 of every checkpoint used (recorded in each candidate's provenance).
    Subclasses give the noise shape and turn the sampled ``x_0`` into images.
    """

    mode = ""
    conditioning_scale: float | None = None  # ControlNet residual scale; None: the renderer has none

    def __init__(self, cfg: Config, denoiser, text, n_labels: int, hashes: dict):
        from mrgen.nets import mask_channels

        want = mask_channels(cfg, n_labels)
        if denoiser.cond_channels != want:
            raise ValueError(f"the {self.mode} renderer's nets take {denoiser.cond_channels} mask channels, but "
                             f"controller.mask_encoding={cfg.controller.mask_encoding} with {n_labels} labels gives {want}; "
                             "set controller.mask_encoding to the one in controller/model.json (or retrain the controller)")
        self.cfg, self.denoiser, self.text = cfg, denoiser, text
        self.n_labels, self.hashes = int(n_labels), dict(hashes)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def noise_shape(self, n: int, spatial: tuple) -> tuple:
        """Shape of the sampled ``x`` for ``n`` masks of item shape ``spatial``."""
        raise NotImplementedError

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled ``x_0`` of :meth:`noise_shape` -> images ``(N, 1, *S)``."""
        raise NotImplementedError

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 1, *S)`` -> the ``x_0`` the sampler starts an SDEdit chain from (:meth:`noise_shape`)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, prompts: list[str], seeds: list[int], guidance: float = 7.0,
                 steps: int = 50, eta: float = 0.0, solver: str = "ddim", precision: str = "fp32",
                 strength: float = 1.0, images: torch.Tensor | None = None) -> torch.Tensor:
        """Label maps ``(N, *S)`` (``S`` = the item shape, e.g. ``(H, W)``) + prompts + seeds ->
        images ``(N, 1, *S)`` float32 in [-1, 1] on the CPU. Sample ``i`` depends only on its own
        mask, prompt and seed (``solver`` (``sample.solver``: ddim, dpmpp2m, unipc) with ``steps``
        steps, DDIM's η = ``eta``, classifier-free guidance ``guidance`` with the empty prompt,
        the denoiser in ``precision``), and for ``strength < 1`` (SDEdit) on its own start image
        ``images[i]`` ``(N, *S)`` in [-1, 1] (the mask's source image), of which the chain runs
        the last ``round(strength * steps)`` steps."""
        from mrgen.diffusion import make_solver, sample
        from mrgen.nets import encode_mask

        n = len(seeds)
        if masks.shape[0] != n or len(prompts) != n:
            raise ValueError(f"generate needs one mask, prompt and seed per image: got {masks.shape[0]}, {len(prompts)}, {n}")
        spatial = tuple(masks.shape[1:])
        if spatial != item_shape(self.cfg):
            raise ValueError(f"mask shape {spatial} != the trained item shape {item_shape(self.cfg)} (data.* config)")
        dev = self.device
        cond = encode_mask(masks.long(), self.cfg.controller.mask_encoding, self.n_labels).to(dev)
        ctx = self.text.encode(list(prompts), device=dev).float()
        unc = self.text.encode([EMPTY_PROMPT], device=dev).float()
        init = None
        if float(strength) != 1.0:
            if images is None or tuple(images.shape) != (n, *spatial):
                got = "none" if images is None else tuple(images.shape)
                raise ValueError(f"strength={strength} (SDEdit) starts from one image per mask, shape {(n, *spatial)}; got {got}")
            init = self.from_images(images.float().unsqueeze(1).to(dev))
        x = sample(self.denoiser, make_solver(self.cfg.diffusion, steps, solver, strength), ctx, unc,
                   self.noise_shape(n, spatial), list(seeds), guidance, cond=cond, eta=eta, precision=precision, init=init)
        return self.to_images(x).float().clamp(-1, 1).cpu()


class LatentRenderer(Renderer):
    """Frozen autoencoder + :class:`~mrgen.nets.ControlledUNet` + text encoder: latent sampling, then
    ``decode(z / scale_factor)``."""

    mode = "controlnet"

    def __init__(self, cfg: Config, autoencoder, denoiser, text, scale_factor: float, n_labels: int, hashes: dict):
        from mrgen.nets import ControlledUNet

        if not isinstance(denoiser, ControlledUNet):
            raise TypeError(f"LatentRenderer renders with a ControlledUNet(unet, controller, conditioning_scale), got "
                            f"{type(denoiser).__name__}; a ConcatUNet belongs in a PixelRenderer")
        super().__init__(cfg, denoiser, text, n_labels, hashes)
        self.autoencoder, self.scale_factor = autoencoder, float(scale_factor)

    @property
    def conditioning_scale(self) -> float:
        return self.denoiser.conditioning_scale

    def noise_shape(self, n: int, spatial: tuple) -> tuple:
        from mrgen.nets import latent_factor

        f = latent_factor(self.cfg)
        return (n, self.cfg.autoencoder.latent_channels, *[s // f for s in spatial])

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        from mrgen.diffusion import decode

        return decode(self.autoencoder, x, self.scale_factor)

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images)[0].float() * self.scale_factor  # the posterior mean, as the LDM's latents


class PixelRenderer(Renderer):
    """:class:`~mrgen.nets.ConcatUNet` + text encoder: pixel-space sampling, nothing to decode.
    ``controller.conditioning_scale`` does not apply (no residuals; config validation keeps it at 1)."""

    mode = "concat"

    def __init__(self, cfg: Config, denoiser, text, n_labels: int, hashes: dict):
        from mrgen.nets import ConcatUNet

        if not isinstance(denoiser, ConcatUNet):
            raise TypeError(f"PixelRenderer renders with a ConcatUNet(unet, cond_channels), got {type(denoiser).__name__}; "
                            "a ControlledUNet belongs in a LatentRenderer")
        super().__init__(cfg, denoiser, text, n_labels, hashes)

    def noise_shape(self, n: int, spatial: tuple) -> tuple:
        return (n, self.denoiser.unet.out_channels, *spatial)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        return images


def render_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Label map ``(N, *S)`` -> ``(N, 1, *S)`` in [-1, 1] for preview grids."""
    return mask.float().unsqueeze(1) / max(n, 1) * 2 - 1


def save_preview(path, cfg: Config, mix, renderer: Renderer) -> None:
    """Training preview of the controller stage: up to 4 source masks (with organs first), their real
    images and ``renderer``'s target-modality renders (seeds 0..3, η = 0)."""
    from mrgen import train
    from mrgen.prompts import build_prompt

    src = mix.src
    shown = [i for i, r in enumerate(src) if r.get("organs")][:4] or list(range(min(4, len(src))))
    masks = mix.src_items.masks(torch.tensor(shown))
    texts = [build_prompt(cfg.run.target_modality, src[i].get("region") or None, list(src[i]["organs"])) for i in shown]
    imgs = renderer.generate(masks, texts, list(range(len(shown))), cfg.sample.guidance, min(cfg.sample.ddim_steps, 25), 0.0)
    train.save_grid(path, [render_mask(masks, mix.labels), mix.src_items.images(torch.tensor(shown)), imgs])
