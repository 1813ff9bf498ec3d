"""``mrgen segment``: the built-in CPU-practical segmenter (MONAI UNet, Dice + CE).

* :func:`train_segmenter` — train on in-memory pairs; writes ``model.safetensors`` + ``model.json``.
* :func:`load_segmenter`, :func:`predict` (labels), :func:`predict_proba` (softmax).
* :func:`run_train` — ``mrgen segment train``: trains on the nnU-Net export of the run.
* :func:`run_predict` — ``mrgen segment predict``: the target-modality test split →
  ``<workdir>/segment/<name>/pred/``, each volume on its source file's grid and affine.

For nnU-Net v2 on the same export (GPU machine), see docs/segment.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mrgen import devices, io
from mrgen.segment.model import Segmenter, augment, pad_to
from mrgen.segment.volumes import group_volumes, load_rows, on_source_grid, predict_rows

__all__ = ["train_segmenter", "load_segmenter", "predict", "predict_proba", "run_train", "run_predict", "Segmenter",
           "augment", "group_volumes", "load_rows", "on_source_grid", "predict_rows"]

KIND = "segmenter"


def _stack(arrays: list, dtype, what: str) -> np.ndarray:
    shapes = {tuple(np.asarray(a).shape) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"train_segmenter: all {what} must share one shape, got {sorted(shapes)[:4]}")
    return np.stack([np.asarray(a, dtype) for a in arrays])


def train_segmenter(images: list, masks: list, n_classes: int, cfg, out_dir: str | Path, name: str = "engine") -> Path:
    """Train a UNet on ``images`` ((H, W) or (Z, H, W), [-1, 1]) and int ``masks``; returns ``out_dir``.

    Network from ``cfg.segment`` and ``cfg.data.spatial_dims``, loop from ``cfg.segment.train``
    (resumable checkpoints via :func:`mrgen.train.fit`).
    """
    from monai.losses import DiceCELoss

    from mrgen import train
    from mrgen.config import to_dict

    if not images or len(images) != len(masks):
        raise ValueError(f"train_segmenter needs as many masks as images (got {len(images)} images, {len(masks)} masks)")
    x = torch.from_numpy(_stack(images, np.float32, "images"))[:, None]
    y = torch.from_numpy(_stack(masks, np.int64, "masks"))[:, None]
    sd = cfg.data.spatial_dims
    if x.dim() - 2 != sd:
        raise ValueError(f"data.spatial_dims={sd} but the images are {x.dim() - 2}D ({tuple(x.shape[2:])})")
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"mask values span [{int(y.min())}, {int(y.max())}] but n_classes={n_classes}")
    s = cfg.segment
    torch.manual_seed(s.train.seed)  # the net is built before train.fit seeds: same init for the same config
    model = Segmenter(sd, n_classes, s.channels, s.strides, s.num_res_units, s.dropout)
    if any(d % model.multiple for d in x.shape[2:]):
        x, _ = pad_to(x, model.multiple)
        y, _ = pad_to(y.float(), model.multiple)
        y = y.long()
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def batch_fn(step, draw):
        idx = draw(len(x))
        xb, yb = x[idx], y[idx]
        if not s.augment:
            return xb, yb
        g = torch.Generator().manual_seed(train.step_seed(s.train.seed, step, draw.rank, "augment"))  # per step: resumable
        return augment(xb, yb, g)[:2]

    def loss_fn(batch, step):
        xb, yb = batch
        return loss(model(xb), yb)

    data_hash = io.array_hash(np.concatenate([x.numpy().ravel()[:: max(1, x.numel() // 2_000_000)],
                                              y.numpy().ravel().astype(np.float32)[:: max(1, y.numel() // 2_000_000)]]))
    meta = {"config": {**model.config, "segment": to_dict(s)}, "data_hash": data_hash, "name": name,
            "n_train": len(x), "image_shape": list(x.shape[2:])}
    train.fit(train.Job(KIND, out_dir, {"segmenter": model}, ["segmenter"], batch_fn, loss_fn, s.train, meta,
                        device=devices.of(cfg)))
    return Path(out_dir)


def load_segmenter(folder: str | Path, device: str = "cpu") -> Segmenter:
    """Rebuild the network from ``model.json`` and load ``model.safetensors`` (never a pickle), on ``device``."""
    from mrgen.nets.store import load_model, read_meta

    meta = read_meta(folder)
    c = meta["config"]
    model = Segmenter(c["spatial_dims"], c["n_classes"], c["channels"], c["strides"], c["num_res_units"], c.get("dropout", 0.0))
    load_model(folder, model, kind=KIND)
    model.meta = meta
    return model.to(device).eval()


@torch.no_grad()
def predict_proba(model: Segmenter, image: np.ndarray) -> np.ndarray:
    """Softmax ``(C, *S)`` for one image ``(H, W)`` / ``(Z, H, W)`` (a leading channel of 1 is accepted)."""
    a = np.asarray(image, np.float32)
    if a.ndim == model.spatial_dims + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != model.spatial_dims:
        raise ValueError(f"this segmenter is {model.spatial_dims}D; got an image of shape {np.asarray(image).shape}")
    x, shape = pad_to(torch.from_numpy(a)[None, None], model.multiple)
    prob = torch.softmax(model.eval()(x.to(next(model.parameters()).device)).float(), 1)[0]
    return prob[(slice(None), *(slice(0, s) for s in shape))].cpu().numpy()


def predict(model: Segmenter, image: np.ndarray) -> np.ndarray:
    """Labels (int64, same spatial shape as ``image``)."""
    return predict_proba(model, image).argmax(0).astype(np.int64)


# ----------------------------------------------------------------------------- CLI stages


def run_train(cfg) -> dict:
    """Train ``<workdir>/segment/<segment.name>`` on the run's export (images back to [-1, 1]).

    The export is where ``mrgen export nnunet`` put it (``$nnUNet_raw`` or ``<workdir>/nnunet``:
    :func:`mrgen.export.exported_folder`). Context labels (conditioning-only, ``curated/context.json``) are
    background for the segmenter. ``segment.backend=nnunet``: nnU-Net v2 instead (:mod:`mrgen.segment.nnunet`).
    """
    from mrgen.curate.labels import context_values, strip_context
    from mrgen.export import exported_folder, read_dataset

    folder = exported_folder(cfg)
    if cfg.segment.backend == "nnunet":
        from mrgen.segment import nnunet

        return nnunet.train(cfg, folder)
    if not (folder / "dataset.json").exists():
        raise FileNotFoundError(f"{folder / 'dataset.json'} not found; run `mrgen export nnunet -w {cfg.workdir}` first")
    images, masks, ds = read_dataset(folder)
    if not images:
        raise ValueError(f"{folder} holds no training cases")
    curated = Path(cfg.workdir) / "curated"
    drop = context_values(curated) if curated.is_dir() else set()
    masks = [strip_context(m, drop) for m in masks]  # an export keeps none; older exports may
    n_classes = _n_classes(cfg.workdir, masks)
    out = cfg.workdir / "segment" / cfg.segment.name
    train_segmenter(images, masks, n_classes, cfg, out, cfg.segment.name)
    return {"model": str(out), "cases": len(images), "n_classes": n_classes}


def _n_classes(workdir: Path, masks: list) -> int:
    """1 + the largest of the masks' values and the segmentation labels (``labels.json``, context labels excluded)."""
    from mrgen.curate.labels import target_names

    labels_file = Path(workdir) / "curated" / "labels.json"
    top = max(int(np.max(m)) for m in masks)
    if labels_file.exists():
        top = max(top, *target_names(labels_file.parent))
    return top + 1


def run_predict(cfg) -> dict:
    """Predict the target-modality test split into ``<workdir>/segment/<name>/pred/``.

    One NIfTI per volume, ``<volume key with / as __>.nii.gz``, on the source file's own voxel grid and affine
    (:func:`mrgen.segment.volumes.on_source_grid`), with the label values of the user's mask files when
    ``segment.original_labels`` (else the stored 1..N). ``predictions.json`` lists each file with its shape and affine."""
    from mrgen.curate.index import Index
    from mrgen.curate.inverse import source_affine
    from mrgen.curate.labels import original_values
    from mrgen.roles import assign

    folder = cfg.workdir / "segment" / cfg.segment.name
    model = load_segmenter(folder, devices.of(cfg))
    curated = cfg.workdir / "curated"
    rows = assign(Index(curated / "index.parquet"), cfg).test
    if not rows:
        raise ValueError(f"no {cfg.run.target_modality} test rows with masks in the index")
    volumes = _curate_records(curated)
    values = original_values(curated) if cfg.segment.original_labels else None
    out = folder / "pred"
    records, groups = [], group_volumes(rows)
    for vol in predict_rows(model, rows, curated):
        rec = volumes.get(vol["key"])
        if rec is None:
            raise ValueError(f"{curated / 'curate.json'} has no record of volume {vol['key']}; the index and curate.json "
                             f"disagree — re-run `mrgen curate -w {cfg.workdir}`")
        arr, affine = on_source_grid(vol["pred"], groups[vol["key"]], rec, values), source_affine(rec)
        f = out / f"{vol['key'].replace('/', '__')}.nii.gz"
        io.write_nifti(f, arr, affine=affine)
        records.append({"volume": vol["key"], "file": f.name, "source": rec["source"], "ids": vol["ids"],
                        "shape": list(arr.shape), "affine": affine.tolist(),
                        "labels": "original" if values else "stored", "curated_shape": list(vol["pred"].shape)})
    io.write_json(out / "predictions.json", records)
    return {"pred": str(out), "volumes": len(records), "items": sum(len(r["ids"]) for r in records),
            "grid": "source", "labels": "original" if values else "stored"}


def _curate_records(curated: Path) -> dict:
    """``{volume key: record}`` of ``curated/curate.json``: how each volume was cut, resampled and cropped."""
    path = curated / "curate.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: predictions go back to the source files' grids through curate's "
                                f"records; run `mrgen curate` for this run first")
    return io.read_json(path).get("volumes", {})
