"""Small hand-made label maps for the morph tests (no dependency on the phantom)."""

import numpy as np

VENT, CEREB, STEM, WM, GM = 1, 2, 3, 4, 5
BRAIN = [VENT, CEREB, STEM, WM, GM]


def ellipsoid(shape, spacing, centre, radii_mm):
    g = np.indices(shape).astype(float)
    return sum(((g[i] - centre[i]) * spacing[i] / radii_mm[i]) ** 2 for i in range(len(shape))) <= 1.0


def make_brain(shape=(48, 48, 24), spacing=(1.0, 1.0, 2.0)):
    """Brain-like map with the phantom's labels: two ventricles (2 components), cerebellum, brainstem."""
    c = [s / 2 - 0.5 for s in shape]
    lab = np.zeros(shape, np.int16)
    lab[ellipsoid(shape, spacing, c, (22, 22, 22))] = GM
    lab[ellipsoid(shape, spacing, c, (18, 18, 18))] = WM
    lab[ellipsoid(shape, spacing, (c[0] - 6, c[1] + 2, c[2] + 1), (3, 8, 6))] = VENT
    lab[ellipsoid(shape, spacing, (c[0] + 6, c[1] + 2, c[2] + 1), (3, 8, 6))] = VENT
    lab[ellipsoid(shape, spacing, (c[0], c[1] - 13, c[2] - 3), (8, 4, 6))] = CEREB
    lab[ellipsoid(shape, spacing, (c[0], c[1] - 5, c[2] - 3), (2.5, 2.5, 8))] = STEM
    return lab, spacing
