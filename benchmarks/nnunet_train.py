"""nnU-Net v2 trains on an mrgen export (issue 16): nnU-Net installed without torchvision, a tiny run exported by
`mrgen export nnunet`, nnU-Net's own plan/preprocess with its integrity check, then a few training iterations on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nnunet_train.py [--workdir runs/bench/nnunet] [--iterations 3]

1. ``pip install --no-deps --target <workdir>/site`` the pinned set of ``requirements/nnunet-check.txt`` plus what
   training imports (:data:`TRAIN_EXTRA`). nnunetv2's declared dependencies pull torchvision through timm
   (dynamic_network_architectures -> timm); reading nnU-Net 2.8.1's source: only its Primus/EVA architectures import
   timm, the default ``nnUNetTrainer`` (PlainConvUNet) and its data pipeline import neither timm nor torchvision, so
   ``--no-deps`` works. The site folder keeps the project's venv untouched.
2. ``mrgen run -p tiny`` at 32 px with 6 masks x 2 kept candidates (12 cases: nnU-Net's 5-fold split needs >= 5),
   which ends with ``mrgen export nnunet`` into ``<workdir>/run/nnunet/Dataset501_MRGenSynth``.
3. ``nnUNetv2_plan_and_preprocess -d 501 --verify_dataset_integrity -np 1 -npfp 1`` (the line mrgen prints, with one
   process) and 4. ``nnUNetv2_train 501 2d 0 -device cpu`` through nnU-Net's own entry point
   (``run_training_entry``) with the epoch shortened to ``--iterations`` training and 1 validation iteration (nnU-Net
   has no flag for that; its ``nnUNetTrainer_1epoch`` etc. live beside the Primus trainers, whose lookup imports
   timm) and ``torch.set_num_threads`` held at ``OMP_NUM_THREADS`` (nnU-Net sets it to every core on CPU).

Writes ``<workdir>/nnunet_train.json`` (steps, seconds, the checkpoint, whether torchvision or timm got imported).
Where a step cannot run (no index to install from, an import error) it says so there and exits 0 with ``skipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TRAIN_EXTRA = ["batchgeneratorsv2==0.3.6", "seaborn==0.13.2", "connected-components-3d==4.1.1"]
RUN_OVERRIDES = ["data.image_size=32", "sample.max_masks=6", "filter.keep=2", "filter.relax_keep=2"]

DRIVER = r"""
import os, sys, time
import torch
_set = torch.set_num_threads
torch.set_num_threads = lambda n: _set(max(1, min(int(n), int(os.environ.get("OMP_NUM_THREADS", n)))))
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as mod
_run = mod.nnUNetTrainer.run_training
def run_training(self):
    self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, int(sys.argv[1]), 1
    return _run(self)
mod.nnUNetTrainer.run_training = run_training
from nnunetv2.run.run_training import run_training_entry
sys.argv = ["nnUNetv2_train", *sys.argv[2:]]
run_training_entry()
print("MRGEN_IMPORTED", {m: m in sys.modules for m in ("torchvision", "timm", "seaborn", "cc3d", "batchgeneratorsv2")})
"""


def _run(cmd: list, env: dict, log: Path, timeout: float) -> tuple[int, float, str]:
    t0 = time.time()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.time() - t0, 1), log.read_text()[-3000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "bench" / "nnunet"))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per step (a shared machine is slow)")
    args = ap.parse_args(argv)
    wd = Path(args.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    site, out = wd / "site", {"steps": {}}
    result = wd / "nnunet_train.json"

    def finish(skipped: str = "") -> int:
        if skipped:
            out["skipped"] = skipped
            print(f"SKIPPED: {skipped}")
        result.write_text(json.dumps(out, indent=2))
        print(f"wrote {result}")
        return 0 if skipped or all(s["rc"] == 0 for s in out["steps"].values()) else 1

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}
    env.pop("nnUNet_raw", None)  # the export goes into the run (nnunet_env points nnU-Net there)
    import importlib.util

    out["torchvision_in_venv"] = importlib.util.find_spec("torchvision") is not None
    steps = [("install", [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), "-r",
                          str(ROOT / "requirements" / "nnunet-check.txt"), *TRAIN_EXTRA], {}),
             ("import", [sys.executable, "-c", "import nnunetv2.run.run_training, sys; "
                         "print('torchvision' in sys.modules, 'timm' in sys.modules)"], {}),
             ("export", [sys.executable, "-m", "mrgen.cli", "run", "-p", "tiny", "-w", str(wd / "run"), *RUN_OVERRIDES], {})]
    if (site / "nnunetv2").is_dir():  # installed by an earlier run
        steps = steps[1:]
        out["steps"]["install"] = {"rc": 0, "seconds": 0.0, "note": f"already in {site}"}
    for name, cmd, extra in steps:
        rc, sec, tail = _run(cmd, {**env, **extra}, wd / f"{name}.log", args.timeout)
        out["steps"][name] = {"rc": rc, "seconds": sec, "command": shlex.join(cmd[:6]) + (" ..." if len(cmd) > 6 else "")}
        if rc != 0:
            why = {"install": "pip could not install nnU-Net v2 without its dependencies (no package index?)",
                   "import": "nnU-Net v2 does not import without torchvision/timm here",
                   "export": "the tiny mrgen run failed"}[name]
            out["steps"][name]["tail"] = tail
            return finish(f"{why}; see {wd / (name + '.log')}") if name != "export" else finish()

    from mrgen import config as C
    from mrgen.export.handoff import exported_folder, nnunet_env, train_args
    from mrgen.segment.nnunet import command

    cfg = C.load_config("tiny", wd / "run" / "config.yaml")  # the run's saved config (it names its preset)
    folder = exported_folder(cfg)
    nn_env = {**env, **nnunet_env(cfg, folder)}
    plan, train = train_args(cfg, device="cpu")
    out["dataset"] = str(folder)
    out["cases"] = json.loads((folder / "dataset.json").read_text())["numTraining"]
    runs = [("plan_and_preprocess", command(plan) + ["-np", "1", "-npfp", "1"], {"nnUNet_n_proc_DA": "1"}),
            ("train", [sys.executable, "-c", DRIVER, str(args.iterations), *train[1:]], {"nnUNet_n_proc_DA": "0"})]
    for name, cmd, extra in runs:
        t_cpu = os.times()
        rc, sec, tail = _run(cmd, {**nn_env, **extra}, wd / f"{name}.log", args.timeout)
        cpu = os.times()
        out["steps"][name] = {"rc": rc, "seconds": sec, "cpu_seconds": round(cpu.children_user - t_cpu.children_user
                                                                            + cpu.children_system - t_cpu.children_system, 1),
                              "command": shlex.join(plan if name == "plan_and_preprocess" else train)}
        if rc != 0:
            out["steps"][name]["tail"] = tail
            return finish()
        if name == "train":
            line = next((ln for ln in tail.splitlines() if ln.startswith("MRGEN_IMPORTED")), "")
            out["imported"] = line.replace("MRGEN_IMPORTED", "").strip()
            out["losses"] = [ln.split(": ", 1)[-1] for ln in tail.splitlines() if "train_loss" in ln or "val_loss" in ln]
    res = Path(nn_env["nnUNet_results"])
    out["checkpoints"] = sorted(str(p.relative_to(res)) for p in res.rglob("checkpoint_*.pth"))
    out["validation"] = sorted(str(p.relative_to(res)) for p in res.rglob("summary.json"))
    return finish()


if __name__ == "__main__":
    raise SystemExit(main())
