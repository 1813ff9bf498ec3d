"""``mrgen run`` / ``mrgen demo``: the whole chain, skipping stages whose outputs are current.

Each stage has a *stamp*: a hash of the config sections it reads plus the stamps of the
stages before it. ``<workdir>/stages.json`` records the stamp each finished stage had; a
stage is skipped when its output exists and its stamp is unchanged. A training stage whose
stamp changed is moved aside (``<stage>.stale-<stamp>``), never deleted. Training stages
resume by themselves, so an interrupted ``mrgen run`` continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mrgen import config as C
from mrgen import io

STAGES_FILE = "stages.json"


@dataclass
class Stage:
    name: str
    sections: tuple  # config sections (dotted) whose values define the stage
    output: str  # a file (relative to workdir) that exists once the stage is done
    fn: Callable
    folder: str = ""  # moved aside when the stamp changes (training stages)


def _section(cfg: C.Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return C.to_dict(obj) if not isinstance(obj, (str, int, float, tuple)) else obj


def _stamp(cfg: C.Config, stage: Stage, upstream: str) -> str:
    payload = json.dumps({s: _section(cfg, s) for s in stage.sections}, sort_keys=True, default=str) + upstream
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _manifest_hash(cfg: C.Config) -> str:
    path = Path(cfg.curate.manifest) if cfg.curate.manifest else cfg.workdir / "phantom" / "manifest.yaml"
    return io.file_hash(path) if path.exists() else "none"


def _stages(cfg: C.Config) -> list[Stage]:
    from mrgen import autoencoder, controller, curate, export, filter, labelgen, ldm, phantom, sample
    from mrgen.morph import masks as morph_masks

    stages = []
    # controller.mode=concat (Med-DDPM, pixel space) needs no autoencoder/LDM; the controller stage then
    # stamps the shared sections the LDM stamp would have carried
    concat = ("text", "diffusion", "ldm.num_res_blocks", "ldm.num_head_channels", "ldm.norm_num_groups",
              "ldm.prompt_dropout") if cfg.controller.mode == "concat" else ()
    if not cfg.curate.manifest:
        stages.append(Stage("phantom", ("phantom",), "phantom/manifest.yaml", phantom.run))
    stages += [
        Stage("curate", ("curate", "data"), "curated/index.parquet", curate.run),
        Stage("autoencoder", ("autoencoder", "data.spatial_dims", "data.image_size", "data.depth"), "autoencoder/model.safetensors", autoencoder.run, "autoencoder"),
        Stage("ldm", ("ldm", "text", "diffusion", "run.source_modality", "run.target_modality", "run.disjoint_subjects"), "ldm/model.safetensors", ldm.run, "ldm"),
        Stage("controller", ("controller", "run.source_modality", "run.target_modality", "run.disjoint_subjects") + concat, "controller/model.safetensors", controller.run, "controller"),
    ]
    if cfg.labelgen.enabled:  # Duo-Diffusion step 1: new label maps
        stages.append(Stage("labelgen", ("labelgen", "text", "diffusion", "data", "run.source_modality", "run.source_subjects"),
                            "labelgen/stats.json", labelgen.run, "labelgen"))
    if "morphed" in cfg.sample.masks:  # pathology: the recipe applied to source or generated maps
        stages.append(Stage("morph", ("morph",), "morph/preview.png", morph_masks.run, "morph"))
    stages += [
        Stage("synthesize", ("sample",), "synth/provenance.jsonl", sample.run, "synth"),
        Stage("filter", ("filter",), "filter/kept.json", filter.run, "filter"),
        Stage("export", ("export",), "nnunet/.done", _export, "nnunet"),
        Stage("segment", ("segment", "run.baselines"), "segment/.done", _segmenters, "segment"),
        Stage("evaluate", ("evaluate",), "eval/summary.json", _evaluate, "eval"),
    ]
    if concat:
        stages = [s for s in stages if s.name not in ("autoencoder", "ldm")]
    return stages


def _export(cfg: C.Config) -> dict:
    from mrgen import export

    result = export.run(cfg)
    io.write_json(cfg.workdir / "nnunet" / ".done", {"time": time.time()})
    return result


# ----------------------------------------------------------------------------- segmenters


def _real_pairs(cfg: C.Config, rows: list[dict], keep_context: bool = False) -> tuple[list, list]:
    """Curated (image, mask) pairs of ``rows``; context labels -> background unless ``keep_context``."""
    from mrgen.curate.dataset import load_image, load_mask, resize_volume
    from mrgen.curate.labels import context_values, strip_context

    root = cfg.workdir / "curated"
    drop = set() if keep_context else context_values(root)
    images, masks = [], []
    for r in rows:
        img, m = load_image(root, r)[0], load_mask(root, r)
        if cfg.data.spatial_dims == 3:
            shape = (cfg.data.depth, cfg.data.image_size, cfg.data.image_size)
            img, m = resize_volume(img, shape, order=1), resize_volume(m, shape, order=0)
        images.append(np.asarray(img, np.float32))
        masks.append(np.asarray(strip_context(m, drop), np.int64))
    return images, masks


def _kept_pairs(cfg: C.Config, kinds: tuple | None = None) -> tuple[list, list]:
    """The kept synthetic pairs (of the mask ``kinds``, default all: source / generated / morphed); the
    masks' context labels (generator conditioning only) -> background."""
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.sample import load_candidates

    drop = context_values(cfg.workdir / "curated")
    kept = io.read_json(cfg.workdir / "filter" / "kept.json")
    images, masks = [], []
    cache: dict = {}
    for item in _kept_items(kept):
        f = cfg.workdir / "synth" / "candidates" / f"{item['key']}.npz"
        if f not in cache:
            cache = {f: load_candidates(f)}
        c = cache[f]
        if kinds is not None and c["meta"][0].get("mask_kind", "source") not in kinds:
            continue
        images.append(c["images"][item["candidate"]])
        masks.append(strip_context(c["mask"], drop))
    return images, masks


def _kept_items(kept) -> list[dict]:
    """kept.json lists {key, candidate} records (or {key: [candidates]}); normalise to records."""
    if isinstance(kept, dict) and "kept" in kept:
        kept = kept["kept"]
    if isinstance(kept, dict):
        return [{"key": k, "candidate": int(c)} for k, cs in kept.items() for c in cs]
    return [{"key": k["key"], "candidate": int(k["candidate"])} for k in kept]


def n_classes(cfg: C.Config) -> int:
    """Segmenter classes: background + the segmentation labels (context labels excluded)."""
    from mrgen.curate.labels import n_classes as _n

    return _n(cfg.workdir / "curated")


def _segmenters(cfg: C.Config) -> dict:
    from mrgen.curate.index import Index
    from mrgen.roles import assign
    from mrgen.segment import train_segmenter

    roles = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg)
    k = n_classes(cfg)
    sets = {"engine": _kept_pairs(cfg)}
    if "source_only" in cfg.run.baselines:
        sets["source_only"] = _real_pairs(cfg, roles.source)
    if "oracle" in cfg.run.baselines:
        annotated = [r for r in roles.target if r["has_mask"]]
        if annotated:
            sets["oracle"] = _real_pairs(cfg, annotated)
    if "oracle_plus_engine" in cfg.run.baselines and "oracle" in sets:  # FOSCU: real + synthetic
        sets["oracle_plus_engine"] = (sets["oracle"][0] + sets["engine"][0], sets["oracle"][1] + sets["engine"][1])
    out = {}
    for name, (images, masks) in sets.items():
        if not images:
            out[name] = "skipped (no training pairs)"
            continue
        folder = cfg.workdir / "segment" / name
        if not (folder / "model.safetensors").exists():
            train_segmenter(images, masks, k, cfg, folder, name)
        out[name] = f"{len(images)} pairs"
    io.write_json(cfg.workdir / "segment" / ".done", out)
    return out


def _evaluate(cfg: C.Config) -> dict:
    from mrgen.curate.index import Index
    from mrgen.curate.labels import target_names
    from mrgen.evaluate import evaluate_segmenter
    from mrgen.roles import assign

    roles = assign(Index(cfg.workdir / "curated" / "index.parquet"), cfg)
    names = target_names(cfg.workdir / "curated")  # segmentation labels only (no context labels)
    summary = {}
    for folder in sorted((cfg.workdir / "segment").iterdir()):
        if (folder / "model.safetensors").exists():
            summary[folder.name] = evaluate_segmenter(folder, roles.test, cfg.workdir / "curated", cfg.workdir / "eval" / folder.name, names)
    io.write_json(cfg.workdir / "eval" / "summary.json", summary)
    from mrgen.evaluate import image_quality
    from mrgen.report import write_report

    iq = image_quality(cfg)  # FD / KID of kept synthetic vs real target images (axial slices in 3D)
    io.write_json(cfg.workdir / "eval" / "image_quality.json", iq)
    write_report(cfg, summary, iq)
    return {k: v.get("mean_dice") for k, v in summary.items()}


# ----------------------------------------------------------------------------- driver


def run(cfg: C.Config) -> dict:
    """Run every stage in order; skip the ones whose output and stamp are current."""
    from rich.console import Console

    console = Console(stderr=True)
    wd = cfg.workdir
    wd.mkdir(parents=True, exist_ok=True)
    C.save_resolved(cfg, wd)
    done = io.read_json(wd / STAGES_FILE) if (wd / STAGES_FILE).exists() else {}
    upstream = _manifest_hash(cfg) if cfg.curate.manifest else ""
    timings = {}
    for stage in _stages(cfg):
        stamp = _stamp(cfg, stage, upstream)
        if stage.name == "curate":
            stamp = _stamp(cfg, stage, upstream + _manifest_hash(cfg))
        if done.get(stage.name) == stamp and (wd / stage.output).exists():
            console.print(f"[green]✓[/] {stage.name} is current ({stamp})")
        else:
            if done.get(stage.name) and done.get(stage.name) != stamp and stage.folder and (wd / stage.folder).exists():
                aside = wd / f"{stage.folder}.stale-{done[stage.name]}"
                shutil.rmtree(aside, ignore_errors=True)
                (wd / stage.folder).rename(aside)
                console.print(f"[yellow]{stage.name}: config changed; old outputs kept in {aside}[/]")
            console.rule(f"[bold]{stage.name}")
            t0 = time.time()
            result = stage.fn(cfg)
            timings[stage.name] = round(time.time() - t0, 1)
            console.print(f"{stage.name}: {result}  ({timings[stage.name]} s)")
            done[stage.name] = stamp
            io.write_json(wd / STAGES_FILE, done)
        upstream = stamp
    summary = io.read_json(wd / "eval" / "summary.json")
    return {"report": str(wd / "report.md"), "result": one_line(summary), "seconds": timings}


def one_line(summary: dict) -> str:
    parts = [f"{name} Dice {m.get('mean_dice', float('nan')):.3f}" for name, m in summary.items()]
    return "; ".join(parts)


def demo(cfg: C.Config) -> str:
    """``mrgen run`` on the built-in phantom: T1 masks annotated, T2 unannotated."""
    if cfg.curate.manifest:
        raise C.ConfigError("mrgen demo runs on the built-in phantom; use `mrgen run` for a manifest of your own")
    t0 = time.time()
    result = run(cfg)
    minutes = (time.time() - t0) / 60
    return (
        f"report: {result['report']}\n"
        f"result ({cfg.run.source_modality} masks → {cfg.run.target_modality}, {minutes:.1f} min): {result['result']}"
    )
