"""Preview figure: the mid slice of every modality of one subject, plus the mask overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_preview(cfg, subject, modalities: list, path: str | Path, slice_index: int | None = None) -> Path:
    """Write ``path`` (PNG): one panel per modality (mid slice, 0.5-99.5 % window) and a mask panel.

    Slices are shown as ``imshow(a[:, :, z].T, origin="lower")``: anterior up, patient right on
    the right (neurological convention).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from mrgen.io import atomic_path
    from mrgen.phantom import render_modality

    anat = subject.anatomy
    z = anat.mask.shape[2] // 2 if slice_index is None else int(slice_index)
    images = [(m, render_modality(subject, m, cfg)[:, :, z]) for m in modalities]
    n = len(images) + 2
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (m, img) in zip(axes.ravel(), images):
        lo, hi = np.percentile(img, [0.5, 99.5])
        ax.imshow(img.T, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
        ax.set_title(m, fontsize=9)
    base = images[0][1]
    lo, hi = np.percentile(base, [0.5, 99.5])
    ax = axes.ravel()[len(images)]
    ax.imshow(base.T, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
    mask = anat.mask[:, :, z].astype(float)
    ax.imshow(np.ma.masked_equal(mask, 0).T, origin="lower", cmap="tab10", vmin=0, vmax=10, alpha=0.55,
              interpolation="nearest")
    names = ", ".join(f"{k} {v}" for k, v in anat.labels.items())
    ax.set_title("mask", fontsize=9)
    ax = axes.ravel()[len(images) + 1]
    ax.imshow(anat.tissue_map[:, :, z].T, origin="lower", cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    ax.set_title("tissue map", fontsize=9)
    fig.suptitle(f"{subject.name} ({subject.layout}), slice {z}/{anat.mask.shape[2]}; labels: {names}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
