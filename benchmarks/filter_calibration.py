"""Do calibrated filter thresholds pass real target pairs and reject misaligned ones? No training.

On a curated run folder (``mrgen curate -w RUN ...``): the thresholds ``filter.thresholds=calibrated``
would use (:func:`mrgen.filter.calibrate.calibrate` on the run's real source pairs), then the share of
real **target test** pairs (each image with its own mask: a stand-in for a perfect candidate) and of
the same pairs with the mask shifted by ``--shift`` px in a random direction (a misaligned candidate)
that pass them, strictly and at the relaxed second chance (thresholds - ``filter.relax``).

    mrgen curate -w /tmp/calib-mscmr curate.manifest=examples/mscmrseg.yaml data.image_size=64 \\
        run.source_modality=bSSFP run.target_modality=LGE
    OMP_NUM_THREADS=1 python benchmarks/filter_calibration.py /tmp/calib-mscmr --shift 8

Overrides after the folder (``filter.calibration_quantile=0.1``) change the run's config. Prints one
Markdown table row per shift and the thresholds; results in docs/filter.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mrgen import config as C
from mrgen.filter.calibrate import calibrate
from mrgen.filter.scorers import build_scorer
from mrgen.filter.select import failures
from mrgen.filter.stage import score_candidates, scored_mask, scorer_id


def shifted(m: np.ndarray, rng: np.random.Generator, px: float) -> np.ndarray:
    """``m`` moved by ``px`` in a random in-plane direction (nearest neighbour, zeros shifted in)."""
    ang = rng.uniform(0, 2 * np.pi)
    vec = (0.0,) * (m.ndim - 2) + (px * np.sin(ang), px * np.cos(ang))
    return ndi.shift(m, vec, order=0, mode="constant", cval=0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a curated run folder (curated/ and config.yaml)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. filter.calibration_quantile=0.1")
    ap.add_argument("--shift", type=float, nargs="+", default=[8.0], help="misalignment(s) in pixels")
    ap.add_argument("--max-test", type=int, default=0, help="score at most this many test pairs (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from mrgen.curate.index import Index
    from mrgen.curate.labels import context_values
    from mrgen.pairs import real_pairs
    from mrgen.roles import assign

    cfg = C.load_config(file=args.run / "config.yaml", overrides=[f"run.workdir={args.run}", *args.overrides])
    scorer, sid = build_scorer(cfg), scorer_id(cfg)
    context = context_values(args.run / "curated")

    def score(img, m, key):
        return score_candidates(scorer, [img], scored_mask(scorer, m, context), key)[0]

    with tempfile.TemporaryDirectory() as tmp:  # the run folder is read, never written
        t, cal = calibrate(cfg, score, sid, Path(tmp), [])
    relaxed = t.relaxed(cfg.filter.relax)
    rows = [r for r in assign(Index(args.run / "curated" / "index.parquet"), cfg).test if r.get("labels")]
    if args.max_test:
        rows = rows[: args.max_test]
    images, masks = real_pairs(cfg, rows, keep_context=True)
    rng = np.random.default_rng(args.seed)
    print(f"calibrated on {cal['items']} real {cal['modality']} pairs (of {cal['items_available']}), quantile "
          f"{cal['quantile']}: {t.describe()}", file=sys.stderr)
    for lab, d in cal["distribution"]["labels"].items():
        print(f"  label {lab}: n {d['n']}, iou {d['iou']}, conf {d['conf']}", file=sys.stderr)
    print(f"| data | quantile | source pairs | test pairs | aligned pass (strict / relaxed) | "
          f"shifted pass (strict / relaxed) | shift px |")
    print("|---|---|---|---|---|---|---|")
    aligned = [score(img, m, r["id"]) for r, img, m in zip(rows, images, masks)]
    a_strict = np.mean([not failures(x, t) for x in aligned])
    a_rel = np.mean([not failures(x, relaxed) for x in aligned])
    for px in args.shift:
        mis = [score(img, shifted(m, rng, px), r["id"]) for r, img, m in zip(rows, images, masks)]
        mis = [x for x in mis if x["labels"]]  # a mask shifted out of the image has nothing to score
        m_strict = np.mean([not failures(x, t) for x in mis])
        m_rel = np.mean([not failures(x, relaxed) for x in mis])
        print(f"| {cfg.run.source_modality} -> {cfg.run.target_modality} | {cal['quantile']} | {cal['items']} | "
              f"{len(aligned)} | {a_strict:.2f} / {a_rel:.2f} | {m_strict:.2f} / {m_rel:.2f} | {px:g} |", flush=True)


if __name__ == "__main__":
    main()
