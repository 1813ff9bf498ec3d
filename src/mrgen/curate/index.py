"""The curated index (``curated/index.parquet``): one row per slice and one per volume.

Query it in one call; filters are pushed down to the Parquet scan (row-group statistics
and column projection), so a query never loads the whole table::

    Index("runs/x/curated/index.parquet").query(modality="T1c", region="upper_abdomen", organ="spleen")

Scalar columns match by equality (a list/tuple value means "any of"); list columns
(``organs``/``organ``, ``labels``/``label``) match by membership (a list value means "all of").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mrgen import io, prompts

SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("dataset", pa.string()), ("subject", pa.string()),
    ("modality", pa.string()), ("attributes", pa.string()), ("region", pa.string()),
    ("organs", pa.list_(pa.string())), ("labels", pa.list_(pa.int64())), ("prompt", pa.string()),
    ("split", pa.string()), ("has_mask", pa.bool_()), ("image", pa.string()), ("mask", pa.string()),
    ("slice", pa.int64()), ("shape", pa.list_(pa.int64())), ("orig_shape", pa.list_(pa.int64())),
    ("spacing", pa.list_(pa.float64())), ("affine", pa.list_(pa.float64())), ("grid_spacing", pa.list_(pa.float64())),
    ("source", pa.string()), ("mask_source", pa.string()), ("hash", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
ALIASES = {"organ": "organs", "label": "labels"}
ROW_GROUP = 65536


class QueryError(ValueError):
    """A query names an unknown column or a value of the wrong type."""


def sort_key(row: dict) -> tuple:
    return (row["kind"], row["modality"], row["dataset"], row["subject"], row["slice"])


def write_index(path: str | Path, rows: list[dict]) -> bool:
    """Write ``rows`` atomically (sorted so filters on kind/modality skip row groups).

    Returns False (and leaves the file untouched) when the content is already identical.
    """
    path = Path(path)
    table = pa.Table.from_pylist(sorted(rows, key=sort_key), schema=SCHEMA)
    table = table.replace_schema_metadata({HASH_KEY: content_hash(table)})
    return replace_if_changed(path, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="zstd",
                                                                       write_page_checksum=True))


HASH_KEY = "mrgen_content_sha256"  # parquet key-value metadata: the rows' hash, checked on read


def content_hash(table: pa.Table) -> str:
    """sha256 of the table's rows as JSON (independent of how Arrow lays out the buffers)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(table.to_pylist(), sort_keys=True).encode()).hexdigest()


def replace_if_changed(path: Path, write) -> bool:
    """Call ``write(tmp)`` on a temp file beside ``path``; rename it onto ``path`` unless identical."""
    with io.atomic_path(path, suffix=path.suffix, keep_if_same=True) as tmp:
        write(tmp)
        changed = not (path.exists() and io.file_hash(tmp) == io.file_hash(path))
    return changed


class Index:
    """Read access to ``index.parquet``; ``path`` may be the file, ``curated/`` or the run folder."""

    def __init__(self, path: str | Path):
        p = Path(path)
        if p.is_dir():
            p = p / "index.parquet" if (p / "index.parquet").exists() else p / "curated" / "index.parquet"
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no curated index found; run `mrgen curate` first")
        self.path = p
        self._table: pa.Table | None = None

    @property
    def root(self) -> Path:
        """The ``curated/`` folder; array paths in the index are relative to it."""
        return self.path.parent

    @property
    def table(self) -> pa.Table:
        """The whole index as a pyarrow Table (loaded on first use)."""
        if self._table is None:
            try:  # page checksums (written by write_index) catch flipped bytes; a cut file has no footer
                table = pq.read_table(self.path, page_checksum_verification=True)
                want = (table.schema.metadata or {}).get(HASH_KEY.encode())
                same = want is None or content_hash(table) == want.decode(errors="replace")
            # ValueError: undecodable names or values; TypeError: a flipped schema byte made a text column binary
            except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise io.corrupt(self.path, exc, self._fix()) from None
            if not same:
                raise io.corrupt(self.path, "its rows' sha256 differs from the one it records", self._fix())
            self._table = table
        return self._table

    def _fix(self) -> str:
        wd = self.path.parent.parent
        return f"delete it and rerun `mrgen curate -w {wd}` (the curated arrays are reused)"

    @property
    def num_rows(self) -> int:
        try:
            return pq.ParquetFile(self.path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise io.corrupt(self.path, exc, self._fix()) from None

    def __len__(self) -> int:
        return self.num_rows

    def query(self, kind: str | None = "slice", columns: list[str] | None = None, **filters) -> list[dict]:
        """Rows matching every filter, as dicts. ``kind=None`` returns slices and volumes.

        ``modality`` accepts aliases (``T1CE`` -> ``T1c``); ``region`` accepts its prompt text;
        string values are converted to the column type (so CLI filters like ``slice=3`` work).
        """
        import pyarrow.dataset as pads

        if kind not in (None, "all", "any"):
            filters = {"kind": kind, **filters}
        expr, post, scalar_cols = None, [], []
        for key, value in filters.items():
            col = ALIASES.get(key, key)
            if col not in COLUMNS:
                raise QueryError(
                    f"unknown column '{key}' in query; columns: {', '.join(COLUMNS)} "
                    f"(aliases: {', '.join(f'{a}->{c}' for a, c in ALIASES.items())})"
                )
            typ = SCHEMA.field(col).type
            if pa.types.is_list(typ):
                vals = value if isinstance(value, (list, tuple, set)) else [value]
                post.append((col, [_coerce(col, typ.value_type, v) for v in vals]))
                continue
            if isinstance(value, (list, tuple, set)):
                vals = [_coerce(col, typ, v) for v in value]
                e = pc.field(col).isin(pa.array(vals, type=typ))
            else:
                e = pc.field(col) == pa.scalar(_coerce(col, typ, value), type=typ)
            expr = e if expr is None else expr & e
            scalar_cols.append(col)
        if columns is not None:
            bad = [c for c in columns if c not in COLUMNS]
            if bad:
                raise QueryError(f"unknown column(s) {bad}; columns: {', '.join(COLUMNS)}")
        wanted = list(COLUMNS) if columns is None else list(columns)
        needed = list(dict.fromkeys([*scalar_cols, *[c for c, _ in post]]))
        dataset = pads.dataset(self.path, format="parquet")
        out: list[dict] = []
        for fragment in dataset.get_fragments(filter=expr):
            for group in fragment.split_by_row_group(filter=expr):  # row groups pruned by statistics
                # late materialisation: read the filter columns, then only the matching rows' other columns
                small = group.to_table(columns=needed) if needed else None
                n = group.count_rows() if small is None else small.num_rows
                pos = pa.array(np.arange(n, dtype=np.int64))
                if small is not None:
                    small = small.append_column("__pos", pos)
                    if expr is not None:
                        small = small.filter(expr)
                    for col, vals in post:
                        if small.num_rows:
                            small = small.filter(_contains_all(small.column(col).combine_chunks(), vals))
                    pos = small.column("__pos")
                if len(pos):
                    out.extend(_rows(group.to_table(columns=wanted).take(pos)))
        return out


def _rows(table: pa.Table) -> list[dict]:
    """``Table.to_pylist`` but faster (column-wise conversion)."""
    names = table.column_names
    cols = [table.column(c).to_pylist() for c in names]
    return [dict(zip(names, vals)) for vals in zip(*cols)]


def _contains_all(arr: pa.ListArray, values: list) -> pa.Array:
    """Boolean mask: rows of the list array ``arr`` that hold every value in ``values``."""
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    keep = np.ones(len(arr), dtype=bool)
    for v in values:
        hit = pc.equal(flat, pa.scalar(v, type=flat.type)).to_numpy(zero_copy_only=False)
        has = np.zeros(len(arr), dtype=bool)
        has[parents[hit]] = True
        keep &= has
    return pa.array(keep)


def _coerce(col: str, typ: pa.DataType, value):
    try:
        if pa.types.is_boolean(typ):
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return low in ("true", "1", "yes")
            return bool(value)
        if pa.types.is_integer(typ):
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        if pa.types.is_floating(typ):
            return float(value)
    except (TypeError, ValueError):
        raise QueryError(f"column '{col}' holds {typ} values; cannot compare with {value!r}") from None
    value = str(value)
    if col == "modality":
        return prompts.canonical_modality(value)
    if col == "region":
        table = prompts.regions()
        if value not in table:
            return next((k for k, e in table.items() if e["text"] == value), value)
    return value
