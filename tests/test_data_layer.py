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


# ----------------------------------------------------------------------------- no import cycle anywhere in src/mrgen


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of mrgen it imports}`` over every source file, function-level imports included; an
    import of ``a.b.c`` counts as the longest existing module prefix; a module importing its own package does not count."""
    mods = {_module_of(p): p for p in SRC.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                o = owner(n)
                if o and o != m and not m.startswith(o + "."):
                    edges.add(o)
        graph[m] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)  # noqa: E702
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)  # noqa: E702
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop(); on.discard(x); comp.append(x)  # noqa: E702
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_function_level_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "mrgen.pipeline" in g and "mrgen.contract" in g["mrgen.pipeline"]
    assert "mrgen.synthesize" in g["mrgen.pipeline"]  # imported inside a function
