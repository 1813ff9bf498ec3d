"""Figures shared by stages: orthogonal views of curated volumes (label maps and images).

Curated volumes are stored ``(Z, X, Y)`` (slices first, RAS in-plane). A 3D volume is shown as
axial ``vol[z]``, coronal ``vol[:, :, y]`` and sagittal ``vol[:, x, :]``, each through the
centroid of the labelled voxels (else the centre), with ``origin='lower'`` so superior is up.
A 2D slice ``(X, Y)`` is one axial view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen.io import atomic_path

LABEL_COLOURS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f", "#aec7e8"]


def focus(mask: np.ndarray | None, shape: tuple) -> tuple:
    """Integer centroid of ``mask > 0`` (or the centre of ``shape``)."""
    if mask is not None and np.any(mask > 0):
        return tuple(int(round(c)) for c in np.argwhere(mask > 0).mean(0))
    return tuple(s // 2 for s in shape)


def ortho(vol: np.ndarray, point: tuple) -> list[tuple[str, np.ndarray]]:
    """``[(view name, 2D array to show with imshow(origin='lower'))]`` of a ``(Z, X, Y)`` or ``(X, Y)`` array."""
    vol = np.asarray(vol)
    if vol.ndim == 2:
        return [("axial", vol.T)]
    z, x, y = point
    return [("axial", vol[z].T), ("coronal", vol[:, :, y]), ("sagittal", vol[:, x, :])]


def label_cmap(top: int):
    from matplotlib.colors import ListedColormap

    return ListedColormap([LABEL_COLOURS[0]] + [LABEL_COLOURS[1 + (i % (len(LABEL_COLOURS) - 1))] for i in range(max(top, 1))])


def save_ortho_grid(path: str | Path, rows: list[dict], title: str = "", top: int | None = None) -> Path:
    """One row per dict ``{"name", "labels"?, "image"?}``: the label map and/or the image (with the label
    outline) in orthogonal views. Views go through the centroid of the row's labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = int(top if top is not None else max([int(np.max(r["labels"])) for r in rows if r.get("labels") is not None] + [1]))
    cmap = label_cmap(top)
    panels = []  # per row: list of (kind, labels, image)
    for r in rows:
        lab, img = r.get("labels"), r.get("image")
        if lab is not None:
            panels.append(("labels", r["name"], lab, None))
        if img is not None:
            panels.append(("image", r["name"], lab, img))
    ref = next(p[2] if p[2] is not None else p[3] for p in panels)
    ncols = len(ortho(ref, focus(None, np.shape(ref))))
    fig = Figure(figsize=(2.2 * ncols, 2.1 * len(panels) + 0.5))
    FigureCanvasAgg(fig)
    for i, (kind, name, lab, img) in enumerate(panels):
        vol = lab if lab is not None else img
        point = focus(lab, np.shape(vol))
        lviews = ortho(lab, point) if lab is not None else None
        iviews = ortho(img, point) if img is not None else None
        for j in range(ncols):
            ax = fig.add_subplot(len(panels), ncols, i * ncols + j + 1)
            if kind == "labels":
                ax.imshow(lviews[j][1], cmap=cmap, vmin=-0.5, vmax=top + 0.5, origin="lower", interpolation="nearest", aspect="auto")
            else:
                ax.imshow(iviews[j][1], cmap="gray", vmin=-1, vmax=1, origin="lower", aspect="auto")
                if lviews is not None and np.any(lviews[j][1] > 0):
                    ax.contour(lviews[j][1] > 0, levels=[0.5], colors="r", linewidths=0.4, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title((iviews or lviews)[j][0], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{name}\n{kind}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def slice_grid(rows: list[dict], title: str = "", top: int | None = None, alpha: float = 0.45):
    """A matplotlib Figure: one row per dict ``{"name", "slices": [(caption, image (H, W) in [-1, 1], labels (H, W) or None)]}``,
    each slice shown as ``imshow(a.T, origin="lower")`` (the curated convention) with its labels overlaid in colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labs = [lab for r in rows for _, _, lab in r["slices"] if lab is not None]
    top = int(top if top is not None else max([int(np.max(lab)) for lab in labs] + [1]))
    cmap = label_cmap(top)
    ncols = max([len(r["slices"]) for r in rows] + [1])
    fig = Figure(figsize=(1.6 * ncols + 0.6, 1.6 * max(len(rows), 1) + (0.5 if title else 0.1)))
    FigureCanvasAgg(fig)
    for i, r in enumerate(rows):
        for j, (caption, img, lab) in enumerate(r["slices"]):
            ax = fig.add_subplot(len(rows), ncols, i * ncols + j + 1)
            ax.imshow(np.asarray(img, dtype=np.float32).T, cmap="gray", vmin=-1, vmax=1, origin="lower", interpolation="nearest")
            if lab is not None and np.any(lab > 0):
                rgba = cmap(np.clip(np.asarray(lab).T, 0, top))
                rgba[..., 3] = np.where(np.asarray(lab).T > 0, alpha, 0.0)
                ax.imshow(rgba, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(caption, fontsize=6, pad=2)
            if j == 0:
                ax.set_ylabel(r["name"], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()) if title else None)
    return fig
