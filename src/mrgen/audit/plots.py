"""The audit's figures (``audit/*.png``); each is written atomically and never fails the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen import io


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _show(ax, image, title: str = "") -> None:
    ax.imshow(np.asarray(image).T, cmap="gray", vmin=-1, vmax=1, origin="lower")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def memorisation(path: Path, rec: dict, vals: dict, synth: list, train: list, n_pairs: int) -> Path | None:
    """Top row: the most similar synthetic images; below each, its nearest training image; right: the
    nearest-neighbour SSIM of synthetic and held-out real images with the threshold."""
    plt = _plt()
    pairs = rec["pairs"][:n_pairs]
    cols = len(pairs) + 1
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols + 1.2, 3.6), squeeze=False)
    for k, p in enumerate(pairs):
        flag = " COPY" if p["flagged"] else ""
        _show(axes[0, k], synth[p["synthetic"]], f"synthetic{flag}\nSSIM {p['ssim']:.3f} cos {p['cosine']:.3f}")
        _show(axes[1, k], train[p["training"]], "nearest training")
    gs = axes[0, -1].get_gridspec()
    for ax in axes[:, -1]:
        ax.remove()
    ax = fig.add_subplot(gs[:, -1])
    for name, color in (("synthetic", "tab:red"), ("held_out", "tab:blue")):
        if len(vals.get(name, [])):
            ax.hist(vals[name], bins=20, range=(min(0.0, float(np.min(vals[name]))), 1.0), alpha=0.5, color=color,
                    label=name.replace("_", "-"))
    t = rec["thresholds"]["ssim"]
    if t is not None:
        ax.axvline(t, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("nearest-neighbour SSIM", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    return _save(fig, path)


def fidelity(path: Path, hists: dict, view: str) -> Path | None:
    if not hists:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(hists), figsize=(2.4 * len(hists) + 0.4, 2.4), squeeze=False)
    for ax, (name, (edges, a, b)) in zip(axes[0], hists.items()):
        mid = (edges[1:] + edges[:-1]) / 2
        ax.plot(mid, a, color="tab:red", label="synthetic")
        ax.plot(mid, b, color="tab:blue", label=f"real ({view})")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("intensity", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    return _save(fig, path)


def diversity(path: Path, rec: dict) -> Path | None:
    plt = _plt()
    names = [k for k in ("within_mask", "kept", "real") if rec.get(k, {}).get("pairs")]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    ax.bar(names, [rec[k]["mean"] for k in names], yerr=[rec[k]["sd"] for k in names], color=["tab:orange", "tab:red",
                                                                                                 "tab:blue"][:len(names)])
    ax.set_ylabel(f"mean pairwise {rec[names[0]]['metric']}", fontsize=7)
    ax.set_title("higher = less diverse", fontsize=7)
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def faithfulness(path: Path, scores: dict, seg: dict | None) -> Path | None:
    plt = _plt()
    vals = scores.get("values")
    panels = (1 if vals else 0) + (1 if seg and seg.get("values") else 0)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.6), squeeze=False)
    k = 0
    if vals:
        ax = axes[0, k]
        for g, color in (("kept", "tab:green"), ("rejected", "tab:gray")):
            if vals[g]["mean_iou"]:
                ax.hist(vals[g]["mean_iou"], bins=20, range=(0, 1), alpha=0.6, color=color, label=g)
        ax.set_xlabel("filter mean IoU", fontsize=7)
        ax.legend(fontsize=6)
        k += 1
    if seg and seg.get("values"):
        ax = axes[0, k]
        ax.hist(seg["values"], bins=20, range=(0, 1), color="tab:purple")
        ax.axvline(seg["min_dice"], color="k", ls="--", lw=1)
        ax.set_xlabel("segmenter Dice vs conditioning mask (kept)", fontsize=7)
    for ax in axes[0]:
        ax.tick_params(labelsize=6)
    return _save(fig, path)
