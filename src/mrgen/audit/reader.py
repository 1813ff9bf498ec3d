"""Blinded reader study: ``mrgen audit reader-study -w RUN -n 40`` and ``... --score answers.json``.

:func:`build` writes ``audit/reader_study/index.html`` (:mod:`mrgen.audit.reader_page`: one static page,
images embedded) and ``audit/reader_study/key.json`` (which item is real, which synthetic, where it came
from), a file the page never loads. Half the items are real target images (the held-out test images,
else the unannotated target images), half kept synthetic images, in an order shuffled with
``audit.seed``. :func:`score` reads readers' answer files against the key: each reader's accuracy at
telling real from synthetic with a 95 % Clopper-Pearson interval and an exact binomial test against
50 % (chance: the reader cannot tell them apart), and the mean rating of each group.
"""

from __future__ import annotations

import base64
import hashlib
import io as _io
import json
from pathlib import Path

import numpy as np

from mrgen import io
from mrgen.audit.binomial import clopper_pearson, p_value
from mrgen.config import Config

FOLDER = ("audit", "reader_study")


class ReaderStudyError(ValueError):
    """A reader-study input is wrong; the message says how to fix it."""


def png_base64(image: np.ndarray, size: int) -> str:
    """A 2D image in [-1, 1] as a ``size`` px grey PNG (displayed as ``imshow(a.T, origin="lower")``)."""
    from PIL import Image

    a = np.flipud(np.asarray(image, np.float32).T)
    u8 = np.clip(np.rint((np.clip(a, -1, 1) + 1) * 127.5), 0, 255).astype(np.uint8)
    im = Image.fromarray(u8, mode="L").resize((size, size), Image.BILINEAR)
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _one_plane(image: np.ndarray) -> np.ndarray:
    from mrgen.evaluate.quality import axial_indices

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        return image
    zs = axial_indices(image)
    return image[zs[len(zs) // 2]]


def build(cfg: Config, n: int = 40) -> dict:
    """Write the page and its key for ``n`` images (``n // 2`` real, the rest synthetic)."""
    from mrgen.audit.sets import real, synthetic
    from mrgen.curate.index import Index
    from mrgen.roles import assign

    if n < 2:
        raise ReaderStudyError(f"a reader study needs at least 2 images (-n), got {n}")
    wd, seed = cfg.workdir, cfg.audit.seed
    roles = assign(Index(wd / "curated" / "index.parquet"), cfg)
    rows, origin = (list(roles.test), "held-out test") if roles.test else (list(roles.target), "unannotated target")
    n_real, n_syn = n // 2, n - n // 2
    r = real(cfg, "target", rows, np.random.default_rng([seed, 20]), n_max=n_real)
    s = synthetic(cfg, np.random.default_rng([seed, 21]), n_max=n_syn)
    if len(r) < n_real or len(s) < n_syn:
        raise ReaderStudyError(f"-n {n} needs {n_real} real and {n_syn} synthetic images; the run has {len(r)} real "
                               f"({origin}) and {len(s)} kept synthetic; ask for fewer with -n")
    pool = [("real", i, im) for i, im in zip(r.ids, r.images)] + [("synthetic", i, im) for i, im in zip(s.ids, s.images)]
    order = np.random.default_rng([seed, 22]).permutation(len(pool))
    study = hashlib.sha256(json.dumps([seed, [pool[k][1] for k in order]]).encode()).hexdigest()[:10]
    items, key = [], {}
    for pos, k in enumerate(order):
        group, source, image = pool[int(k)]
        item = f"item-{pos + 1:03d}"
        items.append({"id": item, "png": png_base64(_one_plane(image), cfg.audit.reader_size)})
        key[item] = {"group": group, "source": source}
    from mrgen.audit.reader_page import SCALE, page

    folder = wd.joinpath(*FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / "index.html"
    with io.atomic_path(html_path) as tmp:
        tmp.write_text(page(study, items, cfg.run.target_modality, cfg.audit.reader_size))
    io.write_json(folder / "key.json", {"schema": 1, "study": study, "seed": seed, "real_from": origin,
                                        "scale": SCALE, "items": key})
    return {"page": str(html_path), "key": str(folder / "key.json"), "study": study, "real": n_real,
            "synthetic": n_syn}


def _read_answers(path: Path, key: dict) -> dict:
    if not path.is_file():
        raise ReaderStudyError(f"answers file {path} not found; give the JSON the page's 'Download answers' link saved")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReaderStudyError(f"{path} is not JSON ({exc}); give the file the reader-study page downloaded") from None
    if not isinstance(rec, dict) or "answers" not in rec:
        raise ReaderStudyError(f"{path} holds no 'answers' list; give the file the reader-study page downloaded")
    if rec.get("study") != key["study"]:
        raise ReaderStudyError(f"{path} answers study {rec.get('study')!r} but the key is for study {key['study']!r}; "
                               "give the key.json written with that page (--key)")
    return rec


def _group_means(answers: list, key: dict) -> dict:
    out = {}
    for g in ("real", "synthetic"):
        vals = [a["rating"] for a in answers if key["items"][a["item"]]["group"] == g and a.get("rating") in (1, 2, 3)]
        out[g] = {"n": len(vals), "mean_rating": float(np.mean(vals)) if vals else None}
    return out


def score(answer_files: list, key_file: str | Path) -> dict:
    """Each reader's accuracy (95 % Clopper-Pearson interval, binomial p against 50 %) and mean ratings per group;
    written to ``scores.json`` beside the key."""
    key_path = Path(key_file)
    if not key_path.is_file():
        raise ReaderStudyError(f"key {key_path} not found; give --key (the key.json beside the study's index.html) or "
                               "-w RUN of the run whose study it is")
    key = io.read_json(key_path)
    readers, pooled = {}, []
    for f in answer_files:
        rec = _read_answers(Path(f), key)
        answers = [a for a in rec["answers"] if a.get("item") in key["items"] and a.get("call") in ("real", "synthetic")]
        if not answers:
            raise ReaderStudyError(f"{f}: no answered item of this study")
        k = sum(a["call"] == key["items"][a["item"]]["group"] for a in answers)
        lo, hi = clopper_pearson(k, len(answers))
        name = str(rec.get("reader") or Path(f).stem)
        while name in readers:
            name += "'"
        readers[name] = {"answered": len(answers), "of": len(key["items"]), "correct": int(k),
                         "accuracy": k / len(answers), "ci95": [lo, hi], "p_vs_chance": p_value(k, len(answers)),
                         "ratings": _group_means(answers, key)}
        pooled += answers
    out = {"study": key["study"], "interval": "Clopper-Pearson 95 %", "test": "exact binomial, two-sided, vs 0.5",
           "readers": readers, "ratings_all_readers": _group_means(pooled, key)}
    io.write_json(key_path.parent / "scores.json", out)
    return out


def summary_lines(res: dict) -> str:
    lines = [f"study {res['study']} ({res['interval']}; {res['test']})"]
    for name, r in res["readers"].items():
        rt = r["ratings"]
        fmt = lambda g: "–" if rt[g]["mean_rating"] is None else f"{rt[g]['mean_rating']:.2f}"  # noqa: E731
        lines.append(f"{name}: {r['correct']}/{r['answered']} correct, accuracy {r['accuracy']:.3f} "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], p={r['p_vs_chance']:.3g}; mean rating real {fmt('real')}, "
                     f"synthetic {fmt('synthetic')}")
    return "\n".join(lines)
