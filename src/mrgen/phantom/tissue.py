"""Tissue parameters at 1.5 T and their per-subject variation.

Each tissue has ``t1``, ``t2`` (ms), ``pd`` (relative proton density, water = 1), ``ff`` (fat
fraction of the protons), ``adc`` (10⁻³ mm²/s), ``gd`` (assumed effective gadolinium
concentration after an extracellular agent, mM) and ``source``. The fat part of any tissue
relaxes with the ``fat`` tissue's T1/T2 (two-compartment water + fat model). See docs/phantom.md.
"""

from __future__ import annotations

import numpy as np

DEBAZ = "de Bazelaire et al., Radiology 2004;230:652-659 (1.5 T)"
STANISZ = "Stanisz et al., MRM 2005;54:507-512 (1.5 T)"
ATLAS = "Atlas, MRI of the Brain and Spine, Table 2.1 (1.5 T)"
ASSUMED = "assumed (typical value, no single source)"

# T1/T2 sources are the first entry; ADC: Taouli & Koh, Radiology 2010 (abdomen), Helenius et al.,
# AJNR 2002 (brain); PD: typical tissue water content; gd: assumed portal-venous-phase values.
TISSUES: dict = {
    "fat":            dict(t1=343,  t2=58,   pd=0.90, ff=0.90, adc=0.05, gd=0.02, texture=0.03, source=DEBAZ + ", subcutaneous fat"),
    "muscle":         dict(t1=856,  t2=27,   pd=0.72, ff=0.02, adc=1.50, gd=0.15, texture=0.05, source=DEBAZ + ", paravertebral muscle"),
    "liver":          dict(t1=586,  t2=46,   pd=0.72, ff=0.04, adc=1.30, gd=0.35, texture=0.05, source=DEBAZ + "; Stanisz 576/46 agrees"),
    "spleen":         dict(t1=1057, t2=79,   pd=0.80, ff=0.00, adc=0.85, gd=0.45, texture=0.04, source=DEBAZ),
    "kidney_cortex":  dict(t1=966,  t2=87,   pd=0.82, ff=0.00, adc=2.00, gd=1.20, texture=0.04, source=DEBAZ + ", renal cortex"),
    "kidney_medulla": dict(t1=1412, t2=85,   pd=0.85, ff=0.00, adc=1.85, gd=0.60, texture=0.04, source=DEBAZ + ", renal medulla"),
    "pancreas":       dict(t1=584,  t2=46,   pd=0.75, ff=0.03, adc=1.40, gd=0.40, texture=0.06, source=DEBAZ),
    "marrow":         dict(t1=549,  t2=49,   pd=0.75, ff=0.35, adc=0.50, gd=0.20, texture=0.06, source=DEBAZ + ", L4 vertebral marrow"),
    "bone":           dict(t1=250,  t2=1,    pd=0.05, ff=0.00, adc=0.10, gd=0.00, texture=0.00, source=ASSUMED + ": cortical bone, signal void"),
    "blood":          dict(t1=1441, t2=290,  pd=0.90, ff=0.00, adc=2.50, gd=1.00, texture=0.00, source=STANISZ),
    "bowel":          dict(t1=1100, t2=90,   pd=0.80, ff=0.02, adc=1.80, gd=0.30, texture=0.12, source=ASSUMED + ": bowel wall + content"),
    "fluid":          dict(t1=3500, t2=700,  pd=0.97, ff=0.00, adc=3.00, gd=0.00, texture=0.01, source=ASSUMED + ": bile / gastric fluid"),
    "csf":            dict(t1=4000, t2=2200, pd=1.00, ff=0.00, adc=3.00, gd=0.00, texture=0.01, source=ASSUMED + " T1; T2 " + ATLAS),
    "cord":           dict(t1=745,  t2=74,   pd=0.72, ff=0.00, adc=1.00, gd=0.00, texture=0.02, source=STANISZ + ", spinal cord"),
    "wm":             dict(t1=884,  t2=72,   pd=0.69, ff=0.00, adc=0.70, gd=0.00, texture=0.03, source=STANISZ + ", white matter"),
    "gm":             dict(t1=1124, t2=95,   pd=0.80, ff=0.00, adc=0.83, gd=0.00, texture=0.03, source=STANISZ + ", grey matter"),
}

FAT_T2_FSE = 165.0  # apparent T2 of fat in fast spin echo (J-coupling "bright fat"), ATLAS
R1_GD = 4.1  # /mM/s, T1 relaxivity of Gd-DTPA in plasma at 1.5 T (Rohrer et al., Invest Radiol 2005;40:715-724)

# lognormal sd of the per-subject multiplicative variation of each parameter
VARIATION = {"t1": 0.05, "t2": 0.05, "pd": 0.03, "adc": 0.06, "gd": 0.15}
LIVER_FAT = (0.01, 0.14)  # liver fat fraction drawn as lo + (hi - lo) * Beta(1.2, 3): mostly lean, some steatotic

CONSTANTS = {
    "fat_t2_fse_ms": FAT_T2_FSE, "fat_t2_fse_source": ATLAS,
    "gd_r1_per_mM_s": R1_GD, "gd_r1_source": "Rohrer et al., Invest Radiol 2005;40:715-724 (Gd-DTPA, plasma, 1.5 T)",
    "adc_sources": "Taouli & Koh, Radiology 2010;254:47-66 (abdomen); Helenius et al., AJNR 2002;23:194-199 (brain)",
    "variation_lognormal_sd": VARIATION, "liver_fat_fraction_range": LIVER_FAT,
}


def table(tissues: tuple) -> dict:
    """The literature table (no variation) for ``tissues``, JSON-ready."""
    return {t: dict(TISSUES[t]) for t in tissues}


def subject_parameters(rng: np.random.Generator, tissues: tuple) -> dict:
    """Per-subject parameters ``{tissue: {t1, t2, pd, ff, adc, gd}}`` (floats).

    Each of t1, t2, pd, adc, gd is the table value times a lognormal factor (``VARIATION``);
    the liver fat fraction is drawn from ``LIVER_FAT``. Draws happen in a fixed order, so the
    same generator state always gives the same table.
    """
    out = {}
    for t in tissues:
        base = TISSUES[t]
        p = {}
        for k in ("t1", "t2", "pd", "adc", "gd"):
            p[k] = float(base[k] * np.exp(rng.normal(0.0, VARIATION[k])))
        p["pd"] = min(p["pd"], 1.0)
        lo, hi = LIVER_FAT
        ff = lo + (hi - lo) * rng.beta(1.2, 3.0)
        p["ff"] = float(ff) if t == "liver" else float(base["ff"])
        out[t] = {k: round(v, 6) for k, v in p.items()}
    return out


def texture(fields, tissues: tuple, seed: int) -> np.ndarray:
    """Within-tissue multiplicative PD texture ``(T, X, Y, Z)`` float32 around 1.

    ``fields`` is a :class:`~mrgen.phantom.shapes.FieldCache`. Three mid-frequency fields (2-5
    cycles per unit) are mixed with random unit weights per tissue, scaled by its ``texture``.
    """
    base = [fields(seed * 1000 + k, n=8, fmin=2.0, fmax=5.0) for k in range(3)]
    w = np.random.default_rng(seed).normal(size=(len(tissues), 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    out = np.empty((len(tissues),) + fields.grid.shape, np.float32)
    for i, t in enumerate(tissues):
        amp = TISSUES[t]["texture"]
        out[i] = 1.0 + amp * (w[i, 0] * base[0] + w[i, 1] * base[1] + w[i, 2] * base[2]) if amp else 1.0
    return out
