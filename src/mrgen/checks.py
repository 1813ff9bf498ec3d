"""The checks every resolved config passes (:func:`mrgen.config.load_config` runs :func:`validate`)."""

from __future__ import annotations

import re

from mrgen import devices
from mrgen.errors import ConfigError

# samplers of `sample.solver` (mrgen.diffusion.solvers): DDIM, DPM-Solver++(2M), UniPC-bh2 (order 2)
SOLVERS = ("ddim", "dpmpp2m", "unipc")


def start_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` timesteps a chain of ``sample.strength`` runs: ``round(strength * steps)``, the last
    ones (1 = all; below 1, SDEdit from the source image); a strength outside (0, 1] or leaving no step is refused."""
    k = int(round(float(strength) * int(steps)))
    if not 0 < float(strength) <= 1:
        raise ConfigError(f"sample.strength must be in (0, 1] (1 = from pure noise; 0.6 = SDEdit from the source image "
                          f"noised over the last 60 % of the chain), got {strength}")
    if k < 1:
        raise ConfigError(f"sample.strength={strength} x sample.ddim_steps={steps} leaves no sampling step; raise one of them")
    return k


def validate(cfg) -> None:
    """Raise one :class:`ConfigError` for the first bad value of a resolved ``mrgen.config.Config``."""
    devices.check(cfg.run.device)
    if cfg.data.spatial_dims not in (2, 3):
        raise ConfigError(f"data.spatial_dims must be 2 or 3, got {cfg.data.spatial_dims}")
    if not float(cfg.data.spacing) >= 0:
        raise ConfigError(f"data.spacing must be >= 0 mm per pixel (0 = auto, the median field of view / image_size), got {cfg.data.spacing}")
    if cfg.phantom.layout not in ("abdomen", "brain"):
        raise ConfigError(f"phantom.layout must be 'abdomen' or 'brain', got '{cfg.phantom.layout}'")
    if cfg.controller.mask_encoding not in ("merged", "onehot"):
        raise ConfigError(f"controller.mask_encoding must be 'merged' or 'onehot', got '{cfg.controller.mask_encoding}'")
    if cfg.controller.target_mask not in ("background", "unknown"):
        raise ConfigError(f"controller.target_mask must be 'background' or 'unknown', got '{cfg.controller.target_mask}'")
    if cfg.controller.target_mask == "unknown" and cfg.controller.mask_encoding != "onehot":
        raise ConfigError("controller.target_mask=unknown encodes unannotated pixels as no class at all, which the merged "
                          "encoding cannot express (its 0 is background); set controller.mask_encoding=onehot")
    if cfg.rounds.count < 1:
        raise ConfigError(f"rounds.count must be >= 1 (1 = one engine round, as MRGen; 2 = a second round on pseudo-labels), got {cfg.rounds.count}")
    if not 0 < float(cfg.rounds.keep_fraction) <= 1:
        raise ConfigError(f"rounds.keep_fraction must be in (0, 1] (the share of pseudo-labelled target items kept), got {cfg.rounds.keep_fraction}")
    if cfg.rounds.count > 1 and cfg.controller.mode != "controlnet":
        raise ConfigError("rounds.count > 1 re-trains the mask controller on pseudo-labelled target items, which "
                          "controller.mode=concat does not support yet; set controller.mode=controlnet or rounds.count=1")
    if cfg.controller.mode not in ("controlnet", "concat"):
        raise ConfigError(f"controller.mode must be 'controlnet' (mask controller on the LDM) or 'concat' (Med-DDPM), got '{cfg.controller.mode}'")
    if cfg.controller.mode == "concat" and cfg.controller.conditioning_scale != 1.0:
        raise ConfigError(f"controller.conditioning_scale={cfg.controller.conditioning_scale} scales ControlNet residuals, which "
                          "controller.mode=concat (Med-DDPM) does not have; leave it at 1.0 or use controller.mode=controlnet")
    if cfg.labelgen.encoding not in ("onehot", "bits"):
        raise ConfigError(f"labelgen.encoding must be 'onehot' or 'bits', got '{cfg.labelgen.encoding}'")
    bad = sorted(set(cfg.sample.masks) - {"source", "generated", "morphed"})
    if bad or not cfg.sample.masks:
        raise ConfigError(f"sample.masks lists {bad or 'nothing'}; use any of source, generated, morphed (e.g. sample.masks=[source, generated])")
    if "generated" in cfg.sample.masks and not cfg.labelgen.enabled:
        raise ConfigError("sample.masks includes 'generated' but labelgen.enabled is false; set labelgen.enabled=true")
    if "morphed" in cfg.sample.masks and not cfg.morph.recipe:
        raise ConfigError("sample.masks includes 'morphed' but morph.recipe is empty; give a recipe, e.g. morph.recipe=ventriculomegaly")
    shard = re.fullmatch(r"(\d+)/(\d+)", str(cfg.sample.shard))
    if cfg.sample.shard != "auto" and not (shard and int(shard[1]) < int(shard[2])):
        raise ConfigError(f"sample.shard must be auto (the launcher's processes share the work) or i/n with 0 <= i < n "
                          f"(e.g. 0/4), got '{cfg.sample.shard}'")
    if cfg.sample.candidates < 1 or cfg.sample.batch_size < 1:
        raise ConfigError(f"sample.candidates and sample.batch_size must be at least 1, got {cfg.sample.candidates} and "
                          f"{cfg.sample.batch_size}")
    if cfg.export.format not in ("png", "nifti"):
        raise ConfigError(f"export.format must be 'png' or 'nifti', got '{cfg.export.format}'")
    if not 1 <= cfg.export.dataset_id <= 999:
        raise ConfigError(f"export.dataset_id must be 1..999 (nnU-Net's three-digit DatasetXXX id), got {cfg.export.dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", cfg.export.name):
        raise ConfigError(f"export.name must be letters, digits, '_' or '-' (nnU-Net's DatasetXXX_<name>), "
                          f"got {cfg.export.name!r}; e.g. export.name=MRGenSynth")
    if cfg.segment.backend not in ("monai", "nnunet"):
        raise ConfigError(f"segment.backend must be 'monai' (the built-in UNet) or 'nnunet' (nnU-Net v2 on the export), "
                          f"got '{cfg.segment.backend}'")
    factor = 2 ** (len(cfg.autoencoder.channels) - 1)
    if cfg.data.image_size % factor:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is not divisible by the autoencoder's downsampling "
            f"factor {factor} (len(autoencoder.channels)-1 halvings); pick a multiple of {factor}"
        )
    if len(cfg.controller.conditioning_channels) != len(cfg.autoencoder.channels):
        raise ConfigError(
            f"controller.conditioning_channels needs {len(cfg.autoencoder.channels)} entries (one per autoencoder level, "
            f"so the mask is downsampled {factor}x to latent size), got {list(cfg.controller.conditioning_channels)}"
        )
    _validate_filter(cfg.filter)
    _validate_segment(cfg.segment)
    _validate_sample(cfg.sample)
    _validate_audit(cfg.audit)
    for stage in (cfg.autoencoder.train, cfg.ldm.train, cfg.controller.train, cfg.segment.train):
        if stage.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be 'fp32' or 'bf16', got '{stage.precision}'")


def _validate_sample(s) -> None:
    if s.solver not in SOLVERS:
        raise ConfigError(f"sample.solver must be one of {', '.join(SOLVERS)}, got '{s.solver}'")
    if s.precision not in ("fp32", "bf16"):
        raise ConfigError(f"sample.precision must be 'fp32' or 'bf16' (autocast of the denoiser), got '{s.precision}'")
    if int(s.ddim_steps) < 1:
        raise ConfigError(f"sample.ddim_steps must be >= 1 sampling step, got {s.ddim_steps}")
    if not float(s.eta) >= 0:
        raise ConfigError(f"sample.eta must be >= 0 (0 = deterministic DDIM), got {s.eta}")
    start_steps(s.ddim_steps, s.strength)
    if float(s.strength) < 1 and tuple(s.masks) != ("source",):
        raise ConfigError(f"sample.strength={s.strength} starts each chain from the source image of its mask, but "
                          f"sample.masks={list(s.masks)} includes label maps without one; set sample.masks=[source] "
                          "or sample.strength=1")
    if float(s.eta) > 0 and s.solver != "ddim":
        raise ConfigError(f"sample.eta={s.eta} is DDIM's noise; sample.solver={s.solver} is a deterministic ODE solver: "
                          "set sample.eta=0 or sample.solver=ddim")


ENGINE_SETS = ("synthetic", "source", "source+aug", "source+dr")  # segment.engine_set (mrgen.pairs.engine_set)


def _validate_segment(s) -> None:
    if s.engine_set not in ENGINE_SETS:
        raise ConfigError(f"segment.engine_set must be one of {', '.join(ENGINE_SETS)} (synthetic = the kept pairs only; "
                          f"source = plus the real source pairs; source+aug = plus intensity-randomised copies; "
                          f"source+dr = plus images drawn from the source label maps), got '{s.engine_set}'")
    if int(s.source_copies) < 0:
        raise ConfigError(f"segment.source_copies must be >= 0 randomised copies per source pair, got {s.source_copies}")


def _validate_filter(f) -> None:
    if f.thresholds not in ("calibrated", "absolute"):
        raise ConfigError(f"filter.thresholds must be 'calibrated' (quantiles of real pairs' scores) or 'absolute' "
                          f"(filter.organ_iou etc. as given), got '{f.thresholds}'")
    if not 0.0 <= float(f.calibration_quantile) <= 1.0:
        raise ConfigError(f"filter.calibration_quantile must be in [0, 1] (0.25 = the real pairs' lower quartile), "
                          f"got {f.calibration_quantile}")
    if not 0.0 <= float(f.misaligned_quantile) <= 1.0:
        raise ConfigError(f"filter.misaligned_quantile must be in [0, 1] (0.9: a second-chance candidate must beat 90 % "
                          f"of real pairs scored with a displaced mask), got {f.misaligned_quantile}")
    if f.selection not in ("thresholds", "rank"):
        raise ConfigError(f"filter.selection must be 'thresholds' (MRGen: pass, relax or drop each mask) or 'rank' "
                          f"(every mask keeps its best filter.keep candidates above the floor), got '{f.selection}'")
    if not 0.0 <= float(f.floor_quantile) <= 1.0:
        raise ConfigError(f"filter.floor_quantile must be in [0, 1] (0.5: a kept candidate beats the median real pair "
                          f"scored with a displaced mask), got {f.floor_quantile}")
    if int(f.calibration_items) < 1:
        raise ConfigError(f"filter.calibration_items must be >= 1 real pairs to score, got {f.calibration_items}")
    if not 0.0 <= float(f.min_kept_fraction) <= 1.0:
        raise ConfigError(f"filter.min_kept_fraction must be in [0, 1] (0 = accept any number of kept masks), "
                          f"got {f.min_kept_fraction}")


def _validate_audit(a) -> None:
    for key, low in (("max_images", 2), ("max_reference", 1), ("max_real", 2), ("pairs", 1), ("reader_size", 32)):
        if int(getattr(a, key)) < low:
            raise ConfigError(f"audit.{key} must be >= {low}, got {getattr(a, key)} (docs/audit.md)")
    if int(a.figure_pairs) < 0:
        raise ConfigError(f"audit.figure_pairs must be >= 0 (0 = no figure), got {a.figure_pairs}")
    if not 0.0 <= float(a.copy_margin) < 1.0:
        raise ConfigError(f"audit.copy_margin must be in [0, 1) (0.5: halfway from the baseline to identical), got {a.copy_margin}")
    for key in ("copy_quantile", "min_dice"):
        if not 0.0 <= float(getattr(a, key)) <= 1.0:
            raise ConfigError(f"audit.{key} must be in [0, 1], got {getattr(a, key)} (docs/audit.md)")
    if not a.segmenter or "/" in a.segmenter or a.segmenter.startswith("."):
        raise ConfigError(f"audit.segmenter must name a folder under <workdir>/segment (e.g. engine), got '{a.segmenter}'")
