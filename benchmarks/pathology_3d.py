"""Morphed pathology benchmark (Fetal&Neonatal-DDPM's setting) on a finished 3D run.

    python benchmarks/pathology_3d.py runs/demo3d            # after `mrgen demo --preset cpu3d`

Held-out *pathology* test cases: new brain-phantom subjects (another seed) drawn with enlarged
ventricles (`phantom.ventricle_scale`, default 1.3: ventricles x1.5-2 in volume) and rendered in
the target modality by the phantom's physics, curated like the run's data. Four 3D segmenters with
the run's segmenter settings, trained on:

* `engine_normal`  - the run's kept synthetic volumes rendered from source + generated label maps;
* `engine_morphed` - the same plus those rendered from morphed (ventriculomegaly) label maps;
* `oracle`         - real annotated target volumes (normal anatomy);
* `oracle_morphed` - real + the synthetic volumes rendered from morphed label maps.

Each is evaluated (3D Dice per label) on the pathology cases and on the run's normal test volumes.
Writes `<run>/pathology/results.json` and `results.md`; reruns reuse trained segmenters.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mrgen import config as C
from mrgen import io


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished 3D run folder (sample.masks including morphed)")
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--scale", type=float, default=1.3, help="phantom.ventricle_scale of the pathology cases")
    ap.add_argument("--seed", type=int, default=1000, help="phantom seed of the pathology cases")
    a = ap.parse_args(argv)

    from mrgen import curate, phantom
    from mrgen.curate.labels import n_classes
    from mrgen.pairs import kept_arrays, real_pairs
    from mrgen.curate.index import Index
    from mrgen.evaluate import evaluate_segmenter
    from mrgen.roles import assign
    from mrgen.segment import train_segmenter

    run = Path(a.run)
    cfg = C.load_config(file=run / "config.yaml", overrides=[f"run.workdir={run}"])
    if cfg.data.spatial_dims != 3 or cfg.phantom.layout != "brain" or cfg.curate.manifest:
        raise SystemExit(f"{run} is not a 3D brain-phantom run (mrgen demo --preset cpu3d)")
    out = run / "pathology"
    pcfg = C.load_config(file=run / "config.yaml", overrides=[
        f"run.workdir={out}", f"phantom.seed={a.seed}", f"phantom.subjects={a.subjects}",
        f"phantom.ventricle_scale={a.scale}", "curate.test_fraction=0.5"])
    t0 = time.time()
    phantom.run(pcfg)
    curate.run(pcfg)
    tgt = cfg.run.target_modality
    patho_rows = Index(out / "curated" / "index.parquet").query(kind="volume", modality=tgt)
    normal_rows = assign(Index(run / "curated" / "index.parquet"), cfg).test
    from mrgen.curate.labels import target_names

    names = target_names(run / "curated")
    roles = assign(Index(run / "curated" / "index.parquet"), cfg)
    oracle = real_pairs(cfg, [r for r in roles.target if r["has_mask"]])
    normal = kept_arrays(cfg.workdir, kinds=("source", "generated"))
    morphed = kept_arrays(cfg.workdir, kinds=("morphed",))
    if not morphed[0]:
        raise SystemExit(f"{run} kept no synthetic volumes rendered from morphed label maps; run with sample.masks including morphed")
    sets = {
        "engine_normal": normal,
        "engine_morphed": (normal[0] + morphed[0], normal[1] + morphed[1]),
        "oracle": oracle,
        "oracle_morphed": (oracle[0] + morphed[0], oracle[1] + morphed[1]),
    }
    k = n_classes(run / "curated")
    results = {"run": str(run), "pathology": {"subjects": a.subjects, "ventricle_scale": a.scale, "seed": a.seed,
                                               "volumes": len(patho_rows)}, "segmenters": {}}
    for name, (images, masks) in sets.items():
        folder = out / "segment" / name
        if not (folder / "model.safetensors").exists():
            train_segmenter(images, masks, k, cfg, folder, name)
        res = {"pairs": len(images)}
        for split, rows, root in (("pathology", patho_rows, out / "curated"), ("normal", normal_rows, run / "curated")):
            m = evaluate_segmenter(folder, rows, root, out / "eval" / name / split, names)
            res[split] = {"mean_dice": m["mean_dice"], "dice": m["dice"]}
        results["segmenters"][name] = res
    results["minutes"] = round((time.time() - t0) / 60, 1)
    io.write_json(out / "results.json", results)
    md = table(results, names)
    (out / "results.md").write_text(md)
    print(md)
    return results


def table(results: dict, names: dict) -> str:
    labels = [names[v] for v in sorted(names)]
    head = "| segmenter | pairs | test set | mean Dice | " + " | ".join(labels) + " |"
    rows = [head, "|" + "---|" * (4 + len(labels))]
    for name, r in results["segmenters"].items():
        for split in ("pathology", "normal"):
            d = r[split]
            rows.append(f"| {name} | {r['pairs']} | {split} | {d['mean_dice']:.3f} | "
                        + " | ".join(f"{d['dice'].get(n, float('nan')):.3f}" for n in labels) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
