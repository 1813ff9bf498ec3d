"""Network builders, denoisers (the nets wrapped with their conditioning), weight I/O and text encoders.

Shapes: images ``(N, 1, H, W[, D])``, latents ``(N, latent_channels, h, w[, d])``, masks
``(N, H, W[, D])`` int -> encoded ``(N, M, H, W[, D])``, text context ``(N, L, dim)``.
"""

from mrgen.nets.builders import (
    ControllerInitError,
    build_autoencoder,
    build_controller,
    build_pixel_unet,
    build_unet,
    copy_unet_to_controller,
    encode_mask,
    ensure_zero_convs,
    latent_factor,
    latent_shape,
    mask_channels,
    pixel_factor,
    unet_to_controller_keymap,
    unknown_unannotated,
    zero_conv_names,
)
from mrgen.nets.denoisers import ConcatUNet, ControlledUNet, UNetDenoiser, as_denoiser
from mrgen.nets.store import ModelLoadError, load_model, read_meta, save_model, sha256_file
from mrgen.nets.text import TextEncoder, TextEncoderError, get_text_encoder

__all__ = [
    "ConcatUNet",
    "ControlledUNet",
    "ControllerInitError",
    "ModelLoadError",
    "TextEncoder",
    "TextEncoderError",
    "UNetDenoiser",
    "as_denoiser",
    "build_autoencoder",
    "build_controller",
    "build_pixel_unet",
    "build_unet",
    "copy_unet_to_controller",
    "encode_mask",
    "ensure_zero_convs",
    "get_text_encoder",
    "latent_factor",
    "latent_shape",
    "load_model",
    "mask_channels",
    "pixel_factor",
    "read_meta",
    "save_model",
    "sha256_file",
    "unet_to_controller_keymap",
    "unknown_unannotated",
    "zero_conv_names",
]
