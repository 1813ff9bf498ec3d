"""One config system: a dataclass per stage, YAML presets, dotted overrides.

A run is ``preset + optional YAML file + overrides`` (``ldm.steps=200``). The
resolved config is written into every run folder (``config.yaml``) so any run
can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mrgen import devices  # noqa: F401
from mrgen.checks import SOLVERS, start_steps, validate  # noqa: F401  (SOLVERS: samplers of `sample.solver`)
from mrgen.errors import ConfigError  # noqa: F401  (the one config error; raised here, in mrgen.checks and mrgen.devices)


@dataclass
class DataCfg:
    spatial_dims: int = 2  # 2: slices, 3: volumes
    image_size: int = 64  # in-plane size (2D) or cube side (3D) after curation
    depth: int = 32  # 3D only: number of slices a volume is resampled to
    # mm per pixel every series is resampled to before the crop/pad to image_size (3D: all three axes);
    # 0 = auto: median over the annotated series of field of view / image_size (docs/curate.md#geometry)
    spacing: float = 0.0


@dataclass
class PhantomCfg:
    layout: str = "abdomen"  # abdomen | brain
    subjects: int = 8
    size: int = 64  # in-plane matrix
    slices: int = 12
    spacing: tuple = (1.5, 1.5, 5.0)  # mm (x, y, z)
    modalities: tuple = ("T1", "T2")
    noise: float = 0.02  # Rician noise sigma relative to max signal
    bias: float = 0.2  # bias-field amplitude
    seed: int = 0
    # brain layout: in-plane radius factor of the lateral and third ventricles (1 = normal anatomy;
    # ~1.2-1.35 gives ventricle volumes x1.4-1.8: ventriculomegaly test cases with real phantom contrast)
    ventricle_scale: float = 1.0


@dataclass
class CurateCfg:
    manifest: str = ""  # YAML manifest; empty = the phantom's manifest in the run folder
    test_fraction: float = 0.25  # fraction of subjects held out (split by subject)
    seed: int = 0
    affine_tol: float = 1e-3  # mm; max abs difference between image and mask affines
    min_label_pixels: int = 10  # an organ counts as present in a slice from this many pixels
    workers: int = 1


@dataclass
class TextCfg:
    encoder: str = "minilm"  # minilm | learned | hf:<local path or name>
    max_length: int = 64  # tokens; template prompts with many organs exceed 48 (truncation is warned)
    dim: int = 384  # context dim for the `learned` encoder (others report their own)


@dataclass
class TrainCfg:
    """Shared by every trained stage (each stage has its own copy)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    precision: str = "fp32"  # fp32 | bf16
    ema_decay: float = 0.0  # 0 disables EMA
    ckpt_every: int = 200
    preview_every: int = 500
    log_every: int = 20
    seed: int = 0
    num_workers: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class AutoencoderCfg:
    channels: tuple = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    attention_levels: tuple = (False, False, False)
    norm_num_groups: int = 8
    kl_weight: float = 1e-6
    aug_prob: float = 0.2
    train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=1500, lr=1e-3, batch_size=16))


@dataclass
class DiffusionCfg:
    timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.00085
    beta_end: float = 0.012


@dataclass
class LdmCfg:
    channels: tuple = (64, 128)
    attention_levels: tuple = (False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16
    prompt_dropout: float = 0.1
    train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=3000, lr=2e-4, batch_size=32, ema_decay=0.999))


@dataclass
class ControllerCfg:
    # controlnet: MRGen/Duo-Diffusion mask controller on the frozen LDM (latent space);
    # concat: Med-DDPM, a pixel-space DDPM UNet whose input is the noisy image + the encoded mask
    mode: str = "controlnet"
    mask_encoding: str = "merged"  # merged (one intensity per organ) | onehot
    pixel_channels: tuple = (16, 32, 64)  # concat mode: the pixel-space UNet's channels per level
    pixel_attention: tuple = (False, False, True)  # concat mode: cross-attention (text) per level
    conditioning_channels: tuple = (16, 32, 96)  # learnable mask downsampling module
    target_fraction: float = 0.5  # share of unannotated target items per batch (empty or context-only mask)
    target_context: bool = True  # target items carry their context labels (brain outline), never segmentation labels
    # how a target item's unannotated pixels are encoded: background (as annotated background: an unannotated LGE heart
    # reads "no heart here") | unknown (onehot only: no channel set, so no target image teaches that its anatomy is
    # background; its context region is unknown too, only the background around it is known; docs/render.md)
    target_mask: str = "background"
    conditioning_scale: float = 1.0  # rendering: ControlNet residuals x this (trained at 1); controlnet mode only
    # a later engine round: a pseudo-label file (mrgen.pseudo) whose target items train the controller as target pairs
    # (with their labels and organ prompts) instead of as unannotated items; its content, not its path, is an input
    pseudo_labels: str = ""
    train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=2000, lr=2e-4, batch_size=32))


@dataclass
class RoundsCfg:
    """Engine rounds (issue 14; ``docs/render.md``): round k+1's controller trains on the target items that round
    k's segmenter labels most confidently (:mod:`mrgen.pseudo`), then renders again. 1 = MRGen (one round)."""

    count: int = 1
    keep_fraction: float = 0.5  # of the target items with predicted anatomy, the most confident this share
    min_confidence: float = 0.0  # ... whose mean max-softmax over the predicted anatomy is at least this


@dataclass
class LabelGenCfg:
    """Duo-Diffusion step 1: a latent diffusion model of label maps (``mrgen labelgen``)."""

    enabled: bool = False  # `mrgen run` trains it and generates `count` label maps when true
    encoding: str = "onehot"  # onehot (K+1 channels) | bits (ceil(log2(K+1)) channels in {-1, 1})
    count: int = 8  # label maps to generate
    guidance: float = 3.0
    ddim_steps: int = 50
    seed: int = 0
    ae_channels: tuple = (16, 32)
    latent_channels: int = 4
    unet_channels: tuple = (32, 64)
    unet_attention: tuple = (False, True)
    ae_train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=800, lr=2e-3, batch_size=4))
    ldm_train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=1500, lr=5e-4, batch_size=4, ema_decay=0.999))


@dataclass
class SampleCfg:
    masks: tuple = ("source",)  # label maps to render: source (annotated source masks) | generated | morphed
    solver: str = "ddim"  # ddim | dpmpp2m (DPM-Solver++(2M)) | unipc (UniPC-bh2, order 2); docs/render.md
    ddim_steps: int = 50  # sampling steps of every solver (network evaluations per sample, x2 with guidance)
    guidance: float = 7.0
    eta: float = 0.0  # DDIM's η (solver=ddim only; the multistep solvers are deterministic)
    # 1: every chain starts from pure noise. < 1 (SDEdit, image-guided): the chain starts from the mask's own source
    # image, encoded and noised to the level of the last round(strength x ddim_steps) steps, which are all it runs;
    # anatomy from the real image, contrast from the target prompt (source masks only; docs/render.md)
    strength: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast of the denoiser's evaluations; docs/performance.md)
    candidates: int = 20  # per source mask
    batch_size: int = 20
    max_masks: int = 0  # 0 = all source masks with organs
    # render the annotated source masks of these subjects instead of run.source_subjects' (e.g. masks held
    # out from the engine's training, the in-domain benchmark); empty = the run's source masks
    subjects: tuple = ()
    seed: int = 0
    # auto: the processes of `accelerate launch` / torchrun share the masks (docs/scale.md); i/n: this command
    # renders shard i of n by hand (under a launcher, its processes share shard i)
    shard: str = "auto"


@dataclass
class FilterCfg:
    scorer: str = "classical"  # classical | sam2 | segmenter
    sam2_checkpoint: str = ""
    sam2_config: str = ""
    organ_iou: float = 0.7
    organ_conf: float = 0.8
    mean_iou: float = 0.8
    mean_conf: float = 0.9
    # calibrated: the four thresholds above are replaced by quantiles of the scorer's own scores on the run's
    # real annotated source pairs (docs/filter.md); absolute: the values above (MRGen's, the paper preset)
    thresholds: str = "calibrated"
    calibration_quantile: float = 0.25  # a candidate must score at least as well as this quantile of real pairs
    calibration_items: int = 64  # real pairs scored (a seeded subset of the source items with labels)
    # calibrated second chance: no higher than this quantile of the real pairs' scores with a displaced mask
    misaligned_quantile: float = 0.9
    # the stage stops (FilterStarved) when fewer masks than this keep a candidate (0 = accept any)
    min_kept_fraction: float = 0.2
    # thresholds: MRGen's pass / relax / drop per mask (docs/filter.md); rank: every mask keeps its best `keep`
    # candidates whose mean IoU clears the floor (calibrated: the floor_quantile of real pairs with a displaced mask)
    selection: str = "thresholds"
    floor_quantile: float = 0.5
    keep: int = 2
    relax: float = 0.1
    relax_keep: int = 1
    top: int = 5  # only the best `top` candidates by mean IoU are considered (MRGen: 5; 0 = all)
    classical_method: str = "watershed"  # watershed | random_walker | grabcut | region_grow (docs/filter.md)
    perturb: int = 4  # prompt perturbations per organ (classical confidence = their stability)
    segmenter: str = ""  # scorer=segmenter: folder of a trained segmenter (default <workdir>/segment/oracle)
    figure_masks: int = 4  # masks shown in filter/kept_vs_rejected.png


@dataclass
class ExportCfg:
    format: str = "png"  # png (as the paper) | nifti
    dataset_id: int = 501  # nnU-Net's DatasetXXX id, 1..999
    name: str = "MRGenSynth"  # DatasetXXX_<name>; written to $nnUNet_raw when set, else <workdir>/nnunet (docs/scale.md)
    overwrite: bool = False  # replace an existing dataset folder whose content differs (else one clear error)


@dataclass
class SegmentCfg:
    channels: tuple = (16, 32, 64, 128)
    strides: tuple = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.0
    augment: bool = True  # flips, rot90, small affine/elastic, intensity scale/shift/gamma, noise
    name: str = "engine"  # `mrgen segment train|predict` use <workdir>/segment/<name>
    original_labels: bool = True  # `segment predict` writes the label values of the user's mask files (else 1..N)
    backend: str = "monai"  # `mrgen segment train`: monai (built-in UNet) | nnunet (nnU-Net v2 on the export; docs/segment.md)
    nnunet_trainer: str = "nnUNetTrainer"  # backend=nnunet: nnUNetv2_train -tr
    # the engine segmenter's training set (`mrgen run`'s `engine` set, `mrgen bench`'s mrgen methods; docs/segment.md):
    # synthetic = the filter's kept pairs only (MRGen); source = plus the run's real annotated source-modality pairs;
    # source+aug = plus `source_copies` intensity-randomised copies of each of those; source+dr = plus `source_copies`
    # SynthSeg-style images drawn from each source label map (the domain_randomisation baseline's; mrgen.randomise)
    engine_set: str = "synthetic"
    source_copies: int = 4
    # a later engine round (controller.pseudo_labels set): the engine set also gets the pseudo-labelled real target
    # items themselves (self-training), beside the renders of the controller they trained
    pseudo_pairs: bool = False
    train: TrainCfg = field(default_factory=lambda: TrainCfg(steps=1500, lr=2e-3, batch_size=16))


@dataclass
class EvaluateCfg:
    features: str = "efficientnet-lite0"  # or a local .safetensors path (architecture in features_arch)
    features_arch: str = "efficientnet-lite0"  # efficientnet-lite0 | resnet50 (RadImageNet); see docs/evaluate.md
    hd_percentile: float = 95.0
    max_images: int = 500  # images per side for FD/KID/PSNR/SSIM
    overlays: int = 6  # sample overlays in eval/<name>/figures


@dataclass
class AuditCfg:
    """``mrgen audit``: how many images each check compares (docs/audit.md); every subset is drawn with ``seed``."""

    max_images: int = 128  # kept synthetic images audited
    max_reference: int = 256  # engine training images each nearest neighbour is searched among
    max_real: int = 64  # real target images per set (held-out baseline, fidelity, diversity)
    copy_quantile: float = 1.0  # near-copy threshold Q: this quantile of held-out real images' similarity (1 = their max)
    copy_margin: float = 0.5  # ... plus this share of the way from Q to identical (1): threshold Q + margin * (1 - Q)
    pairs: int = 200  # image pairs per diversity figure
    min_dice: float = 0.5  # a kept render the target segmenter segments back below this mean Dice is flagged
    segmenter: str = "engine"  # the target segmenter: <workdir>/segment/<name>
    figure_pairs: int = 6  # most similar synthetic/training pairs shown
    reader_size: int = 256  # reader study: displayed image side in pixels
    seed: int = 0


@dataclass
class MorphCfg:
    recipe: str = ""  # YAML recipe of chained edits
    inputs: str = ""  # glob of label NIfTI files; empty = the run's phantom masks (<workdir>/phantom/masks/*.nii.gz)
    variants: int = 1  # random draws per input
    seed: int = 0
    apply_to: str = "source"  # in `mrgen run` (sample.masks has 'morphed'): morph the source masks | generated labels


@dataclass
class RunCfg:
    workdir: str = "runs/demo"
    source_modality: str = "T1"
    target_modality: str = "T2"
    source_datasets: tuple = ()  # empty = all datasets in the index
    target_datasets: tuple = ()
    disjoint_subjects: bool = True  # a subject's series go to the source side or the target side, never both
    # explicit subject lists (benchmark folds); when any is set it replaces the index's train/test split for that role
    source_subjects: tuple = ()
    target_subjects: tuple = ()
    test_subjects: tuple = ()
    baselines: tuple = ("source_only", "oracle")  # extra segmenters `mrgen run` trains for the report
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (mrgen.devices)
    seed: int = 0


@dataclass
class Config:
    preset: str = "cpu"
    run: RunCfg = field(default_factory=RunCfg)
    data: DataCfg = field(default_factory=DataCfg)
    phantom: PhantomCfg = field(default_factory=PhantomCfg)
    curate: CurateCfg = field(default_factory=CurateCfg)
    text: TextCfg = field(default_factory=TextCfg)
    diffusion: DiffusionCfg = field(default_factory=DiffusionCfg)
    autoencoder: AutoencoderCfg = field(default_factory=AutoencoderCfg)
    ldm: LdmCfg = field(default_factory=LdmCfg)
    controller: ControllerCfg = field(default_factory=ControllerCfg)
    rounds: RoundsCfg = field(default_factory=RoundsCfg)
    labelgen: LabelGenCfg = field(default_factory=LabelGenCfg)
    sample: SampleCfg = field(default_factory=SampleCfg)
    filter: FilterCfg = field(default_factory=FilterCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    segment: SegmentCfg = field(default_factory=SegmentCfg)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    morph: MorphCfg = field(default_factory=MorphCfg)
    audit: AuditCfg = field(default_factory=AuditCfg)

    @property
    def workdir(self) -> Path:
        return Path(self.run.workdir)


PRESETS = ("tiny", "cpu", "cpu3d", "paper")


def preset_path(name: str) -> Path:
    return Path(str(resources.files("mrgen") / "configs" / f"{name}.yaml"))


def _coerce(value: Any, like: Any, key: str) -> Any:
    """Convert a YAML/override value to the type of the default ``like``."""
    if dataclasses.is_dataclass(like):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; give a mapping, e.g. {key}.<field>=...")
        return _merge(like, value, key)
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if isinstance(like, int) and not isinstance(like, bool):
        if isinstance(value, (int, float)) and float(value) == int(value):
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if isinstance(like, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if isinstance(like, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"config key '{key}' expects a list like [8, 8], got {value!r}")
    if isinstance(like, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    return value


def _merge(obj: Any, updates: dict, prefix: str = "") -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for k, v in updates.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(names))}")
        changes[k] = _coerce(v, getattr(obj, k), key)
    return dataclasses.replace(obj, **changes)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["ldm.train.steps=10", "run.workdir=x"]`` -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. ldm.train.steps=200)")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = tree
        parts = dotted.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = value
    return tree


def _deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def load_config(preset: str = "cpu", file: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Resolve ``preset`` (tiny|cpu|paper), then an optional YAML ``file``, then ``overrides``.

    A config file may name its own preset with a top-level ``preset:`` key.
    """
    file_tree: dict = {}
    if file:
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; give a YAML file or a preset name ({', '.join(PRESETS)})")
        file_tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(file_tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (run:, data:, ...)")
        preset = file_tree.pop("preset", preset)
        file_tree.pop(RESOLVED, None)  # a saved config.yaml's record of the machine it ran on, not a setting
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    tree = yaml.safe_load(preset_path(preset).read_text()) or {}
    tree = _deep_update(tree, file_tree)
    tree = _deep_update(tree, parse_overrides(list(overrides)))
    tree.pop("preset", None)
    cfg = _merge(Config(preset=preset), tree)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see half a file (unchanged text: untouched)."""
    from mrgen.io import atomic_path

    with atomic_path(path, keep_if_same=True) as tmp:
        tmp.write_text(text)


RESOLVED = "resolved"


def save_resolved(cfg: Config, folder: str | Path, name: str = "config.yaml") -> Path:
    """``config.yaml`` of a run: the config as given (``run.device: auto`` stays ``auto``, so the folder runs on
    another machine) and, under ``resolved:``, what it resolved to here (:func:`mrgen.devices.describe`)."""
    path = Path(folder) / name
    atomic_write_text(path, dump(cfg) + yaml.safe_dump({RESOLVED: devices.describe(cfg)}, sort_keys=False))
    return path
