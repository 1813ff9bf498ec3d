"""The run report: ``<workdir>/report.md`` plus a Dice bar chart, linking the stage figures."""

from __future__ import annotations

import math
import os
from pathlib import Path

from mrgen import config as C
from mrgen import devices, io

FIGURES = [
    ("Generated label maps (labelgen; orthogonal views in 3D)", "labelgen/labels.png"),
    ("Morphed label maps (before / after / changed)", "morph/preview.png"),
    ("Synthetic candidates (source masks → target prompt)", "synth/samples.png"),
    ("3D: label volumes and rendered volumes, orthogonal views", "synth/ortho.png"),
    ("Autofilter: kept vs rejected candidates", "filter/kept_vs_rejected.png"),
    ("Phantom (built-in data)", "phantom/preview.png"),
]


def gap_closed(method: float, source_only: float, oracle: float) -> float:
    """Fraction of the source-only → oracle Dice gap a method closes (nan when there is no gap)."""
    gap = oracle - source_only
    return (method - source_only) / gap if gap > 1e-9 else float("nan")


def dice_chart(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(summary)
    labels = _labels(summary)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(1, len(labels) + 1) * len(methods) / 2, 3.2))
    width = 0.8 / max(1, len(methods))
    xs = np.arange(len(labels) + 1)
    for i, m in enumerate(methods):
        vals = [summary[m].get("dice", {}).get(lab) or 0.0 for lab in labels] + [summary[m].get("mean_dice") or 0.0]
        ax.bar(xs + i * width, vals, width, label=m)
    ax.set_xticks(xs + width * (len(methods) - 1) / 2, labels + ["mean"], rotation=20, fontsize=8)
    ax.set_ylabel("3D Dice (target test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _labels(summary: dict) -> list:
    """Label names in label-value order (the order evaluate reports them in)."""
    out: list = []
    for m in summary.values():
        out += [lab for lab in m.get("dice", {}) if lab not in out]
    return out


def _fmt(x, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write_report(cfg: C.Config, summary: dict, quality: dict | None = None) -> Path:
    wd = cfg.workdir
    chart = dice_chart(summary, wd / "eval" / "dice.png")
    labels = _labels(summary)
    lines = [
        f"# mrgen report — {cfg.run.source_modality} masks → {cfg.run.target_modality}",
        "",
        f"Run folder `{wd}`, preset `{cfg.preset}`, device `{devices.of(cfg)}` (run.device={cfg.run.device}), "
        "resolved config in `config.yaml`. "
        "Segmenters are evaluated with 3D Dice per label on the real target-modality test volumes "
        "(slices stacked back per volume).",
        "",
        "| segmenter trained on | mean Dice | " + " | ".join(f"{lab} Dice" for lab in labels) + " | mean HD95 |",
        "|---|---|" + "---|" * len(labels) + "---|",
    ]
    for m, s in summary.items():
        cells = [_fmt(s.get("dice", {}).get(lab)) for lab in labels]
        lines.append(f"| {m} | {_fmt(s.get('mean_dice'))} | " + " | ".join(cells) + f" | {_fmt(s.get('mean_hd95'), 2)} |")
    if {"source_only", "oracle", "engine"} <= set(summary):
        g = gap_closed(summary["engine"]["mean_dice"], summary["source_only"]["mean_dice"], summary["oracle"]["mean_dice"])
        if not math.isnan(g):
            lines += ["", f"The engine closes **{100 * g:.0f} %** of the source-only → oracle gap."]
    lines += ["", "`engine`: synthetic target images rendered from source masks and kept by the autofilter; "
              "`source_only`: real source-modality images; `oracle`: real annotated target images (the ceiling; "
              "never used by the engine).", ""]
    if "oracle_plus_engine" in summary and "oracle" in summary:
        d = summary["oracle_plus_engine"]["mean_dice"] - summary["oracle"]["mean_dice"]
        lines += [f"Real + synthetic (`oracle_plus_engine`, FOSCU's setting) vs real only: **{d:+.3f}** mean Dice.", ""]
    fd = {k: v for k, v in (quality or {}).items() if k.startswith(("FD-", "KID-"))}
    if fd:
        lines += ["Image quality of the kept synthetic images vs real target images ("
                  f"{quality.get('synthetic_images')} vs {quality.get('real_images')} images; 3D: axial slices): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in fd.items()) + ".", ""]
    lines += [f"![Dice per label]({os.path.relpath(chart, wd)})", ""]
    for title, rel in FIGURES:
        if (wd / rel).exists():
            lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    if (wd / "audit" / "audit.json").exists():  # the trust audit (mrgen.audit)
        from mrgen.audit.section import markdown

        lines += markdown(io.read_json(wd / "audit" / "audit.json"))
    for m in summary:
        for fig in sorted((wd / "eval" / m).glob("**/*.png")):
            lines += [f"## {m}: {fig.stem}", "", f"![{m} {fig.stem}]({os.path.relpath(fig, wd)})", ""]
    path = wd / "report.md"
    C.atomic_write_text(path, "\n".join(lines))
    return path
