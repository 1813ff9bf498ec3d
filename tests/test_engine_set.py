"""segment.engine_set: what the engine's segmenter trains on (mrgen.pairs.engine_set), and its config checks."""

import numpy as np
import pytest

from mrgen.config import load_config
from mrgen.errors import ConfigError
from mrgen.pairs import engine_set


def _pairs(n: int, value: float, size: int = 16) -> tuple[list, list]:
    rng = np.random.default_rng(int(value * 10) + n)
    images = [np.clip(rng.normal(value, 0.3, (size, size)), -1, 1).astype(np.float32) for _ in range(n)]
    masks = [np.full((size, size), k % 3, np.int64) for k in range(n)]
    return images, masks


def _cfg(kind: str, copies: int = 4):
    return load_config("tiny", overrides=[f"segment.engine_set={kind}", f"segment.source_copies={copies}"])


def test_synthetic_is_the_kept_pairs_alone():
    synth, source = _pairs(3, 0.5), _pairs(5, -0.5)
    (images, masks), made = engine_set(_cfg("synthetic"), synth, source, np.random.default_rng(0))
    assert made == {"synthetic": 3}
    assert len(images) == 3 and all(a is b for a, b in zip(images, synth[0])) and masks == synth[1]


def test_source_adds_the_real_source_pairs_unchanged():
    synth, source = _pairs(3, 0.5), _pairs(5, -0.5)
    (images, masks), made = engine_set(_cfg("source"), synth, source, np.random.default_rng(0))
    assert made == {"synthetic": 3, "source": 5}
    assert len(images) == len(masks) == 8
    assert all(np.array_equal(a, b) for a, b in zip(images[3:], source[0]))
    assert all(np.array_equal(a, b) for a, b in zip(masks[3:], source[1]))


def test_source_aug_adds_randomised_copies_with_their_masks_and_follows_the_seed():
    synth, source = _pairs(2, 0.5), _pairs(3, -0.2)
    (images, masks), made = engine_set(_cfg("source+aug", copies=2), synth, source, np.random.default_rng(7))
    assert made == {"synthetic": 2, "source": 3, "source_randomised": 6}
    assert len(images) == len(masks) == 11
    copies = images[5:]
    for j, (img, m) in enumerate(zip(copies, masks[5:])):
        src = j // 2  # two copies of each source pair, in order
        assert np.array_equal(m, source[1][src])  # intensity only: the mask is the source pair's
        assert img.shape == source[0][src].shape and img.dtype == np.float32
        assert not np.allclose(img, source[0][src], atol=1e-3)  # a changed appearance
        assert img.min() >= -1.0 and img.max() <= 1.0
    again, _ = engine_set(_cfg("source+aug", copies=2), synth, source, np.random.default_rng(7))
    other, _ = engine_set(_cfg("source+aug", copies=2), synth, source, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(again[0], images))
    assert not all(np.array_equal(a, b) for a, b in zip(other[0][5:], copies))


@pytest.mark.parametrize("override,words", [("segment.engine_set=both", "source+dr"),
                                            ("segment.source_copies=-1", "source_copies")])
def test_bad_engine_set_settings_are_one_clear_error(override, words):
    with pytest.raises(ConfigError, match="segment") as err:
        load_config("tiny", overrides=[override])
    assert words in str(err.value)


def _with_context(n: int, size: int = 24) -> tuple[list, list]:
    """Source pairs whose masks carry a context label 5 (a 'brain' disc) around labels 1 and 2."""
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for k in range(n):
        m = np.zeros((size, size), np.int64)
        m[(yy - 12) ** 2 + (xx - 12) ** 2 < 100] = 5
        m[8:13, 8 + k:13 + k] = 1
        m[13:17, 10:15] = 2
        masks.append(m)
    images = [np.where(m > 0, 0.2 * m, -1.0).astype(np.float32) for m in masks]
    return images, masks


def test_source_dr_draws_images_from_the_label_maps_and_drops_context_labels():
    synth, source = _pairs(2, 0.5, size=24), _with_context(3)
    (images, masks), made = engine_set(_cfg("source+dr", copies=2), synth, source, np.random.default_rng(3), context=(5,))
    assert made == {"synthetic": 2, "source": 3, "source_randomised": 6}
    assert len(images) == len(masks) == 11
    for m, src in zip(masks[2:5], source[1]):  # the real pairs: the context label is background
        assert np.array_equal(m, np.where(src == 5, 0, src))
    for img, m in zip(images[5:], masks[5:]):
        assert set(np.unique(m)) == {0, 1, 2}  # deformed with the image, tumour labels kept, no context label
        assert img.shape == (24, 24) and img.dtype == np.float32 and img.min() >= -1.0 and img.max() <= 1.0
    # drawn from the label maps: not the source images, and the copies of one map differ from each other
    assert not any(np.allclose(images[5 + j], source[0][j // 2], atol=1e-2) for j in range(6))
    assert not np.allclose(images[5], images[6], atol=1e-2)
    again, _ = engine_set(_cfg("source+dr", copies=2), synth, source, np.random.default_rng(3), context=(5,))
    assert all(np.array_equal(a, b) for a, b in zip(again[0], images))


def test_label_copies_are_the_domain_randomisation_draws_in_order():
    """The one generator of the baseline and of source+dr: draw by draw what synthesize_from_labels gives from one
    rng, mask by mask and copy by copy, with the context label dropped afterwards."""
    from mrgen.randomise import label_copies, synthesize_from_labels

    _, masks = _with_context(2)
    got_i, got_m = label_copies(masks, 3, np.random.default_rng(11), context=(5,))
    rng = np.random.default_rng(11)
    want = [synthesize_from_labels(m, rng) for m in masks for _ in range(3)]
    assert len(got_i) == 6
    for (wi, wm), gi, gm in zip(want, got_i, got_m):
        assert np.array_equal(wi, gi)
        assert np.array_equal(np.where(wm == 5, 0, wm), gm) and (wm == 5).any() and not (gm == 5).any()
