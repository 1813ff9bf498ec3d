"""The segmenter learns: 60 steps on a trivially separable problem (three intensities, two boxes) cut
the Dice + CE loss to at most half and segment both labels, on the training images and a new one."""

import numpy as np


def _boxes(rng, n):
    imgs, masks = [], []
    for _ in range(n):
        m = np.zeros((16, 16), np.int64)
        r, c = rng.integers(1, 6, 2)
        m[r:r + 6, c:c + 5] = 1
        r, c = rng.integers(9, 12, 2)
        m[r:r + 4, c:c + 4] = 2
        imgs.append((np.choose(m, [-0.6, 0.1, 0.7]) + 0.05 * rng.standard_normal((16, 16))).astype(np.float32))
        masks.append(m)
    return imgs, masks


def _dice(pred, gt, label):
    a, b = pred == label, gt == label
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_segmenter_learns(tmp_path, learned):
    from mrgen import config as C
    from mrgen.segment import load_segmenter, predict, train_segmenter

    rng = np.random.default_rng(0)
    imgs, masks = _boxes(rng, 6)
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "segment.train.steps=60", "segment.train.lr=0.005",
                                           "segment.train.ckpt_every=0", "segment.train.log_every=1"])
    out = train_segmenter(imgs, masks, 3, cfg, tmp_path / "seg")
    first, final = learned(out)
    assert final <= 0.5 * first, (first, final)  # measured: 1.90 -> 0.29
    model = load_segmenter(out)
    new_imgs, new_masks = _boxes(rng, 2)
    for img, m in zip(imgs + new_imgs, masks + new_masks):
        pred = predict(model, img)
        assert min(_dice(pred, m, 1), _dice(pred, m, 2)) >= 0.8  # measured: >= 0.92 on the training images
