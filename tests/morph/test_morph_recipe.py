"""Random edits, recipes (the shipped examples included) and their errors."""

from pathlib import Path

import numpy as np
import pytest
from morph_helpers import BRAIN, CEREB, STEM, VENT, WM

from mrgen.morph import OPS, MorphError, RandomEdit, apply_recipe, load_recipe, n_components, parse_recipe

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "mrgen" / "data" / "morph"


def test_random_edit_reproducible_from_recorded_params(brain):
    lab, sp = brain
    edit = RandomEdit("target_volume", {"label": VENT, "factor": [1.3, 1.8], "protected": [CEREB, STEM], "container": BRAIN})
    out, params = edit(lab, sp, np.random.default_rng(7))
    assert 1.3 <= params["factor"] <= 1.8 and params["factor"] == round(params["factor"], 4)
    assert np.array_equal(OPS["target_volume"](lab, sp, **params), out)
    out2, params2 = edit(lab, sp, np.random.default_rng(7))
    assert params2 == params and np.array_equal(out2, out)
    assert edit(lab, sp, np.random.default_rng(8))[1]["factor"] != params["factor"]


def test_random_seed_point_and_choices(brain):
    lab, sp = brain
    edit = RandomEdit("grow_lesion", {"lesion_label": 9, "host_label": [WM], "volume_mm3": {"uniform": [40, 80]},
                                      "seed_point": "random"})
    out, params = edit(lab, sp, np.random.default_rng(3))
    assert len(params["seed_point"]) == 3 and lab[tuple(params["seed_point"])] == WM
    assert np.all(lab[out == 9] == WM) and n_components(out == 9) == 1
    assert np.array_equal(OPS["grow_lesion"](lab, sp, **params), out)
    e2 = RandomEdit("dilate", {"label": {"choice": [VENT, CEREB]}, "mm": {"randint": [1, 2]}})
    _, p2 = e2(lab, sp, np.random.default_rng(0))
    assert p2["label"] in (VENT, CEREB) and p2["mm"] in (1, 2)
    with pytest.raises(MorphError, match="no parameter"):
        RandomEdit("dilate", {"label": 1, "radius": 2})
    with pytest.raises(MorphError, match="known ops"):
        RandomEdit("inflate", {})


def test_examples_parse():
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["hypoplasia.yaml", "tumour_growth.yaml", "ventriculomegaly.yaml"]
    for p in EXAMPLES.glob("*.yaml"):
        rec = load_recipe(p)
        assert rec.edits and rec.name == p.stem


def test_ventriculomegaly_recipe(brain):
    lab, sp = brain
    out, record = apply_recipe(lab, sp, EXAMPLES / "ventriculomegaly.yaml", np.random.default_rng(0))
    (entry,) = record["edits"]
    factor = entry["params"]["factor"]
    assert entry["op"] == "target_volume" and 1.3 <= factor <= 1.8
    ratio = record["volumes_after"][VENT] / record["volumes_before"][VENT]
    assert abs(ratio / factor - 1) <= 0.05
    assert ratio == pytest.approx((out == VENT).sum() / (lab == VENT).sum())
    assert entry["volumes_before"] == record["volumes_before"] and entry["volumes_after"] == record["volumes_after"]
    for p in (CEREB, STEM):
        assert np.array_equal(out == p, lab == p)
    assert not ((out == VENT) & (lab == 0)).any() and n_components(out == VENT) == 2
    assert np.array_equal(OPS[entry["op"]](lab, sp, **entry["params"]), out)  # replay from the record


def test_hypoplasia_recipe(brain):
    lab, sp = brain
    out, record = apply_recipe(lab, sp, EXAMPLES / "hypoplasia.yaml", np.random.default_rng(1))
    e1, e2 = record["edits"]
    for e, label in ((e1, CEREB), (e2, STEM)):
        r = e["volumes_after"][label] / e["volumes_before"][label]
        assert abs(r / e["params"]["factor"] - 1) <= 0.05
    freed = np.isin(lab, [CEREB, STEM]) & ~np.isin(out, [CEREB, STEM])
    assert freed.sum() > 0 and np.all(np.isin(out[freed], [0, WM, 5]))
    replay = OPS["target_volume"](OPS["target_volume"](lab, sp, **e1["params"]), sp, **e2["params"])
    assert np.array_equal(replay, out)


def brats_like():
    lab = np.zeros((40, 40, 20), np.int16)
    g = np.indices(lab.shape).astype(float)
    r = np.sqrt((g[0] - 20) ** 2 + (g[1] - 20) ** 2 + ((g[2] - 10) * 2) ** 2)
    lab[r <= 17] = 5  # healthy brain
    lab[r <= 8] = 2  # edema
    lab[r <= 5] = 4  # enhancing
    lab[r <= 3] = 1  # necrosis
    return lab, (1.0, 1.0, 2.0)


def test_tumour_growth_recipe_stays_in_brain():
    lab, sp = brats_like()
    for seed in range(4):
        out, record = apply_recipe(lab, sp, EXAMPLES / "tumour_growth.yaml", np.random.default_rng(seed))
        assert np.array_equal(out == 0, lab == 0)  # nothing leaves the brain
        assert np.isin(out, [1, 2, 3, 4]).sum() > np.isin(lab, [1, 2, 3, 4]).sum()  # the tumour grew
        assert (out == 2).sum() > 0 and (out == 1).sum() >= (lab == 1).sum()
        assert [e["op"] for e in record["edits"]] == ["grow_lesion"] * 4
        last = record["edits"][-1]
        assert last["p"] == 0.3 and (last["params"] is None) == (not last["applied"])


def test_recipe_names_probability_and_overrides(brain):
    lab, sp = brain
    rec = parse_recipe({"labels": {"vent": 1, "wm": 4}, "container": ["vent", "wm"], "protected": [2],
                        "edits": [{"op": "dilate", "label": "vent", "mm": 1.0},
                                  {"op": "dilate", "label": "vent", "mm": 1.0, "container": None, "p": 0.0}]})
    assert rec.edits[0].params == {"label": 1, "mm": 1.0, "container": [1, 4], "protected": [2]}
    assert rec.edits[1].params["container"] is None
    out, record = apply_recipe(lab, sp, rec, np.random.default_rng(0))
    assert record["edits"][1]["applied"] is False and record["edits"][1]["volumes_after"] == record["volumes_after"]
    assert np.all(np.isin(lab[(out == 1) & (lab != 1)], [4]))


@pytest.mark.parametrize("tree, message", [
    ({"edits": [{"op": "inflate", "label": 1}]}, "unknown op 'inflate'; known ops: dilate, erode, grow_lesion, remap, remove, scale, target_volume"),
    ({"labels": {"vent": 1}, "edits": [{"op": "dilate", "label": "ventricle", "mm": 1}]}, "unknown label 'ventricle'; known labels: vent=1"),
    ({"edits": [{"op": "dilate", "label": 1, "radius": 1}]}, r"unknown parameter\(s\) \['radius'\]; dilate takes: label, mm"),
    ({"edits": [{"op": "dilate", "label": 1}]}, r"missing parameter\(s\) \['mm'\]"),
    ({"edits": [{"op": "dilate", "label": 1, "mm": [1, 2, 3]}]}, "mm must be a number or a range"),
    ({"edits": [{"op": "dilate", "label": 1, "mm": 1, "p": 2}]}, "p must be a probability"),
    ({"edit": []}, r"unknown key\(s\) \['edit'\]"),
    ({"edits": []}, "edits must be a non-empty list"),
    ({"container": ["brain"], "edits": [{"op": "dilate", "label": 1, "mm": 1}]}, "unknown label 'brain'"),
])
def test_recipe_errors(tree, message):
    with pytest.raises(MorphError, match=message):
        parse_recipe(tree)


def test_recipe_file_errors(tmp_path, brain):
    with pytest.raises(MorphError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("edits: [{op: dilate, label: 1, mm: [1, 2]\n")
    with pytest.raises(MorphError, match="not valid YAML"):
        load_recipe(bad)
    lab, sp = brain
    with pytest.raises(MorphError, match=r"edit 1 \(dilate\): label 9 is absent"):
        apply_recipe(lab, sp, {"edits": [{"op": "dilate", "label": 9, "mm": 1}]}, np.random.default_rng(0))


def test_shipped_recipe_by_name_and_clear_error():
    assert load_recipe("ventriculomegaly").name == "ventriculomegaly"
    with pytest.raises(MorphError, match="hypoplasia, tumour_growth, ventriculomegaly"):
        load_recipe("no_such_recipe")
