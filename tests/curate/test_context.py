"""Context labels (manifest ``context:``): merged into the stored masks for the generator,
background for every segmenter path (training pairs, evaluation ground truth, export, n_classes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from curate_helpers import LABELS, abdomen_dataset, fails as _fails, organ_mask, save, write_manifest

from mrgen import io
from mrgen.curate import run
from mrgen.curate.dataset import load_mask
from mrgen.curate.index import Index
from mrgen.curate.labels import (context_only, context_values, n_classes, n_labels, original_values, strip_context,
                                 target_names)

SHAPE = (16, 16, 6)  # square, 1.5 mm in-plane: stored at 16 px without any resampling


def body_mask(shape=SHAPE) -> np.ndarray:
    """A 'body' outline overlapping the liver (1) and part of the spleen (4); absent from the border."""
    m = np.zeros(shape, np.uint8)
    m[1:14, 1:15, :] = 1
    return m


def composite(shape=SHAPE, value=5) -> np.ndarray:
    organs, body = organ_mask(shape), body_mask(shape)
    return np.where(organs > 0, organs, np.where(body > 0, value, 0))


def context_dataset(tmp_path: Path, annotated=("T1",), subjects=4) -> dict:
    root = tmp_path / "data"
    ds = abdomen_dataset(root, subjects=subjects, annotated=annotated, shape=SHAPE)
    for i in range(1, subjects + 1):
        save(root / "body" / f"sub-{i:02d}.nii.gz", body_mask())
    ds["context"] = {5: {"name": "body", "masks": "body/{subject}.nii.gz"}}
    return ds


def curated(tmp_path, make_cfg, **kw):
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [context_dataset(tmp_path, **kw)]))
    run(cfg)
    return cfg


def test_context_is_merged_into_annotated_masks_only(tmp_path, make_cfg):
    cfg = curated(tmp_path, make_cfg)
    ix = Index(cfg.workdir)
    vols = ix.query(kind="volume")
    assert len(vols) == 8
    for v in vols:
        if v["modality"] == "T1":
            stored = load_mask(ix.root, v)
            assert np.array_equal(stored, composite().transpose(2, 0, 1))  # organs kept, body = 5 elsewhere
        else:  # unannotated series: no mask, no context
            assert v["mask"] == "" and not v["has_mask"]
    cur = cfg.workdir / "curated"
    assert json.loads((cur / "labels.json").read_text()) == {"abd": {str(k): n for k, n in LABELS.items()}}
    assert json.loads((cur / "context.json").read_text()) == {"abd": {"5": "body"}}
    rows = ix.query(kind=None)
    assert all(5 not in r["labels"] and "body" not in r["organs"] and "body" not in r["prompt"] for r in rows)
    assert any(r["organs"] for r in rows if r["modality"] == "T1")
    summary = json.loads((cur / "curate.json").read_text())["summary"]["abd"]
    assert summary["context"] == {"body": 4 * SHAPE[2]} and "body" not in summary["organs"]
    # the label sets: generator sees 5, segmenters do not
    assert context_values(cfg.workdir) == {5} and target_names(cfg.workdir) == LABELS
    assert n_labels(cfg.workdir) == 5 and n_classes(cfg.workdir) == 5
    from mrgen.autoencoder.data import n_labels as ae_n_labels

    assert ae_n_labels(cfg) == 5


def test_segmenter_paths_strip_context(tmp_path, make_cfg):
    from mrgen.export import run_labels
    from mrgen.filter.stage import scored_mask
    from mrgen.pairs import real_pairs as _real_pairs
    from mrgen.segment import _n_classes, load_rows

    cfg = curated(tmp_path, make_cfg)
    ix = Index(cfg.workdir)
    rows = ix.query(modality="T1", subject="sub-01")
    _, masks = _real_pairs(cfg, rows)
    assert set(np.unique(np.stack(masks))) == {0, 1, 2, 4}
    _, raw = _real_pairs(cfg, rows, keep_context=True)
    assert 5 in np.unique(np.stack(raw))
    _, gt, _ = load_rows(ix.root, rows)  # evaluation ground truth
    assert 5 not in np.unique(gt) and np.array_equal(gt, strip_context(composite(), [5]).transpose(2, 0, 1))
    assert _n_classes(cfg.workdir, masks) == 5
    assert run_labels(cfg.workdir) == LABELS

    class Seg:
        name = "segmenter"

    class Classical:
        name = "classical"

    assert 5 not in scored_mask(Seg(), raw[0], {5}) and 5 in scored_mask(Classical(), raw[0], {5})


def test_strip_context():
    m = np.array([[0, 1, 5], [6, 5, 2]], np.uint8)
    out = strip_context(m, {5, 6})
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1, 0], [0, 0, 2]]
    assert m.tolist() == [[0, 1, 5], [6, 5, 2]]  # the input is not modified
    assert strip_context(m, set()) is m and strip_context(m, [7]) is m


def test_context_only_keeps_the_outline_not_the_labels():
    m = np.zeros((7, 9), np.uint8)
    m[1:6, 1:8] = 5  # brain
    m[2:4, 2:4] = 1  # a tumour inside it
    m[3, 6] = 2
    out = context_only(m, {5})
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 5}
    assert np.array_equal(out != 0, m != 0)  # the union (the brain outline) is kept exactly
    assert m[2, 2] == 1  # the input is not modified
    two = np.array([[5, 1, 1, 6, 6]], np.uint8)  # a label voxel takes its nearest context label
    assert context_only(two, {5, 6}).tolist() == [[5, 5, 6, 6, 6]]
    assert not context_only(m, set()).any() and not context_only(np.array([[1, 2]]), {5}).any()


def test_controller_target_items_carry_context_only(tmp_path, make_cfg):
    """Annotated target series (as in BraTS): the controller's target items show the body outline
    (context 5) and never the organ labels; with target_context off, all-zero masks (MRGen)."""
    import torch

    from mrgen.autoencoder.data import target_items

    cfg = curated(tmp_path, make_cfg, annotated=("T1", "T2"))
    rows = [r for r in Index(cfg.workdir).query(kind="slice", modality="T2")]
    got = target_items(cfg, rows).masks(torch.arange(len(rows))).numpy()
    stored = np.stack([load_mask(cfg.workdir / "curated", r) for r in rows])
    assert set(np.unique(got)) == {0, 5} and np.array_equal(got != 0, stored != 0)
    assert (stored[got == 5] != 5).any()  # organ voxels were relabelled, not dropped
    cfg.controller.target_context = False
    assert not target_items(cfg, rows).masks(torch.arange(len(rows))).any()


def test_items_load_images_and_masks_separately_on_first_use(tmp_path, make_cfg, monkeypatch):
    """The controller needs only the target masks once the latents are cached: masks() must not read
    an image; images() reads each image once and returns the stored values."""
    import torch

    import mrgen.curate.dataset as D
    from mrgen.autoencoder.data import target_items

    cfg = curated(tmp_path, make_cfg, annotated=("T1", "T2"))
    rows = [r for r in Index(cfg.workdir).query(kind="slice", modality="T2")]
    reads = []
    real = D.load_image
    monkeypatch.setattr(D, "load_image", lambda root, row: reads.append(row["id"]) or real(root, row))
    items = target_items(cfg, rows)
    assert items.preload and not reads
    assert items.masks(torch.arange(len(rows))).shape == (len(rows), 16, 16) and not reads
    got = items.images(torch.arange(len(rows)))
    assert sorted(reads) == sorted(r["id"] for r in rows)
    items.images(torch.tensor([0]))
    assert len(reads) == len(rows)  # loaded once, then served from memory
    stored = np.stack([real(cfg.workdir / "curated", r) for r in rows])
    assert np.allclose(got.numpy(), stored, atol=1e-3)  # float16 in memory


def test_export_drops_context_labels(tmp_path):
    from mrgen.export import export_pairs, read_dataset

    mask = np.array([[0, 1, 5, 5], [2, 2, 5, 0], [0, 0, 0, 0], [1, 0, 0, 0]], np.int64)
    image = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    out = tmp_path / "Dataset001_x"
    res = export_pairs([("c0", image, mask)], out, {1: "a", 2: "b", 5: "brain"}, "T2", "png", context=[5])
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "a": 1, "b": 2} and res["labels"] == ds["labels"]
    assert ds["mrgen_label_values"] == {"1": 1, "2": 2}
    _, masks, _ = read_dataset(out)
    assert np.array_equal(masks[0], strip_context(mask, [5]))


def test_rerun_notices_context_changes(tmp_path, make_cfg):
    cfg = curated(tmp_path, make_cfg)
    again = run(cfg)
    assert again["curated"] == 0 and again["reused"] == 8
    body = body_mask()
    body[:, :, 2] = 0
    save(tmp_path / "data" / "body" / "sub-02.nii.gz", body)
    out = run(cfg)
    assert out["curated"] == 1  # only the annotated volume of sub-02 (its T2 has no mask, no context)
    ix = Index(cfg.workdir)
    stored = load_mask(ix.root, ix.query(kind="volume", subject="sub-02", modality="T1")[0])
    assert 5 not in stored[2] and 5 in stored[1]
    # another value for the same file re-curates; context labels are stored after the labels (1..4), so as 5
    man = yaml.safe_load((tmp_path / "m.yaml").read_text())
    man["datasets"][0]["context"] = {9: {"name": "body", "masks": "body/{subject}.nii.gz"}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man, sort_keys=False))
    assert run(cfg)["curated"] == 4
    assert context_values(cfg.workdir) == {5} and n_labels(cfg.workdir) == 5 and n_classes(cfg.workdir) == 5
    assert original_values(cfg.workdir) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 9}


def test_context_value_colliding_with_a_label(tmp_path, make_cfg):
    ds = context_dataset(tmp_path)
    ds["context"] = {4: {"name": "body", "masks": "body/{subject}.nii.gz"}}
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"m\.yaml: dataset 'abd': context value 4 \(body\) is also the label 4: spleen", "a value of its own", "e.g. 5")
    assert not (cfg.workdir / "curated" / "index.parquet").exists()


def test_context_value_colliding_with_another_datasets_label(tmp_path, make_cfg):
    ds = context_dataset(tmp_path)
    ds["labels"] = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
    other = dict(ds, name="other", labels={**LABELS, 5: "stomach"}, context={})
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds, other]))
    _fails(cfg, r"context value 5 \(body\) of dataset 'abd' is the label 5: stomach of dataset 'other'")


def test_context_mask_missing_or_off_grid(tmp_path, make_cfg):
    ds = context_dataset(tmp_path)
    os.remove(tmp_path / "data" / "body" / "sub-03.nii.gz")
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, r"sub-03_T1\.nii\.gz: its context mask .*body/sub-03\.nii\.gz does not exist", "fix the context masks pattern")
    save(tmp_path / "data" / "body" / "sub-03.nii.gz", np.ones((16, 16, 5), np.uint8))
    _fails(cfg, r"body/sub-03\.nii\.gz: context mask shape \(16, 16, 5\) differs", "resample the context mask")


def test_context_needs_an_annotated_series(tmp_path, make_cfg):
    ds = context_dataset(tmp_path, annotated=())
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    _fails(cfg, "'context' is given but no series has 'masks'")


def test_bench_methods_never_hand_context_to_the_segmenter(tmp_path, make_cfg):
    from mrgen.bench import _check_pairs, fold_roles
    from mrgen.bench import spec as S
    from mrgen.bench.context import Ctx
    from mrgen.bench.methods import METHODS
    from mrgen.pairs import real_pairs as load_pairs

    cfg0 = curated(tmp_path, make_cfg, annotated=("T1", "T2"))
    fold = S.Fold(0, ("sub-01", "sub-02"), ("sub-03",), ("sub-04",))
    cfg = make_cfg(tmp_path / "m.yaml", *S.fold_overrides(fold))
    assert cfg.workdir == cfg0.workdir
    roles = fold_roles(Index(cfg.workdir), cfg, fold)

    def pairs(name, **params):
        out = tmp_path / "folds" / name
        out.mkdir(parents=True, exist_ok=True)
        ctx = Ctx(cfg=cfg, roles=roles, out=out, params=params, seed=0, fold=fold, log=lambda *_: None)
        return METHODS[name](ctx)

    for name, params in (("source_only", {}), ("oracle", {}), ("domain_randomisation", {"copies": 1, "deform": False})):
        images, masks = pairs(name, **params)
        assert masks and all(5 not in np.unique(m) for m in masks), name
        _check_pairs(name, images, masks, {5})
    # domain randomisation draws the context label as its own intensity class (unless context: false)
    with_ctx, m1 = pairs("domain_randomisation", copies=1, deform=False)
    without, m2 = pairs("domain_randomisation", copies=1, deform=False, context=False)
    assert all(np.array_equal(a, b) for a, b in zip(m1, m2))
    src_raw = load_pairs(cfg, roles.source, keep_context=True)[1]
    k = next(i for i, m in enumerate(src_raw) if (m == 5).any())
    body, outside = src_raw[k] == 5, src_raw[k] == 0
    # with context the body and the outside get separate random intensities; without, one background class
    assert abs(float(with_ctx[k][body].mean()) - float(with_ctx[k][outside].mean())) > 0.05
    assert abs(float(without[k][body].mean()) - float(without[k][outside].mean())) < 0.05
    with pytest.raises(ValueError, match="context label"):  # the harness refuses a method that leaks context labels
        _check_pairs("leaky", images[:1], [src_raw[k]], {5})


# ----------------------------------------------------------------------------- BraTS (shared data)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MRGEN_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.mark.shared_data
def test_brats_subject_gets_brain_context(tmp_path, monkeypatch):
    if not (SHARED / "brats2013").is_dir():
        pytest.skip(f"{SHARED / 'brats2013'} not present (set MRGEN_SHARED_DATA)")
    from mrgen.config import load_config

    monkeypatch.setenv("MRGEN_SHARED_DATA", str(SHARED))
    man = yaml.safe_load((REPO / "examples" / "brats2013.yaml").read_text())
    ds = man["datasets"][0]
    assert ds["context"] == {5: {"name": "brain", "masks": "{subject}/brainmask.nii.gz"}}
    subject = "brats_2013_pat0001_1"
    ds["series"] = [dict(s, images=f"{subject}/T1c_subtrMeanDivStd.nii.gz") for s in ds["series"] if s["modality"] == "T1c"]
    (tmp_path / "brats.yaml").write_text(yaml.safe_dump(man, sort_keys=False))
    cfg = load_config("tiny", None, [f"run.workdir={tmp_path / 'run'}", f"curate.manifest={tmp_path / 'brats.yaml'}",
                                     "data.image_size=240"])  # 240 x 240 at 1 mm: stored without resampling
    assert run(cfg)["volumes"] == 1
    ix = Index(cfg.workdir)
    stored = load_mask(ix.root, ix.query(kind="volume")[0])
    seg = io.read_image(SHARED / "brats2013" / subject / "OTMultiClass.nii.gz", "mask").array.transpose(2, 0, 1)
    brain = io.read_image(SHARED / "brats2013" / subject / "brainmask.nii.gz", "mask").array.transpose(2, 0, 1) != 0
    assert stored.shape == seg.shape
    tumour = seg > 0
    assert np.array_equal(stored[tumour], seg[tumour])  # tumour voxels are never overwritten
    assert np.array_equal(stored == 5, brain & ~tumour)  # label 5 = brain minus tumour, nothing else
    assert (stored == 5).sum() > 10 * tumour.sum() > 0
    assert context_values(cfg.workdir) == {5} and n_classes(cfg.workdir) == 5 and n_labels(cfg.workdir) == 5
    vol = ix.query(kind="volume")[0]
    assert vol["labels"] == [1, 2, 3, 4] and vol["organs"] == ["necrosis", "edema", "non-enhancing tumour", "enhancing tumour"]
