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


@pytest.mark.parametrize("override,words", [("segment.engine_set=both", "source+aug"),
                                            ("segment.source_copies=-1", "source_copies")])
def test_bad_engine_set_settings_are_one_clear_error(override, words):
    with pytest.raises(ConfigError, match="segment") as err:
        load_config("tiny", overrides=[override])
    assert words in str(err.value)
