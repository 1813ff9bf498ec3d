"""mrgen.curate.dataset.load_row: the one loader of a curated row in the item shape (2D slices, 3D volumes
resampled: image trilinear, mask nearest with its label values kept; context labels kept alone or dropped)."""

import numpy as np
import pytest

from mrgen.config import load_config
from mrgen.curate.dataset import item_shape, load_row


@pytest.fixture
def root(tmp_path):
    """A hand-made ``curated/`` folder: one (6, 16, 16) volume. The image ramps along z (z / 5); the mask holds
    3 in the first 8 rows and 7 in the last 8 (adjacent, so any interpolation would invent 4..6), and
    context label 5 in the corner block of slice 0."""
    arrays = tmp_path / "curated" / "arrays"
    arrays.mkdir(parents=True)
    img = np.broadcast_to((np.arange(6) / 5)[:, None, None], (6, 16, 16)).astype(np.float16)
    mask = np.zeros((6, 16, 16), np.uint8)
    mask[:, :8, 4:12] = 3
    mask[:, 8:, 4:12] = 7
    mask[0, :4, :4] = 5
    np.save(arrays / "img.npy", img)
    np.save(arrays / "mask.npy", mask)
    return tmp_path / "curated"


def _volume():
    return {"id": "d/s/T1", "kind": "volume", "slice": -1, "image": "arrays/img.npy", "mask": "arrays/mask.npy",
            "shape": [6, 16, 16]}


def _slice(z):
    return {**_volume(), "id": f"d/s/T1/z{z:04d}", "kind": "slice", "slice": z, "shape": [16, 16]}


def test_item_shape():
    assert item_shape(load_config("tiny", overrides=["data.image_size=16"])) == (16, 16)
    assert item_shape(load_config("tiny", overrides=["data.spatial_dims=3", "data.image_size=16", "data.depth=8"])) == (8, 16, 16)


def test_2d_slice_row_is_the_stored_slice(root):
    img, mask = load_row(root, _slice(2), (16, 16))
    assert img.shape == (16, 16) and img.dtype == np.float32 and np.allclose(img, 0.4, atol=1e-3)
    assert mask.shape == (16, 16) and mask.dtype == np.int64
    assert (mask[:8, 4:12] == 3).all() and (mask[8:, 4:12] == 7).all() and mask[:, :4].sum() == 0
    with pytest.raises(ValueError, match=r"slice shape \(16, 16\) != data.image_size \(8, 8\); re-curate"):
        load_row(root, _slice(2), (8, 8))
    with pytest.raises(ValueError, match="kind='volume'"):
        load_row(root, _slice(2), (8, 16, 16))


def test_3d_volume_row_is_resampled_to_the_item_shape(root):
    img, mask = load_row(root, _volume(), (8, 8, 8))
    assert img.shape == (8, 8, 8) and img.dtype == np.float32
    # trilinear, align_corners=False: out z=i samples stored z=(i + 0.5) * 6/8 - 0.5, clamped to [0, 5]
    assert img[:, 0, 0] == pytest.approx([0.0, 0.125, 0.275, 0.425, 0.575, 0.725, 0.875, 1.0], abs=2e-3)
    assert mask.shape == (8, 8, 8) and mask.dtype == np.int64
    assert set(np.unique(mask)) == {0, 3, 5, 7}  # nearest: no value between 3 and 7 appears
    assert (mask[:, :4, 2:6] == 3).all() and (mask[:, 4:, 2:6] == 7).all()
    assert (mask[:, :, :2] == 0)[1:].all() and (mask[0, :2, :2] == 5).all()
    with pytest.raises(ValueError, match="kind='slice'"):
        load_row(root, _volume(), (16, 16))
    img, mask = load_row(root, _volume())  # no shape: as stored
    assert img.shape == mask.shape == (6, 16, 16)


def test_image_or_mask_alone_and_unannotated_rows(root):
    img, mask = load_row(root, _volume(), (8, 8, 8), image=False)
    assert img is None and mask.shape == (8, 8, 8)
    img, mask = load_row(root, _volume(), (8, 8, 8), mask=False)
    assert mask is None and img.shape == (8, 8, 8)
    _, mask = load_row(root, {**_volume(), "mask": ""}, (8, 8, 8))
    assert mask.shape == (8, 8, 8) and not mask.any()


def test_context_labels_kept_alone_or_dropped(root):
    _, seg = load_row(root, _slice(0), (16, 16), drop_context={5})
    assert set(np.unique(seg)) == {0, 3, 7} and (seg[:4, :4] == 0).all()
    _, ctx = load_row(root, _slice(0), (16, 16), only_context={5})
    # only the context label: organ voxels take the nearest context voxel's label (5), background stays 0
    want = np.zeros((16, 16), np.int64)
    want[:4, :4] = 5
    want[:, 4:12] = 5
    assert np.array_equal(ctx, want)
    with pytest.raises(ValueError, match="not both"):
        load_row(root, _slice(0), (16, 16), only_context={5}, drop_context={5})
