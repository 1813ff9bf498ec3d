"""Multistep ODE solvers for ε-prediction models: DPM-Solver++(2M) and UniPC (bh2, order 2).

Both run on the SAME timesteps as DDIM (:class:`~mrgen.diffusion.schedulers.LeadingDDIMScheduler`,
leading spacing ``t_k = k (T // S) + 1``) and end at the same noise level as DDIM's last step
(ᾱ_0, ``set_alpha_to_one=False``), so ``sample.ddim_steps`` means the same number of network
evaluations (×2 with guidance) for every solver and the three are directly comparable.

Notation (Lu et al. 2022, "DPM-Solver++", arXiv 2211.01095; Zhao et al. 2023, "UniPC",
arXiv 2302.04867): at the solver's points ``i = 0 .. S`` (``S`` timesteps + the final level)

* ``α_i = sqrt(ᾱ_i)``, ``σ_i = sqrt(1 - ᾱ_i)``, ``λ_i = log(α_i / σ_i)`` (half log-SNR);
* the data prediction from the (guided) ε: ``m_i = x̂_0 = (x_i - σ_i ε̂_i) / α_i``;
* ``h_i = λ_{i+1} - λ_i`` (> 0).

Classifier-free guidance is applied to ε *before* the conversion to ``m`` (the sampler does it).

**DPM-Solver++(2M)** (data prediction, multistep, Lu et al. Algorithm 2), step ``i -> i+1``::

    D = m_0                                            (first step: first order)
    D = (1 + 1/(2 r)) m_i - 1/(2 r) m_{i-1},   r = h_{i-1} / h_i   (after)
    x_{i+1} = (σ_{i+1} / σ_i) x_i - α_{i+1} (e^{-h_i} - 1) D

**UniPC-bh2 of order 2** (UniP-2 predictor + UniC corrector, data prediction, ``B(h) = e^{-h} - 1``):
the predictor of order 2 is the update above. After the network has been evaluated at the
predicted ``x_{i+1}`` (an evaluation the next step needs anyway), UniC corrects ``x_{i+1}`` with
``m_{i+1}``; the next predictor starts from the corrected point while keeping ``m_{i+1}`` as
evaluated (no extra network call; no corrector after the last step)::

    x_{i+1}^c = (σ_{i+1}/σ_i) x_i^c - α_{i+1} (e^{-h} - 1) m_i
                - α_{i+1} B(h) [ρ_1 D_1 + ρ_2 (m_{i+1} - m_i)]        (h = h_i)
    order 1 (after the first step): ρ_2 = 1/2, no D_1
    order 2: r_1 = (λ_{i-1} - λ_i)/h, D_1 = (m_{i-1} - m_i)/r_1, and ρ solves
             [[1, 1], [r_1, 1]] ρ = [g_1, g_2],   g_k = k! · (-h) φ_{k+1}(-h) / B(h)

with ``φ_1(z) = (e^z - 1)/z``, ``φ_{k+1}(z) = (φ_k(z) - 1/k!)/z``. The corrector's order is the
order of the predictor that produced ``x_{i+1}`` (1 after the first step, then 2).

Both solvers are deterministic (no η); coefficients are computed in float64 and applied to the
float32 sample; everything is elementwise over the batch, so sample ``i`` never sees sample ``j``.
A solver keeps the history of one chain: calling :meth:`step` at the first timestep starts a new
chain; steps must come in the order of ``timesteps``.
"""

from __future__ import annotations

import math

import torch

from mrgen.config import SOLVERS, start_steps
from mrgen.diffusion.schedulers import make_ddim


class DPMSolverPP2M:
    """DPM-Solver++(2M) on the timesteps of a (``set_timesteps``-called) :class:`LeadingDDIMScheduler`.

    Same interface as the DDIM scheduler the sampler uses: ``timesteps``, ``init_noise_sigma``,
    ``step(eps, t, x, eta=0.0) -> (x_next, x0_pred)``.
    """

    name = "dpmpp2m"
    init_noise_sigma = 1.0

    def __init__(self, ddim):
        ac = ddim.alphas_cumprod.double()
        ts = [int(t) for t in ddim.timesteps]
        levels = [float(ac[t]) for t in ts] + [float(ac[0])]  # the last step lands on ᾱ_0, as DDIM's does
        self.timesteps = ddim.timesteps
        self.num_train_timesteps = ddim.num_train_timesteps
        self.alphas_cumprod = ddim.alphas_cumprod
        self.alpha = [math.sqrt(a) for a in levels]
        self.sigma = [math.sqrt(1.0 - a) for a in levels]
        self.lam = [math.log(a) - math.log(s) for a, s in zip(self.alpha, self.sigma)]
        self._index = {t: i for i, t in enumerate(ts)}
        if len(self._index) != len(ts):
            raise ValueError(f"{self.name}: timesteps must be distinct, got {ts}")
        self._next = 0
        self.m: list[torch.Tensor] = []  # data predictions m_i of the current chain (last two)

    def _begin(self, timestep: int, eta: float) -> int:
        if eta:
            raise ValueError(f"sample.solver={self.name} is a deterministic ODE solver; η (sample.eta={eta}) "
                             "applies to sample.solver=ddim only: set sample.eta=0 or sample.solver=ddim")
        i = self._index.get(int(timestep))
        if i is None:
            raise ValueError(f"{self.name}: timestep {timestep} is not one of the solver's timesteps")
        if i == 0:  # a new chain
            self._next, self.m = 0, []
        if i != self._next:
            raise ValueError(f"{self.name}: step at timestep {timestep} (index {i}) out of order; expected index "
                             f"{self._next} (steps must follow `timesteps`, starting at the first)")
        self._next = i + 1
        return i

    def _x0(self, eps: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return (x - self.sigma[i] * eps) / self.alpha[i]

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """``x`` at point ``i`` -> point ``i + 1`` from the history ``self.m`` (``m[-1] = m_i``)."""
        h = self.lam[i + 1] - self.lam[i]
        m0 = self.m[-1]
        if order == 1:
            d = m0
        else:
            r = (self.lam[i] - self.lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * m0 - (1 / (2 * r)) * self.m[-2]
        return (self.sigma[i + 1] / self.sigma[i]) * x - (self.alpha[i + 1] * math.expm1(-h)) * d

    def step(self, eps: torch.Tensor, timestep: int, x: torch.Tensor, eta: float = 0.0, generator=None):
        i = self._begin(timestep, eta)
        m = self._x0(eps, x, i)
        self.m = (self.m + [m])[-2:]
        return self._predict(x, i, min(2, len(self.m))), m


class UniPC(DPMSolverPP2M):
    """UniPC, bh2 variant: UniP-2 predictor (= the DPM-Solver++(2M) update) + UniC-2 corrector."""

    name = "unipc"

    def __init__(self, ddim):
        super().__init__(ddim)
        self._last: tuple | None = None  # (x_i^c, order of the predictor that made x_{i+1})

    def _begin(self, timestep: int, eta: float) -> int:
        i = super()._begin(timestep, eta)
        if i == 0:
            self._last = None
        return i

    def _correct(self, x_prev: torch.Tensor, m_t: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniC: point ``i`` predicted from ``x_prev`` (point ``i-1``) and corrected with ``m_t = m_i``."""
        h = self.lam[i] - self.lam[i - 1]
        hh = -h
        b_h = math.expm1(hh)
        m0 = self.m[-1]  # m_{i-1}
        base = (self.sigma[i] / self.sigma[i - 1]) * x_prev - (self.alpha[i] * b_h) * m0
        if order == 1:
            corr = 0.5 * (m_t - m0)
        else:
            # g_k = k! (-h) φ_{k+1}(-h) / B(h), by the recursion φ_{k+1} = (φ_k - 1/k!) / z
            phi2 = (math.expm1(hh) / hh - 1.0) / hh
            phi3 = (phi2 - 0.5) / hh
            g1, g2 = hh * phi2 / b_h, 2.0 * hh * phi3 / b_h
            r1 = (self.lam[i - 2] - self.lam[i - 1]) / h
            rho1 = (g1 - g2) / (1.0 - r1)  # [[1, 1], [r1, 1]] ρ = g
            rho2 = g1 - rho1
            corr = (rho1 / r1) * (self.m[-2] - m0) + rho2 * (m_t - m0)
        return base - (self.alpha[i] * b_h) * corr

    def step(self, eps: torch.Tensor, timestep: int, x: torch.Tensor, eta: float = 0.0, generator=None):
        i = self._begin(timestep, eta)
        m = self._x0(eps, x, i)  # evaluated at the predicted (uncorrected) x_i
        if self._last is not None:
            x = self._correct(self._last[0], m, i, self._last[1])
        self.m = (self.m + [m])[-2:]
        order = min(2, len(self.m))
        self._last = (x, order)
        return self._predict(x, i, order), m


def make_solver(dcfg, steps: int, solver: str = "ddim", strength: float = 1.0):
    """The sampler's scheduler for ``sample.solver``: DDIM (MONAI's step, leading spacing) or a
    multistep solver on the same timesteps; ``steps`` network evaluations (×2 with guidance).

    ``strength < 1`` (SDEdit): only the last :func:`start_steps` timesteps of the ``steps``-step schedule
    (same spacing, so DDIM's ``t - T // S`` still is the next timestep); the sampler starts its chain at the
    first of them from a noised image (:func:`mrgen.diffusion.sample`'s ``init``)."""
    if solver not in SOLVERS:
        raise ValueError(f"sample.solver must be one of {', '.join(SOLVERS)}, got '{solver}'")
    ddim = make_ddim(dcfg, steps)
    if float(strength) != 1.0:
        ddim.timesteps = ddim.timesteps[len(ddim.timesteps) - start_steps(steps, strength):]
    if solver == "ddim":
        return ddim
    return {"dpmpp2m": DPMSolverPP2M, "unipc": UniPC}[solver](ddim)
