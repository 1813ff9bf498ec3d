"""Index.query (pushdown, aliases, membership, errors, speed) and the dataset loaders."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from curate_helpers import abdomen_dataset, write_manifest
from typer.testing import CliRunner

from mrgen.cli import app
from mrgen.curate import run
from mrgen.curate.dataset import load_image, load_mask, resize_volume
from mrgen.curate.index import COLUMNS, SCHEMA, Index, QueryError
from mrgen.prompts import PromptError


@pytest.fixture
def curated(tmp_path, make_cfg):
    ds = abdomen_dataset(tmp_path / "data", subjects=4, modalities=("T1", "T2"), annotated=("T1", "T2"))
    ds["series"][0]["modality"] = "T1c"  # alias handling: stored as T1c
    cfg = make_cfg(write_manifest(tmp_path / "m.yaml", [ds]))
    run(cfg)
    return cfg.workdir / "curated"


def test_the_one_call_query(curated):
    rows = Index(curated / "index.parquet").query(modality="T1c", region="upper_abdomen", organ="spleen")
    assert len(rows) == 4 * 3  # spleen in slices 3..5 of every subject
    assert all(r["kind"] == "slice" and r["modality"] == "T1c" and "spleen" in r["organs"] for r in rows)
    ix = Index(curated)
    assert ix.root == curated and ix.table.num_rows == len(ix) == 8 * 7
    assert len(ix.query(modality="t1ce", organ="spleen")) == 12  # modality alias
    assert len(ix.query(region="upper abdomen", organ="spleen", modality="T1 post-contrast")) == 12  # region text
    assert len(ix.query(organs=["liver", "spleen"])) == 8 * 3  # list value on a list column: all of
    assert len(ix.query(subject=["sub-01", "sub-02"], modality="T2")) == 12  # list on a scalar column: any of
    assert len(ix.query(label=2)) == 8 and len(ix.query(label="2")) == 8
    assert len(ix.query(kind="volume")) == 8 and len(ix.query(kind=None)) == 56
    assert ix.query(slice="3", subject="sub-01", modality="T1c")[0]["id"] == "abd/sub-01/T1c/z0003"
    assert len(ix.query(has_mask="true")) == 48 and ix.query(has_mask=False) == []
    assert ix.query(organ="pancreas") == []
    only = ix.query(columns=["id", "split"], organ="spleen", modality="T2")
    assert set(only[0]) == {"id", "split"} and len(only) == 12


def test_query_errors(curated):
    ix = Index(curated)
    with pytest.raises(QueryError, match="unknown column 'colour'.*id, kind, dataset") as exc:
        ix.query(colour="red")
    assert isinstance(exc.value, ValueError)
    with pytest.raises(PromptError, match="unknown modality 'T9'"):
        ix.query(modality="T9")
    with pytest.raises(QueryError, match="slice"):
        ix.query(slice="three")
    with pytest.raises(FileNotFoundError, match="run `mrgen curate` first"):
        Index(curated / "nothing")


def test_cli_query(curated):
    res = CliRunner().invoke(app, ["query", "-w", str(curated.parent), "modality=T1c", "organ=spleen", "split=train"])
    assert res.exit_code == 0, res.output
    assert "abd/sub-0" in res.output and "spleen" in res.output
    res = CliRunner().invoke(app, ["query", "-w", str(curated.parent), "colour=red"])
    assert res.exit_code == 2 and "unknown column" in res.output


def _lists(values: np.ndarray, lengths: np.ndarray, typ) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=typ))


def _const(row: list, n: int, typ) -> pa.Array:
    return _lists(np.tile(np.asarray(row), n), np.full(n, len(row)), typ)


def synthetic_index(path, n):
    """An index of n slice rows with realistic string/list columns (built vectorised)."""
    rng = np.random.default_rng(0)
    mods = np.array(["T1", "T2", "T1c", "FLAIR", "T2-SPIR", "CT"])
    regions = np.array(["upper_abdomen", "lower_abdomen", "pelvis", "brain", "lower_thorax"])
    organ_names = np.array(["liver", "spleen", "right kidney", "left kidney", "pancreas", "stomach"])
    z = np.arange(n) % 40
    vol = np.arange(n) // 40
    present = rng.random((n, len(organ_names))) < 0.3
    lengths = present.sum(1)
    organs = _lists(np.broadcast_to(organ_names, present.shape)[present], lengths, pa.string())
    labels = _lists(np.broadcast_to(np.arange(1, 7), present.shape)[present], lengths, pa.int64())
    subj = np.char.add("s", vol.astype(str))
    cols = {
        "id": pa.array(np.char.add(np.char.add("ds/", subj), np.char.add("/m/z", np.char.zfill(z.astype(str), 4)))),
        "kind": pa.array(np.full(n, "slice")), "dataset": pa.array(np.array(["ds1", "ds2"])[vol % 2]),
        "subject": pa.array(subj), "modality": pa.array(mods[vol % len(mods)]),
        "attributes": pa.array(np.full(n, "fat high signal, muscle low signal")),
        "region": pa.array(regions[rng.integers(0, len(regions), n)]), "organs": organs, "labels": labels,
        "prompt": pa.array(np.full(n, "T1 MRI; fat high signal; upper abdomen; liver")),
        "split": pa.array(np.where(vol % 5 == 0, "test", "train")), "has_mask": pa.array(np.ones(n, bool)),
        "image": pa.array(np.char.add(np.char.add("arrays/ds/", subj), "/m_image.npy")),
        "mask": pa.array(np.char.add(np.char.add("arrays/ds/", subj), "/m_mask.npy")),
        "slice": pa.array(z.astype(np.int64)), "shape": _const([64, 64], n, pa.int64()),
        "orig_shape": _const([256, 256, 40], n, pa.int64()), "spacing": _const([1.25, 1.25, 7.7], n, pa.float64()),
        "affine": _lists(rng.random(16 * n), np.full(n, 16), pa.float64()),
        "grid_spacing": _const([7.7, 5.0, 5.0], n, pa.float64()),
        "source": pa.array(np.full(n, "/data/x.nii.gz")), "mask_source": pa.array(np.full(n, "/data/y.nii.gz")),
        "hash": pa.array(np.full(n, "0123456789abcdef")),
    }
    table = pa.table([cols[c] for c in COLUMNS], schema=SCHEMA)
    table = table.sort_by([("kind", "ascending"), ("modality", "ascending"), ("dataset", "ascending")])
    pq.write_table(table, path, row_group_size=65536, compression="zstd")


def test_query_speed_on_200k_rows(tmp_path):
    path = tmp_path / "index.parquet"
    synthetic_index(path, 200_000)
    ix = Index(path)
    t0 = time.perf_counter()
    rows = ix.query(modality="T1c", region="upper_abdomen", organ="spleen")
    dt = time.perf_counter() - t0
    t = ix.table.select(["id", "modality", "region", "organs"])
    t = t.filter(pc.and_(pc.equal(t["modality"], "T1c"), pc.equal(t["region"], "upper_abdomen")))
    expected = [r for r in t.to_pylist() if "spleen" in r["organs"]]
    assert [r["id"] for r in rows] == [r["id"] for r in expected] and rows
    print(f"\n200k-row index: one-call query -> {len(rows)} rows in {dt:.3f} s")
    assert dt < 5.0


def test_load_image_and_mask(curated):
    ix = Index(curated)
    s = ix.query(subject="sub-01", modality="T1c", slice=4)[0]
    img, mask = load_image(curated, s), load_mask(curated, s)
    assert img.shape == (1, 16, 16) and img.dtype == np.float32 and -1 <= img.min() and img.max() <= 1
    assert mask.shape == (16, 16) and mask.dtype == np.int64 and set(np.unique(mask)) == {0, 1, 4}
    v = ix.query(kind="volume", subject="sub-01", modality="T1c")[0]
    vi, vm = load_image(curated, v), load_mask(curated, v)
    assert vi.shape == (1, 6, 16, 16) and vm.shape == (6, 16, 16)
    assert np.array_equal(vi[0, 4], img[0]) and np.array_equal(vm[4], mask)
    unannotated = dict(s, mask="")
    assert (load_mask(curated, unannotated) == 0).all() and load_mask(curated, unannotated).shape == (16, 16)
    assert (load_mask(curated, dict(v, mask="")) == 0).all() and load_mask(curated, dict(v, mask="")).shape == (6, 16, 16)


def test_resize_volume():
    a = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    r = resize_volume(a, (4, 8, 8), order=1)
    assert r.shape == (4, 8, 8) and r.dtype == np.float32 and a.min() <= r.min() and r.max() <= a.max()
    m = np.zeros((6, 16, 16), np.int64)
    m[:, 4:12, 4:12] = 3
    rm = resize_volume(m, (12, 8, 8), order=0)
    assert rm.dtype == np.int64 and set(np.unique(rm)) == {0, 3}
    assert resize_volume(a[None], (3, 4, 4), 1).shape == (1, 3, 4, 4)
    assert resize_volume(a, a.shape, 1) is not None and np.array_equal(resize_volume(a, a.shape, 1), a)
