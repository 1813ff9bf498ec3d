"""The exported dataset's card: ``dataset_card.md`` + ``audit.json`` beside ``dataset.json``.

Someone who receives only the nnU-Net folder learns from it what the images are: how they were
made (checkpoint hashes, prompts, seeds, sampler: from the cases' provenance records), how they
were selected (the filter's settings, from ``filter/kept.json``) and what the trust audit found
(``audit/audit.json``'s headline figures; the whole record is copied as ``audit.json``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mrgen import io


def _provenance(records: list) -> list:
    ckpts: dict = {}
    for r in records:
        for role, h in (r.get("checkpoints") or {}).items():
            ckpts.setdefault(role, set()).add(str(h))
    samplers = Counter(json.dumps(r.get("sampler", {}), sort_keys=True) for r in records)
    prompts = Counter(str(r.get("prompt", "")) for r in records)
    seeds = [int(r["seed"]) for r in records if r.get("seed") is not None]
    kinds = Counter(str(r.get("mask_kind", "source")) for r in records)
    lines = ["## Provenance", "",
             "Checkpoints (sha256 of the weights that rendered the images):", ""]
    lines += [f"- {role}: `{', '.join(sorted(h))}`" for role, h in sorted(ckpts.items())] or ["- (not recorded)"]
    lines += ["", "Sampler settings (cases):", ""]
    lines += [f"- `{s}` ({n})" for s, n in samplers.most_common()]
    lines += ["", f"Seeds: {len(seeds)} recorded" + (f", {min(seeds)} … {max(seeds)}" if seeds else "")
              + f"; {len(set(seeds))} distinct. Masks: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ".",
              "", f"Prompts: {len(prompts)} distinct; the most frequent:", ""]
    lines += [f"- {p!r} ({n})" for p, n in prompts.most_common(5)]
    lines += ["", "`provenance.jsonl` holds every case's full record (enough to regenerate it with "
              "`mrgen.synthesize.regenerate`).", ""]
    return lines


def _filter(kept: dict | None) -> list:
    if not kept:
        return ["## Selection", "", "No `filter/kept.json` was found for this export.", ""]
    s = kept.get("summary", {})
    return ["## Selection (autofilter)", "",
            f"Scorer `{kept.get('scorer', '?')}`, thresholds `{kept.get('threshold_mode', '?')}`: "
            f"`{json.dumps(kept.get('thresholds', {}), sort_keys=True)}`; selection "
            f"`{json.dumps(kept.get('selection', {}), sort_keys=True)}`.",
            f"{s.get('kept', '?')} of {s.get('candidates', '?')} candidates kept from {s.get('masks', '?')} masks "
            f"({s.get('masks_kept', '?')} kept, {s.get('masks_relaxed', '?')} relaxed, {s.get('masks_dropped', '?')} "
            "dropped).", ""]


def _audit(rec: dict | None) -> list:
    if not rec:
        return ["## Trust audit", "", "Not audited: run `mrgen audit -w RUN` and export again.", ""]
    lines = ["## Trust audit (headline; the whole record in `audit.json`, docs/audit.md)", ""]
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in rec.get("headline", {}).items()]
    rule = rec.get("memorisation", {}).get("rule")
    return lines + (["", f"Near-copy rule: {rule}."] if rule else []) + [""]


def write_card(out_dir: str | Path, workdir: str | Path, provenance: list, title: str, name: str | None = None) -> Path:
    """``out_dir/dataset_card.md`` (and ``out_dir/audit.json`` when the run has an audit); ``name``: the dataset's
    folder name when ``out_dir`` is a staging folder (default: ``out_dir``'s name)."""
    out, wd = Path(out_dir), Path(workdir)
    kept_path, audit_path = wd / "filter" / "kept.json", wd / "audit" / "audit.json"
    kept = io.read_json(kept_path) if kept_path.exists() else None
    rec = io.read_json(audit_path) if audit_path.exists() else None
    if rec is not None:  # without the run folder's path: the dataset's content (and hash) is the same wherever it ran
        if "run" in rec:
            rec = {**rec, "run": {k: v for k, v in rec["run"].items() if k != "workdir"}}
        io.write_json(out / "audit.json", rec)
    else:
        (out / "audit.json").unlink(missing_ok=True)  # never the audit of an earlier export
    lines = [f"# {name or out.name}: dataset card", "", f"{title}. {len(provenance)} cases, written by mrgen "
             "(`mrgen export nnunet`); images are synthetic, masks are the conditioning masks they were rendered from.",
             ""] + _provenance(provenance) + _filter(kept) + _audit(rec)
    path = out / "dataset_card.md"
    with io.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
