"""The seams between salnp's modules: one default_shift_offsets, the import graph (from the
AST: no circle, nothing hidden), and `import salnp` leaving matplotlib out (salnp.viz is lazy).
The op table and the program are in test_program.py."""
import ast
import os
import pathlib

import salnp
from salnp import nn

PKG = pathlib.Path(salnp.__file__).parent


def test_one_default_shift_offsets():
    assert salnp.models.default_shift_offsets is salnp.ops.default_shift_offsets
    assert nn.default_shift_offsets is salnp.ops.default_shift_offsets


def _function_level_salnp_imports(path):
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or
                                                         (node.module or "").startswith("salnp")):
                    found.append((path.name, node.lineno))
                if isinstance(node, ast.Import) and any(a.name.startswith("salnp") for a in node.names):
                    found.append((path.name, node.lineno))
    return found


def test_no_function_level_imports_inside_salnp():
    bad = [hit for p in sorted(PKG.glob("*.py")) for hit in _function_level_salnp_imports(p)]
    assert bad == [], f"imports inside functions (a circle dodged?): {bad}"


def _salnp_imports(path):
    """(modules of salnp this file imports at any level, hidden imports): relative imports
    and `import salnp...` give edges; importlib.import_module / __import__ calls are hidden."""
    tree = ast.parse(path.read_text())
    edges, hidden = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:
                    edges |= {a.name for a in node.names}
            elif (node.module or "").split(".")[0] == "salnp":
                edges.add("salnp")
            elif node.module == "importlib":
                hidden.append(node.lineno)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "salnp":
                    edges.add("salnp")
                if a.name == "importlib":
                    hidden.append(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__"):
                hidden.append(node.lineno)
    return edges, hidden


def test_imports_run_downhill():
    """No import circle among salnp's modules, no module importing the package itself, and
    importlib only in the package's __init__ (its lazy attributes): the graph from the AST."""
    mods = {p.stem: p for p in PKG.glob("*.py")}
    graph, bad = {}, []
    for name, path in mods.items():
        edges, hidden = _salnp_imports(path)
        if name != "__init__":
            if "salnp" in edges:
                bad.append(f"{name} imports the package itself")
            if hidden:
                bad.append(f"{name}: importlib / __import__ at lines {hidden}")
        graph[name] = {e for e in edges if e in mods and e != name}
    assert not bad, bad
    del graph["__init__"]
    for g in graph.values():
        g.discard("__init__")
    # depth-first search for a cycle
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    # the layering the design names: data and io know no models, viz no sweeps, the
    # report and the op table only the core
    assert not ({"models", "nn", "program"} & (graph["data"] | graph["io"])), graph["data"]
    assert "sweep" not in graph["viz"] and "runs" not in graph["viz"]
    assert graph["report"] <= set() and graph["program"] <= {"_core", "report"}


def test_no_test_file_hides_an_import_circle():
    """The circle test sees what it should: an import hidden in a function or through
    importlib would be reported (a module built to have both)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "m.py"
        p.write_text("import importlib\nfrom . import a\ndef f():\n    importlib.import_module('.b', 'salnp')\n")
        edges, hidden = _salnp_imports(p)
        assert edges == {"a"} and hidden == [1, 4]


def test_viz_lazy():
    code = ("import sys, salnp\n"
            "assert 'matplotlib' not in sys.modules, 'import salnp imported matplotlib'\n"
            "import matplotlib; matplotlib.use('Agg')\n"
            "assert callable(salnp.viz.attention_heatmap)\n"
            "assert 'viz' in dir(salnp)\n")
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r})\n" + code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
