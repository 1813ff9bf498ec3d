"""The stage contract: what each stage of ``mrgen run`` reads, declared once.

Every stage lists the config keys its outputs depend on (``reads``; a section name such as
``"ldm"`` covers every key below it) and the stages whose artefacts it reads (``after``).
Two things are derived from that one declaration and from nothing else:

* the **stamp** of a stage (:func:`stamps`): a hash of the values of its reads plus the stamps
  of the stages it reads from, so a change re-runs exactly the stages that read the changed key
  and everything downstream of them. ``mrgen run`` and ``mrgen bench`` compare it with the stamp
  recorded in ``<workdir>/stages.json`` (:mod:`mrgen.pipeline`).
* the **training fingerprint** (:func:`config_of`): the config a checkpoint must match to be
  resumed (``train.fit``'s ``meta["config"]``).

Keys in :data:`ADDED` at their listed value are left out too: they were added later, and that value does
what the code did before them. Keys in :data:`NO_EFFECT` never change what a stage writes (where the run folder lives, the
device, how work is shared between processes, progress and checkpoint cadence), so no stamp holds them: a run folder that is moved
re-runs nothing. Keys in :data:`RESUMABLE` (training length) change a training stage's stamp
but not its *identity*: the stage re-runs and resumes from its checkpoint instead of starting
afresh. This module imports no stage.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mrgen import config as C
from mrgen import io

# The subjects and series that play source / target (mrgen.roles.assign) ...
ROLES = ("run.source_modality", "run.target_modality", "run.source_datasets", "run.target_datasets",
         "run.disjoint_subjects", "run.source_subjects", "run.target_subjects", "run.seed")
# ... and the target-modality test volumes.
TEST = ("run.target_modality", "run.target_datasets", "run.test_subjects")
# Keys that change no output of any stage (fnmatch patterns over dotted keys).
# export.overwrite permits replacing a dataset; segment.backend / nnunet_trainer choose what `mrgen segment train`
# runs, never what `mrgen run`'s segment stage (the built-in segmenters) writes.
NO_EFFECT = ("preset", "run.workdir", "run.device", "curate.manifest", "controller.pseudo_labels", "curate.workers", "sample.shard", "export.overwrite",
             "segment.backend", "segment.nnunet_trainer", "*.train.ckpt_every",
             "*.train.preview_every", "*.train.log_every", "*.train.num_workers", "labelgen.*_train.ckpt_every",
             "labelgen.*_train.preview_every", "labelgen.*_train.log_every", "labelgen.*_train.num_workers")
# Keys that lengthen training: a changed value re-runs the stage, which resumes from its checkpoint.
RESUMABLE = ("*.train.steps", "labelgen.*_train.steps")
LAYOUT = ("data.spatial_dims", "data.image_size", "data.depth")  # the item shape every model is built for
# Keys added after run folders existed, with the value that does what the code did before them: at that value a key
# enters no stamp, so a run folder made before it re-runs nothing (and a checkpoint still resumes); any other value does.
ADDED = {"controller.target_mask": "background", "sample.strength": 1.0,
         "rounds.count": 1, "rounds.keep_fraction": 0.5, "rounds.min_confidence": 0.0, "segment.pseudo_pairs": False,
         # read by the autoencoder and the LDM since they drop a fold's test subjects (mrgen.roles.unseen_tests)
         "run.test_subjects": []}


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple  # config keys (dotted) or sections whose values define the stage's outputs
    after: tuple  # stages whose artefacts this stage reads
    output: str  # a path (relative to the run folder) that exists once the stage is done
    folder: str = ""  # the stage's own folder, moved aside when its identity changes
    extra: tuple = ()  # inputs outside the config, by content: "manifest" (the curate manifest), "pseudo" (controller.pseudo_labels)


def stages(cfg: C.Config, every: bool = False) -> list[Stage]:
    """The stages ``mrgen run`` runs for ``cfg``, in data-flow order, each with what it reads
    (``every``: also the optional stages the config leaves out, e.g. for a standalone ``mrgen labelgen``)."""
    concat = cfg.controller.mode == "concat"  # Med-DDPM: a pixel-space renderer, no autoencoder / LDM
    out = []
    if not cfg.curate.manifest:
        out.append(Stage("phantom", ("phantom",), (), "phantom/manifest.yaml"))
    # a manifest of the user's: its content (not its path) is an input; the phantom's follows from phantom.*
    out.append(Stage("curate", ("curate", "data"), () if cfg.curate.manifest else ("phantom",),
                     "curated/index.parquet", extra=("manifest",) if cfg.curate.manifest else ()))
    if not concat:
        out += [
            # both train on no image of a fold's test subjects (run.test_subjects; mrgen.roles.unseen_tests)
            Stage("autoencoder", ("autoencoder", "run.test_subjects") + LAYOUT, ("curate",), "autoencoder/model.safetensors",
                  "autoencoder"),
            Stage("ldm", ("ldm", "text", "diffusion", "run.test_subjects") + LAYOUT + ROLES, ("autoencoder",),
                  "ldm/model.safetensors", "ldm"),
            # a later round's pseudo-labels: the file's content (not its path) is an input, as a manifest's
            Stage("controller", _controller_reads() + LAYOUT + ROLES, ("ldm",), "controller/model.safetensors",
                  "controller", extra=("pseudo",) if cfg.controller.pseudo_labels else ()),
        ]
    else:
        pixel = ("ldm.num_res_blocks", "ldm.num_head_channels", "ldm.norm_num_groups", "ldm.prompt_dropout")
        out.append(Stage("controller", _controller_reads() + pixel + ("text", "diffusion") + LAYOUT + ROLES,
                         ("curate",), "controller/model.safetensors", "controller"))
    renders = ["controller"]
    if cfg.labelgen.enabled or every:  # Duo-Diffusion step 1: new label maps
        out.append(Stage("labelgen", ("labelgen", "text", "diffusion", "autoencoder.kl_weight") + LAYOUT + ROLES,
                         ("curate",), "labelgen/stats.json", "labelgen"))
        renders.append("labelgen")
    if "morphed" in cfg.sample.masks or every:  # pathology: the recipe applied to source or generated maps
        base = "labelgen" if cfg.morph.apply_to == "generated" else "curate"
        out.append(Stage("morph", ("morph", "sample.masks") + LAYOUT + ROLES, (base,), "morph/preview.png", "morph"))
        renders.append("morph")
    out += [
        Stage("synthesize", ("sample", "controller.conditioning_scale") + LAYOUT + ROLES, tuple(renders),
              "synth/provenance.jsonl", "synth"),
        # calibrated thresholds score the curated source pairs (mrgen.filter.calibrate) at the item shape
        Stage("filter", ("filter", "run.seed") + ROLES + LAYOUT, ("synthesize", "curate"), "filter/kept.json", "filter"),
        Stage("segment", ("segment", "run.baselines") + LAYOUT + ROLES, ("filter",), "segment/summary.json", "segment"),
        # the trust report: kept images vs the engine's training images, real target and held-out test images;
        # its segmenter checks use the segment stage's target segmenter (mrgen.audit)
        Stage("audit", ("audit", "evaluate.features", "evaluate.features_arch", "controller.mode") + LAYOUT + ROLES + TEST,
              ("filter", "segment"), "audit/audit.json", "audit"),
        # the dataset card carries the audit's headline figures
        Stage("export", ("export", "data.spatial_dims", "run.source_modality", "run.target_modality"), ("filter", "audit"),
              "nnunet/export.json", "nnunet"),
        Stage("evaluate", ("evaluate",) + LAYOUT + ROLES + TEST, ("segment",), "eval/summary.json", "eval"),
    ]
    if cfg.rounds.count > 1:  # later engine rounds (mrgen.rounds): audit, export and evaluate run in the last one
        inner = [s for s in stages(_one_round(cfg)) if s.name in ROUND_STAGES + FINAL_STAGES]
        out = out if every else [s for s in out if s.name not in FINAL_STAGES]
        out.append(_rounds_stage(cfg, inner))
    return out


# what round k >= 2 runs in its own folder (mrgen.rounds), and what the last round runs after it
ROUND_STAGES = ("controller", "synthesize", "filter", "segment")
FINAL_STAGES = ("audit", "export", "evaluate")


def _one_round(cfg: C.Config) -> C.Config:
    return C._merge(cfg, {"rounds": {"count": 1}})


def _rounds_stage(cfg: C.Config, inner: list) -> Stage:
    """Rounds 2..``rounds.count``: each pseudo-labels the target items with the previous round's engine segmenter
    and runs :data:`ROUND_STAGES` in its own folder through the driver (:func:`mrgen.pipeline.run_rounds`), the
    last one :data:`FINAL_STAGES` too. It reads what those stages read; each round's folder keeps its own stamps."""
    reads = tuple(dict.fromkeys(["rounds", "curate.min_label_pixels", "controller.target_context",
                                 *[k for s in inner for k in s.reads]]))
    last = f"round{cfg.rounds.count}"
    return Stage("rounds", reads, ("segment",), f"{last}/eval/summary.json")


def _controller_reads() -> tuple:
    """Everything of ``controller`` but the sampler's residual scale, plus the prompt dropout it trains with."""
    keys = [f"controller.{f.name}" for f in dataclasses.fields(C.ControllerCfg) if f.name != "conditioning_scale"]
    return tuple(keys) + ("ldm.prompt_dropout",)


def stage(cfg: C.Config, name: str) -> Stage:
    for s in stages(cfg, every=True):
        if s.name == name:
            return s
    raise KeyError(f"no stage '{name}' for this config; stages: {', '.join(s.name for s in stages(cfg))}")


# ----------------------------------------------------------------------------- values of the declared keys


def leaves(cfg) -> dict:
    """Every leaf key of ``cfg`` (dotted) -> its value (tuples as lists)."""
    out = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            key = f"{prefix}.{f.name}" if prefix else f.name
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, key)
            else:
                out[key] = C.to_dict(v) if isinstance(v, tuple) else v

    walk(cfg, "")
    return out


def _matches(key: str, patterns) -> bool:
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)


def declared(cfg: C.Config, reads: tuple, drop: tuple = (), values: dict | None = None) -> dict:
    """``{key: value}`` of the leaf keys under ``reads``, without :data:`NO_EFFECT` and ``drop`` keys
    (``values``: :func:`leaves` of ``cfg``, when the caller has them already)."""
    values = leaves(cfg) if values is None else values
    return {k: v for k, v in sorted(values.items())
            if _matches(k, reads) and not _matches(k, NO_EFFECT) and not _matches(k, drop)}


def stamped(values: dict) -> dict:
    """``values`` without the :data:`ADDED` keys at their listed value (what a stamp and a fingerprint hold)."""
    return {k: v for k, v in values.items() if not (k in ADDED and v == ADDED[k])}


def config_of(cfg: C.Config, name: str) -> dict:
    """The training fingerprint's config of stage ``name``: its declared reads without the step counts
    (training longer resumes a checkpoint)."""
    return stamped(declared(cfg, stage(cfg, name).reads, RESUMABLE))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def manifest_hash(cfg: C.Config) -> str:
    """Content hash of the curate manifest ``curate.manifest``."""
    path = Path(cfg.curate.manifest)
    if not path.is_file():
        raise FileNotFoundError(f"curate.manifest {path} does not exist; give the path of your manifest (docs/curate.md)")
    return io.file_hash(path)


def _extra_hash(cfg: C.Config, name: str) -> str:
    if name == "manifest":
        return manifest_hash(cfg)
    if name == "pseudo":
        path = Path(cfg.controller.pseudo_labels)
        if not path.is_file():
            raise FileNotFoundError(f"controller.pseudo_labels {path} does not exist; it is written by an earlier engine "
                                    f"round (mrgen.pseudo)")
        return io.file_hash(path)
    return name


def stamps(cfg: C.Config) -> dict:
    """``{stage: (stamp, identity)}`` for every stage of ``cfg``.

    ``stamp``: the declared values (resumable step counts included), the extra inputs and the stamps
    of the stages it reads from. ``identity``: the same without the step counts; a stage whose
    identity changed starts afresh (its old folder is moved aside), one whose stamp alone changed
    resumes.
    """
    out: dict = {}
    values = leaves(cfg)
    for s in stages(cfg):
        up = [out[a][0] for a in s.after if a in out]
        extra = [_extra_hash(cfg, e) for e in s.extra]
        ident = _hash([stamped(declared(cfg, s.reads, RESUMABLE, values)), extra, up])
        out[s.name] = (_hash([stamped(declared(cfg, s.reads, (), values)), extra, up]), ident)
    return out


def downstream(cfg: C.Config, names) -> set:
    """``names`` and every stage that reads, directly or not, from one of them."""
    hit = set(names)
    for s in stages(cfg):
        if hit & set(s.after):
            hit.add(s.name)
    return hit
