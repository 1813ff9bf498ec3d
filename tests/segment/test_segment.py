"""Built-in segmenter: tiny training (2D and 3D), safetensors-only save, load, predict, augmentation, run_train."""

import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from mrgen import config as C
from mrgen.segment import augment, load_segmenter, predict, predict_proba, run_train, train_segmenter
from mrgen.segment.model import apply_segment_aug, draw_segment_aug_params

TINY = ["segment.channels=[8,8,8]", "segment.strides=[2,2]", "segment.train.steps=4", "segment.train.batch_size=2",
        "segment.train.ckpt_every=0", "segment.train.log_every=1"]


def data(n=3, shape=(16, 16)):
    rng = np.random.default_rng(0)
    imgs, masks = [], []
    for i in range(n):
        m = np.zeros(shape, np.int64)
        sl = tuple(slice(2 + i, s // 2 + i) for s in shape)
        m[sl] = 1 + i % 2
        imgs.append((np.where(m > 0, 0.5, -0.5) + 0.05 * rng.standard_normal(shape)).astype(np.float32))
        masks.append(m)
    return imgs, masks


@pytest.mark.parametrize("dims,shape", [(2, (16, 16)), (3, (8, 16, 16))])
def test_train_save_load_predict(tmp_path, dims, shape):
    cfg = C.load_config("tiny", overrides=[f"data.spatial_dims={dims}", f"run.workdir={tmp_path}", *TINY])
    imgs, masks = data(shape=shape)
    out = train_segmenter(imgs, masks, 3, cfg, tmp_path / "seg", "toy")
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"model.safetensors", "model.json"} <= files
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".ckpt")]
    model = load_segmenter(out)
    assert model.spatial_dims == dims and model.n_classes == 3
    pred = predict(model, imgs[0])
    with torch.no_grad():  # the network called directly: the shape is a multiple of the strides, nothing to pad
        logits = model.net(torch.from_numpy(imgs[0])[None, None])[0]
    assert pred.shape == shape and pred.dtype == np.int64 and np.array_equal(pred, logits.argmax(0).numpy())
    assert np.allclose(predict_proba(model, imgs[0]), torch.softmax(logits, 0).numpy(), atol=1e-6)
    odd = tuple(s - 1 for s in shape)  # not a multiple of the strides: padded (edge values) and cropped back
    crop = tuple(slice(0, s) for s in odd)
    small = imgs[0][crop]
    prob = predict_proba(model, small)
    assert prob.shape == (3, *odd) and np.allclose(prob.sum(0), 1, atol=1e-5)
    assert np.array_equal(predict(model, small), predict(model, np.pad(small, [(0, 1)] * dims, mode="edge"))[crop])
    assert predict(model, imgs[0][None]).shape == shape  # a leading channel of 1 is accepted


def test_wrong_dims_and_labels_are_refused(tmp_path):
    cfg = C.load_config("tiny", overrides=TINY)
    imgs, masks = data()
    with pytest.raises(ValueError, match="n_classes"):
        train_segmenter(imgs, masks, 2, cfg, tmp_path / "a")
    cfg3 = C.load_config("tiny", overrides=["data.spatial_dims=3", *TINY])
    with pytest.raises(ValueError, match="spatial_dims"):
        train_segmenter(imgs, masks, 3, cfg3, tmp_path / "b")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(16, 16), (4, 16, 16)])
def test_augment_keeps_shapes_and_label_values(shape):
    x = torch.rand(3, 1, *shape, generator=_gen(0)) * 2 - 1
    y = torch.zeros(3, 1, *shape, dtype=torch.long)
    y[..., 4:10, 4:10] = 2
    xa, ya, _ = augment(x, y, _gen(0), p=1.0)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) == {0, 2} and torch.isfinite(xa).all()
    assert not torch.equal(xa, x)


@pytest.mark.parametrize("shape", [(16, 16), (4, 16, 16)])
def test_augment_params_replay_exactly_and_follow_the_seed(shape):
    x = torch.rand(4, 1, *shape, generator=_gen(1)) * 2 - 1
    y = (torch.rand(4, 1, *shape, generator=_gen(2)) * 3).long()
    state = torch.get_rng_state()
    xa, ya, params = augment(x, y, _gen(5), p=0.5)
    assert torch.equal(torch.get_rng_state(), state)  # draws from its generator only, never the global stream
    xb, yb = apply_segment_aug(x, y, params)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the returned params reproduce the output exactly
    again = draw_segment_aug_params(_gen(5), tuple(x.shape), 0.5)
    assert all(torch.equal(getattr(params, f.name), getattr(again, f.name)) for f in fields(params))
    other = draw_segment_aug_params(_gen(6), tuple(x.shape), 0.5)
    assert not torch.equal(params.noise, other.noise)
    with pytest.raises(ValueError, match="draw them for this batch"):
        apply_segment_aug(x[:2], y[:2], params)


def test_augment_identity_params_change_nothing_and_flip_is_exact():
    x = torch.rand(2, 1, 6, 6, generator=_gen(3)) * 2 - 1
    y = (torch.rand(2, 1, 6, 6, generator=_gen(4)) * 3).long()
    ident = draw_segment_aug_params(_gen(0), tuple(x.shape), p=0.0)
    ident = replace(ident, flips=torch.zeros_like(ident.flips), rot90=torch.zeros_like(ident.rot90))
    xa, ya = apply_segment_aug(x, y, ident)
    assert torch.allclose(xa, x, atol=1e-6) and torch.equal(ya, y)  # p=0 leaves gamma 1, scale 1, shift 0, noise 0
    flip_w = replace(ident, flips=torch.tensor([[False, True], [False, False]]))
    xa, ya = apply_segment_aug(x, y, flip_w)
    assert torch.equal(ya[0, 0], y[0, 0, :, [5, 4, 3, 2, 1, 0]]) and torch.equal(ya[1], y[1])


def test_augment_draws_keep_the_documented_ranges_and_rates():
    prm = draw_segment_aug_params(_gen(0), (4000, 1, 4, 4), p=0.5)
    on = prm.affine
    assert 0.45 < on.float().mean() < 0.55 and 0.45 < prm.flips.float().mean() < 0.55
    assert set(prm.rot90.tolist()) == {0, 1, 2, 3}
    assert prm.angle[on].abs().max() <= math.pi / 12 and bool((prm.angle[~on] == 0).all())
    assert 0.9 <= prm.zoom[on].min() and prm.zoom[on].max() <= 1.1 and bool((prm.zoom[~on] == 1).all())
    assert bool((prm.elastic[~on] == 0).all()) and 0.025 < prm.elastic[on].std() < 0.035
    for name, lo, hi, off in (("scale", 0.85, 1.15, 1.0), ("shift", -0.1, 0.1, 0.0), ("gamma", 0.7, 1.5, 1.0),
                              ("noise_std", 0.0, 0.05, 0.0)):
        v = getattr(prm, name)
        drawn = v != off
        assert 0.45 < drawn.float().mean() < 0.55, name
        assert lo <= v.min() and v.max() <= hi, name


def test_run_train_from_export(tmp_path):
    from mrgen.export import dataset_folder, export_pairs

    imgs, masks = data(n=4)
    export_pairs([(f"c{i}", im, m) for i, (im, m) in enumerate(zip(imgs, masks))],
                 dataset_folder(tmp_path / "nnunet", 501, "MRGenSynth"), {1: "a", 2: "b"}, "T2", "png")
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", *TINY])
    res = run_train(cfg)
    assert res["cases"] == 4 and res["n_classes"] == 3
    assert (tmp_path / "segment" / "engine" / "model.safetensors").exists()
