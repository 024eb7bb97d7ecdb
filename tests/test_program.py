"""The network program (salnp.program): the one op table C describes, the names recorded
where the program is built, parameter assignment into the arena."""
import numpy as np
import pytest

import salnp
from salnp import _core, export, program


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
