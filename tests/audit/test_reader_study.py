"""The blinded reader study: a self-contained page, a separate key, scoring; and the page in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import pytest
from fake_run import OVERRIDES, fake_run  # noqa: F401  (fixture)

from mrgen.audit import reader


@pytest.fixture(scope="module")
def study(fake_run):  # noqa: F811
    cfg, _ = fake_run
    res = reader.build(cfg, 4)
    key = json.loads(open(res["key"]).read())
    return cfg, res, key, open(res["page"]).read()


def test_page_is_self_contained_and_blind(study):
    from PIL import Image

    cfg, res, key, page = study
    assert res["real"] == 2 and res["synthetic"] == 2
    assert sorted(v["group"] for v in key["items"].values()) == ["real", "real", "synthetic", "synthetic"]
    data = json.loads(re.search(r'<script id="study" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert [it["id"] for it in data["items"]] == sorted(key["items"])  # the page's order is the key's
    for it in data["items"]:
        im = Image.open(io.BytesIO(base64.b64decode(it["png"])))
        assert im.format == "PNG" and im.size == (cfg.audit.reader_size, cfg.audit.reader_size)
    # nothing in the page tells the groups apart or points at the key, and nothing is fetched
    assert "key.json" not in page and '"group"' not in page and "real_from" not in page
    assert not re.search(r'(src|href)="(https?:|//)', page) and "fetch(" not in page and "XMLHttpRequest" not in page
    for v in key["items"].values():
        assert v["source"] not in page


def _answers(key, calls, ratings, reader_name="A"):
    items = sorted(key["items"])
    return {"schema": 1, "study": key["study"], "reader": reader_name,
            "answers": [{"item": i, "rating": ratings[key["items"][i]["group"]], "call": calls(key["items"][i]["group"])}
                        for i in items]}


def test_score_accuracy_interval_and_ratings(study, tmp_path):
    cfg, res, key, _ = study
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_answers(key, lambda g: g, {"real": 1, "synthetic": 3}, "A")))  # always right
    b.write_text(json.dumps(_answers(key, lambda g: "real", {"real": 2, "synthetic": 2}, "B")))  # says "real" always
    out = reader.score([a, b], res["key"])
    ra, rb = out["readers"]["A"], out["readers"]["B"]
    assert (ra["correct"], ra["answered"], ra["accuracy"]) == (4, 4, 1.0)
    assert ra["ci95"] == pytest.approx([0.3976, 1.0], abs=1e-4)  # Clopper-Pearson 4/4: (0.025 ** (1/4), 1)
    assert ra["p_vs_chance"] == pytest.approx(0.125)  # 2 * 0.5 ** 4
    assert ra["ratings"]["real"]["mean_rating"] == 1.0 and ra["ratings"]["synthetic"]["mean_rating"] == 3.0
    assert rb["accuracy"] == 0.5 and rb["ci95"][0] < 0.5 < rb["ci95"][1]
    assert out["ratings_all_readers"]["real"] == {"n": 4, "mean_rating": 1.5}
    assert "A: 4/4 correct" in reader.summary_lines(out)


def test_score_refuses_answers_of_another_study(study, tmp_path):
    _, res, key, _ = study
    f = tmp_path / "x.json"
    f.write_text(json.dumps({**_answers(key, lambda g: g, {"real": 1, "synthetic": 1}), "study": "other"}))
    with pytest.raises(reader.ReaderStudyError, match="study 'other'"):
        reader.score([f], res["key"])
    with pytest.raises(reader.ReaderStudyError, match="needs 6 real and 6 synthetic"):
        reader.build(study[0], 12)  # the run has 4 held-out and 5 kept images


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_page_in_headless_chromium(study, tmp_path):
    """Load the page with every answer in its URL fragment, read the answers JSON it produced, score it."""
    cfg, res, key, _ = study
    items = sorted(key["items"])
    tokens = ",".join(f"{2}{key['items'][i]['group'][0]}" for i in items)  # rating 2, the right call
    url = f"file://{res['page']}#auto=chromium-test;{tokens}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions", "--dump-dom"]
    dom = subprocess.run([CHROMIUM, *flags, url], capture_output=True, text=True, timeout=240).stdout  # ~2 s when idle
    answers = json.loads(html.unescape(re.search(r'<pre id="answers">(.*?)</pre>', dom, re.S).group(1)))
    assert answers["reader"] == "chromium-test" and [a["item"] for a in answers["answers"]] == items
    link = re.search(r'<a id="download" download="([^"]+)" href="data:application/json', dom)
    assert link and link.group(1).startswith(f"answers-{key['study']}")  # the download link carries the JSON
    f = tmp_path / "answers.json"
    f.write_text(json.dumps(answers))
    out = reader.score([f], res["key"])["readers"]["chromium-test"]
    assert out["accuracy"] == 1.0 and out["ratings"]["synthetic"]["mean_rating"] == 2.0


def test_cli_reader_study_and_errors(study, tmp_path):
    from typer.testing import CliRunner

    from mrgen.cli import app

    cfg, res, key, _ = study
    run = CliRunner()
    out = run.invoke(app, ["audit", "reader-study", "-w", str(cfg.workdir), "-n", "4", "--preset", "tiny", *OVERRIDES])
    assert out.exit_code == 0 and "study:" in out.output, out.output
    key = json.loads(open(res["key"]).read())  # same seed, same items: the same study
    f = tmp_path / "a.json"
    f.write_text(json.dumps(_answers(key, lambda g: g, {"real": 1, "synthetic": 2}, "cli")))
    out = run.invoke(app, ["audit", "reader-study", "--score", str(f), "--key", res["key"]])
    assert out.exit_code == 0 and "cli: 4/4 correct" in out.output, out.output
    bad = run.invoke(app, ["audit", "-w", str(cfg.workdir), "--preset", "tiny", "audit.copy_quantile=2"])
    assert bad.exit_code == 2 and "audit.copy_quantile" in bad.output
    missing = run.invoke(app, ["audit", "reader-study", "--score", str(tmp_path / "none.json"), "--key", res["key"]])
    assert missing.exit_code == 2 and "not found" in missing.output
