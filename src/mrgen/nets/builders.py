"""Network builders shared by every stage: autoencoder, diffusion UNet, mask controller, and the
pixel-space concat UNet of ``controller.mode=concat`` (Med-DDPM).

Every builder reads ``cfg.data.spatial_dims`` so 2D (slices) and 3D (volumes) share each line.
Tensor shapes: images ``(N, 1, H, W[, D])``; latents ``(N, latent_channels, h, w[, d])`` with
``h = H / 2**(len(autoencoder.channels) - 1)``; text context ``(N, L, context_dim)``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet
from torch import nn

log = logging.getLogger(__name__)

# Options that change parameter names/shapes; the UNet and the controller must agree on them.
_ATTN_OPTS = dict(include_fc=True, use_combined_linear=False, use_flash_attention=False, upcast_attention=False)

# Key prefixes of the UNet's encoder half that the controller copies (ControlNet init, paper Sec. 4.2).
SHARED_PREFIXES = ("time_embed.", "class_embedding.", "conv_in.", "down_blocks.", "middle_block.")
# Parameters that exist only in the UNet (decoder half) ...
UNET_ONLY_PREFIXES = ("up_blocks.", "out.")
# ... and only in the controller (mask downsampling module + zero convolutions).
CONTROLLER_ONLY_PREFIXES = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


class ControllerInitError(ValueError, RuntimeError):
    """The UNet -> controller weight map found an unmapped key or a shape mismatch."""


def latent_factor(cfg) -> int:
    """Spatial downsampling factor of the autoencoder: ``2 ** (len(autoencoder.channels) - 1)``."""
    return 2 ** (len(cfg.autoencoder.channels) - 1)


def latent_shape(cfg, n: int) -> tuple[int, ...]:
    """Latent noise shape for the configured size: ``(n, C, h, w)`` in 2D, ``(n, C, z, h, w)`` in 3D.

    3D follows the curated volume layout ``(Z, H, W)`` (depth first), as the stages feed it.
    """
    f = latent_factor(cfg)
    if cfg.data.spatial_dims == 2:
        spatial = (cfg.data.image_size // f,) * 2
    else:
        spatial = (cfg.data.depth // f, cfg.data.image_size // f, cfg.data.image_size // f)
    return (n, cfg.autoencoder.latent_channels, *spatial)


def build_autoencoder(cfg) -> AutoencoderKL:
    """KL autoencoder ``(N, 1, H, W[, D]) <-> (N, latent_channels, h, w[, d])``; no non-local attention."""
    a = cfg.autoencoder
    return AutoencoderKL(
        spatial_dims=cfg.data.spatial_dims,
        in_channels=1,
        out_channels=1,
        num_res_blocks=a.num_res_blocks,
        channels=tuple(a.channels),
        attention_levels=tuple(a.attention_levels),
        latent_channels=a.latent_channels,
        norm_num_groups=a.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        include_fc=True,
        use_combined_linear=False,
        use_flash_attention=False,
    )


def _encoder_kwargs(cfg, context_dim: int) -> dict:
    """Architecture shared by the UNet and the controller (the controller copies the UNet's encoder)."""
    l = cfg.ldm
    return dict(
        spatial_dims=cfg.data.spatial_dims,
        in_channels=cfg.autoencoder.latent_channels,
        num_res_blocks=l.num_res_blocks,
        channels=tuple(l.channels),
        attention_levels=tuple(l.attention_levels),
        norm_num_groups=l.norm_num_groups,
        num_head_channels=l.num_head_channels,
        with_conditioning=True,
        cross_attention_dim=int(context_dim),
        **_ATTN_OPTS,
    )


def text_unet(spatial_dims: int, in_channels: int, out_channels: int, channels, attention, context_dim: int,
              num_res_blocks: int, norm_num_groups: int, num_head_channels: int) -> DiffusionModelUNet:
    """A text-conditioned (cross-attention) MONAI diffusion UNet; used by the pixel-space renderer and labelgen."""
    return DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, num_res_blocks=num_res_blocks,
        channels=tuple(channels), attention_levels=tuple(attention), norm_num_groups=norm_num_groups,
        num_head_channels=num_head_channels, with_conditioning=True, cross_attention_dim=int(context_dim), **_ATTN_OPTS)


def build_unet(cfg, context_dim: int) -> DiffusionModelUNet:
    """Text-conditioned diffusion UNet on latents: ``eps = unet(x (N,C,h,w[,d]), t (N,), context (N,L,context_dim))``."""
    unet = DiffusionModelUNet(out_channels=cfg.autoencoder.latent_channels, **_encoder_kwargs(cfg, context_dim))
    unet.context_dim = int(context_dim)  # read back by build_controller
    return unet


def pixel_factor(cfg) -> int:
    """Downsampling factor of the concat (pixel-space) UNet: ``2 ** (len(controller.pixel_channels) - 1)``."""
    return 2 ** (len(cfg.controller.pixel_channels) - 1)


def build_pixel_unet(cfg, context_dim: int, n_labels: int) -> DiffusionModelUNet:
    """Med-DDPM renderer (``controller.mode=concat``): a pixel-space, text-conditioned UNet whose input
    is the noisy image concatenated with the encoded mask.

    ``eps = unet(cat[x (N,1,*S), mask (N,M,*S)] (N,1+M,*S), t (N,), context (N,L,context_dim))`` ->
    ``(N, 1, *S)``; ``M = mask_channels(cfg, n_labels)``. Levels/attention from ``controller.pixel_*``;
    res blocks, norm groups and head channels from ``cfg.ldm`` (no LDM is trained in this mode).
    Call it through ``mrgen.nets.ConcatUNet(unet, mask_channels(cfg, n_labels))``, which does the concatenation.
    """
    c = cfg.controller
    if len(c.pixel_attention) != len(c.pixel_channels):
        raise ValueError(f"controller.pixel_attention needs one entry per controller.pixel_channels level "
                         f"({len(c.pixel_channels)}), got {list(c.pixel_attention)}")
    f = pixel_factor(cfg)
    sizes = {"data.image_size": cfg.data.image_size, **({"data.depth": cfg.data.depth} if cfg.data.spatial_dims == 3 else {})}
    bad = {k: v for k, v in sizes.items() if v % f}
    if bad:
        raise ValueError(f"{bad} not divisible by the concat UNet's downsampling factor {f} "
                         f"(len(controller.pixel_channels)-1 halvings); pick multiples of {f} or fewer levels")
    l = cfg.ldm
    if any(ch % l.norm_num_groups for ch in c.pixel_channels):
        raise ValueError(f"controller.pixel_channels={list(c.pixel_channels)} must be multiples of ldm.norm_num_groups="
                         f"{l.norm_num_groups} (the concat UNet's GroupNorm); change either")
    m = mask_channels(cfg, n_labels)
    unet = text_unet(cfg.data.spatial_dims, 1 + m, 1, c.pixel_channels, c.pixel_attention, context_dim,
                     l.num_res_blocks, l.norm_num_groups, l.num_head_channels)
    return unet


def _context_dim_of(unet: nn.Module) -> int:
    if hasattr(unet, "context_dim"):
        return int(unet.context_dim)
    for k, v in unet.state_dict().items():  # cross-attention key projection: (inner, context_dim)
        if k.endswith("attn2.to_k.weight"):
            return int(v.shape[1])
    raise ControllerInitError("cannot infer the UNet's context dim; build it with mrgen.nets.build_unet")


def mask_channels(cfg, n_labels: int) -> int:
    """Controller input channels: 1 for ``merged``, ``n_labels + 1`` (incl. background) for ``onehot``."""
    enc = cfg.controller.mask_encoding
    if enc == "merged":
        return 1
    if enc == "onehot":
        return int(n_labels) + 1
    raise ValueError(f"controller.mask_encoding must be 'merged' or 'onehot', got '{enc}'")


def encode_mask(mask: torch.Tensor, encoding: str, n_labels: int) -> torch.Tensor:
    """Label map ``(N, H, W[, D])`` (int, 0 = background, 1..n_labels) -> float ``(N, C, H, W[, D])``.

    ``merged``: one channel, label ``v`` -> ``v / n_labels`` in [0, 1] (MRGen's single-channel
    merged mask with one intensity per organ). ``onehot``: ``n_labels + 1`` channels incl. background.
    """
    if mask.is_floating_point():
        if not torch.equal(mask, mask.round()):
            raise ValueError("encode_mask expects integer labels, got non-integer values")
    mask = mask.long()
    if n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {n_labels}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > n_labels):
        raise ValueError(
            f"mask values must lie in [0, {n_labels}] (0 = background), got [{int(mask.min())}, {int(mask.max())}]; "
            "remap labels to consecutive ids first"
        )
    if encoding == "merged":
        return (mask.float() / float(n_labels)).unsqueeze(1)
    if encoding == "onehot":
        oh = F.one_hot(mask, n_labels + 1).float()  # (N, H, W[, D], C)
        return oh.movedim(-1, 1).contiguous()
    raise ValueError(f"mask encoding must be 'merged' or 'onehot', got '{encoding}'")


def unknown_unannotated(mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``controller.target_mask=unknown``: the one-hot ``cond`` ``(N, C, *S)`` of unannotated items' ``mask``
    ``(N, *S)`` (all-zero, or context labels only) with every pixel whose class is not known set to no class
    (all channels 0). Known: the background around an item's context labels; unknown: everything of an item
    without context, and the context region itself (its segmentation labels were never read)."""
    has = mask.flatten(1).ne(0).any(1).view(-1, *([1] * (mask.ndim - 1)))
    known = mask.eq(0) & has
    return cond * known.unsqueeze(1).to(cond.dtype)


def zero_conv_names(controller: ControlNet) -> list[str]:
    """Parameter names of the controller's zero convolutions (ControlNet paper's 'zero convs')."""
    return [
        k
        for k, _ in controller.named_parameters()
        if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out."))
    ]


def ensure_zero_convs(controller: ControlNet) -> int:
    """Zero every zero-conv parameter; returns how many were non-zero (MONAI 1.6 zero-inits them: 0)."""
    params = dict(controller.named_parameters())
    nonzero = 0
    with torch.no_grad():
        for k in zero_conv_names(controller):
            if torch.count_nonzero(params[k]):
                nonzero += 1
                params[k].zero_()
    if nonzero:
        log.warning("ControlNet had %d non-zero zero-conv tensors; zeroed them explicitly", nonzero)
    return nonzero


def build_controller(cfg, unet: DiffusionModelUNet, n_labels: int, copy_weights: bool = True) -> ControlNet:
    """Mask controller mirroring ``unet``'s encoder; the mask is fed at PIXEL resolution.

    ``controller(x (N,C,h,w[,d]), t (N,), controlnet_cond=mask (N,M,H,W[,D]), context=...)`` ->
    (down residuals, mid residual). Its conditioning embedding (the learnable downsampling module)
    halves the mask ``len(controller.conditioning_channels) - 1`` times, which config validation
    ties to the autoencoder factor, so ``H / h`` matches. With ``copy_weights`` the encoder is
    initialised from ``unet`` (:func:`copy_unet_to_controller`); zero convs are verified zero.
    """
    ctrl = ControlNet(
        **_encoder_kwargs(cfg, _context_dim_of(unet)),
        conditioning_embedding_in_channels=mask_channels(cfg, n_labels),
        conditioning_embedding_num_channels=tuple(cfg.controller.conditioning_channels),
    )
    ensure_zero_convs(ctrl)
    if copy_weights:
        copy_unet_to_controller(unet, ctrl)
    return ctrl


def unet_to_controller_keymap(unet: nn.Module, controller: nn.Module) -> dict[str, str]:
    """Explicit ``{unet_key: controller_key}`` map of every shared tensor; raises on anything unmapped."""
    u = unet.state_dict()
    c = controller.state_dict()
    mapping: dict[str, str] = {}
    errors: list[str] = []
    for k in u:
        if k.startswith(SHARED_PREFIXES):
            if k not in c:
                errors.append(f"UNet key '{k}' has no counterpart in the controller")
            elif u[k].shape != c[k].shape:
                errors.append(f"'{k}': UNet {tuple(u[k].shape)} vs controller {tuple(c[k].shape)}")
            else:
                mapping[k] = k
        elif not k.startswith(UNET_ONLY_PREFIXES):
            errors.append(f"unexpected UNet key '{k}' (neither shared nor decoder-only)")
    for k in c:
        if k.startswith(CONTROLLER_ONLY_PREFIXES):
            continue
        if k not in mapping.values():
            errors.append(f"controller key '{k}' would stay uninitialised (no UNet counterpart)")
    if errors:
        raise ControllerInitError(
            "UNet -> controller weight copy failed; build both with mrgen.nets (same cfg.ldm):\n  " + "\n  ".join(errors)
        )
    return mapping


def copy_unet_to_controller(unet: nn.Module, controller: nn.Module) -> list[str]:
    """Copy the UNet's time embedding, class embedding, conv_in, down and middle blocks into
    the controller (checked key-by-key and shape-by-shape). Returns the copied controller keys."""
    mapping = unet_to_controller_keymap(unet, controller)
    u = unet.state_dict()
    c = controller.state_dict()
    with torch.no_grad():
        for uk, ck in mapping.items():
            c[ck].copy_(u[uk])  # state_dict tensors share storage with the parameters/buffers
    return list(mapping.values())
