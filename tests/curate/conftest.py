"""Fixtures of the curate tests (helpers live in curate_helpers.py)."""

from __future__ import annotations

import pytest
from curate_helpers import abdomen_dataset, write_manifest

from mrgen.config import load_config


@pytest.fixture
def make_cfg(tmp_path):
    def make(manifest: Path, *overrides: str):
        return load_config("tiny", None, [f"run.workdir={tmp_path / 'run'}", f"curate.manifest={manifest}",
                                          "data.image_size=16", "curate.min_label_pixels=3", *overrides])
    return make


@pytest.fixture
def abdomen(tmp_path):
    """(manifest path, dataset dict) for 4 subjects, T1 annotated, T2 not."""
    ds = abdomen_dataset(tmp_path / "data")
    return write_manifest(tmp_path / "manifest.yaml", [ds]), ds
