"""TEMPORARY (replaced by the data-layer branch): one seed-derivation scheme."""

from __future__ import annotations

import hashlib


def derive(*parts) -> int:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
