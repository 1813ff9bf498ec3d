"""Figure of an engine with a second round: real target images with their pseudo-labels, then the same source masks
rendered by round 1 and by round 2 (the first candidate of each; the figure in docs/benchmarks.md, "Second engine round").

    python benchmarks/rounds_figure.py runs/bench/mscmr_f2_r2/folds/2/engine docs/figures/mscmr_rounds_fold2.png

ENGINE is round 1's run folder (``folds/<k>/engine`` of a bench run with ``engine.rounds.count=2``); its ``pseudo/``
and ``round2/`` are read. The masks shown are the ``--masks`` with the most labelled pixels, one per source volume
where possible; the real images are the most confident pseudo-labelled target items, each subject's best first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _largest_masks(engine: Path, n: int) -> list[Path]:
    from mrgen.synthesize import load_candidates

    files = sorted((engine / "synth" / "candidates").glob("*.npz"))
    sized = sorted(((int((load_candidates(f)["mask"] > 0).sum()), f) for f in files), key=lambda t: (-t[0], t[1].name))
    picked, volumes = [], set()
    for _, f in sized:  # one per volume first (the key is <dataset>_<subject>_<modality>_z<slice>)
        vol = f.stem.rsplit("_z", 1)[0]
        if vol not in volumes:
            picked.append(f)
            volumes.add(vol)
        if len(picked) == n:
            return picked
    return (picked + [f for _, f in sized if f not in picked])[:n]


def _caption(f: Path) -> str:
    """The mask's source row id ``<dataset>/<subject>/<modality>/z<slice>`` -> ``<subject> z<slice>``."""
    from mrgen.synthesize import load_candidates

    parts = str(load_candidates(f)["meta"][0]["mask_id"]).split("/")
    return f"{parts[1][-12:]} {parts[-1]}" if len(parts) >= 4 else parts[-1]


def _real(engine: Path, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from mrgen.curate.dataset import load_row
    from mrgen.curate.index import Index
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.pseudo import FILE, read

    labels, scores = read(engine / "pseudo" / FILE, with_scores=True)
    rows = {r["id"]: r for r in Index(engine / "curated" / "index.parquet").query() if r["id"] in labels}
    ranked = sorted(labels, key=lambda i: (-scores[i], i))
    picked, subjects = [], set()
    for i in ranked:  # the most confident item of each subject first, then the next most confident of any
        if rows[i]["subject"] not in subjects:
            subjects.add(rows[i]["subject"])
            picked.append(i)
    picked = (picked + [i for i in ranked if i not in picked])[:n]
    drop = context_values(engine / "curated")  # the brain outline would hide the image: segmentation labels only
    return [(f"{rows[i]['subject'][-12:]} {scores[i]:.2f}", load_row(engine / "curated", rows[i], mask=False)[0],
             strip_context(labels[i], drop)) for i in picked]


def main(argv=None) -> Path:
    from mrgen.figures import slice_grid
    from mrgen.io import atomic_path
    from mrgen.synthesize import load_candidates

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--masks", type=int, default=6)
    a = ap.parse_args(argv)
    masks = _largest_masks(a.engine, a.masks)
    rows = [{"name": "real target +\npseudo-label", "slices": _real(a.engine, a.masks)},
            {"name": "source mask", "slices": [(_caption(f), np.full(load_candidates(f)["mask"].shape, -1.0),
                                               load_candidates(f)["mask"]) for f in masks]}]  # with its context labels
    for name, folder in (("round 1", a.engine), ("round 2", a.engine / "round2")):
        rows.append({"name": name, "slices": [("", load_candidates(folder / "synth" / "candidates" / f.name)["images"][0], None)
                                              for f in masks]})
    fig = slice_grid(rows, title=f"{a.engine}: pseudo-labelled real target images; renders of the same masks by each round")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(a.out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    print(a.out)
    return a.out


if __name__ == "__main__":
    main()
