"""Evaluate a trained segmenter on real test volumes: 3D Dice and HD95 per label.

:func:`evaluate_segmenter` writes into ``out_dir``: ``results.json`` (summary + per case),
``per_case.csv``, ``summary.md`` (a table), ``figures/dice_per_label.png`` and
``figures/overlays.png``. Reusable for any segmenter folder (source-only, engine, oracle).
Under a launcher (``procs``, :mod:`mrgen.dist`) each process predicts its share of the volumes and
process 0 writes the files from every process's cases, in the order one process would.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mrgen import dist, io
from mrgen.evaluate.metrics import dice_per_label, hd95


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def _clean(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def evaluate_segmenter(model_folder, rows: list[dict], index_root, out_dir, labels: dict, hd_percentile: float = 95.0,
                       overlays: int = 6, procs: dist.Procs | None = None, device: str = "cpu") -> dict:
    """Predict ``rows`` (test split, with masks) with the segmenter in ``model_folder``; score per volume.

    ``labels``: ``{value: name}`` (foreground); ``device``: where the network runs (:func:`mrgen.devices.of`). Returns the summary dict: ``name, volumes,
    mean_dice, mean_hd95, dice {name: mean}, hd95 {name: mean}, results`` (path of results.json).
    Context labels of the curated run (``curated/context.json``) are not scored and are background
    in the ground truth (:func:`mrgen.segment.load_rows`). ``procs``: the processes sharing the volumes
    (default: this one alone).
    """
    from mrgen.curate.labels import context_values
    from mrgen.segment import group_volumes, load_segmenter, predict_rows

    out = Path(out_dir)
    procs = procs or dist.Procs()
    model = load_segmenter(model_folder, device)
    drop = context_values(index_root)
    labels = {int(k): str(v) for k, v in labels.items() if int(k) != 0 and int(k) not in drop}
    rows = [r for r in rows if r.get("has_mask", True)]
    if not rows:
        raise ValueError("evaluate_segmenter: no test rows with masks")
    volumes = group_volumes(rows)
    order = {key: i for i, key in enumerate(volumes)}
    mine = [r for key in procs.share(list(volumes)) for r in volumes[key]]
    cases, samples = [], {}
    for vol in predict_rows(model, mine, index_root):
        d = dice_per_label(vol["pred"], vol["gt"], labels)
        rec = {"volume": vol["key"], "slices": len(vol["ids"]), "spacing_zxy": [round(s, 4) for s in vol["spacing"]]}
        for lab, name in labels.items():
            rec[f"dice_{name}"] = _clean(d[lab])
            rec[f"hd95_{name}"] = _clean(hd95(vol["pred"], vol["gt"], lab, vol["spacing"], hd_percentile))
        rec["mean_dice"] = _clean(_nanmean([d[lab] for lab in labels]))
        cases.append(rec)
        if order[vol["key"]] < overlays:  # the first volumes in order, whichever process predicts them
            fg = (vol["gt"] != 0).reshape(len(vol["gt"]), -1).sum(1)
            z = int(np.argmax(fg))
            samples.update({f"{order[vol['key']]}_{k}": vol[k][z] for k in ("image", "gt", "pred")})
    procs.put(out / ".parts", cases, samples)
    return procs.on_main(lambda: _write_results(model_folder, out, procs.parts(out / ".parts"), order, labels,
                                                hd_percentile))


def _write_results(model_folder, out: Path, parts: list, order: dict, labels: dict, hd_percentile: float) -> dict:
    """Process 0: the summary, ``results.json``, the table and the figures from every process's cases."""
    cases = sorted((c for meta, _ in parts for c in meta), key=lambda c: order[c["volume"]])
    arrays = {k: v for _, a in parts for k, v in a.items()}
    keys = list(order)
    samples = [(keys[i], arrays[f"{i}_image"], arrays[f"{i}_gt"], arrays[f"{i}_pred"])
               for i in sorted({int(k.split("_")[0]) for k in arrays})]
    per_label = {name: _clean(_nanmean([c[f"dice_{name}"] for c in cases])) for name in labels.values()}
    per_label_hd = {name: _clean(_nanmean([c[f"hd95_{name}"] for c in cases])) for name in labels.values()}
    summary = {
        "name": Path(model_folder).name, "model": str(model_folder), "volumes": len(cases),
        "mean_dice": _clean(_nanmean(list(per_label.values()))), "mean_hd95": _clean(_nanmean(list(per_label_hd.values()))),
        "dice": per_label, "hd95": per_label_hd, "hd_percentile": hd_percentile, "results": str(out / "results.json"),
    }
    if summary["mean_dice"] is None:
        summary["mean_dice"] = 0.0
    io.write_json(out / "results.json", {"schema": 1, "summary": summary, "cases": cases})
    _write_csv(out / "per_case.csv", cases)
    _write_table(out / "summary.md", summary)
    figures = out / "figures"
    try:
        _bar(figures / "dice_per_label.png", summary)
        _overlays(figures / "overlays.png", samples, labels)
    except Exception as exc:  # figures never fail an evaluation
        summary["figure_error"] = f"{type(exc).__name__}: {exc}"
    return summary


def read_cases(results: str | Path) -> list[dict]:
    """The per-volume records of a ``results.json`` (its one reader): ``volume``, ``dice_<label>``, ``hd95_<label>``."""
    return io.read_versioned(Path(results), 1, "delete it and rerun the evaluation (`mrgen evaluate segmenter`)")["cases"]


def _write_csv(path: Path, cases: list[dict]) -> None:
    cols = list(dict.fromkeys(k for c in cases for k in c))
    with io.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for c in cases:
                w.writerow({k: ("" if c.get(k) is None else c.get(k)) for k in cols})


def _fmt(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _write_table(path: Path, s: dict) -> None:
    names = list(s["dice"])
    lines = [f"# {s['name']}: {s['volumes']} test volumes", "",
             "| metric | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1),
             "| Dice (3D) | " + " | ".join(_fmt(s["dice"][n]) for n in names) + f" | {_fmt(s['mean_dice'])} |",
             f"| HD{s['hd_percentile']:g} (mm) | " + " | ".join(_fmt(s["hd95"][n], 1) for n in names) + f" | {_fmt(s['mean_hd95'], 1)} |", ""]
    with io.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(path: Path, s: dict) -> None:
    plt = _plt()
    names = list(s["dice"])
    vals = [s["dice"][n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(names) + 1.5), 2.8))
    ax.bar(names, vals, color="tab:blue")
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("3D Dice")
    ax.set_title(f"{s['name']}: mean Dice {s['mean_dice']:.3f} ({s['volumes']} volumes)", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _overlays(path: Path, samples: list, labels: dict) -> None:
    if not samples:
        return
    plt = _plt()
    fig, axes = plt.subplots(2, len(samples), figsize=(1.9 * len(samples), 4.0), squeeze=False)
    for j, (key, img, gt, pred) in enumerate(samples):
        for i, (m, title) in enumerate(((gt, "ground truth"), (pred, "prediction"))):
            ax = axes[i, j]
            ax.imshow(img.T, origin="lower", cmap="gray", vmin=-1, vmax=1)
            for lab in labels:
                if (m == lab).any():
                    ax.contour((m == lab).T.astype(float), levels=[0.5], colors=[plt.cm.tab10(lab % 10)], linewidths=0.7,
                               origin="lower")
            ax.set_title(f"{title}\n{key.split('/')[-2] if key.count('/') >= 2 else key}", fontsize=6)
            ax.axis("off")
    fig.suptitle("test slices with most foreground: ground truth (top) vs prediction (bottom)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
