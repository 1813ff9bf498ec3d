"""Random smooth anatomy: ``draw_shapes`` (cheap, JSON-able parameters) and ``rasterize``.

Coordinates are normalised (see :mod:`mrgen.phantom.shapes`) and RAS: +x = patient **right**,
+y = anterior, +z = superior. So the liver (patient right) sits at **high x**; shown with
``imshow(a.T, origin="lower")`` it appears on the right of the screen (neurological convention)
with anterior up. Volumes are ``(X, Y, Z) = (size, size, slices)``; z = -1 is the most inferior
slice. The phantom is a scaled model: the body fills the field of view whatever the spacing.

Tissue types (what gets rendered) are separate from mask labels (the annotated organs):

* ``abdomen``: labels 1 liver, 2 right kidney, 3 left kidney, 4 spleen (CHAOS convention).
* ``brain``: labels 1 ventricles (lateral + third), 2 cerebellum, 3 brainstem, 4 cerebral white
  matter, 5 grey matter (cortex + deep grey nuclei).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrgen.phantom import tissue as T
from mrgen.phantom.shapes import Canvas, FieldCache, blob, distance, make_grid, slab, soft

LAYOUTS = {
    "abdomen": dict(
        region="upper_abdomen", labels={1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"},
        tissues=("fat", "muscle", "liver", "spleen", "kidney_cortex", "kidney_medulla", "pancreas", "marrow",
                 "bone", "blood", "bowel", "fluid", "csf", "cord")),
    "brain": dict(
        region="brain", labels={1: "ventricles", 2: "cerebellum", 3: "brainstem", 4: "white matter", 5: "grey matter"},
        tissues=("fat", "muscle", "bone", "marrow", "csf", "gm", "wm", "blood")),
}


@dataclass
class Anatomy:
    """One subject's anatomy. ``fractions``/``texture``: ``(T, X, Y, Z)`` float32 (T = len(tissues));
    ``tissue_map``: ``(X, Y, Z)`` uint8, 0 = air, ``i`` = ``tissues[i-1]``; ``mask``: ``(X, Y, Z)`` uint8."""

    layout: str
    tissues: tuple
    fractions: np.ndarray
    texture: np.ndarray
    tissue_map: np.ndarray
    mask: np.ndarray
    labels: dict

    @property
    def weights(self) -> np.ndarray:
        """``fractions × texture`` ``(T, X, Y, Z)``: what each tissue's signal is multiplied by."""
        if getattr(self, "_weights", None) is None:
            self._weights = self.fractions * self.texture
        return self._weights


def _shape(rng, c, r, e=2.0, rot=0.0, drift=(0.0, 0.0), deform=0.06, jc=0.03, jr=0.08, jrot=0.1, jz=0.08, **kw) -> dict:
    """Jittered shape parameters (rounded so the JSON record is exactly what is drawn)."""
    rd = lambda v: round(float(v), 4)  # noqa: E731
    return dict(
        c=[rd(c[0] + rng.normal(0, jc)), rd(c[1] + rng.normal(0, jc)), rd(c[2] + rng.normal(0, jz))],
        r=[rd(r[0] * np.exp(rng.normal(0, jr))), rd(r[1] * np.exp(rng.normal(0, jr))), rd(r[2] * np.exp(rng.normal(0, jr)))],
        e=rd(e), rot=rd(rot + rng.normal(0, jrot)), drift=[rd(drift[0]), rd(drift[1])], deform=rd(deform),
        seed=int(rng.integers(2**31)), **kw)


def _at(p: dict, dx: float, dy: float, r: tuple, **kw) -> dict:
    """A shape placed relative to ``p``'s centre (same z), no deformation unless given."""
    q = dict(c=[round(p["c"][0] + dx, 4), round(p["c"][1] + dy, 4), p["c"][2]], r=list(r), e=2.0, rot=p.get("rot", 0.0),
             drift=p.get("drift", [0.0, 0.0]), deform=0.0, seed=p["seed"])
    q.update(kw)
    return q


def draw_shapes(layout: str, rng: np.random.Generator) -> dict:
    """Draw all shape parameters of one subject (no arrays; fast). Returns a JSON-able dict."""
    if layout == "abdomen":
        return _draw_abdomen(rng)
    if layout == "brain":
        return _draw_brain(rng)
    raise ValueError(f"unknown phantom layout '{layout}'; choose abdomen or brain")


def _draw_abdomen(rng) -> dict:
    s: dict = {"texture_seed": int(rng.integers(2**31))}
    s["body"] = _shape(rng, (0, -0.03, 0), (0.84, 0.62, 8.0), e=2.4, deform=0.03, jc=0.015, jr=0.05, jz=0, jrot=0.03)
    s["fat_thickness"] = round(float(rng.uniform(0.05, 0.12)), 4)
    s["wall_thickness"] = round(float(rng.uniform(0.03, 0.05)), 4)
    s["spine"] = _shape(rng, (0, -0.36, 0), (0.085, 0.07, 8.0), deform=0.02, jc=0.01, jr=0.05, jz=0, jrot=0.05)
    s["paraspinal"] = [_shape(rng, (sx * 0.13, -0.49, 0), (0.09, 0.075, 8.0), e=2.5, jc=0.01, jr=0.06, jz=0, jrot=0.05)
                       for sx in (1, -1)]
    s["psoas"] = [_shape(rng, (sx * 0.11, -0.29, -1.0), (0.06, 0.055, 1.3), jc=0.01, jr=0.08) for sx in (1, -1)]
    s["aorta"] = _shape(rng, (-0.045, -0.23, 0), (0.032, 0.032, 8.0), deform=0, jc=0.01, jr=0.08, jz=0, jrot=0)
    s["ivc"] = _shape(rng, (0.09, -0.21, 0), (0.045, 0.032, 8.0), deform=0, jc=0.01, jr=0.08, jz=0)
    s["liver"] = [_shape(rng, (0.37, 0.03, 0.55), (0.40, 0.44, 1.35), e=2.2, rot=0.1, drift=(-0.12, -0.06), deform=0.08),
                  _shape(rng, (-0.06, 0.24, 0.75), (0.32, 0.15, 0.75), rot=-0.15, deform=0.08)]
    lc = s["liver"][0]["c"]
    s["hepatic_vessels"] = [_shape(rng, (lc[0] + rng.uniform(-0.15, 0.15), lc[1] + rng.uniform(-0.2, 0.2), 0),
                                   (0.022, 0.022, 8.0), drift=tuple(rng.uniform(-0.1, 0.1, 2)), deform=0, jc=0, jz=0)
                            for _ in range(3)]
    s["gallbladder"] = _shape(rng, (0.17, 0.06, -0.25), (0.06, 0.09, 0.4))
    s["kidney"] = [_shape(rng, (0.34, -0.30, -0.30), (0.11, 0.17, 0.8), rot=0.5, deform=0.05),
                   _shape(rng, (-0.34, -0.28, -0.15), (0.11, 0.17, 0.8), rot=-0.5, deform=0.05)]
    s["perirenal_fat"] = round(float(rng.uniform(0.02, 0.05)), 4)
    s["medulla_shrink"] = round(float(rng.uniform(0.03, 0.045)), 4)
    s["spleen"] = _shape(rng, (-0.52, -0.08, 0.45), (0.12, 0.24, 0.8), rot=-0.55, deform=0.08)
    s["pancreas"] = _shape(rng, (-0.12, -0.10, 0.05), (0.24, 0.05, 0.45), rot=0.25, deform=0.05)
    s["stomach"] = _shape(rng, (-0.28, 0.20, 0.6), (0.17, 0.13, 0.7), deform=0.08)
    s["bowel"] = [_shape(rng, (rng.uniform(-0.5, 0.5), rng.uniform(-0.05, 0.4), rng.uniform(-1.2, 0.2)),
                         (rng.uniform(0.06, 0.1), rng.uniform(0.06, 0.1), 0.5), deform=0.1, jc=0, jz=0)
                  for _ in range(3)]  # fluid-filled loops
    # bowel packing the rest of the peritoneal cavity: where a random field exceeds a threshold
    s["bowel_fill"] = [int(rng.integers(2**31)), round(float(rng.uniform(0.0, 0.4)), 4)]
    return s


def _draw_brain(rng) -> dict:
    s: dict = {"texture_seed": int(rng.integers(2**31))}
    s["head"] = _shape(rng, (0, 0.0, -0.2), (0.72, 0.88, 1.45), e=2.1, deform=0.03, jc=0.01, jr=0.04, jz=0.05, jrot=0.04)
    for k, lo, hi in (("skin", 0.01, 0.016), ("scalp_fat", 0.025, 0.04), ("skull", 0.05, 0.07),
                      ("subarachnoid", 0.02, 0.035), ("cortex", 0.06, 0.085)):
        s[k] = round(float(rng.uniform(lo, hi)), 4)
    s["sulci"] = [int(rng.integers(10, 17)), int(rng.integers(2**31)), round(float(rng.uniform(2.0, 3.5)), 4)]
    s["sulcal_depth"] = round(float(rng.uniform(0.12, 0.18)), 4)
    s["ventricles"] = [_shape(rng, (sx * 0.085, 0.04, 0.35), (0.055, 0.26, 0.45), rot=sx * 0.14, deform=0.15, jc=0.015)
                       for sx in (1, -1)]
    s["third_ventricle"] = _shape(rng, (0, -0.02, -0.1), (0.014, 0.09, 0.35), deform=0.05, jc=0.005, jrot=0.03)
    s["thalamus"] = [_shape(rng, (sx * 0.12, -0.06, 0.0), (0.085, 0.11, 0.35), jc=0.01) for sx in (1, -1)]
    s["lentiform"] = [_shape(rng, (sx * 0.24, 0.08, 0.05), (0.06, 0.12, 0.3), rot=sx * 0.3, jc=0.015) for sx in (1, -1)]
    s["brainstem"] = _shape(rng, (0, -0.16, -1.0), (0.12, 0.11, 0.85), deform=0.04, jc=0.01)
    s["fourth_ventricle"] = _shape(rng, (0, -0.30, -0.75), (0.05, 0.03, 0.25), deform=0.05, jc=0.005)
    s["cerebellum"] = _shape(rng, (0, -0.52, -0.95), (0.46, 0.27, 0.7), e=2.3, deform=0.06, jc=0.015)
    s["cerebellar_wm_shrink"] = round(float(rng.uniform(0.1, 0.14)), 4)
    return s


def rasterize(layout: str, shapes: dict, shape: tuple) -> Anatomy:
    """Paint the drawn ``shapes`` on a ``shape = (X, Y, Z)`` grid into tissue fractions and a mask."""
    spec = LAYOUTS[layout]
    grid = make_grid(shape)
    fields = FieldCache(grid)
    canvas = Canvas(grid.shape, spec["tissues"], max(spec["labels"]))
    (_paint_abdomen if layout == "abdomen" else _paint_brain)(canvas, grid, fields, shapes)
    tex = T.texture(fields, spec["tissues"], shapes["texture_seed"])
    return Anatomy(layout, spec["tissues"], canvas.fractions, tex, canvas.tissue_map(), canvas.mask(), dict(spec["labels"]))


def _paint_abdomen(cv: Canvas, g, f, s: dict) -> None:
    fascia = blob(g, s["body"], f, grow=-s["fat_thickness"])
    cavity = blob(g, s["body"], f, grow=-s["fat_thickness"] - s["wall_thickness"])
    liver = np.maximum(blob(g, s["liver"][0], f), blob(g, s["liver"][1], f)) * cavity
    for v in s["hepatic_vessels"]:
        cv.paint(blob(g, v, f) * liver, "blood", 1)
    cv.paint(blob(g, s["gallbladder"], f) * cavity, "fluid")
    for k, (kid, label) in enumerate(zip(s["kidney"], (2, 3))):
        side = 1 if k == 0 else -1  # hilum faces the spine (medial)
        cv.paint(blob(g, _at(kid, -side * 0.055, 0.02, (0.03, 0.05, kid["r"][2] * 0.6)), f) * cavity, "fat")
        cv.paint(blob(g, kid, f, grow=-s["medulla_shrink"]) * cavity, "kidney_medulla", label)
        cv.paint(blob(g, kid, f) * cavity, "kidney_cortex", label)
    cv.paint(liver, "liver", 1)
    cv.paint(blob(g, s["spleen"], f) * cavity, "spleen", 4)
    for v in ("aorta", "ivc"):
        cv.paint(blob(g, s[v], f), "blood")
    sp = s["spine"]
    cv.paint(blob(g, _at(sp, 0, -0.13, (0.022, 0.02, 8.0))), "cord")
    cv.paint(blob(g, _at(sp, 0, -0.13, (0.042, 0.036, 8.0))), "csf")
    cv.paint(blob(g, sp, f, grow=-0.018), "marrow")
    cv.paint(blob(g, sp, f), "bone")
    cv.paint(blob(g, _at(sp, 0, -0.13, (0.06, 0.055, 8.0))), "bone")  # neural arch around the canal
    cv.paint(blob(g, _at(sp, 0, -0.22, (0.025, 0.05, 8.0))) * fascia, "bone")  # spinous process
    cv.paint(blob(g, s["pancreas"], f) * cavity, "pancreas")
    cv.paint(blob(g, s["stomach"], f, grow=-0.025) * cavity, "fluid")
    cv.paint(blob(g, s["stomach"], f) * cavity, "bowel")
    for kid in s["kidney"]:
        cv.paint(blob(g, kid, f, grow=s["perirenal_fat"]) * cavity, "fat")
    for b in s["bowel"]:
        cv.paint(blob(g, b, f, grow=-0.02) * cavity, "fluid")
        cv.paint(blob(g, b, f) * cavity, "bowel")
    seed, thr = s["bowel_fill"]  # soft threshold ~1 voxel wide; none in the retroperitoneum (y < -0.12)
    gb = f(seed, 12, 1.5, 2.5) + 4.0 * np.minimum(g.y + 0.12, 0.0)
    cv.paint(soft((thr - gb) / (2 * np.pi * 2.0), g) * cavity, "bowel")
    for m in s["psoas"] + s["paraspinal"]:
        cv.paint(blob(g, m, f) * fascia, "muscle")
    cv.paint(cavity, "fat")  # visceral fat between organs
    cv.paint(fascia, "muscle")  # abdominal wall
    cv.paint(blob(g, s["body"], f), "fat")  # subcutaneous fat


def _paint_brain(cv: Canvas, g, f, s: dict) -> None:
    head = s["head"]
    inner = -s["skin"] - s["scalp_fat"] - s["skull"]  # inner table of the skull
    depth = -distance(g, head, f, grow=inner - s["subarachnoid"])  # > 0 inside the brain surface
    brain = soft(-depth, g)
    intracranial = blob(g, head, f, grow=inner)
    by = head["c"][1] - (head["r"][1] + inner) + 0.035
    for dy in (by, -by + 2 * head["c"][1]):  # superior sagittal sinus, posterior and anterior
        cv.paint(blob(g, _at(head, 0, dy - head["c"][1], (0.04, 0.03, 8.0), rot=0.0)) * intracranial, "blood")
    for v in s["ventricles"] + [s["third_ventricle"]]:
        cv.paint(blob(g, v, f) * brain, "csf", 1)
    cv.paint(blob(g, s["fourth_ventricle"], f) * brain, "csf")
    for n in s["thalamus"] + s["lentiform"]:
        cv.paint(blob(g, n, f) * brain, "gm", 5)
    cv.paint(blob(g, s["brainstem"], f) * intracranial, "wm", 3)
    cb = s["cerebellum"]
    cv.paint(blob(g, cb, f, grow=-s["cerebellar_wm_shrink"]) * brain, "wm", 2)
    cv.paint(blob(g, cb, f) * brain, "gm", 2)
    cv.paint(blob(g, cb, f, grow=0.03) * intracranial, "csf")  # tentorial / cisternal CSF around it
    # cortex: a grey ribbon under the surface plus grey matter lining the sulci. Sulci are the zero
    # set of sin(k·θ + warp): k roughly radial lines (θ = angle about the head centre) bent by a
    # smooth random field; distance to a sulcus ~ |sin| · r / k. They reach the sulcal depth.
    k, seed, warp = s["sulci"]
    dx, dy = g.x - head["c"][0], g.y - head["c"][1]
    r = np.sqrt(dx * dx + dy * dy) + 1e-3
    theta = np.arctan2(dy / head["r"][1], dx / head["r"][0])
    sulcus = np.abs(np.sin(k * theta + warp * f(seed, 8, 0.5, 1.5))) * r / k
    t = s["cortex"]
    d = s["sulcal_depth"] * (1.0 + 0.6 * f(seed + 1, 8, 1.0, 2.5))  # sulci of varying depth, some absent
    fissure = slab(g, head["c"][0], 0.02, (-0.5, 9.0)) * (np.abs(g.y - head["c"][1]) > 0.3)
    outer = soft(0.2 - r, g)  # no sulci converging at the centre of high slices
    cv.paint(np.maximum(fissure, soft(sulcus - 0.008, g) * soft(depth - d, g) * outer) * brain, "csf")
    grey = np.maximum(soft(depth - t, g), soft(sulcus - 0.5 * t, g) * soft(depth - d - t, g) * outer)
    cv.paint(grey * brain, "gm", 5)
    cv.paint(brain, "wm", 4)
    cv.paint(intracranial, "csf")  # subarachnoid space
    sk = s["skull"]
    cv.paint(blob(g, head, f, grow=inner + 0.3 * sk), "bone")  # inner table
    cv.paint(blob(g, head, f, grow=inner + 0.7 * sk), "marrow")  # diploe
    cv.paint(blob(g, head, f, grow=-s["skin"] - s["scalp_fat"]), "bone")  # outer table
    cv.paint(blob(g, head, f, grow=-s["skin"]), "fat")
    cv.paint(blob(g, head, f), "muscle")  # skin / galea
