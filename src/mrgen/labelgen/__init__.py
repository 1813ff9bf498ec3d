"""``mrgen labelgen``: Duo-Diffusion step 1 — a latent diffusion model that generates label maps.

Trained on the annotated source masks (:func:`mrgen.roles.assign` ``.source``; 2D slices or 3D
volumes, as ``data.spatial_dims`` says), in two phases under ``<workdir>/labelgen/``:

1. ``autoencoder/``: a KL autoencoder of *encoded* label maps. ``labelgen.encoding=onehot``:
   ``K + 1`` channels in {-1, 1} (background included); ``bits``: ``ceil(log2(K + 1))`` channels,
   bit ``j`` of the label value as ±1. Its output is read as logits: cross-entropy (one-hot) or
   binary cross-entropy (bits) + ``autoencoder.kl_weight`` · KL. Decoding: argmax, or the
   thresholded bits (a code above ``K`` decodes to background).
2. ``ldm/``: a text-conditioned diffusion UNet on its latents (ε-prediction, the same DDPM
   schedule, prompt dropout and :func:`mrgen.diffusion.sample` as the image LDM). The prompt says
   what the map should hold: ``<region>; <organs>`` (e.g. ``upper abdomen; liver, spleen``).

:func:`generate` then samples ``labelgen.count`` maps (DDIM + classifier-free guidance against the
empty prompt). Each goes to ``labelgen/labels/gen_<k>.npz`` (``mask`` uint8 in the curated item
layout + ``meta``: id, seed, prompt, region, organs, checkpoint sha256s), so it can be rendered by
``mrgen synthesize`` (``sample.masks=[generated]``) and regenerated from its record.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrgen.config import Config

STAGE = "labelgen"


# ----------------------------------------------------------------------------- label encoding


def n_channels(k: int, encoding: str) -> int:
    """Channels of the encoded label map for labels ``0..k``."""
    if encoding == "onehot":
        return k + 1
    if encoding == "bits":
        return max(1, math.ceil(math.log2(k + 1)))
    raise ValueError(f"labelgen.encoding must be 'onehot' or 'bits', got '{encoding}'")


def encode_labels(mask: torch.Tensor, k: int, encoding: str) -> torch.Tensor:
    """``(N, *S)`` int labels in ``0..k`` -> ``(N, C, *S)`` float in {-1, 1}."""
    mask = mask.long()
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > k):
        raise ValueError(f"label values must lie in [0, {k}], got [{int(mask.min())}, {int(mask.max())}]")
    if encoding == "onehot":
        code = F.one_hot(mask, k + 1).movedim(-1, 1)
    else:
        bits = torch.arange(n_channels(k, "bits"), device=mask.device)
        code = ((mask.unsqueeze(1) >> bits.view(1, -1, *[1] * (mask.ndim - 1))) & 1)
    return code.float() * 2 - 1


def decode_labels(logits: torch.Tensor, k: int, encoding: str) -> torch.Tensor:
    """``(N, C, *S)`` logits (or codes in [-1, 1]) -> ``(N, *S)`` long labels in ``0..k``."""
    if encoding == "onehot":
        return logits.argmax(1)
    bits = (logits > 0).long()
    weights = (2 ** torch.arange(bits.shape[1], device=bits.device)).view(1, -1, *[1] * (bits.ndim - 2))
    value = (bits * weights).sum(1)
    return torch.where(value > k, torch.zeros_like(value), value)


def recon_loss(logits: torch.Tensor, mask: torch.Tensor, k: int, encoding: str) -> torch.Tensor:
    logits = logits.float()
    if encoding == "onehot":
        return F.cross_entropy(logits, mask.long())
    target = (encode_labels(mask, k, "bits") > 0).float()
    return F.binary_cross_entropy_with_logits(logits, target)


# ----------------------------------------------------------------------------- data, prompts, nets


def label_prompt(region: str | None, organs) -> str:
    """``<region text>; <organs>`` (the image prompt without the modality part)."""
    from mrgen.prompts import region_text

    parts = [region_text(region)] if region else []
    if organs:
        parts.append(", ".join(organs))
    return "; ".join(parts)


def train_rows(cfg: Config) -> list[dict]:
    from mrgen.autoencoder.data import open_index
    from mrgen.roles import assign

    rows = sorted((r for r in assign(open_index(cfg), cfg).source if r["organs"]), key=lambda r: r["id"])
    if not rows:
        raise ValueError("labelgen needs annotated source masks with organs; check run.source_modality and the curated index")
    return rows


class LabelItems:
    """Encoded source masks; ``images(idx)`` so the autoencoder helpers (scale factor) apply."""

    def __init__(self, cfg: Config, rows: list[dict], k: int):
        from mrgen.autoencoder.data import Items

        self.items, self.k, self.encoding = Items(cfg, rows, with_mask=True), k, cfg.labelgen.encoding

    def __len__(self) -> int:
        return len(self.items)

    def masks(self, idx) -> torch.Tensor:
        return self.items.masks(idx).long()

    def images(self, idx) -> torch.Tensor:
        return encode_labels(self.masks(idx), self.k, self.encoding)


def _groups(channels, want: int) -> int:
    g = want
    while g > 1 and any(c % g for c in channels):
        g //= 2
    return max(g, 1)


def build_label_autoencoder(cfg: Config, k: int):
    from monai.networks.nets import AutoencoderKL

    lg = cfg.labelgen
    ch = n_channels(k, lg.encoding)
    return AutoencoderKL(
        spatial_dims=cfg.data.spatial_dims, in_channels=ch, out_channels=ch, num_res_blocks=1,
        channels=tuple(lg.ae_channels), attention_levels=(False,) * len(lg.ae_channels),
        latent_channels=lg.latent_channels, norm_num_groups=_groups(lg.ae_channels, cfg.autoencoder.norm_num_groups),
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, include_fc=True,
        use_combined_linear=False, use_flash_attention=False,
    )


def build_label_unet(cfg: Config, context_dim: int):
    from mrgen.nets.builders import text_unet

    lg = cfg.labelgen
    return text_unet(cfg.data.spatial_dims, lg.latent_channels, lg.latent_channels, lg.unet_channels, lg.unet_attention,
                     context_dim, 1, _groups(lg.unet_channels, cfg.ldm.norm_num_groups), cfg.ldm.num_head_channels)


def latent_shape(cfg: Config, n: int) -> tuple:
    from mrgen.autoencoder.data import item_shape

    f = 2 ** (len(cfg.labelgen.ae_channels) - 1)
    shape = item_shape(cfg)
    if any(s % f for s in shape):
        raise ValueError(f"item shape {shape} is not divisible by the label autoencoder's factor {f} "
                         f"(len(labelgen.ae_channels) - 1 halvings); change labelgen.ae_channels or data.*")
    return (n, cfg.labelgen.latent_channels, *[s // f for s in shape])


from mrgen.labelgen.stage import LabelGenerator, generate, load_labels, regenerate, run  # noqa: E402

__all__ = ["STAGE", "LabelGenerator", "decode_labels", "encode_labels", "generate", "label_prompt", "load_labels",
           "n_channels", "regenerate", "run"]
