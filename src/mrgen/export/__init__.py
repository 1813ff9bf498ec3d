"""``mrgen export nnunet``: the kept synthetic pairs as an nnU-Net v2 raw dataset.

Writes ``$nnUNet_raw/Dataset{export.dataset_id:03d}_{export.name}/`` when ``nnUNet_raw`` is set, else that folder in
``<workdir>/nnunet/`` (:mod:`mrgen.export.handoff`: built beside it and moved in one rename; a folder with other
content is kept unless ``export.overwrite=true``; ``<workdir>/nnunet/export.json`` records where it went), and
returns the commands that train nnU-Net on it. See :mod:`mrgen.export.nnunet` for the layout;
``provenance.jsonl`` maps each case to the candidate it came from (key, mask id, candidate, seed, prompt, sampler,
checkpoints, filter scores), enough to regenerate it; ``dataset_card.md`` +
``audit.json`` say what the dataset is (:mod:`mrgen.audit.card`). :func:`export_pairs` is reusable for any (image, mask) set
(benchmarks, the oracle's real pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.export.handoff import ExportError, exported_folder, next_commands, publish, staging, target
from mrgen.export.nnunet import dataset_folder, export_pairs, from_uint8, label_map, read_dataset, to_uint8

__all__ = ["run", "export_pairs", "read_dataset", "dataset_folder", "label_map", "to_uint8", "from_uint8", "run_labels",
           "exported_folder", "ExportError"]


def run_labels(workdir: str | Path) -> dict:
    """``{value: name}`` over all datasets of ``curated/labels.json`` (names joined when datasets disagree).

    Segmentation labels only: context labels (``curated/context.json``) are never listed.
    """
    from mrgen.curate.labels import target_names

    return target_names(Path(workdir) / "curated")


def run(cfg) -> dict:
    from mrgen.audit.card import write_card
    from mrgen.curate.labels import context_values
    from mrgen.export.handoff import RECORD
    from mrgen.pairs import kept_pairs

    wd = cfg.workdir
    fmt = "nifti" if cfg.data.spatial_dims == 3 else cfg.export.format
    out = target(cfg)
    pairs, prov = [], []
    for i, (item, image, mask, meta) in enumerate(kept_pairs(wd)):
        case = f"{cfg.export.name}_{i:05d}"
        pairs.append((case, np.asarray(image, np.float32), np.asarray(mask)))
        prov.append({**meta, **{k: item[k] for k in ("key", "candidate", "mean_iou", "mean_conf", "relaxed") if k in item}})
    title = f"mrgen synthetic {cfg.run.target_modality} from {cfg.run.source_modality} masks"
    built = staging(out)
    res = export_pairs(pairs, built, run_labels(wd), cfg.run.target_modality, fmt, provenance=prov,
                       context=context_values(wd / "curated"), name=out.name, description=title)
    card = write_card(built, wd, prov, title, name=out.name)  # provenance, filter settings, the audit's headline
    status, digest = publish(built, out, cfg.export.overwrite, {"cases": len(pairs), "run": str(Path(wd).resolve())})
    io.write_json(wd / "nnunet" / RECORD, {"folder": str(out.resolve()), "dataset_id": cfg.export.dataset_id,
                                          "name": cfg.export.name, "content_hash": digest, "cases": len(pairs)})
    res = {**res, "folder": str(out), "status": status, "content_hash": digest, "card": str(out / card.name),
           "next": "\n" + "\n".join(next_commands(cfg, out))}
    if not pairs:
        res["warning"] = ("filter kept no candidates (every mask was dropped): the dataset is empty; lower the filter "
                          "thresholds (see docs/filter.md) or synthesize more candidates")
    return res
