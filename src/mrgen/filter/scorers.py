"""Pluggable filter scorers behind one interface.

``Scorer.score(image (H, W) float in [-1, 1], mask (H, W) int) -> {label: (iou, conf)}`` for
each label present in the mask. ``build_scorer(cfg)`` picks one from ``cfg.filter.scorer``:

* ``classical`` (default, offline): a prompted classical segmenter (see ``classical.py``).
* ``sam2``: SAM2 from a local checkpoint with a box prompt per organ (MRGen's choice of model).
* ``segmenter``: a trained mrgen segmenter; IoU of its argmax with the mask, confidence = its
  mean softmax probability of the organ inside the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mrgen import devices
from mrgen.filter.classical import ClassicalScorer, iou


class Scorer(Protocol):
    name: str

    def score(self, image: np.ndarray, mask: np.ndarray) -> dict:  # {label: (iou, conf)}
        ...


SAM2_HELP = (
    "filter.scorer=sam2 needs the `sam2` package and a local SAM2 checkpoint. Install it with "
    "`pip install 'mrgen[sam2]'` (or `pip install --no-deps sam2 hydra-core iopath` to keep torchvision out), "
    "download e.g. sam2.1_hiera_large.pt on a machine with network access, put it under a folder of your "
    "choice (e.g. ~/.cache/mrgen/sam2/) and run with filter.sam2_checkpoint=<that .pt> "
    "filter.sam2_config=configs/sam2.1/sam2.1_hiera_l.yaml; or use filter.scorer=classical (offline)."
)


class Sam2Scorer:
    """SAM2 image predictor; prompt = the organ's box (x0, y0, x1, y1); best of 3 masks by SAM2's score."""

    name = "sam2"

    def __init__(self, config: str, checkpoint: str, device: str = "cpu"):
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"SAM2 checkpoint '{checkpoint}' not found. {SAM2_HELP}")
        try:
            from sam2.build_sam import build_sam2
            from sam2.sam2_image_predictor import SAM2ImagePredictor
        except ImportError as exc:
            raise ValueError(f"cannot import sam2 ({exc}). {SAM2_HELP}") from None
        self.predictor = SAM2ImagePredictor(build_sam2(config, ckpt_path=checkpoint, device=device))

    def score(self, image: np.ndarray, mask: np.ndarray) -> dict:
        import torch

        rgb = np.repeat((np.clip((np.asarray(image, np.float32) + 1) / 2, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
        out = {}
        with torch.inference_mode():
            self.predictor.set_image(rgb)
            for lab in (int(v) for v in np.unique(mask) if v != 0):
                m = mask == lab
                ys, xs = np.nonzero(m)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                masks, scores, _ = self.predictor.predict(box=box, multimask_output=True)
                best = int(np.argmax(scores))
                out[lab] = (iou(masks[best] > 0, m), float(scores[best]))
        return out


class SegmenterScorer:
    """A trained mrgen segmenter (``mrgen.segment``) as the scorer."""

    name = "segmenter"

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from mrgen.segment import load_segmenter

        self.model = load_segmenter(folder, device)

    def score(self, image: np.ndarray, mask: np.ndarray) -> dict:
        from mrgen.segment import predict_proba

        prob = predict_proba(self.model, image)  # (C, H, W)
        pred = prob.argmax(0)
        out = {}
        for lab in (int(v) for v in np.unique(mask) if v != 0):
            m = mask == lab
            conf = float(prob[lab][m].mean()) if lab < prob.shape[0] else 0.0
            out[lab] = (iou(pred == lab, m), conf)
        return out


def build_scorer(cfg) -> Scorer:
    f = cfg.filter
    if f.scorer == "classical":
        return ClassicalScorer(f.classical_method, perturb=f.perturb, seed=cfg.run.seed)
    if f.scorer == "sam2":
        return Sam2Scorer(f.sam2_config, f.sam2_checkpoint, device=devices.of(cfg))
    if f.scorer == "segmenter":
        folder = f.segmenter or str(cfg.workdir / "segment" / "oracle")
        if not (Path(folder) / "model.safetensors").is_file():
            raise FileNotFoundError(f"filter.scorer=segmenter: no model.safetensors in {folder}; set filter.segmenter=<folder>")
        return SegmenterScorer(folder, devices.of(cfg))
    raise ValueError(f"unknown filter.scorer '{f.scorer}'; choose classical, sam2 or segmenter")


def score_any(scorer: Scorer, image: np.ndarray, mask: np.ndarray, max_slices: int = 8) -> dict:
    """2D: ``scorer.score``. 3D ``(Z, H, W)`` (the curated volume layout): score up to ``max_slices``
    axial slices with the most foreground; per label, the pixel-weighted mean of (iou, conf)."""
    if image.ndim == 2:
        return scorer.score(image, mask)
    fg = (mask != 0).reshape(mask.shape[0], -1).sum(1)
    zs = [int(z) for z in np.argsort(-fg, kind="stable")[:max_slices] if fg[z] > 0]
    acc: dict = {}
    for z in zs:
        for lab, (i, c) in scorer.score(image[z], mask[z]).items():
            w = float((mask[z] == lab).sum())
            a = acc.setdefault(lab, [0.0, 0.0, 0.0])
            a[0] += w * i
            a[1] += w * c
            a[2] += w
    return {lab: (a[0] / a[2], a[1] / a[2]) for lab, a in acc.items() if a[2] > 0}
