"""mrgen.controller.batches: the source/target batch mix shared by the controlnet and concat stages."""

import pytest
import torch

from mrgen.controller.batches import Side, load_mix, mixed_batch
from mrgen.train import Draw


def _sides(n_src=5, n_tgt=3, size=(4, 4)):
    """Source item i has value i and mask value 1, target item j value 100 + j and mask 0; ids 1.. / 10.."""
    src_x, tgt_x = torch.arange(n_src).float(), 100 + torch.arange(n_tgt).float()
    src = Side(lambda i: (src_x[i],), lambda i: torch.ones(len(i), *size, dtype=torch.long), torch.arange(1, n_src + 1))
    tgt = Side(lambda i: (tgt_x[i],), lambda i: torch.zeros(len(i), *size, dtype=torch.long), 10 + torch.arange(n_tgt))
    return src, tgt


@pytest.mark.parametrize("size, frac, k", [(8, 0.25, 2), (4, 0.5, 2), (3, 0.5, 2), (4, 0.0, 0), (4, 1.0, 4)])
def test_counts_and_order(size, frac, k):
    src, tgt = _sides()
    x, ids, cond = mixed_batch(Draw(0, 3, 0, 1, size), src, tgt, frac, 0.0, "merged", 2)
    assert x.shape == (size,) and ids.shape == (size,) and cond.shape == (size, 1, 4, 4)
    assert bool((x[: size - k] < 100).all()) and bool((x[size - k:] >= 100).all())  # source first, then k target items
    assert torch.equal(ids[: size - k], x[: size - k].long() + 1) and torch.equal(ids[size - k:], x[size - k:].long() - 90)
    assert bool((cond[: size - k] == 0.5).all()) and bool((cond[size - k:] == 0).all())  # merged: label 1 of 2 -> 0.5


def test_no_target_items_means_source_only():
    src, _ = _sides()
    empty = Side(lambda i: (torch.zeros(0),), lambda i: torch.zeros(0, 4, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    x, _, _ = mixed_batch(Draw(0, 0, 0, 1, 4), src, empty, 0.5, 0.0, "merged", 2)
    assert bool((x < 100).all()) and len(x) == 4
    with pytest.raises(ValueError, match="target_fraction"):
        mixed_batch(Draw(0, 0, 0, 1, 4), src, empty, 1.5, 0.0, "merged", 2)


def test_rng_order_and_dropout_rate():
    """The global RNG is drawn exactly as the stages always did: combine's draws, then torch.rand(size) for dropout."""
    src, tgt = _sides(n_src=50, n_tgt=50)
    draw = Draw(1, 0, 0, 1, 2000)
    torch.manual_seed(7)
    x, ids, _ = mixed_batch(draw, src, tgt, 0.5, 0.3, "merged", 2, combine=lambda v: v + torch.randn_like(v))
    torch.manual_seed(7)
    noise, drop = torch.randn(2000), torch.rand(2000) < 0.3
    clean = torch.cat([src.fields(draw(50, 1000, salt=1))[0], tgt.fields(draw(50, 1000, salt=2))[0]])
    torch.testing.assert_close(x, clean + noise, atol=0, rtol=0)
    undropped = torch.where(clean < 100, clean.long() + 1, clean.long() - 90)
    assert torch.equal(ids, torch.where(drop, torch.zeros_like(undropped), undropped))
    assert 0.27 < float((ids == 0).float().mean()) < 0.33


def test_target_items_never_carry_segmentation_labels(tiny_index, tiny_config):
    from mrgen.autoencoder.data import Items
    from mrgen.ldm import Conditioner
    from mrgen.nets import get_text_encoder

    # target modality = the annotated one, so the target rows HAVE masks the mix must not read
    cfg = tiny_config(tiny_index, "run.target_modality=T1", "run.disjoint_subjects=true")
    mix = load_mix(cfg)
    assert mix.tgt and all(r["has_mask"] for r in mix.tgt)
    real = Items(cfg, mix.tgt, with_mask=True).masks(torch.arange(len(mix.tgt)))
    assert int(real.count_nonzero()) > 0
    cond = Conditioner(cfg, get_text_encoder(cfg.text), mix.src_prompts + mix.tgt_prompts)
    sides = mix.sides(cond, lambda i: (mix.src_items.images(i),), lambda i: (mix.tgt_items.images(i),))
    x, ids, c = mixed_batch(Draw(0, 0, 0, 1, 8), *sides, 0.5, 0.0, "merged", mix.labels)
    assert x.shape == (8, 1, 16, 16) and c.shape == (8, 1, 16, 16)
    assert int(c[:4].count_nonzero()) > 0 and int(c[4:].count_nonzero()) == 0  # source masks kept, target masks empty
    target_prompts = [cond.prompts[i] for i in ids[4:].tolist()]
    assert target_prompts and not any(o in p for p in target_prompts for o in ("liver", "spleen"))  # no-organ prompts


def test_target_mask_unknown_leaves_unannotated_pixels_without_a_class():
    """Source masks (value 1 everywhere) keep their one-hot; a target item without context (all zero) encodes as no
    class anywhere; one with a context label (value 2 in its left half) keeps only the background around it."""
    from mrgen.nets import unknown_unannotated

    src, _ = _sides()
    ctx_mask = torch.zeros(4, 4, dtype=torch.long)
    ctx_mask[:, :2] = 2
    tgt = Side(lambda i: (100 + i.float(),), lambda i: torch.stack([ctx_mask if int(j) == 0 else torch.zeros(4, 4, dtype=torch.long)
                                                                   for j in i]), 10 + torch.arange(2))
    draw = Draw(0, 0, 0, 1, 64)
    _, _, plain = mixed_batch(draw, src, tgt, 0.5, 0.0, "onehot", 2)
    x, _, cond = mixed_batch(draw, src, tgt, 0.5, 0.0, "onehot", 2, target_mask="unknown")
    assert torch.equal(cond[:32], plain[:32]) and bool((cond[:32, 1] == 1).all())  # source: label 1 everywhere
    assert bool((plain[32:].sum(1) == 1).all())  # as before: every target pixel has a class (background or context)
    with_ctx, without = cond[32:][x[32:] == 100], cond[32:][x[32:] == 101]
    assert len(with_ctx) and len(without) and bool((without == 0).all())
    want = torch.zeros(3, 4, 4)
    want[0, :, 2:] = 1  # background known right of the context; the context region has no class
    assert all(torch.equal(c, want) for c in with_ctx)
    m = torch.tensor([[[0, 3], [3, 0]]])
    assert torch.equal(unknown_unannotated(m, torch.ones(1, 4, 2, 2)), torch.tensor([[[1.0, 0], [0, 1]]]).expand(4, 2, 2)[None])
