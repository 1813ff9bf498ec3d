"""Deterministic ops: exact voxel counts on hand-made maps, constraints, connectivity."""

import numpy as np
import pytest
from morph_helpers import BRAIN, CEREB, GM, STEM, VENT, WM

from mrgen.morph import MorphError, dilate, erode, grow_lesion, n_components, remap, remove, scale, target_volume


def brute_dilation(mask, spacing, mm):
    """Reference: every voxel whose centre is within mm of a mask voxel centre (O(N*M) brute force)."""
    pts = np.argwhere(mask) * np.asarray(spacing)
    grid = np.indices(mask.shape).reshape(mask.ndim, -1).T * np.asarray(spacing)
    d2 = ((grid[:, None, :] - pts[None, :, :]) ** 2).sum(-1).min(1)
    return (d2 <= mm * mm + 1e-9).reshape(mask.shape)


def test_dilate_2mm_on_1x1x2_voxels_grows_per_axis():
    lab = np.zeros((11, 11, 11), np.int16)
    lab[5, 5, 5] = 1
    out = dilate(lab, (1.0, 1.0, 2.0), 1, 2.0)
    idx = np.argwhere(out == 1)
    assert (out == 1).sum() == 15  # 13 in-plane (x²+y² <= 4) + 1 above + 1 below
    assert idx.min(0).tolist() == [3, 3, 4] and idx.max(0).tolist() == [7, 7, 6]  # ±2 x, ±2 y, ±1 z
    block = np.zeros((14, 14, 10), np.int16)
    block[5:8, 5:8, 4:6] = 1
    out = dilate(block, (1.0, 1.0, 2.0), 1, 2.0)
    assert np.array_equal(out == 1, brute_dilation(block == 1, (1.0, 1.0, 2.0), 2.0))
    idx = np.argwhere(out == 1)
    assert idx.min(0).tolist() == [3, 3, 3] and idx.max(0).tolist() == [9, 9, 6]
    assert (out == 1).sum() == 92  # 2 slices x 37 (3x3 square + 2 mm disc) + 2 x 9 at ±2 mm in z


def test_dilate_2d_anisotropic_exact():
    lab = np.zeros((15, 9), np.int32)
    lab[7, 4] = 3
    out = dilate(lab, (0.5, 1.0), 3, 1.5)
    assert (out == 3).sum() == 17  # 7 along x (±3 × 0.5 mm) + 2 × 5 in the neighbouring rows
    assert np.array_equal(out == 3, brute_dilation(lab == 3, (0.5, 1.0), 1.5))
    assert lab.sum() == 3  # input untouched


def test_erode_1mm_on_1x1x2_voxels_and_fill():
    lab = np.full((11, 11, 9), WM, np.int16)
    lab[2:9, 2:9, 2:7] = VENT  # 7 x 7 x 5
    out = erode(lab, (1.0, 1.0, 2.0), VENT, 1.0)
    expected = np.full_like(lab, WM)
    expected[3:8, 3:8, 2:7] = VENT  # one voxel off each side in x, y; z voxels are 2 mm: none removed
    assert np.array_equal(out, expected)
    out2 = erode(lab, (1.0, 1.0, 2.0), VENT, 2.0)
    expected2 = np.full_like(lab, WM)
    expected2[4:7, 4:7, 3:6] = VENT
    assert np.array_equal(out2, expected2)


def test_target_volume_ventricles_x1_5(brain):
    lab, sp = brain
    info = {}
    out = target_volume(lab, sp, VENT, 1.5, protected=[CEREB, STEM], container=BRAIN, info=info)
    ratio = (out == VENT).sum() / (lab == VENT).sum()
    assert abs(ratio - 1.5) <= 0.05 * 1.5
    assert info["op"] == "dilate" and info["mm"] > 0 and abs(info["achieved_factor"] - ratio) < 1e-3
    for p in (CEREB, STEM):  # protected classes are unchanged voxel for voxel
        assert np.array_equal(out == p, lab == p)
    assert not ((out == VENT) & (lab == 0)).any()  # container: no ventricle outside the brain
    assert n_components(out == VENT) == n_components(lab == VENT) == 2
    changed = out != lab
    assert np.all(out[changed] == VENT) and np.all(np.isin(lab[changed], [WM, GM]))


def test_target_volume_shrink_and_error(brain):
    lab, sp = brain
    out = target_volume(lab, sp, CEREB, 0.6, fill=[0, WM, GM])
    ratio = (out == CEREB).sum() / (lab == CEREB).sum()
    assert abs(ratio - 0.6) <= 0.03
    freed = (lab == CEREB) & (out != CEREB)
    assert np.all(np.isin(out[freed], [0, WM, GM]))
    assert np.array_equal(out[~freed], lab[~freed])
    with pytest.raises(MorphError, match="at best"):  # ventricles walled in by protected WM/GM
        target_volume(lab, sp, VENT, 1.5, protected=[WM, GM], container=BRAIN)


def test_protected_and_container(brain):
    lab, sp = brain
    free = dilate(lab, sp, CEREB, 6.0)
    assert ((free == CEREB) & (lab == 0)).sum() > 0 and ((free == CEREB) & (lab == STEM)).sum() > 0
    out = dilate(lab, sp, CEREB, 6.0, protected=[STEM, VENT], container=BRAIN)
    grown = (out == CEREB) & (lab != CEREB)
    assert grown.sum() > 0
    assert np.all(np.isin(lab[grown], [WM, GM]))
    for p in (STEM, VENT):
        assert np.array_equal(out == p, lab == p)


def test_connectivity_no_merge_no_split_no_delete():
    lab = np.full((30, 12), 4, np.int16)
    lab[3:10, 3:9] = 1
    lab[12:19, 3:9] = 1  # two components 2 voxels apart
    merged = dilate(lab, (1.0, 1.0), 1, 3.0, keep_components=False)
    assert n_components(merged == 1) == 1
    kept = dilate(lab, (1.0, 1.0), 1, 3.0)
    assert n_components(kept == 1) == 2
    assert ((kept == 1) & (lab != 1)).sum() > 0
    # a dumbbell: eroding by 1 mm breaks its 1-voxel neck; the larger piece is kept, the rest filled
    db = np.full((24, 11), 4, np.int16)
    db[2:9, 2:9] = 1
    db[9:14, 5] = 1
    db[14:20, 2:9] = 1
    out = erode(db, (1.0, 1.0), 1, 1.0)
    assert n_components(out == 1) == 1 and (out == 1).sum() == 26  # 5x5 core of the bigger end + the neck's root voxel
    # a component thinner than the erosion survives (its deepest voxels) unless allow_delete
    lab2 = np.full((20, 20), 4, np.int16)
    lab2[2:12, 2:12] = 1
    lab2[15, 15] = 1
    out = erode(lab2, (1.0, 1.0), 1, 1.0)
    assert n_components(out == 1) == 2 and out[15, 15] == 1 and (out == 1).sum() == 65
    out = erode(lab2, (1.0, 1.0), 1, 1.0, allow_delete=True)
    assert n_components(out == 1) == 1 and (out == 1).sum() == 64


def test_growth_never_jumps_a_protected_wall():
    lab = np.full((20, 5), 4, np.int16)
    lab[2:6] = 1
    lab[7] = 2  # protected wall one voxel thick
    out = dilate(lab, (1.0, 1.0), 1, 5.0, protected=[2])
    assert np.array_equal(out[7:], lab[7:])  # nothing beyond the wall (no detached island)
    assert np.all(out[:7] == 1)


def test_remove_exact():
    lab = np.zeros((4, 8), np.int16)
    lab[:, :2] = 2
    lab[:, 2:6] = 1
    lab[:, 6:] = 3
    out = remove(lab, (1.0, 1.0), 1, fill="nearest")
    expected = lab.copy()
    expected[:, 2:4] = 2
    expected[:, 4:6] = 3
    assert np.array_equal(out, expected)
    out = remove(lab, (1.0, 1.0), 1, fill=7)
    assert np.array_equal(out, np.where(lab == 1, 7, lab))
    out = remove(lab, (1.0, 1.0), 1, fill=[3])
    assert np.array_equal(out, np.where(lab == 1, 3, lab))
    with pytest.raises(MorphError, match="edited label"):
        remove(lab, (1.0, 1.0), 1, fill=1)


def test_remap_exact_and_simultaneous(brain):
    lab, sp = brain
    out = remap(lab, sp, {VENT: 1, GM: 2, WM: 3, CEREB: 3, STEM: 3})  # Background/Fluid/Cortex/Other
    expected = np.select([lab == VENT, lab == GM, np.isin(lab, [WM, CEREB, STEM])], [1, 2, 3], 0)
    assert np.array_equal(out, expected) and out.dtype == lab.dtype
    swap = remap(lab, sp, {1: 2, 2: 1})
    assert np.array_equal(swap == 2, lab == 1) and np.array_equal(swap == 1, lab == 2)
    assert np.array_equal(remap(lab, sp, {1: 9}, default=0), np.where(lab == 1, 9, 0))


def test_scale_volume(brain):
    lab, sp = brain
    assert np.array_equal(scale(lab, sp, CEREB, factor=1.0), lab)
    info = {}
    out = scale(lab, sp, CEREB, volume_factor=0.5, fill=[0, WM, GM], info=info)
    assert abs((out == CEREB).sum() / (lab == CEREB).sum() - 0.5) < 0.06
    assert info["linear_factor"] == pytest.approx(0.5 ** (1 / 3), abs=1e-6)
    out = scale(lab, sp, VENT, factor=1.2, protected=[CEREB, STEM], container=BRAIN)
    ratio = (out == VENT).sum() / (lab == VENT).sum()
    assert abs(ratio - 1.2**3) < 0.15
    assert np.array_equal(out == CEREB, lab == CEREB) and not ((out == VENT) & (lab == 0)).any()


def test_grow_lesion_paste_and_grow():
    lab = np.zeros((21, 21, 11), np.int16)
    lab[2:19, 2:19, 1:10] = 5  # host
    sp = (1.0, 1.0, 2.0)
    out = grow_lesion(lab, sp, 4, 5, mm=3.0, seed_point=[10, 10, 5])
    ball = np.zeros(lab.shape, bool)
    ball[10, 10, 5] = True
    assert np.array_equal(out == 4, brute_dilation(ball, sp, 3.0))
    info = {}
    out = grow_lesion(lab, sp, 4, 5, volume_mm3=200.0, seed_point=[10, 10, 5], info=info)
    assert (out == 4).sum() == 100 and info["added_mm3"] == 200.0
    # an existing lesion grows only into its host
    lab2 = lab.copy()
    lab2[8:13, 8:13, 4:7] = 4
    lab2[2:19, 2:5, 1:10] = 2  # another class beside the host
    out = grow_lesion(lab2, sp, 4, 5, mm=6.0)
    gained = (out == 4) & (lab2 != 4)
    assert gained.sum() > 0 and np.all(lab2[gained] == 5)
    info = {}
    out = grow_lesion(lab2, sp, 4, [5], volume_mm3=400.0, info=info)
    assert (out == 4).sum() - (lab2 == 4).sum() == 200 and info["added_mm3"] == 400.0
    with pytest.raises(MorphError, match="not a free host voxel"):
        grow_lesion(lab2, sp, 4, 5, mm=2.0, seed_point=[10, 3, 5])
    with pytest.raises(MorphError, match="absent"):
        grow_lesion(lab, sp, 1, 5, mm=2.0)


def test_absent_label_and_bad_spacing(brain):
    lab, sp = brain
    with pytest.raises(MorphError, match="absent"):
        dilate(lab, sp, 9, 1.0)
    with pytest.raises(MorphError, match="spacing"):
        dilate(lab, (1.0, 1.0), VENT, 1.0)
