"""A tiny synthetic benchmark fold: the shared tiny index with the T2 target annotated too (for the oracle)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrgen.bench import spec as S


def annotate_target(root) -> None:
    """Give the T2 rows of ``build_tiny_index`` the subject's mask (has_mask, mask, labels, organs)."""
    rows = pq.read_table(root / "index.parquet").to_pylist()
    t1 = {(r["subject"], r["kind"], r["slice"]): r for r in rows if r["modality"] == "T1"}
    for r in rows:
        if r["modality"] == "T2":
            src = t1[(r["subject"], r["kind"], r["slice"])]
            r.update(has_mask=True, mask=src["mask"], labels=src["labels"], organs=src["organs"], mask_source=src["mask_source"])
    pq.write_table(pa.Table.from_pylist(rows), root / "index.parquet")


@pytest.fixture
def tiny_fold(tiny_index, tiny_config):
    """``make(**params_by_method) -> (ctx_factory, roles, cfg)`` on a 4-subject tiny index, 16 px slices.

    Fold: source sub-0, sub-1 (T1, annotated); target sub-2 (T2); test sub-3 (T2, annotated).
    """
    from mrgen.bench import fold_roles
    from mrgen.bench.context import Ctx
    from mrgen.curate.index import Index

    tmp_path = tiny_index  # the root conftest's 4-subject, 4-slice, 16 px index
    root = tmp_path / "curated"
    annotate_target(root)
    fold = S.Fold(0, ("sub-0", "sub-1"), ("sub-2",), ("sub-3",))
    cfg = tiny_config(tmp_path, *S.fold_overrides(fold))
    roles = fold_roles(Index(root / "index.parquet"), cfg, fold)

    def ctx(params=None, seed=0, name="m"):
        out = tmp_path / "folds" / "0" / name
        out.mkdir(parents=True, exist_ok=True)
        return Ctx(cfg=cfg, roles=roles, out=out, params=dict(params or {}), seed=seed, fold=fold, log=lambda *_: None)

    return ctx, roles, cfg
