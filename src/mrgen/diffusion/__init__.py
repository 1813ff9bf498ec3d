"""Diffusion schedules and THE denoising loop (used by training previews, the CLI and tests)."""

from mrgen.diffusion.sampler import decode, sample
from mrgen.diffusion.schedulers import LeadingDDIMScheduler, make_ddim, make_train_scheduler

__all__ = ["sample", "decode", "make_ddim", "make_train_scheduler", "LeadingDDIMScheduler"]
