"""The public surface: names of DESIGN.md section 4, signatures, the type stub; every op
has rows in the bad-input matrices, and their size."""
import importlib
import inspect
import os
import re

import numpy as np
import pytest

import salnp
from salnp import ops

DESIGN_OPS = ["conv2d", "conv2d_backward", "shift", "shift_backward", "active_shift",
              "active_shift_backward", "sal_conv2d", "sal_conv2d_backward"]


def test_design_names_exist():
    for name in DESIGN_OPS:
        assert callable(getattr(salnp.ops, name)), name
    for name in ["__version__", "show_config", "set_num_threads", "save", "load", "count", "fit",
                 "export"]:
        assert hasattr(salnp, name), name
    assert callable(salnp.models.resnet)


def test_every_core_function_has_a_signature_and_a_stub_entry():
    stub = open(os.path.join(os.path.dirname(salnp.__file__), "_core.pyi")).read()
    for name in dir(salnp._core):
        f = getattr(salnp._core, name)
        if callable(f) and not isinstance(f, type):
            inspect.signature(f)                     # Jupyter shows it
            assert re.search(rf"^def {name}\(", stub, re.M), \
                f"{name} missing from _core.pyi: run scripts/gen_pyi.py"
            assert f.__doc__ and f.__doc__.startswith(name + "("), name


def test_show_config_reports_blis(capsys):
    salnp.show_config()
    out = capsys.readouterr().out
    assert "BLIS 0.9" in out or "BLIS" in out
    cfg = salnp.config()
    assert cfg["flavour"] in ("openmp", "pthread", "serial")
    assert cfg["verified"] is True
    assert cfg["threads"] == salnp.get_num_threads()


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n=0"):
        salnp.set_num_threads(0)
    salnp.set_num_threads(1)
    assert salnp.get_num_threads() == 1


def test_version():
    assert re.match(r"^\d+\.\d+\.\d+", salnp.__version__)


def test_isa_cap_round_trip():
    """salnp._core.set_isa caps libsal's kernels (tests run every ISA the CPU has); a level
    the CPU lacks, or an unknown name, is refused with the name in the message."""
    from salnp import _core

    best = _core.get_isa()
    assert best in ("base", "avx2", "avx512")
    levels = ("base", "avx2", "avx512")
    try:
        for name in levels[:levels.index(best) + 1]:
            _core.set_isa(name)
            assert _core.get_isa() == name
            assert salnp.config()["isa"] == name
        with pytest.raises(ValueError, match="'?\"?sse9"):
            _core.set_isa("sse9")
        with pytest.raises(TypeError, match="set_isa: name"):
            _core.set_isa(3)
    finally:
        _core.set_isa(None)
    assert _core.get_isa() == best


# ---------------------------------------------------------------- the bad-input matrices

def matrix_size():
    """The rows of the bad-input matrices, which sit beside their subjects (the machinery is
    tests/hostile.py); count's rows run twice (a training and an exported network)."""
    conv, shift, shiftconv, sal, layers, models, train, count, export, io, data = (
        importlib.import_module(f"test_{name}") for name in
        ("conv", "shift", "shiftconv", "sal", "layers", "models", "train", "count", "export",
         "io", "data"))
    per_count_target = 2
    ops_rows = (conv.OPS_ROWS + shift.OPS_ROWS + shiftconv.OPS_ROWS + sal.OPS_ROWS
                + layers.OPS_ROWS)
    hostile_rows = (models.HOSTILE_ROWS + train.HOSTILE_ROWS + export.HOSTILE_ROWS
                    + io.HOSTILE_ROWS + data.HOSTILE_ROWS)
    n = (len(ops_rows) + len(models.RESNET_ROWS) + len(models.FORWARD_ROWS)
         + len(models.BACKWARD_ROWS) + len(models.STATE_ROWS) + len(train.FIT_ROWS)
         + per_count_target * len(count.COUNT_ROWS) + len(export.EXPORT_ROWS) + len(io.IO_ROWS)
         + len(data.DATASET_ROWS) + len(data.READER_ROWS) + len(data.BATCH_ROWS)
         + len(hostile_rows))
    return n, ops_rows


def test_matrix_size():
    n, ops_rows = matrix_size()
    funcs = {r[0].name for r in ops_rows}
    print(f"\nbad-input matrix: {n} cases ({len(ops_rows)} over {len(funcs)} ops entries)")
    missing = set(ops.__all__) - {f.replace("_eval", "") for f in funcs}
    assert not missing, f"ops without matrix rows: {missing}"
    assert n > 1500
