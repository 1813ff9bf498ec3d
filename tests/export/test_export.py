"""nnU-Net v2 export: layout, dataset.json, pixel round trip, the stage from kept candidates."""

import importlib.util
import json

import numpy as np
import pytest

from mrgen import config as C
from mrgen.export import dataset_folder, export_pairs, read_dataset


def pairs2d(n=3, size=16, values=(1, 2)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.uniform(-1, 1, (size, size)).astype(np.float32)
        m = np.zeros((size, size), np.int64)
        m[2:6, 3:9] = values[0]
        m[9:13, 8:14] = values[1]
        out.append((f"CASE_{i:03d}", img, m))
    return out


def test_png_layout_dataset_json_and_round_trip(tmp_path):
    folder = dataset_folder(tmp_path, 7, "Toy")
    assert folder.name == "Dataset007_Toy"
    prs = pairs2d()
    res = export_pairs(prs, folder, {1: "liver", 2: "spleen"}, "T2", "png", provenance=[{"seed": i} for i in range(3)])
    assert res["cases"] == 3
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"CASE_{i:03d}_0000.png" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"CASE_{i:03d}.png" for i in range(3)]
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2"}
    assert ds["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".png"
    prov = [json.loads(x) for x in (folder / "provenance.jsonl").read_text().splitlines()]
    assert prov[2] == {"case": "CASE_002", "seed": 2}
    images, masks, _ = read_dataset(folder)
    for (case, img, m), im2, m2 in zip(prs, images, masks):
        assert np.array_equal(m2, m)
        assert np.abs(im2 - img).max() <= 1 / 127.5 + 1e-6  # uint8 quantisation only
    # re-export with fewer cases removes the stale files
    export_pairs(prs[:1], folder, {1: "liver", 2: "spleen"}, "T2", "png")
    assert len(list((folder / "imagesTr").iterdir())) == 1 and json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


def test_png_pixels_are_the_scaled_image_and_the_exact_labels(tmp_path):
    """Hand-computed: x in [-1, 1] -> round((x + 1) * 127.5) (clipped), labels as they are; PNG rows are the array's
    second axis, flipped (the (x, y) layout of ``io.write_png``)."""
    from PIL import Image

    img = np.array([[-1.0, -0.5, 0.0], [0.5, 1.0, 1.5]], np.float32)  # 1.5 clips to 1
    m = np.array([[0, 1, 2], [2, 0, 1]], np.int64)
    folder = tmp_path / "Dataset004_Px"
    export_pairs([("p", img, m)], folder, {1: "liver", 2: "spleen"}, "T2", "png")
    raw = np.asarray(Image.open(folder / "imagesTr" / "p_0000.png"))
    assert raw.dtype == np.uint8 and raw.tolist() == [[128, 255], [64, 255], [0, 191]]  # 127.5 -> 128, 63.75 -> 64
    lab = np.asarray(Image.open(folder / "labelsTr" / "p.png"))
    assert lab.dtype == np.uint8 and lab.tolist() == [[2, 1], [1, 0], [0, 2]]
    images, masks, _ = read_dataset(folder)
    assert np.array_equal(masks[0], m) and np.allclose(images[0], [[-1.0, 64 / 127.5 - 1, 128 / 127.5 - 1],
                                                                   [191 / 127.5 - 1, 1.0, 1.0]], atol=1e-6)


def test_nifti_3d_and_nonconsecutive_labels(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.uniform(-1, 1, (4, 8, 10)).astype(np.float32)
    m = np.zeros((4, 8, 10), np.int64)
    m[1:3, 2:5, 2:6] = 3
    m[0, 6:8, 6:9] = 7
    folder = tmp_path / "Dataset002_Vol"
    export_pairs([("v0", img, m)], folder, {3: "tumour", 7: "edema"}, "T1c", "nifti", spacing=(1.0, 1.0, 2.5))
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["file_ending"] == ".nii.gz" and ds["labels"] == {"background": 0, "tumour": 1, "edema": 2}
    assert ds["mrgen_label_values"] == {"1": 3, "2": 7}
    import nibabel as nib

    lab = np.asarray(nib.load(str(folder / "labelsTr" / "v0.nii.gz")).dataobj)
    assert lab.shape == (8, 10, 4) and set(np.unique(lab)) == {0, 1, 2}
    images, masks, _ = read_dataset(folder)
    assert np.allclose(images[0], img) and np.array_equal(masks[0], m)


def test_bad_labels_and_png_3d_are_refused(tmp_path):
    img, m = np.zeros((4, 4), np.float32), np.full((4, 4), 5)
    with pytest.raises(ValueError, match="not in labels"):
        export_pairs([("a", img, m)], tmp_path / "D", {1: "x"}, "T2", "png")
    with pytest.raises(ValueError, match="nifti"):
        export_pairs([("a", np.zeros((2, 4, 4)), np.zeros((2, 4, 4), int))], tmp_path / "D", {1: "x"}, "T2", "png")


def test_stage_exports_kept_candidates_with_provenance(tmp_path):
    from mrgen import export
    from mrgen import io

    cand = tmp_path / "synth" / "candidates"
    cand.mkdir(parents=True)
    m = np.zeros((16, 16), np.uint8)
    m[4:10, 4:10] = 2
    imgs = np.stack([np.full((16, 16), v, np.float32) for v in (-0.5, 0.0, 0.5)]).astype(np.float16)
    meta = [{"key": "k1", "mask_id": "ds/s/T1/z0003", "candidate": c, "seed": 40 + c, "prompt": "T2 MRI"} for c in range(3)]
    np.savez(cand / "k1.npz", images=imgs, mask=m, seeds=np.arange(3) + 40, meta=np.array(json.dumps(meta)))
    io.write_json(tmp_path / "filter" / "kept.json", {"kept": [{"key": "k1", "candidate": 2, "mean_iou": 0.9, "mean_conf": 0.95},
                                                             {"key": "k1", "candidate": 0, "mean_iou": 0.85, "mean_conf": 0.9}]})
    io.write_json(tmp_path / "curated" / "labels.json", {"ds": {"1": "liver", "2": "kidney"}})
    cfg = C.load_config("tiny", overrides=[f"run.workdir={tmp_path}", "export.dataset_id=3", "export.name=Syn"])
    res = export.run(cfg)
    folder = tmp_path / "nnunet" / "Dataset003_Syn"
    assert res["cases"] == 2 and (folder / "imagesTr" / "Syn_00001_0000.png").exists()
    prov = [json.loads(x) for x in (folder / "provenance.jsonl").read_text().splitlines()]
    assert [(p["case"], p["candidate"], p["seed"]) for p in prov] == [("Syn_00000", 2, 42), ("Syn_00001", 0, 40)]
    images, masks, ds = read_dataset(folder)
    assert ds["channel_names"] == {"0": "T2"} and ds["labels"] == {"background": 0, "liver": 1, "kidney": 2}
    assert abs(float(images[0].mean()) - 0.5) < 0.01 and np.array_equal(masks[1], m)


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None, reason="nnunetv2 not installed")
@pytest.mark.parametrize("fmt", ["png", "nifti"])
def test_nnunet_verify_dataset_integrity(tmp_path, fmt):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = tmp_path / "Dataset009_Tiny"
    export_pairs(pairs2d(n=2), folder, {1: "liver", 2: "spleen"}, "T2", fmt)
    verify_dataset_integrity(str(folder), num_processes=1)
