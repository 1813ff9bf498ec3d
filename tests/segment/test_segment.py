"""Built-in segmenter: tiny training (2D and 3D), safetensors-only save, load, predict, augmentation, run_train."""

import numpy as np
import pytest
import torch

from mrgen import config as C
from mrgen.segment import augment, load_segmenter, predict, predict_proba, run_train, train_segmenter

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
    assert pred.shape == shape and pred.dtype == np.int64 and pred.min() >= 0 and pred.max() < 3
    odd = tuple(s - 1 for s in shape)  # not a multiple of the strides: padded and cropped back
    prob = predict_proba(model, np.zeros(odd, np.float32))
    assert prob.shape == (3, *odd) and np.allclose(prob.sum(0), 1, atol=1e-5)
    assert predict(model, imgs[0][None]).shape == shape  # a leading channel of 1 is accepted


def test_wrong_dims_and_labels_are_refused(tmp_path):
    cfg = C.load_config("tiny", overrides=TINY)
    imgs, masks = data()
    with pytest.raises(ValueError, match="n_classes"):
        train_segmenter(imgs, masks, 2, cfg, tmp_path / "a")
    cfg3 = C.load_config("tiny", overrides=["data.spatial_dims=3", *TINY])
    with pytest.raises(ValueError, match="spatial_dims"):
        train_segmenter(imgs, masks, 3, cfg3, tmp_path / "b")


@pytest.mark.parametrize("shape", [(16, 16), (4, 16, 16)])
def test_augment_keeps_shapes_and_label_values(shape):
    torch.manual_seed(0)
    x = torch.rand(3, 1, *shape) * 2 - 1
    y = torch.zeros(3, 1, *shape, dtype=torch.long)
    y[..., 4:10, 4:10] = 2
    xa, ya = augment(x, y, p=1.0)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= {0, 2} and torch.isfinite(xa).all()


def test_run_train_from_export(tmp_path):
    from mrgen.export import dataset_folder, export_pairs

    imgs, masks = data(n=4)
    export_pairs([(f"c{i}", im, m) for i, (im, m) in enumerate(zip(imgs, masks))],
                 dataset_folder(tmp_path / "nnunet", 501, "MRGenSynth"), {1: "a", 2: "b"}, "T2", "png")
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", *TINY])
    res = run_train(cfg)
    assert res["cases"] == 4 and res["n_classes"] == 3
    assert (tmp_path / "segment" / "engine" / "model.safetensors").exists()
