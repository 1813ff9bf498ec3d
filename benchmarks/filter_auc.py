"""How well does a filter scorer tell aligned from misaligned image/mask pairs?

Aligned = a real image with its own mask. Misaligned = the same image with the mask
shifted 3-8 px, elastically warped (max displacement ~5 px), or taken from another
subject (``other``); ``noise`` = smoothed noise instead of the image (a render that
ignored its conditions). The score is the mean IoU over labels (and, reported too, the mean
confidence); the AUC (aligned = positive) is computed from ranks, no sklearn.

Usage (from the repo root, ~1-2 min per dataset on one core):

    OMP_NUM_THREADS=1 python benchmarks/filter_auc.py --datasets brats chaos phantom \
        --methods random_walker watershed grabcut region_grow --size 96

Data comes from ``$MRGEN_SHARED_DATA`` (default /work/shared/data); missing sets are skipped.
``--datasets run:RUN_FOLDER`` scores a finished run's real annotated target-modality items
(volumes in 3D, scored like candidates: ``score_any``, up to 8 axial slices) to set that run's
filter thresholds, e.g. ``--datasets run:runs/demo3d --thresholds 0.3 0.5 0.5 0.8``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.stats import rankdata

from mrgen.filter.classical import METHODS, ClassicalScorer
from mrgen.filter.scorers import score_any
from mrgen.filter.select import Thresholds, failures


def auc(pos, neg) -> float:
    """Mann-Whitney AUC from average ranks (ties count half)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _norm(a, ref=None):
    ref = a if ref is None else ref
    lo, hi = np.percentile(ref, [0.5, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 2 - 1).astype(np.float32)


def _resize(a, size, order):
    from skimage.transform import resize

    out = resize(a, (size, size), order=order, preserve_range=True, anti_aliasing=order > 0)
    return out.astype(np.float32) if order else np.rint(out).astype(np.int64)


def _square(a, box, fill):
    y0, y1, x0, x1 = box
    c = a[y0:y1, x0:x1]
    s = max(c.shape)
    out = np.full((s, s), fill, a.dtype)
    out[(s - c.shape[0]) // 2:(s - c.shape[0]) // 2 + c.shape[0], (s - c.shape[1]) // 2:(s - c.shape[1]) // 2 + c.shape[1]] = c
    return out


def load_brats(root: Path, size: int, per_subject: int = 3):
    import nibabel as nib

    items = []
    for case in sorted(root.glob("brats_2013_pat*")):
        lab = np.asarray(nib.load(str(case / "OTMultiClass.nii.gz")).dataobj).astype(np.int64)
        brain = np.asarray(nib.load(str(case / "brainmask.nii.gz")).dataobj) > 0
        area = (lab > 0).sum((0, 1))
        zc = int(area.argmax())
        zs = [z for z in (zc, zc - 8, zc + 8)[:per_subject] if area[z] > 50]
        ys, xs = np.nonzero(brain.any(2))
        box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        for mod in ("Flair", "T1c"):
            vol = np.asarray(nib.load(str(case / f"{mod}_subtrMeanDivStd.nii.gz")).dataobj).astype(np.float32)
            for z in zs:
                img = _norm(vol[:, :, z], vol[:, :, z][brain[:, :, z]])
                img = _resize(_square(img, box, -1.0), size, 1)
                m = _resize(_square(lab[:, :, z], box, 0), size, 0)
                items.append((f"brats/{case.name[-6:]}/{mod}/z{z}", case.name, img, m))
    return items


def load_chaos(root: Path, size: int, per_subject: int = 2, max_subjects: int = 10):
    import nibabel as nib

    items = []
    cases = sorted(root.glob("image_*.nii.gz"), key=lambda p: int(p.name[6:-7]))[:max_subjects]
    for img_p in cases:
        cid = img_p.name[6:-7]
        vol = np.asarray(nib.load(str(img_p)).dataobj).astype(np.float32)
        lab = np.asarray(nib.load(str(root / f"label_{cid}.nii.gz")).dataobj).astype(np.int64)
        nlab = np.array([len(np.unique(lab[:, :, z])) for z in range(lab.shape[2])])
        area = (lab > 0).sum((0, 1)) * (nlab >= 3)
        order = np.argsort(-area)
        zs = [int(order[0])] + [int(z) for z in order[1:] if abs(int(z) - int(order[0])) >= 3][: per_subject - 1]
        for z in zs:
            img = _resize(_norm(vol[:, :, z]), size, 1)
            m = _resize(lab[:, :, z], size, 0)
            items.append((f"chaos/{cid}/z{z}", cid, img, m))
    return items


def load_phantom(size: int, subjects: int = 6):
    try:
        import mrgen.phantom as ph  # noqa: F401
    except ImportError:
        return []
    import tempfile

    from mrgen import config as C
    from mrgen.io import read_image

    items = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.load_config("cpu", overrides=[f"run.workdir={tmp}", f"phantom.subjects={subjects}", f"phantom.size={size}"])
        ph.run(cfg)
        masks = sorted(Path(tmp, "phantom", "masks").glob("*.nii.gz"))
        for mp in masks:
            subj = mp.name.split(".")[0]
            lab = read_image(mp, "mask").array.astype(np.int64)
            z = int(((lab > 0).sum((0, 1))).argmax())
            for ip in sorted(Path(tmp, "phantom", "images").glob(f"{subj}_*.nii.gz")):
                vol = read_image(ip).array
                items.append((f"phantom/{ip.name[:-7]}/z{z}", subj, _norm(vol[:, :, z]), lab[:, :, z]))
    return items


def shifted(m, rng, lo=3, hi=8):
    """``m`` moved by ``lo``-``hi`` px in a random direction (2D, or in-plane for a 3D (Z, H, W) volume)."""
    ang, mag = rng.uniform(0, 2 * np.pi), rng.uniform(lo, hi)
    vec = (0.0,) * (m.ndim - 2) + (mag * np.sin(ang), mag * np.cos(ang))
    return ndi.shift(m, vec, order=0, mode="constant", cval=0)


def warped(m, rng, amp=5.0):
    """A smooth random displacement of at most ``amp`` px along every axis (2D or 3D)."""
    grid = np.indices(m.shape).astype(np.float64)
    field = [ndi.gaussian_filter(rng.standard_normal(m.shape), max(m.shape) / 8) for _ in range(m.ndim)]
    coords = [g + f / (np.abs(f).max() + 1e-8) * amp for g, f in zip(grid, field)]
    return ndi.map_coordinates(m, coords, order=0, mode="constant", cval=0)


def load_run(folder: Path):
    """A finished run's real annotated target-modality items, as the run's stages see them."""
    from mrgen import config as C
    from mrgen.pairs import real_pairs
    from mrgen.curate.index import Index

    cfg = C.load_config(file=folder / "config.yaml", overrides=[f"run.workdir={folder}"])
    kind = "volume" if cfg.data.spatial_dims == 3 else "slice"
    rows = [r for r in Index(folder / "curated" / "index.parquet").query(kind=kind, modality=cfg.run.target_modality)
            if r["has_mask"]]
    images, masks = real_pairs(cfg, rows, keep_context=True)  # the filter scores context labels too
    return [(r["id"], r["subject"], img, m)
            for r, img, m in zip(rows, images, masks) if m.any()]


def make_pairs(items, seed=0):
    """[(name, kind, image, mask)] with kind in aligned|shift|elastic|other|noise (a render that ignored everything)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, (name, subj, img, m) in enumerate(items):
        pairs.append((name, "aligned", img, m))
        pairs.append((name, "shift", img, shifted(m, rng)))
        pairs.append((name, "elastic", img, warped(m, rng)))
        noise = ndi.gaussian_filter(rng.standard_normal(img.shape), 1.5)
        pairs.append((name, "noise", np.clip(noise / (3 * noise.std() + 1e-8), -1, 1).astype(np.float32), m))
        others = [j for j, it in enumerate(items) if it[1] != subj and it[3].any()]
        if others:
            j = others[rng.integers(len(others))]
            pairs.append((name, "other", img, items[j][3]))
    return pairs


def evaluate(pairs, scorer, thresholds: Thresholds | None = None):
    rows, t0 = [], time.process_time()  # CPU time: robust to other jobs on shared cores
    for name, kind, img, m in pairs:
        s = score_any(scorer, img, m)
        if not s:
            continue
        mi, mc = np.mean([v[0] for v in s.values()]), np.mean([v[1] for v in s.values()])
        rec = {"labels": {k: {"iou": v[0], "conf": v[1]} for k, v in s.items()}, "mean_iou": mi, "mean_conf": mc}
        rows.append((kind, mi, mc, not failures(rec, thresholds) if thresholds else None))
    dt = (time.process_time() - t0) / max(1, len(pairs))
    res = {"sec_per_pair": dt}
    al = np.array([r[1] for r in rows if r[0] == "aligned"])
    ac = np.array([r[2] for r in rows if r[0] == "aligned"])
    res["aligned_iou_q10_25_50"] = np.quantile(al, [0.1, 0.25, 0.5]).round(2).tolist() if al.size else []
    res["aligned_conf_q10_25_50"] = np.quantile(ac, [0.1, 0.25, 0.5]).round(2).tolist() if ac.size else []
    if thresholds:
        res["pass_aligned"] = float(np.mean([r[3] for r in rows if r[0] == "aligned"]))
        res["pass_misaligned"] = float(np.mean([r[3] for r in rows if r[0] != "aligned"]))
    pos = [r for r in rows if r[0] == "aligned"]
    for kind in ("shift", "elastic", "other", "noise", "all"):
        neg = [r for r in rows if (r[0] == kind or (kind == "all" and r[0] != "aligned"))]
        if pos and neg:
            res[f"auc_iou_{kind}"] = auc([r[1] for r in pos], [r[1] for r in neg])
            res[f"auc_conf_{kind}"] = auc([r[2] for r in pos], [r[2] for r in neg])
            res[f"auc_prod_{kind}"] = auc([r[1] * r[2] for r in pos], [r[1] * r[2] for r in neg])
    res["iou_aligned"] = float(np.mean([r[1] for r in pos])) if pos else float("nan")
    res["conf_aligned"] = float(np.mean([r[2] for r in pos])) if pos else float("nan")
    res["iou_misaligned"] = float(np.mean([r[1] for r in rows if r[0] != "aligned"]))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["brats", "chaos", "phantom"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--perturb", type=int, default=4)
    ap.add_argument("--n-bg", type=int, default=0, help="0 = box prompt (all outside the box is background)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--upsample-to", type=int, default=None,
                    help="segment organs smaller than this on a finer grid (default: the method's own default)")
    ap.add_argument("--max-items", type=int, default=0,
                    help="score at most this many items per dataset, evenly spaced in its order (0 = all)")
    ap.add_argument("--thresholds", nargs=4, type=float, metavar=("ORGAN_IOU", "ORGAN_CONF", "MEAN_IOU", "MEAN_CONF"),
                    help="also report the share of aligned / misaligned pairs passing these thresholds")
    args = ap.parse_args(argv)
    root = Path(os.environ.get("MRGEN_SHARED_DATA", "/work/shared/data"))
    loaders = {
        "brats": lambda: load_brats(root / "brats2013", args.size) if (root / "brats2013").is_dir() else [],
        "chaos": lambda: load_chaos(root / "chaos_t2", args.size) if (root / "chaos_t2").is_dir() else [],
        "phantom": lambda: load_phantom(min(args.size, 64)),
    }
    print(f"| dataset | method | pairs | AUC IoU shift | elastic | other | noise | all | AUC conf all | AUC IoU·conf all | IoU aligned | IoU misal. | CPU s/pair |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        items = load_run(Path(ds[4:])) if ds.startswith("run:") else loaders[ds]()
        if not items:
            print(f"| {ds} | (absent) |", file=sys.stderr)
            continue
        if args.max_items and len(items) > args.max_items:  # evenly spaced: every subject stays represented
            items = [items[i] for i in np.linspace(0, len(items) - 1, args.max_items).round().astype(int)]
        pairs = make_pairs(items, args.seed)
        for method in args.methods:
            th = Thresholds(*args.thresholds) if args.thresholds else None
            r = evaluate(pairs, ClassicalScorer(method, perturb=args.perturb, n_bg=args.n_bg, upsample_to=args.upsample_to), th)
            print(f"| {ds} | {method} | {len(pairs)} | {r.get('auc_iou_shift', float('nan')):.3f} | {r.get('auc_iou_elastic', float('nan')):.3f} | "
                  f"{r.get('auc_iou_other', float('nan')):.3f} | {r.get('auc_iou_noise', float('nan')):.3f} | {r['auc_iou_all']:.3f} | {r['auc_conf_all']:.3f} | {r['auc_prod_all']:.3f} | "
                  f"{r['iou_aligned']:.2f} | {r['iou_misaligned']:.2f} | {r['sec_per_pair']:.3f} |", flush=True)
            extra = f"AUC conf noise {r.get('auc_conf_noise', float('nan')):.3f}; aligned IoU q10/25/50 {r['aligned_iou_q10_25_50']}, conf {r['aligned_conf_q10_25_50']}"
            if th:
                extra += f"; pass rate aligned {r['pass_aligned']:.2f}, misaligned {r['pass_misaligned']:.2f}"
            print(f"<!-- {ds} {method}: {extra} -->", flush=True)


if __name__ == "__main__":
    main()
