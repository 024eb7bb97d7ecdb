"""The seams between the parts: the op tables C describes, names recorded where the program
is built, parameter assignment into the arena, and salnp's import graph."""
import ast
import pathlib

import numpy as np
import pytest

import salnp
from salnp import _core, export, nn, program

PKG = pathlib.Path(salnp.__file__).parent


def test_one_op_table_comes_from_c():
    assert program.FIELDS == tuple("inp" if f == "in" else f for f in _core.NET_FIELDS)
    assert _core.NET_KINDS[program.SAL] == "sal" and _core.NET_KINDS[program.GATHER] == "gather"
    assert not hasattr(_core, "INFER_FIELDS") and not hasattr(export, "IFIELDS")
    assert "p2" not in _core.NET_FIELDS
    assert (_core.BN_EPS, _core.BN_MOMENTUM) == (1e-5, 0.1) and export.BN_EPS == _core.BN_EPS


@pytest.mark.parametrize("layer,kw", [("sal", {}), ("sl", dict(expansion=3)), ("asl", dict(expansion=2))])
def test_program_names_are_recorded_where_ops_are_emitted(layer, kw):
    net = salnp.models.resnet(20, 4, layer, seed=0, **kw)
    prog = net.program
    assert len(prog.names) == len(prog.ops)
    modules = {n for n, _ in net.named_modules()}
    for name, op in zip(prog.names, prog.ops):
        assert name in modules or name == "avgpool" or name.endswith(".add"), name
    stem = ["conv1", "layer1.0.bn1"] if layer == "asl" else ["conv1", "bn1"]  # ASNet: bare stem
    assert prog.names[:2] == stem and prog.names[-2:] == ["avgpool", "linear"]
    report = salnp.count(net, (3, 32, 32))
    assert [r["name"] for r in report.rows] == prog.names


def test_assigning_a_parameter_copies_into_the_arena():
    net = salnp.models.resnet(20, 4, "sal", seed=0)
    w = net.conv1.weight
    new = np.full(w.shape, 0.25)
    net.conv1.weight = new
    assert net.conv1.weight is w and np.all(w == 0.25)    # the same view, updated
    off = net.arena.offsets["conv1.weight"][0]
    assert np.all(net.arena.params[off:off + w.size] == 0.25)
    net.bn1.running_mean = np.ones(4, np.float32)
    boff = net.arena.offsets["bn1.running_mean"][0]
    assert np.all(net.arena.buffers[boff:boff + 4] == 1)
    with pytest.raises(ValueError, match=r"conv1|Conv2d\.weight.*arena.*\(4, 3, 3, 3\)"):
        net.conv1.weight = np.zeros(3)
    with pytest.raises(ValueError, match="arena"):
        net.conv1.weight = np.zeros(w.shape, np.complex64)


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
