"""The reader study's page: one static HTML file, no server, no network, images embedded as base64 PNG.

The page never loads the key. Answers are saved with the "Download answers" link (a ``data:`` URL of
the answers JSON) and shown in ``<pre id="answers">``. For automation the page also takes every
answer from its URL fragment, ``#auto=<reader>;<rating><r|s>,...`` (one token per item in page order,
e.g. ``#auto=bot;1r,3s``), through the same code path as the buttons.
"""

from __future__ import annotations

import html
import json

# Fetal&Neonatal-DDPM's 3-point quality rating (1 = best)
SCALE = {1: "good: realistic, diagnostic quality", 2: "fair: visible flaws, still usable", 3: "poor: unrealistic or "
         "non-diagnostic"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mrgen reader study __STUDY__</title>
<style>
body{font-family:sans-serif;max-width:760px;margin:1em auto;color:#222}
#image{width:__SIZE__px;height:__SIZE__px;image-rendering:auto;background:#000;display:block;margin:.5em 0}
fieldset{margin:.4em 0}label{display:block;margin:.15em 0}button{margin:.3em .3em 0 0;padding:.3em 1em}
#answers{white-space:pre-wrap;font-size:11px;background:#f4f4f4;padding:.5em}.hint{color:#666;font-size:13px}
</style></head><body>
<h1>Reader study</h1>
<p class="hint">__N__ __MODALITY__ images, one at a time, in a fixed shuffled order. Some are real, some are synthetic.
Rate each image's quality and say whether you think it is real or synthetic. Nothing leaves this page: at the end,
download your answers and send the file back.</p>
<div id="intro"><label>Your name or reader id: <input id="reader" autocomplete="off"></label>
<button id="start">Start</button></div>
<div id="task" hidden>
<div id="progress"></div>
<img id="image" alt="study image">
<fieldset><legend>Image quality</legend>__RATINGS__</fieldset>
<fieldset><legend>Real or synthetic?</legend>
<label><input type="radio" name="call" value="real"> real</label>
<label><input type="radio" name="call" value="synthetic"> synthetic</label></fieldset>
<button id="prev">Back</button><button id="next">Next</button> <span id="warn" class="hint"></span>
</div>
<div id="done" hidden><p>Thank you. <a id="download" download="answers.json" href="#">Download answers (JSON)</a></p>
<pre id="answers"></pre></div>
<script id="study" type="application/json">__DATA__</script>
<script>
"use strict";
const STUDY = JSON.parse(document.getElementById("study").textContent);
const answers = STUDY.items.map(() => ({rating: null, call: null}));
let reader = "", pos = 0;
const $ = (id) => document.getElementById(id);
function show(i) {
  pos = i;
  const it = STUDY.items[i];
  $("image").src = "data:image/png;base64," + it.png;
  $("progress").textContent = "Image " + (i + 1) + " of " + STUDY.items.length;
  for (const el of document.querySelectorAll("input[name=rating]")) el.checked = Number(el.value) === answers[i].rating;
  for (const el of document.querySelectorAll("input[name=call]")) el.checked = el.value === answers[i].call;
  $("prev").disabled = i === 0;
  $("warn").textContent = "";
}
function answer(i, rating, call) {
  if (![1, 2, 3].includes(rating) || !["real", "synthetic"].includes(call)) return false;
  answers[i] = {rating: rating, call: call};
  return true;
}
function finish() {
  const out = {schema: 1, study: STUDY.study, reader: reader, finished: new Date().toISOString(),
               answers: STUDY.items.map((it, i) => ({item: it.id, rating: answers[i].rating, call: answers[i].call}))};
  const text = JSON.stringify(out, null, 1);
  $("answers").textContent = text;
  const a = $("download");
  a.href = "data:application/json;charset=utf-8," + encodeURIComponent(text);
  a.download = "answers-" + STUDY.study + "-" + (reader || "reader").replace(/[^A-Za-z0-9_-]/g, "_") + ".json";
  $("task").hidden = true; $("intro").hidden = true; $("done").hidden = false;
}
function start(name) {
  reader = name.trim();
  $("intro").hidden = true; $("task").hidden = false;
  show(0);
}
$("start").onclick = () => start($("reader").value);
$("prev").onclick = () => { if (pos > 0) show(pos - 1); };
$("next").onclick = () => {
  const r = document.querySelector("input[name=rating]:checked"), c = document.querySelector("input[name=call]:checked");
  if (!r || !c || !answer(pos, Number(r.value), c.value)) { $("warn").textContent = "answer both questions"; return; }
  if (pos + 1 < STUDY.items.length) show(pos + 1); else finish();
};
(function auto() {  // automation: #auto=<reader>;<rating><r|s>,...
  const m = /^#auto=([^;]*);(.*)$/.exec(decodeURIComponent(location.hash || ""));
  if (!m) return;
  const tokens = m[2].split(",");
  start(m[1]);
  for (let i = 0; i < STUDY.items.length; i++) {
    const t = tokens[i] || "";
    if (!answer(i, Number(t[0]), t[1] === "r" ? "real" : t[1] === "s" ? "synthetic" : "")) { show(i); return; }
  }
  finish();
})();
</script></body></html>
"""


def page(study: str, items: list, modality: str, size: int) -> str:
    """The page's HTML; ``items``: ``[{"id", "png"}]`` (base64 PNG) in display order."""
    ratings = "".join(f'<label><input type="radio" name="rating" value="{k}"> {k} — {html.escape(v)}</label>'
                      for k, v in SCALE.items())
    data = json.dumps({"study": study, "items": items}).replace("</", "<\\/")
    return (_PAGE.replace("__RATINGS__", ratings).replace("__STUDY__", html.escape(study))
            .replace("__N__", str(len(items))).replace("__MODALITY__", html.escape(modality))
            .replace("__SIZE__", str(int(size))).replace("__DATA__", data))
