"""The one CLI. Each subcommand parses, loads the config, and calls ``<stage>.run(cfg)``.

Stages are listed in data-flow order. Every command takes ``--preset``, ``--config``,
trailing ``section.key=value`` overrides and ``--dry-run`` (print the resolved config).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from mrgen import config as C
from mrgen.dist import launched

console = Console(stderr=True)

ORDER = ["phantom", "curate", "query", "train", "labelgen", "synthesize", "filter", "segment", "audit", "export", "evaluate", "morph", "run", "demo", "bench"]


class DataFlowGroup(TyperGroup):
    """List subcommands in data-flow order, not registration order."""

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


app = typer.Typer(
    cls=DataFlowGroup,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help=(
        "mrgen: a controllable data engine for MRI segmentation on modalities nobody annotated.\n\n"
        "Stages in data-flow order: **phantom** → **curate** → **train autoencoder** → **train ldm** → "
        "**train controller** → (**labelgen**) → **synthesize** → **filter** → **segment** → **audit** → **export nnunet** → "
        "**evaluate**; "
        "**run** chains them, **demo** runs them on the built-in phantom; **morph** edits label maps.\n\n"
        "Every stage: `mrgen STAGE [--preset tiny|cpu|paper] [--config FILE] [section.key=value ...] [--dry-run]`."
    ),
)
train_app = typer.Typer(no_args_is_help=True, help="Train a generative stage: autoencoder → ldm → controller.")
segment_app = typer.Typer(no_args_is_help=True, help="Train a segmenter on a dataset, or predict with it.")
export_app = typer.Typer(no_args_is_help=True, help="Export filtered synthetic pairs (nnU-Net v2 raw dataset).")
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate a segmenter (3D Dice, HD95) or the autoencoder (PSNR/SSIM).")

PresetOpt = typer.Option(None, "--preset", "-p", help=(
    "Preset: tiny (tests), cpu (2-core runs), paper (512², GPU). Default: the run folder's saved config.yaml "
    "when it has one (so a stage reruns with its run's settings), else cpu."))
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (may name its own preset).")
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Run folder (same as run.workdir=...).")
DryOpt = typer.Option(False, "--dry-run", help="Print the resolved config and exit.")
BackendOpt = typer.Option(None, "--backend", help="monai (built-in UNet, the default) | nnunet (same as segment.backend=...)")
OverArg = typer.Argument(None, help="Overrides like ldm.train.steps=200 sample.guidance=7", show_default=False)


def _cfg(preset: Optional[str], config: Optional[str], workdir: Optional[str], overrides: Optional[List[str]],
         dry: bool) -> C.Config:
    ov = list(overrides or [])
    if workdir:
        ov.append(f"run.workdir={workdir}")
    if preset is None and config is None:
        wd = C.parse_overrides(ov).get("run", {}).get("workdir") or C.RunCfg().workdir
        saved = Path(wd) / "config.yaml"
        if saved.exists():  # rerunning one stage of an existing run: use that run's resolved config
            config = str(saved)
    cfg = C.load_config(preset or "cpu", config, ov)
    if dry:
        typer.echo(C.dump(cfg))
        raise typer.Exit(0)
    return cfg


def _call(module: str, fn: str, *args, locked: C.Config | None = None, **kwargs):
    """Import a stage lazily (keeps ``mrgen --help`` fast) and turn known errors into one clear line.

    ``locked``: hold that config's run folder lock (:mod:`mrgen.lock`) and save the resolved config under it.
    """
    from contextlib import nullcontext

    from mrgen import lock

    try:
        mod = importlib.import_module(module)
        with lock.hold(locked.workdir) if locked is not None else nullcontext():
            if locked is not None:
                C.save_resolved(locked, locked.workdir)
            return getattr(mod, fn)(*args, **kwargs)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # our error classes subclass ValueError
        name = type(exc).__name__
        console.print(f"[bold red]error[/] ({name}): {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # a full disk outside the atomic writers (an appended log): the same one line
        from mrgen import io

        if not io.is_disk_full(exc):
            raise
        where = locked.workdir if locked is not None else Path.cwd()
        console.print(f"[bold red]error[/] (DiskFullError): disk full ({exc}) while writing below {where}; free space "
                      "there, then rerun the same command: every file written before is intact and the stage resumes",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def check_workdir(cfg: C.Config, creates: bool) -> None:
    """Refuse a run folder that is missing (for a stage reading earlier stages) or foreign: not empty and holding
    none of mrgen's files (``config.yaml``, ``stages.json``, a stage folder such as ``curated/``)."""
    from mrgen import contract

    wd = cfg.workdir
    if not wd.exists():
        if not creates:
            raise C.ConfigError(f"run folder {wd} does not exist; check -w/run.workdir, or start the run with "
                                f"`mrgen run -w {wd}` (or `mrgen phantom` / `mrgen curate`)")
        return
    if not wd.is_dir():
        raise C.ConfigError(f"run folder {wd} is a file, not a folder; give a folder with -w")
    from mrgen import io, lock

    markers = ["config.yaml", "stages.json"] + sorted({Path(s.output).parts[0] for s in contract.stages(cfg)})
    # a run killed at its first write left only its lock and a temp file: still mrgen's
    if not any((wd / m).exists() for m in markers + [lock.LOCK_FILE]) and any(not io.is_temp(p) for p in wd.iterdir()):
        raise C.ConfigError(f"{wd} is not an mrgen run folder (none of {', '.join(markers)}) and not empty; mrgen "
                            f"would write its stage folders among your files. Give a new or empty folder with -w")


def _stage(name: str, module: str, fn: str = "run", doc: str = "", parent: typer.Typer = app, creates: bool = False,
           backend: bool = False):
    def body(overrides, preset, config, workdir, dry_run, extra: tuple = ()):
        try:
            cfg = _cfg(preset, config, workdir, list(overrides or []) + list(extra), dry_run)
            check_workdir(cfg, creates)
        except C.ConfigError as exc:
            console.print(f"[bold red]config error[/]: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        result = _call(module, fn, cfg, locked=cfg)
        if result is not None and launched()[0] == 0:  # under accelerate launch: process 0 speaks for all
            # soft_wrap: printed commands and paths stay on one line, ready to paste
            console.print(result if isinstance(result, str) else _summary(result), soft_wrap=True, markup=False)

    if backend:  # `mrgen segment train --backend nnunet`
        def command(overrides: Optional[List[str]] = OverArg, preset: str = PresetOpt, config: Optional[str] = ConfigOpt,
                    workdir: Optional[str] = WorkdirOpt, dry_run: bool = DryOpt, backend: Optional[str] = BackendOpt):
            body(overrides, preset, config, workdir, dry_run, (f"segment.backend={backend}",) if backend else ())
    else:
        def command(overrides: Optional[List[str]] = OverArg, preset: str = PresetOpt, config: Optional[str] = ConfigOpt,
                    workdir: Optional[str] = WorkdirOpt, dry_run: bool = DryOpt):
            body(overrides, preset, config, workdir, dry_run)

    command.__doc__ = doc
    parent.command(name, help=doc)(command)


def _summary(result) -> str:
    if isinstance(result, dict):
        return "\n".join(f"{k}: {v}" for k, v in result.items())
    return str(result)


_stage("phantom", "mrgen.phantom", creates=True, doc=(
    "Write the built-in physics phantom (NIfTI images per modality, label masks, a curate manifest).\n\n"
    "Example: `mrgen phantom --preset cpu phantom.layout=brain phantom.modalities=[T1,T2,FLAIR]`"))
_stage("curate", "mrgen.curate", creates=True, doc=(
    "Curate NIfTI/DICOM/PNG data from a manifest into a Parquet slice/volume index plus normalised arrays.\n\n"
    "Example: `mrgen curate curate.manifest=examples/brats2013.yaml -w runs/brats`"))
_stage("autoencoder", "mrgen.autoencoder", parent=train_app, doc=(
    "Train the KL autoencoder (MSE + γ·KL, flips/rotations with p=0.2); stores the latent scale factor.\n\n"
    "Example: `mrgen train autoencoder -w runs/demo autoencoder.train.steps=500`"))
_stage("ldm", "mrgen.ldm", parent=train_app, doc=(
    "Train the text-conditioned latent diffusion UNet on cached latents (10 % empty-prompt dropout, EMA).\n\n"
    "Example: `mrgen train ldm -w runs/demo ldm.train.precision=bf16`"))
_stage("controller", "mrgen.controller", parent=train_app, doc=(
    "Train the mask controller (ControlNet copied from the UNet encoder) on source masks + target images with an empty mask.\n\n"
    "Example: `mrgen train controller -w runs/demo controller.mask_encoding=onehot`"))
app.add_typer(train_app, name="train")
_stage("labelgen", "mrgen.labelgen", doc=(
    "Train a latent diffusion model of label maps (one-hot or bit channels) on the source masks and generate new ones "
    "(Duo-Diffusion step 1); render them with `sample.masks=[generated]`.\n\n"
    "Example: `mrgen labelgen -w runs/demo3d labelgen.count=16 labelgen.encoding=bits`"))
_stage("synthesize", "mrgen.synthesize", doc=(
    "Render N target-modality candidates per source mask (DDIM + classifier-free guidance), with provenance.\n\n"
    "Example: `mrgen synthesize -w runs/demo sample.candidates=20`; on 4 processes: "
    "`accelerate launch --multi_gpu --num_processes 4 -m mrgen.cli synthesize -w runs/demo` (docs/scale.md)"))
_stage("filter", "mrgen.filter", doc=(
    "Score candidates by how well a prompted segmenter recovers each organ; keep the best k per mask.\n\n"
    "Example: `mrgen filter -w runs/demo filter.scorer=classical filter.keep=2`"))
_stage("nnunet", "mrgen.export", parent=export_app, doc=(
    "Write an nnU-Net v2 raw dataset (imagesTr/labelsTr/dataset.json) from the kept candidates into $nnUNet_raw when set "
    "(else the run folder's nnunet/) and print the nnU-Net commands to run next; export.overwrite=true replaces a different one.\n\n"
    "Example: `mrgen export nnunet -w runs/demo export.format=nifti`"))
app.add_typer(export_app, name="export")
_stage("train", "mrgen.segment", fn="run_train", parent=segment_app, backend=True, doc=(
    "Train the built-in MONAI UNet segmenter (Dice+CE) on the exported dataset, or with --backend nnunet nnU-Net v2 "
    "(nnUNetv2_plan_and_preprocess + nnUNetv2_train on the export, where nnunetv2 is installed).\n\n"
    "Example: `mrgen segment train -w runs/demo segment.train.steps=2000` or `mrgen segment train -w runs/demo --backend nnunet`"))
_stage("predict", "mrgen.segment", fn="run_predict", parent=segment_app, doc=(
    "Predict masks for the target test split with the trained segmenter.\n\nExample: `mrgen segment predict -w runs/demo`"))
app.add_typer(segment_app, name="segment")
_stage("segmenter", "mrgen.evaluate", fn="run", parent=evaluate_app, doc=(
    "3D Dice/HD95 per label on real target test volumes, and image-quality metrics of the synthetic set.\n\n"
    "Example: `mrgen evaluate segmenter -w runs/demo`"))
_stage("autoencoder", "mrgen.autoencoder", fn="evaluate", parent=evaluate_app, doc=(
    "PSNR, SSIM, L1, MSE of autoencoder reconstructions on the test split.\n\nExample: `mrgen evaluate autoencoder -w runs/demo`"))
app.add_typer(evaluate_app, name="evaluate")
_stage("morph", "mrgen.morph", fn="morph_files", creates=True, doc=(
    "Edit label maps from a YAML recipe (dilate/erode/scale/remove/grow/remap, in mm, under constraints).\n\n"
    "Example: `mrgen morph morph.recipe=ventriculomegaly morph.inputs='labels/*.nii.gz'`"))
_stage("run", "mrgen.pipeline", fn="cli_run", creates=True, doc=(
    "Run the whole chain, skipping stages whose outputs are current, and write a report.\n\n"
    "Example: `mrgen run --config examples/brats_flair_to_t1c.yaml`"))
_stage("demo", "mrgen.pipeline", fn="demo", creates=True, doc=(
    "The whole chain on the built-in phantom (T1 masks annotated, T2 unannotated), cpu preset, ≤ 20 min on 2 cores.\n\n"
    "Example: `mrgen demo` (or `mrgen demo --preset tiny` for a seconds-long smoke run)"))


@app.command("audit")
def audit(
    words: Optional[List[str]] = typer.Argument(None, show_default=False, help=(
        "`reader-study` for the blinded reader study; then overrides like audit.max_images=64")),
    preset: str = PresetOpt,
    config: Optional[str] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    dry_run: bool = DryOpt,
    n: int = typer.Option(40, "-n", help="reader-study: images on the page (half real, half synthetic)"),
    score: Optional[List[str]] = typer.Option(None, "--score", help="reader-study: score these answer files"),
    key: Optional[str] = typer.Option(None, "--key", help="reader-study --score: the key.json (default: the run's)"),
):
    """Trust report of the kept synthetic images: memorisation, fidelity per label, diversity, mask faithfulness.

    Examples: `mrgen audit -w runs/demo`; `mrgen audit reader-study -w runs/demo -n 40` (a static HTML page + its key);
    `mrgen audit reader-study -w runs/demo --score answers.json` (accuracy with a 95 % interval, mean ratings).
    """
    words = list(words or [])
    study = bool(words) and words[0] == "reader-study"
    if study and score and key:  # scoring against a given key needs no run folder
        typer.echo(_call("mrgen.audit.reader", "summary_lines", _call("mrgen.audit.reader", "score", list(score), key)))
        return
    try:
        cfg = _cfg(preset, config, workdir, words[1:] if study else words, dry_run)
    except C.ConfigError as exc:
        console.print(f"[bold red]config error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if not study:
        if score:
            console.print("[bold red]error[/]: --score belongs to `mrgen audit reader-study --score answers.json`")
            raise typer.Exit(2)
        console.print(_summary(_call("mrgen.audit", "run", cfg)))
    elif score:
        res = _call("mrgen.audit.reader", "score", list(score), key or cfg.workdir / "audit" / "reader_study" / "key.json")
        typer.echo(_call("mrgen.audit.reader", "summary_lines", res))
    else:
        console.print(_summary(_call("mrgen.audit.reader", "build", cfg, n)))


@app.command("query")
def query(
    filters: Optional[List[str]] = typer.Argument(None, help="column=value filters, e.g. modality=T1c region=upper_abdomen organ=spleen"),
    workdir: str = typer.Option("runs/demo", "--workdir", "-w"),
    limit: int = typer.Option(20, help="rows to print"),
):
    """Query the curated index in one call.

    Example: `mrgen query -w runs/brats modality=T1c organ=edema split=test`
    """
    from mrgen.curate.index import Index

    kw = {}
    for f in filters or []:
        if "=" not in f:
            console.print(f"[bold red]error[/]: filter '{f}' must look like column=value")
            raise typer.Exit(2)
        k, v = f.split("=", 1)
        kw[k] = v
    try:
        rows = Index(Path(workdir) / "curated" / "index.parquet").query(**kw)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{len(rows)} rows")
    for r in rows[:limit]:
        typer.echo(f"{r['id']}\t{r['modality']}\t{r['region']}\t{','.join(r['organs'])}\t{r['split']}")


@app.command("bench")
def bench(
    benchmark: str = typer.Argument(..., help="Benchmark definition, e.g. benchmarks/brats_flair_to_t1c.yaml"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Overrides of the definition, e.g. config.segment.train.steps=50"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Run folder (default runs/bench/NAME)."),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="Comma-separated subset, e.g. source_only,oracle"),
):
    """Cross-modality benchmark on real MRI: every method's segmenter per fold, Dice/HD95/compute report.

    Example: `mrgen bench benchmarks/spinalcord_t2_to_t1.yaml -w runs/bench/cord --methods source_only,oracle`
    """
    result = _call("mrgen.bench", "run", benchmark, workdir, list(overrides or []), methods)
    console.print(_summary(result))


def main(argv: Optional[list] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="mrgen")


if __name__ == "__main__":
    main()
