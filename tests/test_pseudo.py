"""mrgen.pseudo (a later engine round's pseudo-labels) and the controller mix that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen import io, pseudo


def test_confidence_is_the_mean_max_softmax_over_the_predicted_foreground():
    # 3 classes, 4 pixels: argmax 0, 1, 2, 1; foreground pixels 1..3 with max probs 0.6, 0.9, 0.5 -> mean 2/3
    prob = np.array([[0.8, 0.3, 0.0, 0.2],
                     [0.1, 0.6, 0.1, 0.5],
                     [0.1, 0.1, 0.9, 0.3]], np.float32)
    labels, score = pseudo.confidence(prob, min_pixels=3)
    assert labels.tolist() == [0, 1, 2, 1]
    assert score == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    _, none = pseudo.confidence(prob, min_pixels=4)  # 3 foreground pixels < 4: not a candidate
    assert none is None
    _, empty = pseudo.confidence(np.stack([np.ones(4), np.zeros(4)]), min_pixels=1)  # all background
    assert empty is None


def test_select_keeps_the_most_confident_share_above_the_floor():
    scores = {"d": 0.5, "a": 0.9, "c": 0.95, "b": 0.9, "e": 0.7}
    assert pseudo.select(scores, 0.5, 0.0) == ["a", "b", "c"]  # ceil(2.5) = 3: c, then the tie a/b by id
    assert pseudo.select(scores, 0.4, 0.0) == ["a", "c"]  # ceil(2.0) = 2
    assert pseudo.select(scores, 1.0, 0.8) == ["a", "b", "c"]  # the floor drops d and e
    assert pseudo.select(scores, 0.2, 0.99) == []
    with pytest.raises(ValueError, match="keep_fraction"):
        pseudo.select(scores, 0.0, 0.0)


def test_write_read_round_trip_and_damaged_files(tmp_path):
    masks = {"x/b": np.array([[0, 2], [1, 1]]), "x/a": np.array([[3, 0], [0, 0]])}
    path = pseudo.write(tmp_path, masks, {"x/a": 0.5, "x/b": 0.75}, {"kept": 2})
    back = pseudo.read(path)
    assert list(back) == ["x/a", "x/b"] and back["x/b"].dtype == np.int64
    assert all(np.array_equal(back[k], masks[k]) for k in masks)
    rec = io.read_json(tmp_path / pseudo.RECORD)
    assert rec["kept"] == 2 and rec["file_sha256"] == io.file_hash(path)
    with np.load(path) as z:
        assert z["scores"].tolist() == [0.5, 0.75]
    same, scores = pseudo.read(path, with_scores=True)
    assert scores == {"x/a": 0.5, "x/b": 0.75} and list(same) == list(back)
    with pytest.raises(FileNotFoundError, match="pseudo_labels"):
        pseudo.read(tmp_path / "missing.npz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(io.ArtefactError, match="corrupt"):
        pseudo.read(path)


def _t2_slices(cfg):
    from mrgen.autoencoder.data import open_index
    from mrgen.roles import assign

    return sorted(assign(open_index(cfg), cfg).target, key=lambda r: r["id"])


def test_the_controller_mix_takes_pseudo_labelled_target_items_as_labelled_pairs(tiny_index, tiny_config):
    from mrgen.controller.batches import load_mix

    plain = load_mix(tiny_config(tiny_index))
    tgt = _t2_slices(tiny_config(tiny_index))
    a, b = tgt[0]["id"], tgt[3]["id"]
    spleen = np.zeros((16, 16), np.int64)
    spleen[2:8, 2:8] = 2  # spleen only: the prompt must name the spleen and not the liver
    both = spleen.copy()
    both[10:14, 10:14] = 1
    path = pseudo.write(tiny_index / "round1", {a: spleen, b: both}, {a: 0.9, b: 0.8}, {})
    mix = load_mix(tiny_config(tiny_index, f"controller.pseudo_labels={path}"))
    assert mix.pseudo == 2 and len(mix.src) == len(plain.src) + 2 and len(mix.tgt) == len(plain.tgt) - 2
    assert [r["id"] for r in mix.src[-2:]] == [a, b] and {a, b}.isdisjoint(r["id"] for r in mix.tgt)
    n = len(plain.src)
    assert torch.equal(mix.src_items.masks([n, n + 1]), torch.from_numpy(np.stack([spleen, both])))
    # the real source items keep their own masks
    assert torch.equal(mix.src_items.masks(list(range(n))), plain.src_items.masks(list(range(n))))
    prompts = mix.src_prompts
    assert prompts[:n] == plain.src_prompts
    assert prompts[n].startswith("T2") and "spleen" in prompts[n] and "liver" not in prompts[n]
    assert "spleen" in prompts[n + 1] and "liver" in prompts[n + 1]
    # a file from another run or fold is refused
    stray = pseudo.write(tiny_index / "other", {"toy/sub-9/T2/z0000": spleen}, {"toy/sub-9/T2/z0000": 1.0}, {})
    with pytest.raises(ValueError, match="not target items of this run"):
        load_mix(tiny_config(tiny_index, f"controller.pseudo_labels={stray}"))


def test_the_controller_stamp_follows_the_pseudo_labels_content_not_their_path(tiny_index, tiny_config):
    from mrgen import contract

    tgt = _t2_slices(tiny_config(tiny_index))[0]["id"]
    m = np.zeros((16, 16), np.int64)
    m[4:9, 4:9] = 1
    p1 = pseudo.write(tiny_index / "r1", {tgt: m}, {tgt: 0.9}, {})
    p2 = pseudo.write(tiny_index / "r1copy", {tgt: m}, {tgt: 0.9}, {})
    m2 = m.copy()
    m2[0, 0] = 2
    p3 = pseudo.write(tiny_index / "r1other", {tgt: m2}, {tgt: 0.9}, {})
    none = contract.stamps(tiny_config(tiny_index))
    s1, s2, s3 = (contract.stamps(tiny_config(tiny_index, f"controller.pseudo_labels={p}")) for p in (p1, p2, p3))
    assert s1["controller"] != none["controller"] and s1["ldm"] == none["ldm"]
    assert s1 == s2  # same content elsewhere: nothing re-runs
    assert s3["controller"] != s1["controller"] and s3["synthesize"] != s1["synthesize"]  # and downstream
    with pytest.raises(FileNotFoundError, match="pseudo_labels"):
        contract.stamps(tiny_config(tiny_index, f"controller.pseudo_labels={tiny_index / 'nope.npz'}"))


def test_rounds_keys_at_their_defaults_change_no_stamp(tiny_index, tiny_config):
    from mrgen import contract

    base = contract.stamped(contract.declared(tiny_config(tiny_index), ("rounds",)))
    assert base == {}  # added later: a run folder or bench result from before them stays current
    two = contract.stamped(contract.declared(tiny_config(tiny_index, "rounds.count=2"), ("rounds",)))
    assert two == {"rounds.count": 2}


def test_label_targets_keeps_the_confident_items_with_their_predicted_labels(tiny_index, tiny_config, monkeypatch):
    """The segmenter is replaced by a fixed rule per item, so which items are kept is known beforehand."""
    import mrgen.segment as S
    from mrgen.nets import store
    from mrgen.segment.pseudolabel import label_targets

    cfg = tiny_config(tiny_index, "rounds.keep_fraction=0.5", "curate.min_label_pixels=4")
    rows = _t2_slices(cfg)
    # item i: a 3x2 liver block (6 px) with probability 0.5 + 0.05 i; items 0 and 1: only 2 px (no candidate)
    rule = {r["id"]: i for i, r in enumerate(rows)}

    def fake_proba(model, image):
        i = rule[model.current]
        prob = np.zeros((3, 16, 16), np.float32)
        prob[0] = 1.0
        size = 1 if i < 2 else 3
        prob[:, 5:5 + size, 6:6 + 2] = 0.0
        prob[1, 5:5 + size, 6:6 + 2] = 0.5 + 0.05 * i
        prob[0, 5:5 + size, 6:6 + 2] = 0.5 - 0.05 * i
        return prob

    class Model:
        current = None

    model = Model()
    real_load = __import__("mrgen.autoencoder.data", fromlist=["load_item"]).load_item

    def load_item(cfg_, row, *a, **k):
        model.current = row["id"]
        return real_load(cfg_, row, *a, **k)

    monkeypatch.setattr(S, "load_segmenter", lambda folder, device="cpu": model)
    monkeypatch.setattr(S, "predict_proba", fake_proba)
    monkeypatch.setattr("mrgen.autoencoder.data.load_item", load_item)
    monkeypatch.setattr(store, "read_meta", lambda folder: {"sha256": "abc"})
    rec = label_targets(cfg, tiny_index / "seg", tiny_index / "pseudo")
    n = len(rows)
    cands = n - 2
    assert rec["target_items"] == n and rec["candidates"] == cands and rec["kept"] == -(-cands // 2)
    back = pseudo.read(tiny_index / "pseudo" / pseudo.FILE)
    kept = sorted(r["id"] for i, r in enumerate(rows) if i >= n - rec["kept"])  # the highest i are the most confident
    assert sorted(back) == kept
    expect = np.zeros((16, 16), np.int64)
    expect[5:8, 6:8] = 1
    assert all(np.array_equal(m, expect) for m in back.values())
    assert rec["score_threshold"] == pytest.approx(0.5 + 0.05 * (n - rec["kept"]))
    assert rec["label_pixels"] == {1: 6 * rec["kept"]}
    assert (tiny_index / "pseudo" / "preview.png").stat().st_size > 2000
    with pytest.raises(ValueError, match="none of the"):
        label_targets(tiny_config(tiny_index, "rounds.min_confidence=0.99"), tiny_index / "seg", tiny_index / "p2")


def test_pseudo_pairs_are_the_real_target_images_with_their_pseudo_labels(tiny_index, tiny_config):
    from mrgen.curate.dataset import load_row
    from mrgen.pairs import engine_set, pseudo_pairs

    rows = _t2_slices(tiny_config(tiny_index))
    m = np.zeros((16, 16), np.int64)
    m[3:6, 3:6] = 2
    path = pseudo.write(tiny_index / "r1", {rows[1]["id"]: m}, {rows[1]["id"]: 0.9}, {})
    cfg = tiny_config(tiny_index, f"controller.pseudo_labels={path}", "segment.pseudo_pairs=true")
    images, masks = pseudo_pairs(cfg)
    real = load_row(tiny_index / "curated", rows[1], (16, 16), mask=False)[0]
    assert len(images) == 1 and np.array_equal(images[0], real) and np.array_equal(masks[0], m)
    assert pseudo_pairs(tiny_config(tiny_index)) == ([], [])  # no later round: nothing
    syn = ([np.full((16, 16), 0.5, np.float32)], [np.ones((16, 16), np.int64)])
    src = ([np.zeros((16, 16), np.float32)] * 2, [np.zeros((16, 16), np.int64)] * 2)
    (im, ma), made = engine_set(cfg, syn, src, np.random.default_rng(0), (images, masks))
    assert made == {"synthetic": 1, "pseudo": 1} and len(im) == 2 and np.array_equal(ma[1], m)  # engine_set=synthetic
    src_cfg = tiny_config(tiny_index, "segment.engine_set=source")
    (im, ma), made = engine_set(src_cfg, syn, src, np.random.default_rng(0), (images, masks))
    assert made == {"synthetic": 1, "pseudo": 1, "source": 2} and len(im) == 4
