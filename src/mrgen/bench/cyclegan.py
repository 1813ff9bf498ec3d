"""A CPU-sized CycleGAN (Zhu et al. 2017) for unpaired source -> target slice translation.

Two ResNet generators (``G``: source -> target, ``F``: target -> source; reflect-padded 7x7
stem, two stride-2 downsamplings, ``res_blocks`` residual blocks, two upsamplings, tanh) and
two 70x70-style PatchGAN discriminators (three stride-2/1 conv layers at 64 px give a grid of
patch scores). Losses: least-squares GAN, cycle consistency (L1, ``lambda_cycle``) and
identity (L1, ``lambda_identity`` x ``lambda_cycle``); Adam(2e-4, betas 0.5/0.999), linear
learning-rate decay over the second half, a 50-image history pool for the discriminators.

Trained on 2D slices (3D volumes are translated slice by slice along their first axis).
Weights are saved with safetensors every ``ckpt_every`` steps; a rerun resumes from the
last checkpoint (optimiser state restarts). Training stops early when the CPU budget
(``budget_cpu_min``, process CPU time of this training) is spent; the step reached is recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrgen import io

DEFAULTS = {
    "steps": 2000, "batch_size": 4, "lr": 2e-4, "channels": 16, "res_blocks": 4, "d_channels": 32,
    "lambda_cycle": 10.0, "lambda_identity": 0.5, "ckpt_every": 250, "pool": 50, "budget_cpu_min": 0.0,
}


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    def __init__(self, c: int = 16, res_blocks: int = 4):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(1, c, 7), nn.InstanceNorm2d(c), nn.ReLU(True)]
        for m in (1, 2):
            layers += [nn.Conv2d(c * m, c * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(c * m * 2), nn.ReLU(True)]
        layers += [ResBlock(c * 4) for _ in range(res_blocks)]
        for m in (4, 2):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c * m, c * m // 2, 3, padding=1),
                       nn.InstanceNorm2d(c * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c, c * 2, 4, 2, 1), nn.InstanceNorm2d(c * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c * 2, c * 4, 4, 1, 1), nn.InstanceNorm2d(c * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c * 4, 1, 4, 1, 1),
        )

    def forward(self, x):
        return self.net(x)


class Pool:
    """History of generated images: half the time the discriminator sees an older fake."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.items = size, rng, []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return batch
        out = []
        for x in batch.detach():
            if len(self.items) < self.size:
                self.items.append(x)
                out.append(x)
            elif self.rng.random() < 0.5:
                i = int(self.rng.integers(len(self.items)))
                out.append(self.items[i])
                self.items[i] = x
            else:
                out.append(x)
        return torch.stack(out)


def slices_of(images: list) -> np.ndarray:
    """All 2D slices ``(N, H, W)`` of a list of 2D images / 3D volumes (first axis = slices)."""
    out = []
    for im in images:
        a = np.asarray(im, np.float32)
        out.extend([a] if a.ndim == 2 else list(a))
    return np.stack(out)


class CycleGAN:
    def __init__(self, params: dict | None = None, seed: int = 0):
        params = params or {}
        bad = set(params) - set(DEFAULTS)
        if bad:
            raise ValueError(f"cyclegan: unknown parameter(s) {sorted(bad)}; known: {', '.join(DEFAULTS)}")
        self.p = {**DEFAULTS, **params}
        self.seed = seed
        torch.manual_seed(seed)
        c, r, dc = int(self.p["channels"]), int(self.p["res_blocks"]), int(self.p["d_channels"])
        self.G, self.F = Generator(c, r), Generator(c, r)  # G: source -> target, F: target -> source
        self.DA, self.DB = PatchDiscriminator(dc), PatchDiscriminator(dc)  # DA judges source, DB target
        self.step = 0
        self.stopped = ""

    def modules(self) -> dict:
        return {"G": self.G, "F": self.F, "DA": self.DA, "DB": self.DB}

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"{n}.{k}": v.detach().contiguous().clone() for n, m in self.modules().items() for k, v in m.state_dict().items()}
        with io.atomic_path(folder / "cyclegan.safetensors", suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp))
        io.write_json(folder / "cyclegan.json", {"step": self.step, "params": self.p, "seed": self.seed, "stopped": self.stopped})

    def load(self, folder: Path) -> bool:
        from safetensors.torch import load_file

        if not (folder / "cyclegan.json").exists():
            return False
        meta = io.read_json(folder / "cyclegan.json")
        if meta.get("params") != json.loads(json.dumps(self.p)) or meta.get("seed") != self.seed:
            return False
        tensors = load_file(str(folder / "cyclegan.safetensors"))
        for n, m in self.modules().items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in tensors.items() if k.startswith(n + ".")})
        self.step, self.stopped = int(meta["step"]), meta.get("stopped", "")
        return True

    # ------------------------------------------------------------------ training
    def fit(self, source: np.ndarray, target: np.ndarray, folder: Path | None = None, log=None) -> dict:
        """Train on unpaired slice stacks ``source`` / ``target`` ``(N, H, W)`` in [-1, 1]; resumes from ``folder``."""
        p = self.p
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.load(folder)
        steps, bs = int(p["steps"]), int(p["batch_size"])
        if self.step >= steps or self.stopped:
            return {"step": self.step, "stopped": self.stopped, "resumed": True}
        rng = np.random.default_rng([self.seed, self.step])
        torch.manual_seed(self.seed + self.step)
        mse, l1 = nn.MSELoss(), nn.L1Loss()
        opt_g = torch.optim.Adam(list(self.G.parameters()) + list(self.F.parameters()), lr=p["lr"], betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(list(self.DA.parameters()) + list(self.DB.parameters()), lr=p["lr"], betas=(0.5, 0.999))
        pool_a, pool_b = Pool(int(p["pool"]), rng), Pool(int(p["pool"]), rng)
        lam_c, lam_i = float(p["lambda_cycle"]), float(p["lambda_identity"]) * float(p["lambda_cycle"])
        src, tgt = torch.from_numpy(np.ascontiguousarray(source, np.float32)), torch.from_numpy(np.ascontiguousarray(target, np.float32))
        cpu0, budget = time.process_time(), float(p["budget_cpu_min"]) * 60.0
        for m in self.modules().values():
            m.train()
        losses = {}
        while self.step < steps:
            lr = p["lr"] * min(1.0, 2.0 * (1.0 - self.step / steps))  # constant, then linear decay to 0
            for opt in (opt_g, opt_d):
                for g in opt.param_groups:
                    g["lr"] = lr
            a = src[rng.integers(len(src), size=bs)][:, None]
            b = tgt[rng.integers(len(tgt), size=bs)][:, None]
            fake_b, fake_a = self.G(a), self.F(b)
            for d in (self.DA, self.DB):
                d.requires_grad_(False)
            pb, pa = self.DB(fake_b), self.DA(fake_a)
            loss_gan = mse(pb, torch.ones_like(pb)) + mse(pa, torch.ones_like(pa))
            loss_cyc = l1(self.F(fake_b), a) + l1(self.G(fake_a), b)
            loss_id = l1(self.G(b), b) + l1(self.F(a), a) if lam_i > 0 else torch.zeros(())
            loss_g = loss_gan + lam_c * loss_cyc + lam_i * loss_id
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            for d in (self.DA, self.DB):
                d.requires_grad_(True)
            loss_d = 0.0
            for d, real, fake in ((self.DB, b, pool_b(fake_b)), (self.DA, a, pool_a(fake_a))):
                pr, pf = d(real), d(fake.detach())
                loss_d = loss_d + 0.5 * (mse(pr, torch.ones_like(pr)) + mse(pf, torch.zeros_like(pf)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            self.step += 1
            losses = {k: float(v.detach()) for k, v in (("g", loss_g), ("gan", loss_gan), ("cycle", loss_cyc), ("d", loss_d))}
            if log and (self.step % 100 == 0 or self.step == steps):
                log(f"cyclegan step {self.step}/{steps} " + " ".join(f"{k}={v:.3f}" for k, v in losses.items()))
            if budget > 0 and time.process_time() - cpu0 > budget:
                self.stopped = f"cpu budget {p['budget_cpu_min']} min reached at step {self.step}"
            if folder is not None and (self.step % int(p["ckpt_every"]) == 0 or self.step == steps or self.stopped):
                self.save(folder)
            if self.stopped:
                break
        return {"step": self.step, "stopped": self.stopped, "losses": losses}

    @torch.no_grad()
    def translate(self, images: list, batch: int = 32) -> list:
        """Source -> target for each 2D image / 3D volume (slice-wise along the first axis)."""
        self.G.eval()
        out = []
        for im in images:
            a = np.asarray(im, np.float32)
            st = a[None] if a.ndim == 2 else a
            res = np.concatenate([self.G(torch.from_numpy(np.ascontiguousarray(st[i:i + batch]))[:, None])[:, 0].numpy()
                                  for i in range(0, len(st), batch)])
            out.append(res[0] if a.ndim == 2 else res)
        return out
