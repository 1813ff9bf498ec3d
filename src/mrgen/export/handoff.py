"""Where an export lands and how it is handed to nnU-Net v2.

* :func:`raw_root`: ``$nnUNet_raw`` when it is set (nnU-Net finds ``$nnUNet_raw/DatasetXXX_Name/`` there), else
  ``<workdir>/nnunet``; :func:`target` is ``<root>/Dataset{export.dataset_id:03d}_{export.name}``.
* :func:`publish`: a dataset built in a staging folder beside the target replaces it in one rename. An existing
  folder whose content hash (``mrgen_export.json``, :data:`MANIFEST`) differs is kept, with one
  :class:`ExportError`, unless ``export.overwrite=true``; the same content is a no-op.
* ``<workdir>/nnunet/export.json`` (:data:`RECORD`) says where the run's dataset went, so ``mrgen segment train``
  finds it without ``nnUNet_raw`` set (:func:`exported_folder`).
* :func:`nnunet_env` / :func:`next_commands`: the ``nnUNet_*`` folders and the exact commands to run next.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from mrgen import io
from mrgen.lock import alive
from mrgen.export.nnunet import dataset_folder

MANIFEST = "mrgen_export.json"  # in the dataset folder: content hash, cases, the run it came from
RECORD = "export.json"  # in <workdir>/nnunet: where the run's dataset went
ENV_RAW = "nnUNet_raw"


class ExportError(ValueError):
    """The export cannot be written where it should go; the message says how to fix it."""


def raw_root(cfg) -> Path:
    """``$nnUNet_raw`` when set, else ``<workdir>/nnunet``."""
    env = os.environ.get(ENV_RAW, "").strip()
    return Path(env).expanduser() if env else Path(cfg.workdir) / "nnunet"


def target(cfg) -> Path:
    return dataset_folder(raw_root(cfg), cfg.export.dataset_id, cfg.export.name)


def exported_folder(cfg) -> Path:
    """The run's exported dataset: the folder :data:`RECORD` names when it is this id and name, else :func:`target`."""
    rec = Path(cfg.workdir) / "nnunet" / RECORD
    if rec.exists():
        r = io.read_json(rec)
        if (r.get("dataset_id"), r.get("name")) == (cfg.export.dataset_id, cfg.export.name):
            return Path(r["folder"])
    return target(cfg)


def content_hash(folder: Path) -> str:
    """The hash :data:`MANIFEST` records: every file of the dataset but the manifest itself."""
    return io.folder_hash(folder, skip=(MANIFEST,))


def _recorded_hash(folder: Path) -> str:
    m = folder / MANIFEST
    return io.read_json(m).get("content_hash", "") if m.exists() else content_hash(folder)


def _same_id(root: Path, folder: Path) -> list[str]:
    """Other ``DatasetXXX_*`` folders in ``root`` with this id: nnU-Net's ``-d XXX`` would not know which one."""
    prefix = folder.name.split("_", 1)[0] + "_"
    return sorted(p.name for p in root.glob(prefix + "*") if p.is_dir() and p.name != folder.name) if root.exists() else []


def _dead(p: Path, tag: str) -> bool:
    """``p`` is ``.<name>.<tag>-<pid>`` of a process that is no longer running."""
    pid = p.name.rsplit(f".{tag}-", 1)[-1]
    return pid.isdigit() and not alive(int(pid))


def recover(folder: Path) -> None:
    """Undo what a killed export left beside ``folder``: a dataset moved aside for replacement goes back when
    the new one never arrived (else it is removed), and a half-built staging folder is removed."""
    for p in folder.parent.glob(f".{folder.name}.old-*"):
        if _dead(p, "old"):
            if folder.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.rename(folder)
    for p in folder.parent.glob(f".{folder.name}.tmp-*"):
        if _dead(p, "tmp"):
            shutil.rmtree(p, ignore_errors=True)


def staging(folder: Path) -> Path:
    """A fresh folder beside ``folder`` (same file system, so :func:`publish` is one rename), after
    :func:`recover` has cleaned up after a killed export."""
    recover(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(built: Path, folder: Path, overwrite: bool, meta: dict) -> tuple[str, str]:
    """Move the dataset ``built`` by :func:`staging` to ``folder``; returns (``written|unchanged|replaced``, hash).

    Raises :class:`ExportError` (and removes ``built``) when ``folder`` holds other content and not ``overwrite``,
    or when another dataset in the same root has this id."""
    digest = content_hash(built)
    try:
        clash = _same_id(folder.parent, folder)
        if clash:
            raise ExportError(f"{folder.parent} already holds {', '.join(clash)} with nnU-Net id "
                              f"{folder.name[7:10]}: nnU-Net's -d {int(folder.name[7:10])} would not know which dataset "
                              f"to use; choose another export.dataset_id (or remove those folders)")
        if folder.exists():
            old = _recorded_hash(folder)
            if old == digest:
                return "unchanged", digest
            if not overwrite:
                raise ExportError(f"{folder} already holds a different dataset (content hash {old}, this export "
                                  f"{digest}); set export.overwrite=true to replace it, or choose another "
                                  f"export.dataset_id / export.name")
        io.write_json(built / MANIFEST, {"content_hash": digest, **meta})
        status = "written"
        if folder.exists():
            aside = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(aside)
            built.rename(folder)
            shutil.rmtree(aside, ignore_errors=True)
            status = "replaced"
        else:
            built.rename(folder)
        return status, digest
    finally:
        shutil.rmtree(built, ignore_errors=True)


def nnunet_env(cfg, folder: Path) -> dict:
    """``nnUNet_raw`` (the dataset's parent) and, unless set already, ``nnUNet_preprocessed`` / ``nnUNet_results``
    in ``<workdir>/nnunet``."""
    base = Path(cfg.workdir).resolve() / "nnunet"
    return {"nnUNet_raw": str(folder.resolve().parent),
            "nnUNet_preprocessed": os.environ.get("nnUNet_preprocessed") or str(base / "preprocessed"),
            "nnUNet_results": os.environ.get("nnUNet_results") or str(base / "results")}


def configuration(spatial_dims: int) -> str:
    """nnU-Net's configuration for the export: ``2d`` for slices, ``3d_fullres`` for volumes."""
    return "2d" if int(spatial_dims) == 2 else "3d_fullres"


def train_args(cfg, fold: str = "0", device: str | None = None) -> tuple[list, list]:
    """The two command lines: ``nnUNetv2_plan_and_preprocess ...`` and ``nnUNetv2_train ...``."""
    did = str(int(cfg.export.dataset_id))
    plan = ["nnUNetv2_plan_and_preprocess", "-d", did, "--verify_dataset_integrity"]
    train = ["nnUNetv2_train", did, configuration(cfg.data.spatial_dims), fold]
    if cfg.segment.nnunet_trainer != "nnUNetTrainer":
        train += ["-tr", cfg.segment.nnunet_trainer]
    if device is not None:
        train += ["-device", device]
    return plan, train


def next_commands(cfg, folder: Path) -> list[str]:
    """The shell lines to paste next: the three ``export nnUNet_*=...`` lines, then plan/preprocess and train."""
    env = nnunet_env(cfg, folder)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return lines + [shlex.join(a) for a in train_args(cfg)]
