"""Engine rounds (``rounds.count``; issue 14's second round): where round k lives and what it shares.

Round 1 is the run folder itself. Round k >= 2 is the run folder ``<workdir>/round<k>/``: an ordinary run
folder whose ``curated``, ``autoencoder`` and ``ldm`` are links to round 1's (the generative backbone is
trained once), and whose controller trains on round k-1's pseudo-labels (``controller.pseudo_labels`` =
``<round k-1>/pseudo/labels.npz``, :mod:`mrgen.pseudo`), then renders and filters again. ``mrgen run``
(:func:`mrgen.pipeline.run`, stage ``rounds``) labels with round k-1's ``segment/engine`` and runs round k
through the same driver; ``mrgen bench`` labels with its own segmenter trained on round k-1's pairs
(:mod:`mrgen.bench.engine`). This module runs nothing and imports no stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from mrgen import config as C

PSEUDO = "pseudo"  # in round k-1's folder: the pseudo-labels round k trains on (and the bench's labelling segmenter)
SHARED = ("curated", "autoencoder", "ldm")  # what every later round links from round 1


def folder(workdir: str | Path, k: int) -> Path:
    """Round ``k``'s run folder under round 1's ``workdir``."""
    return Path(workdir) if k == 1 else Path(workdir) / f"round{k}"


def pseudo_folder(workdir: str | Path, k: int) -> Path:
    """Where round ``k``'s pseudo-labels are written (``mrgen.pseudo``): the ``pseudo/`` folder of round k-1."""
    return folder(workdir, k - 1) / PSEUDO


def config(cfg: C.Config, k: int) -> C.Config:
    """Round ``k``'s config from round 1's ``cfg``: its folder, the previous round's pseudo-labels, one round."""
    from mrgen.pseudo import FILE

    if k == 1:
        return cfg
    return C._merge(cfg, {"run": {"workdir": str(folder(cfg.workdir, k))}, "rounds": {"count": 1},
                          "controller": {"pseudo_labels": str(pseudo_folder(cfg.workdir, k).resolve() / FILE)}})


def link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a relative symlink; an existing link to the same target is kept, another link replaced,
    and a real file or folder at ``dst`` refused (nothing is deleted)."""
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.path.realpath(dst)) == Path(os.path.realpath(src)):
            return
        if dst.is_symlink():
            dst.unlink()
        else:
            raise FileExistsError(f"{dst} exists and is not a link to {src}; remove it to rerun")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(src, dst.parent), dst)


def prepare(cfg: C.Config, k: int, also: tuple = ()) -> None:
    """Make round ``k``'s folder (:func:`folder`) with its links to round 1 (:data:`SHARED` and ``also``, paths
    relative to a run folder that exist in round 1); its config is :func:`config`."""
    sub = folder(cfg.workdir, k)
    sub.mkdir(parents=True, exist_ok=True)
    for name in SHARED + tuple(also):
        if (cfg.workdir / name).exists():
            link(cfg.workdir / name, sub / name)
