"""Orthogonal-view figure of a label map before vs after a morph (axial / coronal / sagittal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen.io import atomic_path

# background black, then distinct colours per label number (cycled)
_COLOURS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
            "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f", "#aec7e8"]


def _focus(before: np.ndarray, after: np.ndarray) -> tuple:
    """Per axis, the slice with the most changed voxels (else labelled voxels, else the centre)."""
    for mask in (before != after, after > 0):
        if mask.any():
            axes = range(mask.ndim)
            return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in axes if a != i)))) for i in axes)
    return tuple(s // 2 for s in before.shape)


def _views(vol: np.ndarray, point: tuple, spacing) -> list:
    """(title, 2D array to show with origin=lower, aspect) per view; (X, Y, Z) RAS+ arrays."""
    if vol.ndim == 2 or vol.shape[2] == 1:
        sl = vol if vol.ndim == 2 else vol[:, :, 0]
        return [("axial", sl.T, spacing[1] / spacing[0])]
    x, y, z = point
    sx, sy, sz = spacing[:3]
    return [(f"axial z={z}", vol[:, :, z].T, sy / sx),
            (f"coronal y={y}", vol[:, y, :].T, sz / sx),
            (f"sagittal x={x}", vol[x, :, :].T, sz / sy)]


def save_preview(before: np.ndarray, after: np.ndarray, spacing, path, title: str = "", names: dict | None = None) -> Path:
    """Write a PNG: rows before / after / changed voxels, columns axial / coronal / sagittal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    before, after = np.asarray(before), np.asarray(after)
    top = int(max(before.max(initial=0), after.max(initial=0), 1))
    cmap = ListedColormap([_COLOURS[0]] + [_COLOURS[1 + (i % (len(_COLOURS) - 1))] for i in range(top)])
    point = _focus(before, after)
    rows = [("before", before), ("after", after), ("changed", (before != after).astype(np.int16))]
    ncols = len(_views(before, point, spacing))
    fig = Figure(figsize=(3.2 * ncols, 3.0 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    for r, (name, vol) in enumerate(rows):
        for c, (view, img, aspect) in enumerate(_views(vol, point, spacing)):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            if name == "changed":
                ax.imshow(_views(after, point, spacing)[c][1], cmap=cmap, vmin=-0.5, vmax=top + 0.5,
                          origin="lower", aspect=aspect, interpolation="nearest", alpha=0.35)
                ax.imshow(np.ma.masked_equal(img, 0), cmap=ListedColormap(["#ffffff"]), origin="lower",
                          aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(img, cmap=cmap, vmin=-0.5, vmax=top + 0.5, origin="lower", aspect=aspect,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(view, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=10)
    vb, va = _volumes(before, spacing), _volumes(after, spacing)
    label_name = {int(v): f"{k} ({v})" for k, v in (names or {}).items()}
    changes = [f"{label_name.get(k, k)}: {vb.get(k, 0) / 1000:.2f}→{va.get(k, 0) / 1000:.2f} cm³"
               for k in sorted(set(vb) | set(va))
               if k != 0 and vb.get(k, 0) != va.get(k, 0)]
    fig.suptitle((title + "\n" if title else "") + ("; ".join(changes) or "no change"), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _volumes(vol: np.ndarray, spacing) -> dict:
    vox = float(np.prod(spacing[: vol.ndim]))
    values, counts = np.unique(vol, return_counts=True)
    return {int(v): float(c) * vox for v, c in zip(values, counts)}
