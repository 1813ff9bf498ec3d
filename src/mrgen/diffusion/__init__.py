"""Diffusion schedules, the multistep solvers and THE denoising loop (used by training previews, the CLI and tests)."""

from mrgen.diffusion.sampler import decode, sample
from mrgen.diffusion.schedulers import LeadingDDIMScheduler, make_ddim, make_train_scheduler
from mrgen.diffusion.solvers import DPMSolverPP2M, UniPC, make_solver

__all__ = ["sample", "decode", "make_ddim", "make_solver", "make_train_scheduler", "LeadingDDIMScheduler",
           "DPMSolverPP2M", "UniPC"]
