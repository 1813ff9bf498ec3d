"""``mrgen run`` / ``mrgen demo``: the one driver of the stages, skipping those whose outputs are current.

What each stage reads is declared once, in :mod:`mrgen.contract`; its *stamp* is derived from
that declaration (the values it reads plus the stamps of the stages it reads from).
``<workdir>/stages.json`` records the stamp and identity each finished stage had. A stage is
skipped when its output exists and its stamp is unchanged; a stage whose identity changed has
its folder moved aside (``<folder>.stale-<identity>``), never deleted; a stage whose stamp alone
changed (a training stage asked to train longer) re-runs in place and resumes from its
checkpoint. Training stages resume by themselves, so an interrupted ``mrgen run`` continues where
it stopped. ``mrgen bench`` drives its engine folders through the same :func:`run`.

Under ``accelerate launch`` every process runs this driver: the training, synthesis, filter,
segmenter and evaluation stages share their work between the processes themselves
(:mod:`mrgen.dist`), the other stages (:data:`MAIN_ONLY`) run on process 0 while the others wait,
and only process 0 writes ``stages.json``, the resolved config and moves stale folders aside.
"""

from __future__ import annotations

import shutil
import time
from typing import Callable

from mrgen import config as C
from mrgen import contract, devices, dist, io, lock, rounds

STAGES_FILE = "stages.json"
SCHEMA = 2
# stages that do not share their work between processes: under a launcher, process 0 runs them alone
MAIN_ONLY = ("phantom", "curate", "morph", "export")


def _functions() -> dict[str, Callable]:
    """Stage name -> the function that runs it on a config."""
    from mrgen import audit, autoencoder, controller, curate, evaluate, export, labelgen, ldm, phantom, synthesize
    from mrgen import filter as filter_stage
    from mrgen.morph import masks as morph_masks
    from mrgen.segment.stage import train_sets

    return {"phantom": phantom.run, "curate": curate.run, "autoencoder": autoencoder.run, "ldm": ldm.run,
            "controller": controller.run, "labelgen": labelgen.run, "morph": morph_masks.morph_run_masks, "synthesize": synthesize.run,
            "filter": filter_stage.run, "audit": audit.run, "export": export.run, "segment": train_sets, "evaluate": evaluate.evaluate_run,
            "rounds": run_rounds}


def read_stages(workdir) -> dict:
    """``{stage: {"stamp", "identity"}}`` of the finished stages (empty for a new run folder or an older schema)."""
    path = workdir / STAGES_FILE
    if not path.exists():
        return {}
    fix = f"delete it to re-run every stage (finished training resumes from its checkpoints): rm {path}"
    raw = io.read_versioned(path, SCHEMA, fix, missing=1)
    if raw.get("schema", 1) == SCHEMA:
        return dict(raw.get("stages", {}))
    # schema 1 ({stage: stamp}) stamped other inputs: every recorded stage counts as changed, so its
    # folder is moved aside (not reused by a stage that skips finished items, such as synthesize)
    return {k: {"stamp": None, "identity": f"schema1-{v}"} for k, v in (raw or {}).items() if isinstance(v, str)}


def _write_stages(workdir, done: dict) -> None:
    io.write_json(workdir / STAGES_FILE, {"schema": SCHEMA, "stages": done})


class _Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_s = round(time.perf_counter() - self.t0, 1)

    def result(self) -> dict:
        return {"wall_s": self.wall_s}


def _print(console) -> Callable:
    return lambda text: console.print(text, highlight=False)


def run(cfg: C.Config, only: tuple | None = None, provided: tuple = (), meter: Callable = _Timer,
        log: Callable | None = None) -> dict:
    """Run the stages of ``cfg`` in data-flow order; skip the current ones.

    ``only``: run just these stages (others are neither run nor checked); ``provided``: stages whose
    outputs the caller provides (e.g. a linked ``curated/``), recorded as current without running.
    ``meter()``: a context manager with ``result() -> dict`` wrapped around each stage that runs.
    Returns ``{"ran": {stage: meter result}, "skipped": [...], "report", "result"}``.
    """
    from rich.console import Console

    if cfg.sample.shard != "auto":
        raise C.ConfigError(f"sample.shard={cfg.sample.shard} splits `mrgen synthesize` by hand; `mrgen run` renders "
                            f"every mask (under accelerate launch its processes share them): leave sample.shard=auto")
    procs = dist.processes(devices.of(cfg))
    console = Console(stderr=True, quiet=not procs.main)
    say = (log or _print(console)) if procs.main else (lambda text: None)
    with lock.hold(cfg.workdir, say):
        return _run(cfg, only, provided, meter, log, say, console, procs)


def _run(cfg, only, provided, meter, log, say, console, procs) -> dict:
    wd = cfg.workdir
    done = read_stages(wd)

    def prepare():
        wd.mkdir(parents=True, exist_ok=True)
        C.save_resolved(cfg, wd)

    procs.on_main(prepare)  # every process has read stages.json before process 0 rewrites it
    fns = _functions()
    ran, skipped = {}, []
    stamps = contract.stamps(cfg)
    for s in contract.stages(cfg):
        stamp, ident = stamps[s.name]
        if s.name in provided:
            done[s.name] = {"stamp": stamp, "identity": ident}
            continue
        if only is not None and s.name not in only:
            continue
        old = done.get(s.name, {})
        if old.get("stamp") == stamp and (wd / s.output).exists():
            say(f"[green]✓[/] {s.name} is current ({stamp})")
            skipped.append(s.name)
            continue
        if old and old.get("identity") != ident and s.folder and (wd / s.folder).exists():
            aside = wd / f"{s.folder}.stale-{old.get('identity', 'old')}"
            procs.on_main(lambda: _move_aside(wd / s.folder, aside))
            say(f"[yellow]{s.name}: its inputs changed; old outputs kept in {aside}[/]")
        if log is None:
            console.rule(f"[bold]{s.name}")
        fn = fns[s.name]
        with meter() as m:
            result = procs.on_main(lambda: fn(cfg)) if s.name in MAIN_ONLY else fn(cfg)
        ran[s.name] = m.result()
        say(f"{s.name}: {_brief(result)}  ({ran[s.name].get('wall_s', '?')} s)")
        done[s.name] = {"stamp": stamp, "identity": ident}
        procs.on_main(lambda: _write_stages(wd, done))
    procs.on_main(lambda: _write_stages(wd, done))
    out = {"ran": ran, "skipped": skipped}
    last = rounds.folder(wd, cfg.rounds.count)  # the report of the last engine round (mrgen.rounds)
    summary_file = last / "eval" / "summary.json"
    if (only is None or {"evaluate", "rounds"} & set(only)) and summary_file.exists():
        out.update(report=str(last / "report.md"), result=one_line(io.read_json(summary_file)))
    return out


def run_rounds(cfg: C.Config) -> dict:
    """Stage ``rounds`` (``rounds.count`` >= 2; :mod:`mrgen.rounds`): for k = 2..count, round k-1's engine segmenter
    (``segment/engine``) pseudo-labels the target items (:func:`mrgen.segment.pseudolabel.label_targets`, into round k-1's
    ``pseudo/``), then round k's folder runs the controller, synthesis, filter and segmenters through this driver
    (round 1's curated data, autoencoder, LDM and baseline segmenters linked), the last round the audit, export
    and evaluation too. Returns what each round labelled and ran."""
    from mrgen.segment.pseudolabel import label_targets

    procs = dist.processes(devices.of(cfg))
    out = {}
    for k in range(2, cfg.rounds.count + 1):
        prev = rounds.config(cfg, k - 1)
        record = procs.on_main(lambda: label_targets(prev, prev.workdir / "segment" / "engine",
                                                     rounds.pseudo_folder(cfg.workdir, k)))
        baselines = tuple(f"segment/{n}" for n in ("source_only", "oracle") if n in cfg.run.baselines)
        procs.on_main(lambda: rounds.prepare(cfg, k, also=baselines))
        sub = rounds.config(cfg, k)
        steps = contract.ROUND_STAGES + (contract.FINAL_STAGES if k == cfg.rounds.count else ())
        res = run(sub, only=steps, provided=("curate", "autoencoder", "ldm"))
        out[f"round{k}"] = {"pseudo-labelled": f"{record['kept']} of {record['target_items']} target items",
                            "ran": sorted(res["ran"]), "result": res.get("result", "")}
    return out


def _move_aside(folder, aside) -> None:
    shutil.rmtree(aside, ignore_errors=True)
    folder.rename(aside)


def _brief(result) -> str:
    if isinstance(result, dict) and all(isinstance(v, dict) and "mean_dice" in v for v in result.values()) and result:
        return ", ".join(f"{k} Dice {v['mean_dice']:.3f}" for k, v in result.items())
    if isinstance(result, dict) and "next" in result:  # the export's next commands, one per line
        return str({k: v for k, v in result.items() if k != "next"}) + "\nnext:" + result["next"]
    return str(result)


def one_line(summary: dict) -> str:
    parts = [f"{name} Dice {m.get('mean_dice', float('nan')):.3f}" for name, m in summary.items()]
    return "; ".join(parts)


def cli_run(cfg: C.Config) -> dict:
    """``mrgen run``: every stage, then the report path, the one-line result and the seconds per stage."""
    out = run(cfg)
    return {"report": out.get("report", ""), "result": out.get("result", ""),
            "seconds": {k: v.get("wall_s") for k, v in out["ran"].items()}}


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
