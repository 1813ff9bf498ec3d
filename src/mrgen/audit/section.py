"""The "Trust audit" section of ``report.md``, from ``audit/audit.json`` (imports nothing of mrgen)."""

from __future__ import annotations


def _f(x, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(rec: dict) -> list:
    """Report lines for an ``audit.json`` record (figure paths relative to the run folder)."""
    if "skipped" in rec:
        return ["## Trust audit", "", f"Skipped: {rec['skipped']}.", ""]
    mem, fid, div, faith = rec["memorisation"], rec["fidelity"], rec["diversity"], rec["faithfulness"]
    figs = rec.get("figures", {})
    sz = rec["sizes"]
    lines = ["## Trust audit", "",
             f"`mrgen audit` on {sz['synthetic']['audited']} of {sz['synthetic']['of']} kept synthetic images, "
             f"{sz['training']['audited']} of {sz['training']['of']} engine training images, "
             f"{sz['held_out']['audited']} held-out and {sz['target']['audited']} real target images "
             f"(`audit/audit.json`; docs/audit.md).", "",
             "### Memorisation", "",
             f"Nearest training image of each kept synthetic image: SSIM max {_f(mem['synthetic']['ssim'].get('max'))}, "
             f"median {_f(mem['synthetic']['ssim'].get('median'))}; feature cosine max "
             f"{_f(mem['synthetic']['cosine'].get('max'))}. Held-out real images (baseline): SSIM max "
             f"{_f(mem['held_out']['ssim'].get('max'))}, cosine max {_f(mem['held_out']['cosine'].get('max'))}. "
             f"**{mem['flagged']} near-copies** flagged ({mem['rule']}).", ""]
    if "memorisation" in figs:
        lines += [f"![memorisation]({figs['memorisation']})", ""]
    lines += ["### Fidelity per label", ""]
    for view, per in fid["labels"].items():
        lines += [f"View `{view}`: {fid['views'].get(view, '')}.", "",
                  "| label | synthetic mean ± sd | real mean ± sd | Δ mean (real sd) | W1 |", "|---|---|---|---|---|"]
        for name, s in per.items():
            if "w1" in s:
                lines.append(f"| {name} | {_f(s['synthetic_mean'])} ± {_f(s['synthetic_sd'])} | {_f(s['real_mean'])} ± "
                             f"{_f(s['real_sd'])} | {_f(s['mean_diff_sd'], 2)} | {_f(s['w1'])} |")
            else:
                lines.append(f"| {name} | ({s['synthetic_pixels']} px) | ({s['real_pixels']} px) | – | – |")
        lines.append("")
    g = fid["global"]
    if "FD" in g:
        lines += [f"Global: FD {_f(g['FD'], 4)}, KID {_f(g['KID'], 4)} (EfficientNet-Lite0 features, "
                  f"{g['synthetic_images']} vs {g['real_images']} images).", ""]
    if "fidelity" in figs:
        lines += [f"![fidelity per label]({figs['fidelity']})", ""]
    lines += ["### Diversity", "",
              "| pairs | " + " | ".join(k for k in ("within_mask", "kept", "real")) + " |", "|---|---|---|---|",
              f"| mean {div['kept'].get('metric', 'SSIM')} (higher = less diverse) | "
              + " | ".join(f"{_f(div[k].get('mean'))} ({div[k]['pairs']})" for k in ("within_mask", "kept", "real")) + " |",
              ""]
    if "diversity" in figs:
        lines += [f"![diversity]({figs['diversity']})", ""]
    lines += ["### Mask faithfulness", ""]
    f = faith["filter"]
    if "kept" in f:
        lines.append(f"Filter mean IoU: kept median {_f(f['kept']['mean_iou'].get('median'))} "
                     f"({f['kept']['mean_iou']['n']}), rejected median {_f(f['rejected']['mean_iou'].get('median'))} "
                     f"({f['rejected']['mean_iou']['n']}).")
    s = faith["segmenter"]
    if "mean_dice" in s:
        lines.append(f"Target segmenter (`segment/{rec['settings']['segmenter']}`) Dice against the conditioning mask on "
                     f"{s['images']} kept images: median {_f(s['mean_dice'].get('median'))}; **{s['flagged']}** below "
                     f"{s['min_dice']:g} (cannot be segmented back).")
    else:
        lines.append(f"Target segmenter check skipped: {s.get('skipped', '')}.")
    lines.append("")
    if "faithfulness" in figs:
        lines += [f"![mask faithfulness]({figs['faithfulness']})", ""]
    return lines
