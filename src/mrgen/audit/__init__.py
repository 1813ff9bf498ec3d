"""``mrgen audit``: a trust report for a synthetic dataset (docs/audit.md).

Four questions, one record (``audit/audit.json``) and one report section: are the kept images
copies of the engine's training images (:mod:`~mrgen.audit.memorisation`), does each label look
as in real target images (:mod:`~mrgen.audit.fidelity`), are they diverse
(:mod:`~mrgen.audit.diversity`), do they follow their masks (:mod:`~mrgen.audit.faithfulness`)?
Plus a blinded reader study in the browser (:mod:`~mrgen.audit.reader`) and the exported dataset's
card (:mod:`~mrgen.audit.card`).
"""

from __future__ import annotations


def run(cfg) -> dict:
    """The ``audit`` stage (:func:`mrgen.audit.stage.run`)."""
    from mrgen.audit.stage import run as _run

    return _run(cfg)


__all__ = ["run"]
