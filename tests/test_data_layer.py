"""The data layer under the stages imports no stage: labelgen, morph and sample (and any stage) may use it
without an import cycle. Function-level imports count."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mrgen"
LAYER = {"mrgen.seeds": "seeds.py", "mrgen.labelmaps": "labelmaps.py", "mrgen.curate.dataset": "curate/dataset.py",
         "mrgen.curate.labels": "curate/labels.py"}
ALLOWED = {"mrgen", "mrgen.io", "mrgen.config", *LAYER}


def _mrgen_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mrgen")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mrgen"):
            out |= {node.module} if node.module != "mrgen" else {f"mrgen.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("module", sorted(LAYER))
def test_data_layer_imports_no_stage(module):
    found = _mrgen_imports(SRC / LAYER[module])
    assert found <= ALLOWED, f"{module} imports {sorted(found - ALLOWED)}; the data layer may use only {sorted(ALLOWED)}"


def test_the_walker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from mrgen import io, seeds\n\ndef g():\n    from mrgen.synthesize import candidate_seed\n    import mrgen.morph.masks\n")
    assert _mrgen_imports(f) == {"mrgen.io", "mrgen.seeds", "mrgen.synthesize", "mrgen.morph.masks"}
