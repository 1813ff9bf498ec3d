"""The one seed-derivation scheme: every seeded choice of a stage is ``derive(base, *what)``.

A derived seed depends only on its parts, never on the order things are visited in, so one
candidate / variant / step can be redone alone from the parts its record holds (``seed`` and
the ids). It is the first 4 bytes (little endian) of ``sha256("|".join(str(p) for p in parts))``
masked to 31 bits: a valid seed for ``numpy``, ``random`` and ``torch`` alike. The scheme is
what ``sample.candidate_seed`` and ``train.step_seed`` always computed, so moving them here
changes no number.

This module imports nothing from the stage packages: any stage may use it.
"""

from __future__ import annotations

import hashlib


def derive(*parts) -> int:
    """A 31-bit seed for ``parts`` (e.g. ``derive(sample.seed, mask_id, candidate)``); at least one part.

    Parts are joined as text with ``|``: ``derive(1, "a")`` and ``derive("1", "a")`` are the same seed,
    so pass ids as they are recorded."""
    if not parts:
        raise ValueError("seeds.derive needs at least one part, e.g. derive(cfg.sample.seed, mask_id, candidate)")
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
