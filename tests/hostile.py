"""The machinery of the hostile-input matrices (issues 6 and 14), shared by the test files
that hold them beside their subjects: the ops' bad-input rows in test_conv.py, test_shift.py,
test_sal.py and test_layers.py; resnet, forward, backward and load_state_dict in
test_models.py; fit in test_train.py; count in test_count.py; export and export.load in
test_export.py; save/load and hostile .npz files in test_io.py; Dataset, Dataset.batch and
the readers in test_data.py.  Imported like conftest's helpers (tests/ is on sys.path).
test_api.py::test_matrix_size counts the rows of every matrix (run pytest -s; the number is
recorded in bench/RESULTS.md) and checks that every op of salnp.ops has rows.

Each matrix is a table of (function, argument, variant) rows; every row is one pytest case,
called with one argument replaced by a bad or unusual value.  The expected outcome follows
from the variant's family:

  equivalent   same values, another layout / dtype / container: float64, float16, '>f4',
               '>f8', Fortran order, non-contiguous and negatively strided views, zero-stride
               broadcast views, read-only arrays, misaligned arrays (np.frombuffer on an
               offset bytes object), nested lists, NumPy scalars for Python numbers.  The
               outcome must be IDENTICAL to the call with np.ascontiguousarray(v, float32)
               (int64 for integer arguments): the same result (NaN where it has NaN), or the
               same exception type.
  nonfinite    NaN / +inf / -inf planted in an array: like "equivalent" (the contiguous
               float32 call decides); the per-function NaN decisions are tested separately
               in test_layers.py::test_nan_policy.
  TypeError    wrong kind: int / bool / complex / object / string arrays where floats are
               required, floats where integers are required, None, strings, dicts.
  ValueError   wrong ndim, zero-size dimensions, mismatched shapes, values out of range,
               NaN/inf where a finite scalar is required.
  error        TypeError or ValueError (the call is wrong, either is fair).
  huge         a zero-stride view with a huge logical shape (the API must copy it) or a size
               parameter whose product overflows 32 or 64 bits: ValueError or MemoryError.
  nocrash      a legal-but-extreme value (stride 2**31, ...): a result or TypeError /
               ValueError / MemoryError.

Errors must be TypeError/ValueError (MemoryError for "huge"), and the message must name
the argument (or, for "wrong kind" errors from NumPy-free Python code, the function).
No case may crash, hang, or write into an input.

The hostile files and shared state of issue 14 are `_h_*` functions beside their subjects
(one row each of that file's test_hostile_matrix): each builds its hostile input, makes the
call, and checks the exact outcome AND that nothing else changed (a FIFO never blocks, a
device node is never replaced, a refused load leaves the network as it was, a bomb is
refused before its data is decompressed).  Their shared helpers are at the end of this file.
"""
from __future__ import annotations

import math
import signal

import numpy as np
import pytest

import salnp
from salnp.data import Dataset

as_strided = np.lib.stride_tricks.as_strided

# ---------------------------------------------------------------- base values


def _f(shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


X3 = _f((2, 3, 5, 5), seed=1)
W = _f((4, 3, 3, 3), seed=2)
GY_CONV = _f((2, 4, 5, 5), seed=3)
X9 = _f((2, 9, 5, 5), seed=4)
OFF_I = np.array([[d // 3 - 1, d % 3 - 1] for d in range(9)], np.int32)
OFF_F = _f((9, 2), -1.5, 1.5, seed=5)
GY9 = _f((2, 9, 5, 5), seed=6)
LOGITS = _f((4, 3, 9), 0.0, 1.0, seed=7)
GAMMA = _f((3,), 0.5, 1.5, seed=8)
BETA_BN = _f((3,), seed=9)
RES = _f((2, 3, 5, 5), seed=10)
LX = _f((4, 6), seed=11)
LW = _f((5, 6), seed=12)
LB = _f((5,), seed=13)
LGY = _f((4, 5), seed=14)
Z = _f((4, 5), -3, 3, seed=15)
LAB = np.array([0, 4, 2, 1], np.int64)


class Spec:
    """One function under test: positional/keyword base arguments and the kind of each.

    kinds: "F" float array, "I" integer array, "W" float32 array updated in place,
    "int" integer scalar, "real" real scalar, "shape4" (N, C, H, W) tuple;
    opt: arguments for which None is legal; mismatch: arg -> list of bad shapes;
    finite: real scalars that must be finite; nonneg: real scalars that must be >= 0;
    int_min: minimum of integer scalars; fresh: args that must be fresh copies per call
    (updated in place); huge_axis: arg -> axis whose size is free (huge view allowed);
    legal: variant names that are legal input here (a huge shape that nothing allocates)."""

    def __init__(self, name, fn, args, kinds, opt=(), mismatch=None, finite=(), nonneg=(),
                 int_min=None, fresh=(), huge_axis=None, anyshape=(), legal=()):
        self.legal = set(legal)
        self.name, self.fn, self.args, self.kinds = name, fn, dict(args), dict(kinds)
        self.opt, self.mismatch = set(opt), dict(mismatch or {})
        self.finite, self.nonneg = set(finite), set(nonneg)
        self.int_min = dict(int_min or {})
        self.fresh = set(fresh)
        self.huge_axis = dict(huge_axis or {})
        self.anyshape = set(anyshape)

    def call(self, **override):
        a = dict(self.args)
        a.update(override)
        for k in self.fresh:
            if k not in override and isinstance(a[k], np.ndarray):
                a[k] = a[k].copy()
        return self.fn(**a)


# ---------------------------------------------------------------- variants

def _misaligned(a):
    raw = b"\x00" + np.ascontiguousarray(a).tobytes()
    m = np.frombuffer(raw, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    assert not m.flags.aligned or a.dtype.itemsize == 1
    return m


def _noncontig(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else None
    if big is None:
        return a
    big[..., ::2] = a
    return big[..., ::2]


def _negstride(a):
    if a.ndim == 0:
        return a
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1]


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _broadcast(a):
    """The first row repeated by a zero stride on axis 0 (not the same values)."""
    return np.broadcast_to(a[:1], a.shape) if a.ndim else a


def _with(a, v, where=0):
    b = a.copy()
    b.flat[where] = v
    return b


FLOAT_EQUIV = {
    "float64": lambda a: a.astype(np.float64),
    "float16": lambda a: a.astype(np.float16),
    "longdouble": lambda a: a.astype(np.longdouble),
    "bigendian_f4": lambda a: a.astype(">f4"),
    "bigendian_f8": lambda a: a.astype(">f8"),
    "fortran": np.asfortranarray,
    "noncontig": _noncontig,
    "negstride": _negstride,
    "readonly": _readonly,
    "misaligned": _misaligned,
    "misaligned_f8": lambda a: _misaligned(a.astype(np.float64)),
    "broadcast0": _broadcast,
    "list": lambda a: a.tolist(),
    "nan": lambda a: _with(a, np.nan),
    "nan_last": lambda a: _with(a, np.nan, -1),
    "posinf": lambda a: _with(a, np.inf),
    "neginf": lambda a: _with(a, -np.inf, -1),
    "huge_finite": lambda a: _with(a, 3e38),
    "denormal": lambda a: _with(a, 1e-42),
}


FLOAT_TYPEERR = {
    "int32": lambda a: np.round(a).astype(np.int32),
    "int64": lambda a: np.round(a).astype(np.int64),
    "uint8": lambda a: np.zeros(a.shape, np.uint8),
    "bool": lambda a: a > 0,
    "complex64": lambda a: a.astype(np.complex64),
    "complex128": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
    "None": lambda a: None,
    "string": lambda a: "abc",
    "dict": lambda a: {},
    "datetime": lambda a: np.zeros(a.shape, "datetime64[s]"),
}


INT_EQUIV = {
    "int8": lambda a: a.astype(np.int8),
    "int16": lambda a: a.astype(np.int16),
    "int32": lambda a: a.astype(np.int32),
    "bigendian_i8": lambda a: a.astype(">i8"),
    "noncontig": _noncontig,
    "negstride": _negstride,
    "readonly": _readonly,
    "misaligned": _misaligned,
    "list": lambda a: a.tolist(),
    "fortran": np.asfortranarray,
}


INT_TYPEERR = {
    "float32": lambda a: a.astype(np.float32),
    "float64": lambda a: a.astype(np.float64),
    "bool": lambda a: a > 0,
    "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
    "None": lambda a: None,
    "string": lambda a: "abc",
}


INPLACE_BAD = {   # an in-place array must be float32, C-contiguous, aligned, writeable
    "float64": (lambda a: a.astype(np.float64), "error"),
    "bigendian_f4": (lambda a: a.astype(">f4"), "error"),
    "noncontig": (lambda a: _noncontig(a), "error"),
    "readonly": (_readonly, "error"),
    "misaligned": (lambda a: np.frombuffer(bytearray(b"\x00" + a.tobytes()), np.float32,
                                           offset=1, count=a.size).reshape(a.shape), "error"),
    "list": (lambda a: a.tolist(), "error"),
    "int32": (lambda a: a.astype(np.int32), "error"),
    "wrong_ndim": (lambda a: a[None], "ValueError"),
    "zero_size": (lambda a: a[:0], "ValueError"),
    "string": (lambda a: "abc", "TypeError"),
    "nan": (lambda a: _with(a, np.nan), "equivalent"),
}


def _int_variants(v, lo):
    """(name, value, expected) for an integer scalar argument with minimum lo."""
    out = [("npint64", np.int64(v), "equivalent"), ("npuint8", np.uint8(v), "equivalent"),
           ("below_min", lo - 1, "ValueError"), ("negative", -5, "ValueError"),
           ("int32_max", 2**31 - 1, "nocrash"), ("2**31", 2**31, "nocrash"),
           ("2**32", 2**32, "nocrash"), ("2**62", 2**62, "nocrash"),
           ("int64_max", 2**63 - 1, "nocrash"), ("2**63", 2**63, "ValueError"),
           ("2**64", 2**64, "ValueError"), ("2**100", 2**100, "ValueError"),
           ("-2**63", -2**63, "ValueError"), ("-2**70", -2**70, "ValueError"),
           ("float", float(v) + 0.5, "TypeError"), ("float_whole", float(v), "TypeError"),
           ("str", str(v), "TypeError"), ("None", None, "TypeError"),
           ("list", [v], "TypeError"), ("complex", complex(v), "TypeError"),
           ("nan", float("nan"), "TypeError"), ("array1", np.array([v]), "TypeError")]
    return out


def _real_variants(v, finite, nonneg):
    out = [("npfloat32", np.float32(v), "equivalent"), ("npfloat64", np.float64(v), "equivalent"),
           ("int", int(v) if float(v).is_integer() else 1, "nocrash"),
           ("nan", float("nan"), "ValueError" if finite else "nocrash"),
           ("inf", float("inf"), "ValueError" if finite else "nocrash"),
           ("-inf", float("-inf"), "ValueError" if finite else "nocrash"),
           ("negative", -1.0, "ValueError" if nonneg else "nocrash"),
           ("huge", 1e300, "nocrash"), ("hugeint", 10**400, "ValueError"),
           ("str", "1.0", "TypeError"), ("None", None, "TypeError"),
           ("complex", 1j, "TypeError"), ("list", [v], "TypeError"),
           ("array2", np.array([v, v]), "TypeError")]
    return out


def _shape_variants(shape):
    n, c, h, w = shape
    return [("list", list(shape), "equivalent"), ("ndarray", np.array(shape), "equivalent"),
            ("npints", tuple(np.int32(s) for s in shape), "equivalent"),
            ("len3", (n, c, h), "error"), ("len5", (n, c, h, w, 1), "error"),
            ("zero", (n, c, 0, w), "ValueError"), ("negative", (n, c, -1, w), "ValueError"),
            ("float", (n, c, h + 0.5, w), "TypeError"), ("None", None, "TypeError"),
            ("none_item", (n, c, None, w), "TypeError"), ("str", "abcd", "error"),
            ("overflow32", (n, c, 2**16, 2**16), "huge"),   # 96 GiB: MemoryError (or a shape error)
            ("overflow64", (n, c, 2**32, 2**32), "ValueError"),
            ("2**63", (n, c, 2**63, 1), "ValueError"), ("2**70", (n, c, 2**70, 1), "ValueError")]


def _array_cases(spec, arg, a, kind):
    """(variant name, value, expected) for an array argument."""
    cases = []
    if kind == "F":
        cases += [(k, f, "equivalent") for k, f in FLOAT_EQUIV.items()]
        cases += [(k, f, "TypeError") for k, f in FLOAT_TYPEERR.items()
                  if not (k == "None" and arg in spec.opt)]
        if arg in spec.opt:
            cases.append(("None_optional", lambda a: None, "nocrash"))
    elif kind == "I":
        cases += [(k, f, "equivalent") for k, f in INT_EQUIV.items()]
        cases += [(k, f, "TypeError") for k, f in INT_TYPEERR.items()]
        cases += [("uint64_huge", lambda a: np.full(a.shape, 2**63 + 5, np.uint64), "ValueError"),
                  ("int64_huge", lambda a: _with(a.astype(np.int64), 2**40), "ValueError"
                   if arg == "labels" else "ValueError"),
                  ("negative", lambda a: _with(a.astype(np.int64), -2**40), "ValueError")]
    elif kind == "W":
        cases += [(k, f, e) for k, (f, e) in INPLACE_BAD.items()]
        cases.append(("None", lambda a: None, "error"))
    if kind in "FI":
        anyshape = arg in spec.anyshape
        cases += [("extra_dim", lambda a: a[None], "nocrash" if anyshape else "ValueError"),
                  ("flattened", lambda a: a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1),
                   "nocrash" if anyshape else "ValueError"),
                  ("zero_size", lambda a: a[:0], "ValueError"),
                  ("zero_size_last", lambda a: a[..., :0], "ValueError"),
                  ("scalar", lambda a: 1.5 if kind == "F" else 1,
                   "nocrash" if anyshape else ("ValueError" if kind == "F" else "error"))]
        for i, shp in enumerate(spec.mismatch.get(arg, [])):
            dt = np.float32 if kind == "F" else np.int64
            cases.append((f"mismatch{i}", lambda a, shp=shp, dt=dt: np.zeros(shp, dt),
                          "ValueError"))
        if arg in spec.huge_axis:
            ax = spec.huge_axis[arg]

            def huge(a, ax=ax, n=2**40):
                shp = list(a.shape)
                shp[ax] = n
                return as_strided(a, shape=tuple(shp), strides=tuple(
                    0 if i == ax else s for i, s in enumerate(a.strides)))
            cases.append(("huge_view_2**40", huge, "huge"))
            cases.append(("huge_view_2**33", lambda a, h=huge: h(a, n=2**33), "huge"))
    return [(name, (lambda a=a, f=f: f(a)), exp) for name, f, exp in cases]


def _matrix_ops(specs):
    """The rows (spec, argument, variant name, make value, expected) of these ops."""
    rows = []
    for spec in specs:
        for arg, kind in spec.kinds.items():
            base = spec.args[arg]
            if kind in ("F", "I", "W"):
                for name, make, exp in _array_cases(spec, arg, base, kind):
                    rows.append((spec, arg, name, make, exp))
            elif kind == "int":
                for name, v, exp in _int_variants(base, spec.int_min.get(arg, 1)):
                    if spec.name == "default_shift_offsets" and name in ("int32_max", "2**31"):
                        continue   # legal: 8-16 GiB written (slow); 2**32 and up fail fast
                    rows.append((spec, arg, name, (lambda v=v: v), exp))
            elif kind == "real":
                for name, v, exp in _real_variants(base, arg in spec.finite, arg in spec.nonneg):
                    rows.append((spec, arg, name, (lambda v=v: v), exp))
            elif kind == "shape4":
                for name, v, exp in _shape_variants(base):
                    exp = "nocrash" if name in spec.legal else exp
                    rows.append((spec, arg, name, (lambda v=v: v), exp))
    return rows


# ---------------------------------------------------------------- checking


def _snap(v):
    if isinstance(v, np.ndarray) and v.dtype.kind != "O" and v.size < 10**6:
        return v.copy()
    return None


def _same(got, ref):
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref)
        for g, r in zip(got, ref):
            _same(g, r)
        return
    if ref is None:
        assert got is None
        return
    if isinstance(ref, dict):    # conv2d_algo: names of algorithms
        assert got == ref, (got, ref)
        return
    if isinstance(ref, float):
        assert isinstance(got, float)
        assert (math.isnan(got) and math.isnan(ref)) or got == ref, (got, ref)
        return
    assert isinstance(got, np.ndarray) and got.dtype == ref.dtype and got.shape == ref.shape, \
        (type(got), getattr(got, "dtype", None), getattr(got, "shape", None), ref.shape)
    np.testing.assert_array_equal(got, ref)   # NaN == NaN here


def _outcome(thunk):
    try:
        return "ok", thunk()
    except (TypeError, ValueError, MemoryError, KeyError, FloatingPointError) as e:
        return type(e), e


def _check_error(e, exp, names):
    if exp == "TypeError":
        assert isinstance(e, TypeError), f"expected TypeError, got {type(e).__name__}: {e}"
    elif exp == "ValueError":
        assert isinstance(e, ValueError), f"expected ValueError, got {type(e).__name__}: {e}"
    elif exp == "error":
        assert isinstance(e, (TypeError, ValueError)), f"got {type(e).__name__}: {e}"
    elif exp == "huge":
        assert isinstance(e, (ValueError, MemoryError)), f"got {type(e).__name__}: {e}"
        return
    elif exp == "nocrash":
        assert isinstance(e, (TypeError, ValueError, MemoryError)), f"{type(e).__name__}: {e}"
    msg = str(e)
    if isinstance(e, (TypeError, ValueError)):
        assert any(n in msg for n in names), f"message does not name {names}: {msg!r}"


def _contig_equivalent(v, kind):
    if kind == "I":
        return np.ascontiguousarray(np.asarray(v), np.int64)
    if kind == "F":
        with np.errstate(all="ignore"):
            return np.ascontiguousarray(np.asarray(v), np.float32)
    return v


def check_ops_row(row):
    """One row of an ops matrix (the test_ops_matrix of test_conv.py, test_shift.py, ...)."""
    spec, arg, name, make, exp = row
    kind = spec.kinds[arg]
    value = make()
    snap = _snap(value)
    if kind == "W" and isinstance(value, np.ndarray) and value.flags.writeable:
        orig = value.copy()      # updated in place: both calls start from the same values
        status, got = _outcome(lambda: spec.call(**{arg: value}))
        value = orig
    else:
        status, got = _outcome(lambda: spec.call(**{arg: value}))
    if kind != "W" and snap is not None:     # inputs never written
        np.testing.assert_array_equal(value, snap)
    names = (arg, spec.name.replace("_eval", ""), "input_shape", "pad")
    if exp == "equivalent":
        ref_status, ref = _outcome(lambda: spec.call(**{arg: _contig_equivalent(value, kind)}))
        if ref_status == "ok":
            assert status == "ok", f"contiguous call ok, this one raised {got!r}"
            _same(got, ref)
        else:
            assert status == ref_status, f"contiguous call raised {ref!r}, this one {got!r}"
        return
    if status == "ok":
        assert exp == "nocrash", f"accepted {name} for {arg} (expected {exp})"
        return
    _check_error(got, exp, names)


# ---------------------------------------------------------------- tiny networks and data


def _tiny_data(n=12, c=3, hw=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, c, hw, hw), dtype=np.uint8)
    labels = np.arange(n) % classes
    return Dataset(imgs, labels, pad=1)


_NET_CACHE = {}


def _net(layer="sal"):
    if layer not in _NET_CACHE:
        _NET_CACHE[layer] = salnp.models.resnet(8, 2, layer, num_classes=4, seed=3)
    return _NET_CACHE[layer]


XN = _f((2, 3, 8, 8), -2, 2, seed=30)


def _small(layer="cl", **kw):
    return salnp.models.resnet(8, 2, layer, num_classes=4, **kw)


# ---------------------------------------------------------------- hostile files, shared state


class _Alarm:
    """Fail instead of hanging: SIGALRM after secs (a blocking open/read is interrupted)."""

    def __init__(self, secs=10):
        self.secs = secs

    def __enter__(self):
        def boom(*_):
            raise TimeoutError(f"blocked for {self.secs} s")
        self.old = signal.signal(signal.SIGALRM, boom)
        signal.alarm(self.secs)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def _state_of(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def _same_state(net, ref):
    got = net.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def _members(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _expect_load_error(path, *words, fn=None):
    fn = fn or salnp.load
    with _Alarm(20):
        with pytest.raises(ValueError) as e:
            fn(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg
