"""``mrgen segment train --backend nnunet``: nnU-Net v2 on the run's export, through nnU-Net's own commands.

Runs ``nnUNetv2_plan_and_preprocess -d XXX --verify_dataset_integrity`` and ``nnUNetv2_train XXX 2d|3d_fullres 0
-device cpu|cuda`` (:func:`mrgen.export.handoff.train_args`, the lines ``mrgen export nnunet`` prints) with
``nnUNet_raw`` = the dataset's parent and ``nnUNet_preprocessed`` / ``nnUNet_results`` in ``<workdir>/nnunet`` unless
set (:func:`mrgen.export.handoff.nnunet_env`). nnU-Net's trainer decides the length (1000 epochs by default;
``segment.nnunet_trainer`` picks another ``-tr``). The device is ``run.device`` resolved (``cuda:N`` becomes
``CUDA_VISIBLE_DEVICES=N -device cuda``, as nnU-Net expects).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mrgen import devices
from mrgen.export.handoff import nnunet_env, train_args

MODULES = {"nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
           "nnUNetv2_train": "nnunetv2.run.run_training"}  # both run their entry point under __main__


class NnUNetError(ValueError):
    """nnU-Net v2 is missing or one of its commands failed; the message says what to do."""


def missing() -> str:
    """Why nnU-Net v2 cannot run here ('' when ``nnunetv2`` is importable)."""
    if importlib.util.find_spec("nnunetv2") is None:
        return ("segment.backend=nnunet needs nnU-Net v2 in this Python (`import nnunetv2` fails); install it "
                "(`pip install nnunetv2`, or without torchvision as benchmarks/nnunet_train.py does, docs/segment.md) "
                "or use the built-in segmenter, segment.backend=monai")
    return ""


def command(args: list[str]) -> list[str]:
    """``args`` with nnU-Net's console script resolved: beside this Python, on PATH, else ``python -m <module>``."""
    found = shutil.which(args[0], path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return [found, *args[1:]] if found else [sys.executable, "-m", MODULES[args[0]], *args[1:]]


def train(cfg, folder: Path, run=subprocess.run) -> dict:
    """Plan, preprocess and train nnU-Net v2 on the dataset ``folder``; returns where the model went."""
    why = missing()
    if why:
        raise NnUNetError(why)
    if not (Path(folder) / "dataset.json").exists():
        raise FileNotFoundError(f"{Path(folder) / 'dataset.json'} not found; run `mrgen export nnunet -w {cfg.workdir}` first")
    env = {**os.environ, **nnunet_env(cfg, Path(folder))}
    dev = devices.of(cfg)
    if dev.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = dev.split(":", 1)[1]
    lines = train_args(cfg, device="cuda" if dev.startswith("cuda") else "cpu")
    for args in lines:
        done = run(command(args), env=env)
        if done.returncode != 0:
            raise NnUNetError(f"`{shlex.join(args)}` failed (exit {done.returncode}); nnU-Net's output is above")
    return {"backend": "nnunet", "dataset": str(folder), "nnUNet_results": env["nnUNet_results"],
            "commands": " && ".join(shlex.join(a) for a in lines)}
