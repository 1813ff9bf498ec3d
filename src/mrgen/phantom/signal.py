"""MR signal equations, sequence parameters, bias field and Rician noise.

Every tissue gets one complex signal per sequence (water part + fat part with the fat phase);
an image is ``|Σ_t fraction_t · texture_t · signal_t|`` per voxel, so partial-volume voxels mix
complex signals (fat–water cancellation at boundaries in opposed phase comes out by itself).

Sequence families (1.5 T):

* ``se``   spin echo:  ``PD·(1 − e^{−TR/T1})·e^{−TE/T2}``
* ``ir``   inversion recovery (magnitude): ``PD·|1 − 2e^{−TI/T1} + e^{−TR/T1}|·e^{−TE/T2}``
* ``gre``  spoiled gradient echo: ``PD·sinα(1 − E1)/(1 − cosα·E1)·e^{−TE/T2}``, fat at phase θ
  (0 in phase, π opposed phase), ``|W + F·e^{iθ}|``; T2 stands in for T2*.
* ``dwi``  spin-echo EPI with fat suppression: ``S0·e^{−b·ADC}``; ``adc`` is the map computed
  from the b=0 and b images, in 10⁻⁶ mm²/s.

``fse: true`` uses the apparent fast-spin-echo T2 of fat (J-coupling, "bright fat");
``fat_suppression`` scales the fat part; ``contrast: true`` shortens T1 with gadolinium
(``1/T1' = 1/T1 + r1·[Gd]``); ``flow_void`` scales blood in spin-echo images without contrast.
"""

from __future__ import annotations

import numpy as np

from mrgen.phantom import tissue as T

SCALE = 1000.0  # stored intensity = signal × SCALE (arbitrary units; curate normalises)
FLOW_VOID = 0.1

_COMMON = {
    "T1": dict(family="se", TR=500, TE=10),
    "T1c": dict(family="se", TR=500, TE=10, contrast=True),
    "T1 in-phase": dict(family="gre", TR=150, TE=4.6, flip=70, phase=0.0),
    "T1 out-of-phase": dict(family="gre", TR=150, TE=2.3, flip=70, phase=180.0),
    "T2": dict(family="se", TR=4000, TE=90, fse=True),
    "T2-SPIR": dict(family="se", TR=4000, TE=90, fse=True, fat_suppression=0.9),
    "T2 FS": dict(family="se", TR=4000, TE=90, fse=True, fat_suppression=0.9),
    "PD": dict(family="se", TR=3000, TE=15, fse=True),
    "FLAIR": dict(family="ir", TR=9000, TI=2400, TE=120, fse=True),
    "DWI": dict(family="dwi", TR=4000, TE=70, b=800, fat_suppression=0.9),
    "ADC": dict(family="adc", TR=4000, TE=70, b=800, fat_suppression=0.9),
}
# brain: T1 is an inversion-prepared T1 (MPRAGE-like); spin-echo T1 at 1.5 T gives almost no GM/WM contrast
SEQUENCES = {
    "abdomen": dict(_COMMON),
    "brain": dict(_COMMON, **{"T1": dict(family="ir", TR=2000, TI=800, TE=4),
                              "T1c": dict(family="ir", TR=2000, TI=800, TE=4, contrast=True),
                              "T2": dict(family="se", TR=4000, TE=100, fse=True)}),
}
RENDERABLE = tuple(_COMMON)


class PhantomError(ValueError):
    """A phantom request the generator cannot satisfy; the message lists the options."""


def check_modalities(names) -> list:
    """Canonical names of ``names`` (aliases allowed), or PhantomError listing what renders."""
    from mrgen.prompts import PromptError, canonical_modality

    out = []
    for name in names:
        try:
            canon = canonical_modality(name)
        except PromptError:
            canon = None
        if canon not in RENDERABLE:
            raise PhantomError(
                f"the phantom cannot render modality '{name}'; it renders: {', '.join(RENDERABLE)} "
                f"(set phantom.modalities=[T1,T2,...])")
        if canon not in out:
            out.append(canon)
    return out


def _e(x):
    return np.exp(-np.asarray(x, dtype=np.float64))


def _relax(seq: dict, t1, t2) -> np.ndarray:
    """Magnitude factor (without PD) for relaxation times ``t1``, ``t2`` (ms) under ``seq``."""
    fam = seq["family"]
    if fam in ("se", "dwi", "adc"):
        return (1 - _e(seq["TR"] / t1)) * _e(seq["TE"] / t2)
    if fam == "ir":
        return np.abs(1 - 2 * _e(seq["TI"] / t1) + _e(seq["TR"] / t1)) * _e(seq["TE"] / t2)
    if fam == "gre":
        a = np.deg2rad(seq["flip"])
        e1 = _e(seq["TR"] / t1)
        return np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * _e(seq["TE"] / t2)
    raise PhantomError(f"unknown sequence family {fam}")


def tissue_signals(params: dict, tissues: tuple, seq: dict, diffusion_b: float = 0.0) -> np.ndarray:
    """Complex signal per tissue ``(T,)`` for ``params`` (see tissue.subject_parameters).

    ``diffusion_b`` (s/mm²) applies ``e^{−b·ADC}`` (ADC in 10⁻³ mm²/s).
    """
    fat = params.get("fat", T.TISSUES["fat"])
    fat_t2 = T.FAT_T2_FSE if seq.get("fse") else fat["t2"]
    theta = np.deg2rad(seq.get("phase", 0.0))
    out = np.zeros(len(tissues), np.complex128)
    for i, name in enumerate(tissues):
        p = params[name]
        t1, t1f = p["t1"], fat["t1"]
        if seq.get("contrast"):
            t1 = 1.0 / (1.0 / t1 + T.R1_GD * p["gd"] / 1000.0)
            t1f = 1.0 / (1.0 / t1f + T.R1_GD * p["gd"] / 1000.0)
        water = (1 - p["ff"]) * _relax(seq, t1, p["t2"])
        fatpart = p["ff"] * _relax(seq, t1f, fat_t2) * (1 - seq.get("fat_suppression", 0.0))
        s = p["pd"] * (water + fatpart * np.exp(1j * theta))
        if diffusion_b:
            s = s * np.exp(-diffusion_b * p["adc"] * 1e-3)
        if name == "blood" and seq["family"] in ("se", "ir", "dwi", "adc") and not seq.get("contrast"):
            s = s * FLOW_VOID
        out[i] = s
    return out


def _combine(weights: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """``|Σ_t weights[t] · sig[t]|``: weights ``(T, X, Y, Z)``, sig ``(T,)`` -> ``(X, Y, Z)`` float64."""
    if np.iscomplexobj(sig) and np.any(np.abs(sig.imag) > 1e-12):
        re = np.tensordot(sig.real, weights, axes=1)
        im = np.tensordot(sig.imag, weights, axes=1)
        return np.hypot(re, im)
    return np.abs(np.tensordot(np.real(sig), weights, axes=1))


def clean_image(anat, params: dict, modality: str) -> np.ndarray:
    """Noise- and bias-free image ``(X, Y, Z)`` float64 (signal units; ADC in 10⁻⁶ mm²/s)."""
    seq = SEQUENCES[anat.layout][modality]
    w = anat.weights
    if seq["family"] == "dwi":
        return _combine(w, tissue_signals(params, anat.tissues, seq, seq["b"]))
    if seq["family"] == "adc":
        s0 = _combine(w, tissue_signals(params, anat.tissues, seq))
        sb = _combine(w, tissue_signals(params, anat.tissues, seq, seq["b"]))
        ok = s0 > 0.05 * s0.max()
        adc = np.zeros_like(s0)
        adc[ok] = -np.log(np.maximum(sb[ok], 1e-12) / s0[ok]) / seq["b"] * 1e6
        return adc / SCALE  # so that × SCALE gives 10⁻⁶ mm²/s
    return _combine(w, tissue_signals(params, anat.tissues, seq))


def bias_field(shape: tuple, seed: int, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field ``(X, Y, Z)``: ``1 + amplitude·g``, g in [-1, 1] (≤ 0.6 cycles per FOV)."""
    from mrgen.phantom.shapes import make_grid, smooth_field

    if amplitude <= 0:
        return np.ones(shape, np.float32)
    g = smooth_field(make_grid(shape), seed, n=4, fmin=0.1, fmax=0.3)
    g = g / max(float(np.abs(g).max()), 1e-6)
    return np.clip(1.0 + amplitude * g, 0.05, None).astype(np.float32)


def render(anat, params: dict, modality: str, rng: np.random.Generator, noise: float, bias: float) -> np.ndarray:
    """The stored image ``(X, Y, Z)`` float32 (× SCALE): clean image × bias field + Rician noise.

    Noise sigma is ``noise × max(signal)``. The ADC map is computed, not acquired: no bias field,
    Gaussian noise, clipped at 0.
    """
    img = clean_image(anat, params, modality)
    seq = SEQUENCES[anat.layout][modality]
    bias_seed = int(rng.integers(2**31))
    if seq["family"] == "adc":
        sigma = noise * float(img.max())
        out = np.maximum(img + rng.normal(0, sigma, img.shape), 0)
    else:
        img = img * bias_field(img.shape, bias_seed, bias)
        sigma = noise * float(img.max())
        out = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    return (out * SCALE).astype(np.float32)
