"""``mrgen synthesize``: render N target-modality candidates for every source mask.

For each source mask the prompt is the target modality + its attributes + the source
slice's region + the organs in the mask. Every candidate has its own seed, derived from
``(sample.seed, mask id, candidate index)``, so it can be regenerated alone from its
provenance record (:func:`regenerate`). Output per mask: ``synth/candidates/<key>.npz``
(``images`` (N, H, W[, D]) float16 in [-1, 1], ``mask``, ``seeds``, ``meta`` = the JSON
provenance records); ``synth/provenance.jsonl`` is rebuilt from those files at the end,
so an interrupted run resumes by skipping finished masks and never leaves a torn log.
Under ``accelerate launch`` / ``torchrun`` every process renders its share of the masks and process
0 writes ``provenance.jsonl`` after the others are done (:mod:`mrgen.dist`); ``sample.shard=i/n``
splits the work over separate commands by hand (each launcher process then takes its part of
shard i). Work is shared out in *groups* of masks whose jobs fill whole batches (:func:`groups`),
so every batch holds the same candidates whatever the number of processes: the candidates, and
everything computed from them, are those of one process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from mrgen import devices, dist, io, prompts, seeds
from mrgen.config import Config
from mrgen.synthesize.masks import find_item, load_row_mask, mask_items, mask_key, source_masks  # noqa: F401

SYNTH = "synth"


def candidate_seed(base: int, mask_id: str, candidate: int) -> int:
    """Seed of one candidate: :func:`mrgen.seeds.derive` of ``(sample.seed, mask id, candidate index)``."""
    return seeds.derive(base, mask_id, candidate)


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; ``"auto"`` (the default: the launcher's processes share the work) -> ``(0, 1)``."""
    if str(shard) == "auto":
        return 0, 1
    try:
        i, n = (int(x) for x in str(shard).split("/"))
        assert 0 <= i < n
    except Exception:
        raise ValueError(f"sample.shard must be auto or look like i/n with 0 <= i < n (e.g. 0/4), got '{shard}'") from None
    return i, n


def groups(rows: list, candidates: int, batch_size: int) -> list[list]:
    """``rows`` in consecutive groups of ``lcm(candidates, batch_size) / candidates`` masks: a group's jobs fill
    whole batches, so one process rendering every group in order batches exactly as a fresh run always did."""
    per = math.lcm(int(candidates), int(batch_size)) // int(candidates)
    return [rows[k:k + per] for k in range(0, len(rows), per)]


def my_groups(cfg: Config, rows: list, procs: dist.Procs) -> list[list]:
    """The groups this process renders: of shard ``sample.shard=i/n``, the launcher process ``r`` of ``w`` takes
    groups ``k`` with ``k % (n * w) == i + n * r`` (together the ``w`` processes take shard i's groups)."""
    i, n = parse_shard(cfg.sample.shard)
    return groups(rows, cfg.sample.candidates, cfg.sample.batch_size)[i + n * procs.rank::n * procs.world]


def target_prompt(cfg: Config, row: dict) -> str:
    return prompts.build_prompt(cfg.run.target_modality, row["region"] or None, list(row["organs"]))


def _sampler_settings(cfg: Config) -> dict:
    return {
        "solver": cfg.sample.solver,
        "ddim_steps": cfg.sample.ddim_steps,  # the step count of every solver (the key predates the others)
        "guidance": cfg.sample.guidance,
        "eta": cfg.sample.eta,
        "precision": cfg.sample.precision,
        "strength": cfg.sample.strength,
        "conditioning_scale": cfg.controller.conditioning_scale,
    }


def _generate_kw(s: dict) -> dict:
    """``Renderer.generate`` keywords from :func:`_sampler_settings` (records made before ``solver`` /
    ``precision`` / ``strength`` were recorded were DDIM in fp32 from pure noise)."""
    return {"guidance": s["guidance"], "steps": s["ddim_steps"], "eta": s["eta"], "solver": s.get("solver", "ddim"),
            "precision": s.get("precision", "fp32"), "strength": s.get("strength", 1.0)}


def start_images(items: list[dict], strength: float) -> torch.Tensor | None:
    """The SDEdit start images of ``items`` (their source images, ``(N, *S)``), or None at strength 1."""
    if float(strength) == 1.0:
        return None
    return torch.from_numpy(np.stack([r["image"]() for r in items]))


def run(cfg: Config) -> dict:
    from rich.progress import Progress

    from mrgen.controller import load_generator

    procs = dist.processes(devices.of(cfg))
    out = cfg.workdir / SYNTH / "candidates"
    items = mask_items(cfg)
    finished = lambda r: (out / f"{r['key']}.npz").exists()  # noqa: E731
    # a group with an unfinished mask is rendered whole, in the batches of an uninterrupted run (batch composition
    # changes the pixels in the last bits), and only its unfinished masks are written: a resumed run equals one run
    todo_groups = [g for g in my_groups(cfg, items, procs) if any(not finished(r) for r in g)]
    rows = [r for g in my_groups(cfg, items, dist.Procs()) for r in g]  # the masks of sample.shard
    done = sum(1 for r in rows if finished(r))
    procs.barrier()  # every process has counted the finished masks before any writes one
    todo = [r for g in todo_groups for r in g]
    if todo:
        gen = load_generator(cfg.workdir, cfg)
        sampler = _generate_kw(_sampler_settings(cfg))
        # jobs: (row, candidate) pairs, batched across the masks of a group so batches stay full
        by_group = [[(r, c) for r in g for c in range(cfg.sample.candidates)] for g in todo_groups]
        B = cfg.sample.batch_size
        batches = [jobs[k:k + B] for jobs in by_group for k in range(0, len(jobs), B)]
        pending: dict[str, list] = {}
        with Progress(transient=False, disable=not procs.main) as bar:
            task = bar.add_task(f"synthesize {len(todo)} masks x {cfg.sample.candidates}", total=len(todo) * cfg.sample.candidates)
            for batch in batches:
                masks = torch.from_numpy(np.stack([r["load"]() for r, _ in batch]))
                texts = [target_prompt(cfg, r) for r, _ in batch]
                seeds = [candidate_seed(cfg.sample.seed, r["id"], c) for r, c in batch]
                imgs = gen.generate(masks, texts, seeds, **sampler, images=start_images([r for r, _ in batch], sampler["strength"]))
                for (r, c), img, seed, text, m in zip(batch, imgs, seeds, texts, masks):
                    pending.setdefault(r["id"], []).append((c, img[0].float().numpy(), seed, text, m.numpy()))
                    if len(pending[r["id"]]) == cfg.sample.candidates:
                        done_now = pending.pop(r["id"])
                        if not finished(r):
                            _write_mask(cfg, gen, r, done_now, out)
                bar.advance(task, len(batch))
    return procs.on_main(lambda: _finish(cfg, len(rows), done))


def _finish(cfg: Config, masks: int, done: int) -> dict:
    """Process 0, once every process has written its masks: ``provenance.jsonl`` and the figures."""
    records = rebuild_provenance(cfg.workdir)
    grid = sample_grid(cfg.workdir)
    if cfg.data.spatial_dims == 3:
        ortho_grid(cfg.workdir)
    return {"masks": masks, "resumed": done, "candidates": len(records), "grid": str(grid) if grid else ""}


def _write_mask(cfg: Config, gen, row: dict, items: list, out: Path) -> None:
    items.sort(key=lambda x: x[0])
    key = row["key"]
    origin = {k: row["origin"].get(k) for k in ("seed", "prompt", "checkpoints", "origin", "recipe_hash") if k in row.get("origin", {})}
    meta = [
        {
            "key": key, "mask_id": row["id"], "mask_kind": row["kind"], "mask_hash": row["hash"], "mask_origin": origin,
            "candidate": c, "seed": seed, "prompt": text,
            "source_modality": row["row"]["modality"] if "row" in row else "", "target_modality": cfg.run.target_modality,
            "sampler": _sampler_settings(cfg), "checkpoints": dict(gen.hashes), "file": f"candidates/{key}.npz",
        }
        for c, _, seed, text, _ in items
    ]
    io.write_npz(out / f"{key}.npz", images=np.stack([x[1] for x in items]).astype(np.float16),
                 mask=items[0][4].astype(np.uint8), seeds=np.array([x[2] for x in items], dtype=np.int64),
                 meta=np.array(json.dumps(meta)))


def load_candidates(path: str | Path) -> dict:
    """One candidates file; a truncated or damaged one (zip CRC, missing member) is an ArtefactError with the fix."""
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"images": z["images"].astype(np.float32), "mask": z["mask"].astype(np.int64), "seeds": z["seeds"],
                    "meta": json.loads(str(z["meta"]))}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as exc:
        wd = path.parent.parent.parent
        raise io.corrupt(path, exc, f"delete it and rerun `mrgen synthesize -w {wd}` (only that mask is rendered "
                                    f"again, with the same seeds), then `mrgen run` to refresh what follows") from None


def rebuild_provenance(workdir: str | Path) -> list[dict]:
    folder = Path(workdir) / SYNTH
    records = []
    for f in sorted((folder / "candidates").glob("*.npz")):
        records.extend(load_candidates(f)["meta"])
    with io.atomic_path(folder / "provenance.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def regenerate(cfg: Config, record: dict, gen=None) -> np.ndarray:
    """Re-render one candidate from its provenance record: (H, W[, D]) float32 in [-1, 1].

    The ControlNet residual scale is the renderer's (``controller.conditioning_scale`` at load time);
    a record made with another scale is refused rather than re-rendered differently."""
    from mrgen.controller import load_generator

    gen = gen or load_generator(cfg.workdir, cfg)
    stale = {k: v for k, v in record["checkpoints"].items() if gen.hashes.get(k) != v}
    if stale:
        raise ValueError(f"checkpoints changed since candidate {record['key']}#{record['candidate']} was made: {sorted(stale)}")
    item = find_item(cfg, record["mask_id"])
    if record.get("mask_hash") and item["hash"] != record["mask_hash"]:
        raise ValueError(f"mask {record['mask_id']} changed since candidate {record['key']}#{record['candidate']} was made")
    s = record["sampler"]
    if gen.conditioning_scale is not None and float(s["conditioning_scale"]) != gen.conditioning_scale:
        raise ValueError(f"candidate {record['key']}#{record['candidate']} was rendered with controller.conditioning_scale="
                         f"{s['conditioning_scale']}, the renderer uses {gen.conditioning_scale}; set "
                         f"controller.conditioning_scale={s['conditioning_scale']}")
    kw = _generate_kw(s)
    img = gen.generate(torch.from_numpy(item["load"]())[None], [record["prompt"]], [record["seed"]], **kw,
                       images=start_images([item], kw["strength"]))
    return img[0, 0].float().numpy()


def sample_grid(workdir: str | Path, n_masks: int = 6, n_cand: int = 6) -> Path | None:
    """``synth/samples.png``: per row a source mask then its first candidates (mid slice for 3D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted((Path(workdir) / SYNTH / "candidates").glob("*.npz"))[:n_masks]
    if not files:
        return None
    fig, axes = plt.subplots(len(files), n_cand + 1, figsize=(1.6 * (n_cand + 1), 1.6 * len(files)), squeeze=False)
    for i, f in enumerate(files):
        c = load_candidates(f)
        mid = lambda a: a[..., a.shape[-1] // 2] if a.ndim == 3 else a  # noqa: E731
        axes[i, 0].imshow(mid(c["mask"]).T, origin="lower", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[i, 0].set_title("mask" if i == 0 else "", fontsize=7)
        for j in range(n_cand):
            ax = axes[i, j + 1]
            if j < len(c["images"]):
                ax.imshow(mid(c["images"][j]).T, origin="lower", cmap="gray", vmin=-1, vmax=1)
                ax.contour(mid(c["mask"]).T, levels=[0.5], colors="r", linewidths=0.4, origin="lower")
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle("source masks → synthetic target candidates (red: mask outline)", fontsize=8)
    fig.tight_layout()
    path = Path(workdir) / SYNTH / "samples.png"
    with io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def ortho_grid(workdir: str | Path, per_kind: int = 2) -> Path | None:
    """``synth/ortho.png`` (3D): for up to ``per_kind`` masks of each kind (source / generated / morphed),
    the label volume and its first rendered candidate in axial / coronal / sagittal views."""
    from mrgen.figures import save_ortho_grid

    seen: dict = {}
    rows = []
    for f in sorted((Path(workdir) / SYNTH / "candidates").glob("*.npz")):
        c = load_candidates(f)
        kind = c["meta"][0].get("mask_kind", "source")
        if c["mask"].ndim != 3 or seen.get(kind, 0) >= per_kind:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        rows.append({"name": f"{kind}: {c['meta'][0]['mask_id'][-22:]}", "labels": c["mask"], "image": c["images"][0]})
    if not rows:
        return None
    rows.sort(key=lambda r: ["source", "generated", "morphed"].index(r["name"].split(":")[0]))
    return save_ortho_grid(Path(workdir) / SYNTH / "ortho.png", rows,
                           "label volumes and their rendered target-modality volumes (red: label outline)")
