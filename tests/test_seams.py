"""The seams between the parts: the op tables C describes, names recorded where the program
is built, parameter assignment into the arena, and salnp's import graph."""
import ast
import pathlib

import numpy as np
import pytest

import salnp
from salnp import _core, export, models, nn

PKG = pathlib.Path(salnp.__file__).parent


def test_op_tables_come_from_c():
    assert models.FIELDS == tuple("inp" if f == "in" else f for f in _core.NET_FIELDS)
    assert export.IFIELDS == tuple("inp" if f == "in" else f for f in _core.INFER_FIELDS)
    assert _core.NET_KINDS[models.OP_SAL] == "sal" and _core.INFER_KINDS[export.IOP_GATHER] == "gather"
    assert "p2" not in _core.NET_FIELDS
    assert (_core.BN_EPS, _core.BN_MOMENTUM) == (1e-5, 0.1) and export.BN_EPS == _core.BN_EPS


@pytest.mark.parametrize("layer,kw", [("sal", {}), ("sl", dict(expansion=3)), ("asl", dict(expansion=2))])
def test_program_names_are_recorded_where_ops_are_emitted(layer, kw):
    net = salnp.models.resnet(20, 4, layer, seed=0, **kw)
    prog = net.program((3, 32, 32))
    assert len(prog.names) == len(prog.ops)
    modules = {n for n, _ in net.named_modules()}
    for name, op in zip(prog.names, prog.ops):
        assert name in modules or name == "avgpool" or name.endswith(".add"), name
    assert prog.names[:2] == ["conv1", "bn1"] and prog.names[-2:] == ["avgpool", "linear"]
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


def test_flops_is_a_leaf():
    tree = ast.parse((PKG / "flops.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0
                 and n.module is None for a in n.names}
    assert imported <= {"_core", None}, imported
