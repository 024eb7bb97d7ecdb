"""Structure-aware fuzzing (hypothesis) of the .npz parsers: salnp.load (networks and
training checkpoints), salnp.export.load (exported programs) and fit(resume=...).

A valid file is decoded into its parts -- zip members (name, .npy header: dtype, order,
shape; data bytes), the JSON config, the compression -- and a drawn list of mutations is
applied to the PARTS before the file is written again: config values replaced (huge,
negative, wrong type, nested, NaN), members dropped, duplicated, renamed or added,
header shapes and dtypes changed with or without matching data, data truncated,
extended or bit-flipped, op-table fields of exported programs set to edge integers
(offsets and counts near 2**31, 2**62, 2**63), compression switched, and raw bytes of
the final zip flipped.  So most inputs get past the zip and JSON layers and reach the
checks behind them.

Contract: the load returns a network that then runs (forward may refuse an input that
is too small with ValueError), or raises ValueError naming the file (FileNotFoundError
never: the file exists) -- never another exception type, a crash, or a hang; a refused
fit(resume=) leaves the network untouched.

    HYPOTHESIS_FUZZ_EXAMPLES=3000 SALNP_FUZZ_COVERAGE=1 python -m pytest -s tests/test_fuzz_npz.py

prints the executions and, with SALNP_FUZZ_COVERAGE=1, the lines of salnp's io.py,
export.py, nn.py and train.py that the fuzzer reached (a settrace line tracer).
"""
from __future__ import annotations

import io
import json
import os
import sys
import warnings
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import salnp  # noqa: E402
from salnp.data import Dataset  # noqa: E402

EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COVER = os.environ.get("SALNP_FUZZ_COVERAGE") == "1"

EDGE_INTS = [0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -2**63, -2**31,
             2**40, 10**6]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-5, 70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
              st.sampled_from(["cl", "sal", "sl", "asl", "network", "inference"])),
    lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=5), ch,
                                                                     max_size=4)),
    max_leaves=8)
DESCRS = ["<f4", ">f4", "<f8", "<f2", "<i4", "<i8", ">i8", "|u1", "|b1", "<c8", "|O", "<U3",
          "|V8", "<M8[s]"]


# ---------------------------------------------------------------- valid seeds

def _tiny_data():
    rng = np.random.default_rng(0)
    return Dataset(rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8), np.arange(8) % 4, pad=1)


_SEEDS = {}


def _seed(kind):
    """(members, config, method) of a valid file of this kind."""
    if kind not in _SEEDS:
        d = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"salnp-fuzz-seed-{os.getpid()}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{kind}.npz")
        if kind in ("net_sal", "net_sl"):
            net = salnp.models.resnet(8, 2, kind[4:], num_classes=4, seed=1)
            net.beta = 3.0
            salnp.save(net, p)
        elif kind in ("inf_sl", "inf_sal"):
            salnp.export(salnp.models.resnet(8, 2, kind[4:], num_classes=4, seed=1).eval()).save(p)
        else:   # training checkpoint
            salnp.fit(salnp.models.resnet(8, 2, "cl", num_classes=4, seed=1), _tiny_data(),
                      epochs=1, batch_size=4, progress=False, checkpoint=p)
        members = []
        with zipfile.ZipFile(p) as z:
            for info in z.infolist():
                raw = z.read(info)
                f = io.BytesIO(raw)
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0)(f)
                members.append([info.filename, dict(descr=np.lib.format.dtype_to_descr(dtype),
                                                    fortran_order=fortran, shape=shape),
                                raw[f.tell():]])
        cfg = None
        for m in members:
            if m[0] == "__config__.npy":
                cfg = json.loads(np.frombuffer(m[2], np.dtype(m[1]["descr"]))[0])
        _SEEDS[kind] = (members, cfg)
    members, cfg = _SEEDS[kind]
    return [list(m) for m in members], json.loads(json.dumps(cfg))


def _write(path, members, cfg, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", method) as z:
            for name, hdr, data in members:
                if name == "__config__.npy" and cfg is not None:
                    text = np.array(json.dumps(cfg))
                    b = io.BytesIO()
                    np.save(b, text)
                    z.writestr(name, b.getvalue())
                    continue
                b = io.BytesIO()
                try:
                    np.lib.format.write_array_header_1_0(b, hdr)
                except Exception:
                    b = io.BytesIO(b"\x93NUMPY\x01\x00" + b"\x10\x00" + b"{'descr':}     \n")
                try:
                    z.writestr(name, b.getvalue() + data)
                except (ValueError, IndexError, OSError):
                    pass    # a name zipfile cannot write (e.g. "a/" with data): dropped


# ---------------------------------------------------------------- mutations

def _set_path(cfg, path, value):
    d = cfg
    for k in path[:-1]:
        if not isinstance(d, dict):
            return
        d = d.setdefault(k, {})
    if isinstance(d, dict):
        d[path[-1]] = value


CFG_PATHS = [("model", "width"), ("model", "depth"), ("model", "layer"), ("model", "shared"),
             ("model", "expansion"), ("model", "num_classes"), ("model", "in_channels"),
             ("model", "seed"), ("model",), ("beta",), ("names",), ("fields",),
             ("inference_format",), ("info",), ("info", "beta"), ("epoch",), ("optim_steps",),
             ("history",), ("run",), ("model", "extra")]


@st.composite
def mutation(draw, n_members, op_rows):
    kind = draw(st.sampled_from(["cfg", "cfg", "drop", "dup", "rename", "add", "shape",
                                 "shape_data", "dtype", "fortran", "truncate", "extend", "flip",
                                 "field", "field", "field", "value"]))
    i = draw(st.integers(0, max(n_members - 1, 0)))
    if kind == "cfg":
        return kind, draw(st.sampled_from(CFG_PATHS)), draw(JSON_VALUES)
    if kind in ("shape", "shape_data"):
        return kind, i, tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 9, 15, 2**20,
                                                              2**31, 2**40]), max_size=4)))
    if kind == "dtype":
        return kind, i, draw(st.sampled_from(DESCRS))
    if kind in ("truncate", "extend", "flip"):
        return kind, i, draw(st.integers(0, 4096))
    if kind == "field":      # one int64 of the exported op table
        return kind, draw(st.integers(0, max(op_rows - 1, 0))), (
            draw(st.integers(0, len(salnp.program.FIELDS) - 1)), draw(st.sampled_from(EDGE_INTS)))
    if kind == "value":      # one element of any integer member (channels, shifts, pairs)
        return kind, i, (draw(st.integers(0, 10**6)), draw(st.sampled_from(EDGE_INTS)))
    return kind, i, draw(st.text(max_size=8))


def _apply(members, cfg, mut):
    kind, i, arg = mut
    if kind == "cfg":
        _set_path(cfg, i, arg)
        return
    if not members:
        return
    m = members[i % len(members)]
    if kind == "drop":
        members.remove(m)
    elif kind == "dup":
        members.append([m[0], dict(m[1]), m[2][::-1]])
    elif kind == "rename":
        m[0] = (arg or "x") + ".npy" if len(arg) % 2 else (arg or "x")
    elif kind == "add":
        members.append([(arg or "evil") + ".npy", dict(descr="<f4", fortran_order=False,
                                                       shape=(3,)), bytes(12)])
    elif kind in ("shape", "shape_data"):
        m[1] = dict(m[1], shape=arg)
        if kind == "shape_data":
            n = int(np.prod(arg)) * 4 if arg else 4
            m[2] = bytes(min(n, 1 << 16))
    elif kind == "dtype":
        m[1] = dict(m[1], descr=arg)
    elif kind == "fortran":
        m[1] = dict(m[1], fortran_order=not m[1]["fortran_order"])
    elif kind == "truncate":
        m[2] = m[2][: arg % (len(m[2]) + 1)]
    elif kind == "extend":
        m[2] = m[2] + bytes(arg % 64 + 1)
    elif kind == "flip":
        if m[2]:
            b = bytearray(m[2])
            b[arg % len(b)] ^= 1 << (arg % 8)
            m[2] = bytes(b)
    elif kind == "field":
        for mm in members:
            if mm[0] == "ops.npy" and mm[1]["descr"] == "<i8":
                a = np.frombuffer(mm[2][: len(mm[2]) // 8 * 8], "<i8").copy()
                k = i * len(salnp.program.FIELDS) + arg[0]
                if k < a.size:
                    a[k] = arg[1]
                    mm[2] = a.tobytes()
    elif kind == "value":
        if m[1]["descr"] in ("<i4", "<i8") and len(m[2]) >= 4:
            dt = np.dtype(m[1]["descr"])
            a = np.frombuffer(m[2][: len(m[2]) // dt.itemsize * dt.itemsize], dt).copy()
            if a.size:
                a[arg[0] % a.size] = max(min(arg[1], np.iinfo(dt).max), np.iinfo(dt).min)
                m[2] = a.tobytes()


@st.composite
def hostile_file(draw, kinds):
    kind = draw(st.sampled_from(kinds))
    members, cfg = _seed(kind)
    rows = 0
    for m in members:
        if m[0] == "ops.npy":
            rows = m[1]["shape"][0]
    muts = draw(st.lists(mutation(len(members), rows), min_size=1, max_size=4))
    for mu in muts:
        _apply(members, cfg, mu)
    method = draw(st.sampled_from([zipfile.ZIP_STORED] * 3 + [zipfile.ZIP_DEFLATED] * 2
                                  + [zipfile.ZIP_BZIP2]))
    flip = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    return kind, members, cfg, method, flip, muts


# ---------------------------------------------------------------- coverage (optional)

_LINES: set = set()
_ROOT = os.path.dirname(os.path.abspath(salnp.__file__))
_FILES = {os.path.join(_ROOT, f) for f in ("io.py", "export.py", "nn.py", "train.py")}


def _tracer(frame, event, arg):
    if frame.f_code.co_filename in _FILES:
        def local(fr, ev, a):
            if ev == "line":
                _LINES.add((fr.f_code.co_filename, fr.f_lineno))
            return local
        return local
    return None


STATS = {"executions": 0, "loaded": 0, "refused": 0, "messages": set()}


def _run(tmp, case):
    kind, members, cfg, method, flip, muts = case
    path = os.path.join(tmp, "h.npz")
    _write(path, members, cfg, method)
    if flip is not None:
        raw = bytearray(open(path, "rb").read())
        raw[flip % len(raw)] ^= 0x40
        open(path, "wb").write(bytes(raw))
    STATS["executions"] += 1
    if COVER:
        sys.settrace(_tracer)
    try:
        if kind.startswith("inf"):
            try:
                net = salnp.export.load(path)
            except ValueError as e:
                assert path in str(e), e
                STATS["refused"] += 1
                STATS["messages"].add(str(e).split(": ")[1][:30])
                return
            STATS["loaded"] += 1
            x = np.ones((1, net.in_channels, 8, 8), np.float32)
            try:
                y = net.forward(x)
                assert y.shape == (1, net.num_classes)
            except (ValueError, MemoryError):
                pass
        elif kind == "ckpt":
            net = salnp.models.resnet(8, 2, "cl", num_classes=4, seed=9)
            before = {k: v.copy() for k, v in net.state_dict().items()}
            mom = net.arena.momentum.copy()
            opt = salnp.train.SGD(net)
            try:
                salnp.train._load_state(path, net, opt)
                STATS["loaded"] += 1
            except ValueError as e:
                assert path in str(e), e
                STATS["refused"] += 1
                STATS["messages"].add(str(e).split(": ")[1][:30])
                after = net.state_dict()
                for k in before:
                    assert np.array_equal(after[k], before[k]), f"{k} changed by a refused resume"
                assert np.array_equal(net.arena.momentum, mom)
        else:
            try:
                net = salnp.load(path)
            except ValueError as e:
                assert path in str(e), e
                STATS["refused"] += 1
                STATS["messages"].add(str(e).split(": ")[1][:30])
                return
            STATS["loaded"] += 1
            y = net.forward(np.ones((2, net.config["in_channels"], 8, 8), np.float32), train=False)
            assert np.all(np.isfinite(y))
    finally:
        if COVER:
            sys.settrace(None)


@pytest.mark.parametrize("kinds", [("net_sal", "net_sl"), ("inf_sl", "inf_sal"), ("ckpt",)],
                         ids=["network", "exported", "checkpoint"])
def test_fuzz_npz(kinds, tmp_path):
    STATS.update(executions=0, loaded=0, refused=0, messages=set())

    @FUZZ
    @given(hostile_file(list(kinds)))
    def run(case):
        _run(str(tmp_path), case)

    run()
    print(f"\nfuzz_npz {kinds}: {STATS['executions']} executions, {STATS['loaded']} "
          f"loaded, {STATS['refused']} refused, {len(STATS['messages'])} distinct refusals"
          + (f", {len(_LINES)} lines of io/export/nn/train reached" if COVER else ""))
