"""Benchmark report: ``bench.json``, ``bench.md``, ``dice.png``, ``examples.png``, ``pairs.png``.

Dice is reported per label (or label group) as mean ± sd over folds (sd with ddof=1; 0 for
one fold) of each fold's mean over its test volumes; HD95 likewise (mm, volumes where
either side is empty are left out). The headline is the fraction of the source_only →
oracle gap each method closes, on the mean Dice over folds; ``mrgen`` against the best baseline per
test volume with a paired bootstrap (:mod:`mrgen.bench.compare`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.bench import compare
from mrgen.report import gap_closed


def _ms(vals: list) -> tuple[float, float]:
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], float)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(results: list, methods: list) -> dict:
    out = {}
    for m in methods:
        rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["fold"])
        if not rs:
            continue
        labels = list(dict.fromkeys(k for r in rs for k in r["metrics"]["per_label"]))
        per_label = {}
        for lab in labels:
            d = [r["metrics"]["per_label"].get(lab, {}).get("dice") for r in rs]
            h = [r["metrics"]["per_label"].get(lab, {}).get("hd95") for r in rs]
            dm, ds = _ms(d)
            hm, hs = _ms(h)
            per_label[lab] = {"dice": dm, "dice_sd": ds, "hd95": hm, "hd95_sd": hs, "per_fold_dice": d}
        md, sd = _ms([r["metrics"]["mean_dice"] for r in rs])
        hd, hsd = _ms([r["metrics"].get("mean_hd95") for r in rs])
        cpu_m = [r["compute"]["method"]["cpu_s"] / 60 for r in rs]
        cpu_s = [(r["compute"].get("segmenter") or {}).get("cpu_s", float("nan")) / 60 for r in rs]
        out[m] = {
            "mean_dice": md, "mean_dice_sd": sd, "mean_hd95": hd, "mean_hd95_sd": hsd, "per_label": per_label,
            "per_fold": {r["fold"]: r["metrics"]["mean_dice"] for r in rs}, "folds": len(rs),
            "n_pairs": int(np.mean([r["n_pairs"] for r in rs])),
            "method_cpu_min": float(np.mean(cpu_m)), "segmenter_cpu_min": float(np.nanmean(cpu_s)),
            "peak_rss_mb": max(r["compute"]["total"]["peak_rss_mb"] for r in rs),
            "over_budget": [r["fold"] for r in rs if r.get("over_budget")], "budget_cpu_min": rs[0].get("budget_cpu_min", 0.0),
            "notes": {r["fold"]: r["notes"] for r in rs if r.get("notes")},
        }
    so, orc = out.get("source_only", {}).get("mean_dice"), out.get("oracle", {}).get("mean_dice")
    for m, s in out.items():
        s["gap_closed"] = gap_closed(s["mean_dice"], so, orc) if so is not None and orc is not None else float("nan")
        s["vs_source_only"] = s["mean_dice"] / so if so and so > 1e-9 else float("nan")  # in-domain: synthetic ÷ real
    return out


def _f(x: float, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _cpu(minutes: float) -> str:
    return _f(minutes, 2 if minutes is None or not math.isfinite(minutes) or minutes >= 0.1 else 3)


def markdown(spec, summary: dict, results: list, curate_compute: dict, comparison: dict | None = None) -> str:
    labels = list(dict.fromkeys(k for s in summary.values() for k in s["per_label"]))
    folds = spec.folds
    seg = spec.tree["config"].get("segment", {})
    lines = [f"# Benchmark `{spec.name}`", ""]
    if spec.tree.get("description"):
        lines += [str(spec.tree["description"]).strip(), ""]
    lines += [
        f"- definition: `{spec.path}`; data: `{spec.data_root}`",
        f"- {len(folds)} fold(s); segmenter (same for every method): `{seg}` on preset `{spec.tree['config'].get('preset', 'cpu')}`",
        f"- reported labels: {', '.join(f'{k} = {v}' for k, v in spec.groups.items()) or 'each label'}; "
        f"trained on the original labels",
        f"- curation: {_f(curate_compute.get('cpu_s', 0) / 60, 2)} CPU min",
        "",
        "## 3D Dice on real target test volumes (mean ± sd over folds)",
        "",
        "| method | " + " | ".join(labels) + " | mean Dice | HD95 mm | gap closed | × source_only | pairs | method CPU min | segmenter CPU min | peak MB |",
        "|---|" + "---|" * (len(labels) + 8),
    ]
    for m, s in summary.items():
        cells = [f"{_f(s['per_label'][lab]['dice'])} ± {_f(s['per_label'][lab]['dice_sd'])}" if lab in s["per_label"] else "–"
                 for lab in labels]
        flag = " ⚠" if s["over_budget"] else ""
        lines.append(f"| {m} | " + " | ".join(cells) + f" | **{_f(s['mean_dice'])}** ± {_f(s['mean_dice_sd'])} | "
                     f"{_f(s['mean_hd95'], 1)} | {_f(s['gap_closed'], 2)} | {_f(s['vs_source_only'], 2)} | {s['n_pairs']} | "
                     f"{_cpu(s['method_cpu_min'])}{flag} | {_cpu(s['segmenter_cpu_min'])} | {s['peak_rss_mb']:.0f} |")
    lines += ["", "*gap closed* = (method − source_only) / (oracle − source_only) on mean Dice; "
              "*× source_only* = method ÷ source_only on mean Dice (in-domain, e.g. CHAOS: synthetic ÷ real pairs of the "
              "same masks, the paper's Table 6 ratio); "
              "*method CPU min* = making the training pairs (incl. any generator training, e.g. the engine's "
              "stages, shared stages counted for every variant that uses them); ⚠ = over the method's CPU budget; "
              "*peak MB* = peak resident memory of the process while the method ran (incl. loaded libraries).", ""]
    lines += ["## Mean Dice per fold", "", "| method | " + " | ".join(f"fold {f.index}" for f in folds) + " |",
              "|---|" + "---|" * len(folds)]
    for m, s in summary.items():
        lines.append(f"| {m} | " + " | ".join(_f(s["per_fold"].get(f.index)) for f in folds) + " |")
    lines += ["", "## Folds", "", "| fold | source | target (unannotated) | test |" + (" engine source |" if any(f.engine_source for f in folds) else ""),
              "|---|---|---|---|" + ("---|" if any(f.engine_source for f in folds) else "")]
    for f in folds:
        z = lambda zz: f" z∈[{zz[0]}, {zz[1]})" if zz else ""  # noqa: E731
        row = f"| {f.index} | {', '.join(f.source)}{z(f.source_z)} | {', '.join(f.target)}{z(f.target_z)} | {', '.join(f.test)}{z(f.test_z)} |"
        if any(g.engine_source for g in folds):
            row += f" {', '.join(f.engine_source)} |"
        lines.append(row)
    lines += [""] + compare.markdown(comparison)
    notes = {m: s["notes"] for m, s in summary.items() if s["notes"]}
    if notes:
        lines += ["", "## Notes", ""] + [f"- {m}: {n}" for m, n in notes.items()]
    lines += ["", "## Figures", "", "![Dice per label](dice.png)", "", "![Example predictions (fold 0)](examples.png)", "",
              "![Training pairs per method (fold 0)](pairs.png)", ""]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    return path


def dice_chart(summary: dict, path: Path) -> Path:
    plt = _plt()
    methods = list(summary)
    labels = list(dict.fromkeys(k for s in summary.values() for k in s["per_label"])) + ["mean"]
    fig, ax = plt.subplots(figsize=(2.0 + 0.35 * len(methods) * len(labels), 3.4))
    width = 0.8 / max(1, len(methods))
    xs = np.arange(len(labels))
    for i, m in enumerate(methods):
        s = summary[m]
        vals = [s["per_label"].get(lab, {}).get("dice", np.nan) for lab in labels[:-1]] + [s["mean_dice"]]
        err = [s["per_label"].get(lab, {}).get("dice_sd", 0.0) for lab in labels[:-1]] + [s["mean_dice_sd"]]
        ax.bar(xs + i * width, np.nan_to_num(vals), width, yerr=np.nan_to_num(err), capsize=2, label=m)
    ax.set_xticks(xs + width * (len(methods) - 1) / 2, labels, fontsize=8)
    ax.set_ylabel("3D Dice (target test, mean ± sd over folds)", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(3, len(methods)))
    fig.tight_layout()
    return _save(fig, path)


def examples_grid(wd: Path, methods: list, fold: int, path: Path) -> Path | None:
    """Rows: test examples of ``fold``; columns: image, ground truth, each method's prediction."""
    ex = {m: wd / "folds" / str(fold) / m / "eval" / "examples.npz" for m in methods}
    ex = {m: p for m, p in ex.items() if p.exists()}
    if not ex:
        return None
    data = {m: dict(np.load(p, allow_pickle=False)) for m, p in ex.items()}
    first = next(iter(data.values()))
    n = len(first["image"])
    plt = _plt()
    cols = 2 + len(data)
    fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.5 * n + 0.3), squeeze=False)
    vmax = max(9, max(int(d["gt"].max()) for d in data.values()))

    def overlay(ax, img, lab):
        ax.imshow(img.T, origin="lower", cmap="gray", vmin=-1, vmax=1)
        ax.imshow(np.ma.masked_equal(lab, 0).T, origin="lower", cmap="tab10", vmin=0, vmax=vmax, alpha=0.6,
                  interpolation="nearest")

    for i in range(n):
        img, gt = first["image"][i], first["gt"][i]
        axes[i, 0].imshow(img.T, origin="lower", cmap="gray", vmin=-1, vmax=1)
        overlay(axes[i, 1], img, gt)
        for j, (m, d) in enumerate(data.items()):
            overlay(axes[i, 2 + j], img, d["pred"][i])
            if gt.any():
                axes[i, 2 + j].contour(gt.T > 0, levels=[0.5], colors="w", linewidths=0.5, origin="lower")
            if i == 0:
                axes[i, 2 + j].set_title(m, fontsize=7)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=7)
            axes[i, 1].set_title("ground truth", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(f"fold {fold}: predictions on real target test slices (white: ground-truth outline)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pairs_grid(wd: Path, methods: list, fold: int, path: Path, n: int = 6) -> Path | None:
    """Rows: methods; columns: ``n`` of the method's training pairs (most foreground first; red: mask outline)."""
    files = {m: wd / "folds" / str(fold) / m / "pairs.npz" for m in methods}
    files = {m: p for m, p in files.items() if p.exists()}
    if not files:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(files), n, figsize=(1.4 * n + 0.8, 1.4 * len(files) + 0.3), squeeze=False)
    for i, (m, p) in enumerate(files.items()):
        with np.load(p, allow_pickle=False) as z:
            masks = z["masks"]
            fg = (masks.reshape(len(masks), -1) > 0).sum(1)
            order = np.argsort(-fg, kind="stable")
            picks = order[np.linspace(0, max(0, min(len(order), 4 * n) - 1), n).astype(int)] if len(order) else []
            for j, k in enumerate(picks):
                img, msk = z["images"][k].astype(np.float32), masks[k]
                if img.ndim == 3:
                    zz = int(np.argmax((msk > 0).sum((1, 2))))
                    img, msk = img[zz], msk[zz]
                axes[i, j].imshow(img.T, origin="lower", cmap="gray", vmin=-1, vmax=1)
                if msk.any():
                    axes[i, j].contour(msk.T > 0, levels=[0.5], colors="r", linewidths=0.4, origin="lower")
        axes[i, 0].set_ylabel(m, fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"training pairs per method (fold {fold})", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write(spec, wd: Path, results: list, labels: dict, curate_compute: dict) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in results))
    summary = aggregate(results, methods)
    comparison = compare.headline(summary, results, seed=int(spec.tree.get("seed", 0)))
    io.write_json(wd / "bench.json", {"name": spec.name, "data_root": str(spec.data_root), "groups": spec.groups,
                                      "labels": labels, "folds": [f.as_dict() for f in spec.folds],
                                      "curate_compute": curate_compute, "summary": summary,
                                      "comparison": comparison,
                                      "results": results})
    from mrgen.config import atomic_write_text

    atomic_write_text(wd / "bench.md", markdown(spec, summary, results, curate_compute, comparison))
    first = spec.folds[0].index if spec.folds else 0
    dice_chart(summary, wd / "dice.png")
    examples_grid(wd, methods, first, wd / "examples.png")
    pairs_grid(wd, methods, first, wd / "pairs.png")
    line = "; ".join(f"{m} {s['mean_dice']:.3f}" for m, s in summary.items())
    return {"report": str(wd / "bench.md"), "json": str(wd / "bench.json"), "result": line}
