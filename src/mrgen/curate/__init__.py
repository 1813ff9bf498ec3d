"""Curation: manifest -> canonical, normalised arrays + a Parquet slice/volume index.

``run(cfg)`` is the ``mrgen curate`` stage; :class:`mrgen.curate.index.Index` queries the
result; :mod:`mrgen.curate.dataset` loads items for the training stages.
"""

from mrgen.curate.core import manifest_path, rows_for, run, split_subjects
from mrgen.curate.manifest import CurateError, load_manifest, volumes

__all__ = ["CurateError", "run", "load_manifest", "volumes", "manifest_path", "rows_for", "split_subjects"]
