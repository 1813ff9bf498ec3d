"""MRGen's prompt template: ``modality; attributes; region; organs``.

Example: ``T2 MRI; fat high signal, muscle low signal, water high signal, fat bright,
muscle dark, water bright; upper abdomen; liver, spleen``.

The modality -> attribute table and the region vocabulary ship as data
(``mrgen/data/modalities.yaml``, ``regions.yaml``). Users add modalities with a YAML
file of the same shape named by the ``MRGEN_MODALITIES`` environment variable.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

BRIGHTNESS = {"high": "bright", "intermediate": "grey", "low": "dark"}
TISSUES = ("fat", "muscle", "water")
EMPTY_PROMPT = ""  # the unconditional prompt for classifier-free guidance


class PromptError(ValueError):
    """Unknown modality/region; the message lists what is known and how to add more."""


def _load_yaml(name: str) -> dict:
    return yaml.safe_load((resources.files("mrgen") / "data" / name).read_text())


@lru_cache(maxsize=None)
def _modalities(extra: str | None) -> dict:
    table = dict(_load_yaml("modalities.yaml"))
    if extra:
        path = Path(extra)
        if not path.exists():
            raise PromptError(f"MRGEN_MODALITIES={extra} does not exist; point it at a YAML modality table")
        table.update(yaml.safe_load(path.read_text()) or {})
    for name, entry in table.items():
        for t in TISSUES:
            if entry.get(t) not in BRIGHTNESS:
                raise PromptError(f"modality '{name}': '{t}' must be one of {list(BRIGHTNESS)}, got {entry.get(t)!r}")
    return table


def modality_table() -> dict:
    return _modalities(os.environ.get("MRGEN_MODALITIES") or None)


def canonical_modality(name: str) -> str:
    """Map a modality name or alias (case-insensitive) to its table key, or raise PromptError."""
    table = modality_table()
    key = str(name).strip().lower()
    for canon, entry in table.items():
        if key == canon.lower() or key in (a.lower() for a in entry.get("aliases", [])):
            return canon
    raise PromptError(
        f"unknown modality '{name}'. Known: {', '.join(table)}. To add one, write a YAML file like "
        f"\"MyMod: {{imaging: MRI, fat: high, muscle: low, water: high}}\" and set MRGEN_MODALITIES=/path/to/it.yaml"
    )


def attributes(modality: str) -> str:
    entry = modality_table()[canonical_modality(modality)]
    sig = [f"{t} {entry[t]} signal" for t in TISSUES]
    bright = [f"{t} {BRIGHTNESS[entry[t]]}" for t in TISSUES]
    return ", ".join(sig + bright)


def imaging(modality: str) -> str:
    return modality_table()[canonical_modality(modality)].get("imaging", "MRI")


@lru_cache(maxsize=None)
def regions() -> dict:
    return _load_yaml("regions.yaml")


def region_text(region: str) -> str:
    table = regions()
    if region in table:
        return table[region]["text"]
    for entry in table.values():
        if region == entry["text"]:
            return region
    raise PromptError(f"unknown region '{region}'. Known: {', '.join(table)}")


def build_prompt(modality: str, region: str | None = None, organs: list[str] | tuple = (), drop_organs: bool = False) -> str:
    """The template prompt. ``drop_organs`` gives the organ-free prompt used for unannotated target slices."""
    canon = canonical_modality(modality)
    parts = [f"{canon} {imaging(canon)}", attributes(canon)]
    if region:
        parts.append(region_text(region))
    if organs and not drop_organs:
        parts.append(", ".join(organs))
    return "; ".join(parts)
