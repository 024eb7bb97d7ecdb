"""The bad-input matrix (issue 6): every public function of salnp.ops, the models
(resnet arguments, forward, backward, load_state_dict), fit, count, export (and
InferenceNet.forward), save/load and the data readers, called with one argument replaced
by a bad or unusual value.

The matrix is a table of (function, argument, variant) generated below; every row is
one pytest case.  The expected outcome follows from the variant's family:

  equivalent   same values, another layout / dtype / container: float64, float16, '>f4',
               '>f8', Fortran order, non-contiguous and negatively strided views, zero-stride
               broadcast views, read-only arrays, misaligned arrays (np.frombuffer on an
               offset bytes object), nested lists, NumPy scalars for Python numbers.  The
               outcome must be IDENTICAL to the call with np.ascontiguousarray(v, float32)
               (int64 for integer arguments): the same result (NaN where it has NaN), or the
               same exception type.
  nonfinite    NaN / +inf / -inf planted in an array: like "equivalent" (the contiguous
               float32 call decides); the per-function NaN decisions are tested separately
               in test_nan_policy.
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
No case may crash, hang, or write into an input.  The number of cases is printed by
test_matrix_size (run pytest -s) and recorded in bench/RESULTS.md.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

import salnp
from salnp import ops
from salnp.data import Dataset

as_strided = np.lib.stride_tricks.as_strided

# ---------------------------------------------------------------- base values


def _rng():
    return np.random.default_rng(12345)


def _f(shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


X = _f((2, 3, 5, 5), seed=1)
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


def _bn_saved(relu=False):
    if relu:
        y, m, s = ops.batch_norm_relu(X, GAMMA, BETA_BN)
        return y, m, s
    y, m, s = ops.batch_norm(X, GAMMA, BETA_BN)
    return y, m, s


Y_BNR, SM, SI = _bn_saved(True)
GY_BN = _f((2, 3, 5, 5), seed=16)


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


def _ops_specs():
    S = []
    S.append(Spec("conv2d", ops.conv2d, dict(x=X, w=W, stride=1, padding=1),
                  dict(x="F", w="F", stride="int", padding="int"),
                  mismatch={"w": [(4, 2, 3, 3), (4, 3, 3, 2)]},
                  int_min={"stride": 1, "padding": 0}, huge_axis={"x": 0, "w": 0}))
    S.append(Spec("conv2d_backward", ops.conv2d_backward,
                  dict(x=X, w=W, grad_y=GY_CONV, stride=1, padding=1),
                  dict(x="F", w="F", grad_y="F", stride="int", padding="int"),
                  mismatch={"w": [(4, 2, 3, 3)], "grad_y": [(2, 4, 5, 4), (2, 5, 5, 5)]},
                  int_min={"stride": 1, "padding": 0}, huge_axis={"x": 0}))
    S.append(Spec("conv2d_algo", ops.conv2d_algo,
                  dict(x_shape=(2, 3, 5, 5), w_shape=(4, 3, 3, 3), stride=1, padding=1),
                  dict(x_shape="shape4", w_shape="shape4", stride="int", padding="int"),
                  int_min={"stride": 1, "padding": 0},
                  legal={"overflow32"}))   # shapes only: a 2^16 x 2^16 image is a valid query
    S.append(Spec("shift", ops.shift, dict(x=X9, offsets=OFF_I, stride=1),
                  dict(x="F", offsets="I", stride="int"),
                  mismatch={"offsets": [(8, 2), (9, 3)]}, int_min={"stride": 1},
                  huge_axis={"x": 0}))
    S.append(Spec("shift_backward", ops.shift_backward,
                  dict(grad_y=GY9, offsets=OFF_I, input_shape=(2, 9, 5, 5), stride=1),
                  dict(grad_y="F", offsets="I", input_shape="shape4", stride="int"),
                  mismatch={"offsets": [(8, 2)], "grad_y": [(2, 9, 5, 4)]},
                  int_min={"stride": 1}))
    S.append(Spec("default_shift_offsets", lambda C: ops.default_shift_offsets(C), dict(C=9),
                  dict(C="int"), int_min={"C": 1}))
    S.append(Spec("active_shift", ops.active_shift, dict(x=X9, offsets=OFF_F, stride=1),
                  dict(x="F", offsets="F", stride="int"),
                  mismatch={"offsets": [(8, 2), (9, 1)]}, int_min={"stride": 1},
                  huge_axis={"x": 0}))
    S.append(Spec("active_shift_backward", ops.active_shift_backward,
                  dict(x=X9, offsets=OFF_F, grad_y=GY9, stride=1),
                  dict(x="F", offsets="F", grad_y="F", stride="int"),
                  mismatch={"offsets": [(8, 2)], "grad_y": [(2, 9, 4, 5)]},
                  int_min={"stride": 1}))
    S.append(Spec("normalize_shift_grad", lambda grad_offsets: ops.normalize_shift_grad(grad_offsets),
                  dict(grad_offsets=OFF_F), dict(grad_offsets="F"),
                  mismatch={"grad_offsets": [(9, 3)]}, huge_axis={"grad_offsets": 0}))
    S.append(Spec("sal_conv2d", ops.sal_conv2d, dict(x=X, w=W, logits=LOGITS, beta=2.0, stride=1),
                  dict(x="F", w="F", logits="F", beta="real", stride="int"),
                  mismatch={"w": [(4, 3, 2, 2), (4, 2, 3, 3)], "logits": [(3, 3, 9), (4, 3, 8)]},
                  finite={"beta"}, nonneg={"beta"}, int_min={"stride": 1}, huge_axis={"x": 0}))
    S.append(Spec("sal_conv2d_backward", ops.sal_conv2d_backward,
                  dict(x=X, w=W, logits=LOGITS, beta=2.0, grad_y=GY_CONV, stride=1),
                  dict(x="F", w="F", logits="F", beta="real", grad_y="F", stride="int"),
                  mismatch={"logits": [(4, 2, 9)], "grad_y": [(2, 4, 4, 5)]},
                  finite={"beta"}, nonneg={"beta"}, int_min={"stride": 1}))
    S.append(Spec("sal_probs", ops.sal_probs, dict(logits=LOGITS, beta=2.0),
                  dict(logits="F", beta="real"), mismatch={"logits": [(4, 3, 8)]},
                  finite={"beta"}, nonneg={"beta"}, anyshape={"logits"}))
    S.append(Spec("batch_norm", ops.batch_norm,
                  dict(x=X, gamma=GAMMA, beta=BETA_BN, running_mean=np.zeros(3, np.float32),
                       running_var=np.ones(3, np.float32), training=True, momentum=0.1, eps=1e-5),
                  dict(x="F", gamma="F", beta="F", running_mean="W", running_var="W",
                       momentum="real", eps="real"),
                  opt={"gamma", "beta"}, mismatch={"gamma": [(4,)], "beta": [(2,)],
                                                   "running_mean": [(4,)]},
                  finite={"momentum", "eps"}, nonneg={"momentum", "eps"},
                  fresh={"running_mean", "running_var"}, huge_axis={"x": 0}))
    S.append(Spec("batch_norm_eval", ops.batch_norm,
                  dict(x=X, gamma=GAMMA, beta=BETA_BN, running_mean=_f((3,), seed=20),
                       running_var=_f((3,), 0.5, 2.0, seed=21), training=False),
                  dict(x="F", gamma="F", beta="F", running_mean="F", running_var="F"),
                  opt={"gamma", "beta"}, mismatch={"running_var": [(4,)]}))
    S.append(Spec("batch_norm_backward", ops.batch_norm_backward,
                  dict(x=X, gamma=GAMMA, grad_y=GY_BN, save_mean=SM, save_invstd=SI),
                  dict(x="F", gamma="F", grad_y="F", save_mean="F", save_invstd="F"),
                  opt={"gamma"}, mismatch={"grad_y": [(2, 3, 5, 4)], "save_mean": [(2,)]}))
    S.append(Spec("batch_norm_relu", ops.batch_norm_relu,
                  dict(x=X, gamma=GAMMA, beta=BETA_BN, running_mean=np.zeros(3, np.float32),
                       running_var=np.ones(3, np.float32), residual=RES, training=True),
                  dict(x="F", gamma="F", beta="F", running_mean="W", running_var="W",
                       residual="F"),
                  opt={"gamma", "beta", "residual"}, mismatch={"residual": [(2, 3, 5, 4)]},
                  fresh={"running_mean", "running_var"}))
    S.append(Spec("batch_norm_relu_backward", ops.batch_norm_relu_backward,
                  dict(x=X, gamma=GAMMA, y=Y_BNR, grad_y=GY_BN, save_mean=SM, save_invstd=SI),
                  dict(x="F", gamma="F", y="F", grad_y="F", save_mean="F", save_invstd="F"),
                  opt={"gamma"}, mismatch={"y": [(2, 3, 4, 5)], "save_invstd": [(4,)]}))
    S.append(Spec("relu", ops.relu, dict(x=X), dict(x="F"), anyshape={"x"},
                  huge_axis={"x": 0}))
    S.append(Spec("relu_backward", ops.relu_backward, dict(y=X, grad_y=GY_BN),
                  dict(y="F", grad_y="F"), mismatch={"grad_y": [(2, 3, 5, 4), (150,)]},
                  anyshape={"y", "grad_y"}))
    S.append(Spec("add", ops.add, dict(a=X, b=RES), dict(a="F", b="F"),
                  mismatch={"b": [(2, 3, 5, 4)]}, anyshape={"a", "b"}))
    S.append(Spec("global_avg_pool", ops.global_avg_pool, dict(x=X), dict(x="F"),
                  huge_axis={"x": 0}))
    S.append(Spec("global_avg_pool_backward", ops.global_avg_pool_backward,
                  dict(grad_y=_f((2, 3), seed=17), input_shape=(2, 3, 5, 5)),
                  dict(grad_y="F", input_shape="shape4"), mismatch={"grad_y": [(2, 4), (3, 3)]}))
    S.append(Spec("linear", ops.linear, dict(x=LX, w=LW, b=LB), dict(x="F", w="F", b="F"),
                  opt={"b"}, mismatch={"w": [(5, 7)], "b": [(4,)]}, huge_axis={"x": 0}))
    S.append(Spec("linear_backward", ops.linear_backward, dict(x=LX, w=LW, grad_y=LGY),
                  dict(x="F", w="F", grad_y="F"), mismatch={"w": [(5, 5)], "grad_y": [(4, 4)]}))
    S.append(Spec("cross_entropy", ops.cross_entropy, dict(logits=Z, labels=LAB),
                  dict(logits="F", labels="I"), mismatch={"labels": [(3,), (4, 1)]},
                  huge_axis={"logits": 1}))
    S.append(Spec("cross_entropy_backward", ops.cross_entropy_backward,
                  dict(logits=Z, labels=LAB, grad=0.5),
                  dict(logits="F", labels="I", grad="real"), mismatch={"labels": [(5,)]},
                  finite={"grad"}))
    S.append(Spec("sgd_step",
                  lambda params, grads, momentum_buffer, lr, momentum, weight_decay:
                  (ops.sgd_step(params, grads, momentum_buffer, lr, momentum=momentum,
                                weight_decay=weight_decay), params.copy(), momentum_buffer.copy())[1:]
                  if isinstance(params, np.ndarray) and isinstance(momentum_buffer, np.ndarray)
                  else ops.sgd_step(params, grads, momentum_buffer, lr, momentum=momentum,
                                    weight_decay=weight_decay),
                  dict(params=_f((7,), seed=18), grads=_f((7,), seed=19),
                       momentum_buffer=_f((7,), seed=22), lr=0.1, momentum=0.9, weight_decay=1e-4),
                  dict(params="W", grads="F", momentum_buffer="W", lr="real", momentum="real",
                       weight_decay="real"),
                  mismatch={"grads": [(6,), (7, 1)], "momentum_buffer": [(8,)]},
                  finite={"lr", "momentum", "weight_decay"}, nonneg={"lr", "momentum",
                                                                    "weight_decay"},
                  fresh={"params", "momentum_buffer"}, anyshape={"grads"}))
    return S


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


def _matrix_ops():
    rows = []
    for spec in _ops_specs():
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


OPS_ROWS = _matrix_ops()

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


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
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


# ---------------------------------------------------------------- NaN / inf decisions

def test_nan_policy():
    """Decisions: ops propagate NaN/inf in array data like PyTorch (no check, no crash);
    scalars that parameterise an op (beta, eps, momentum, lr, grad, shift offsets of
    active_shift, SAL logits) must be finite: ValueError naming them."""
    xn = _with(X, np.nan)
    assert np.isnan(ops.conv2d(xn, W, 1, 1)).any()
    assert np.isnan(ops.relu(xn)).any()                         # relu(NaN) = NaN (PyTorch)
    assert np.isnan(ops.add(xn, RES)).any()
    assert np.isnan(ops.global_avg_pool(xn)[0]).any()
    assert np.isnan(ops.batch_norm(xn, GAMMA, BETA_BN)[0][:, 0]).all()   # whole channel 0
    assert np.isnan(ops.shift(_with(X9, np.nan, 12), OFF_I)).any()
    assert math.isnan(ops.cross_entropy(_with(Z, np.nan), LAB))
    assert np.isinf(ops.linear(_with(LX, np.inf), LW)).any()
    p = _f((5,), seed=1)
    ops.sgd_step(p, _with(_f((5,), seed=2), np.nan), np.zeros(5, np.float32), 0.1)
    assert np.isnan(p[0]) and np.all(np.isfinite(p[1:]))
    for f, what in [(lambda: ops.active_shift(X9, _with(OFF_F, np.nan)), "offsets"),
                    (lambda: ops.sal_probs(_with(LOGITS, np.inf), 1.0), "logits"),
                    (lambda: ops.sal_conv2d(X, W, _with(LOGITS, np.nan), 1.0), "logits"),
                    (lambda: ops.sal_conv2d(X, W, LOGITS, float("nan")), "beta"),
                    (lambda: ops.batch_norm(X, None, None, eps=float("inf")), "eps"),
                    (lambda: ops.batch_norm(X, None, None, momentum=float("nan")), "momentum"),
                    (lambda: ops.cross_entropy_backward(Z, LAB, grad=float("nan")), "grad"),
                    (lambda: ops.sgd_step(p, p.copy(), None, float("inf"), momentum=0.0), "lr")]:
        with pytest.raises(ValueError, match=what):
            f()


# ---------------------------------------------------------------- models, fit, count, export, io

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


def _resnet_rows():
    base = dict(depth=8, width=2, layer="cl", shared=False, expansion=1, num_classes=4,
                in_channels=3, seed=0)
    bad = {
        "depth": [(0, "ValueError"), (7, "ValueError"), (-4, "ValueError"), (9.0, "ValueError"),
                  ("20", "ValueError"), (None, "ValueError"), (2**70, "huge"),
                  (np.int64(8), "ok")],
        "width": [(0, "ValueError"), (-1, "ValueError"), (1.5, "ValueError"), (None, "ValueError"),
                  ("2", "ValueError"), (2**40, "huge"), (2**70, "huge"), (np.int32(2), "ok")],
        "layer": [("conv", "ValueError"), (None, "ValueError"), (1, "ValueError"),
                  ("SAL", "ValueError")],
        "num_classes": [(0, "ValueError"), (-3, "ValueError"), (2.0, "ValueError"),
                        (2**62, "huge")],
        "in_channels": [(0, "ValueError"), (None, "ValueError"), (2**62, "huge")],
        "expansion": [(0, "ValueError"), (-1, "ValueError"), (float("nan"), "ValueError"),
                      (float("inf"), "ValueError"), ("1", "ValueError"), (None, "ValueError"),
                      (1e30, "huge")],
        "shared": [(True, "ValueError")],            # shared needs layer="sal"
        "seed": [(-1, "ValueError"), (1.5, "error"), ("a", "error"), (None, "ValueError"),
                 (2**64, "ok")],
    }
    rows = []
    for arg, vals in bad.items():
        for i, (v, exp) in enumerate(vals):
            layer = "sl" if arg == "expansion" else base["layer"]
            rows.append((arg, i, v, exp, layer))
    return rows


RESNET_ROWS = _resnet_rows()


@pytest.mark.parametrize("row", RESNET_ROWS, ids=[f"resnet-{r[0]}-{r[1]}" for r in RESNET_ROWS])
def test_resnet_args_matrix(row):
    arg, _, v, exp, layer = row
    kw = dict(depth=8, width=2, layer=layer, num_classes=4, in_channels=3, seed=0)
    kw[arg] = v
    status, got = _outcome(lambda: salnp.models.resnet(**kw))
    if exp == "ok":
        assert status == "ok", got
        return
    assert status != "ok", f"resnet accepted {arg}={v!r}"
    _check_error(got, exp, (arg, "resnet"))


def _forward_rows():
    rows = [(k, "equivalent") for k in FLOAT_EQUIV] + [(k, "TypeError") for k in FLOAT_TYPEERR]
    rows += [("extra_dim", "ValueError"), ("flattened", "ValueError"), ("zero_size", "ValueError"),
             ("zero_hw", "ValueError"), ("wrong_channels", "ValueError"), ("scalar", "ValueError"),
             ("tiny_1x1", "ok"), ("huge_view", "huge"), ("huge_view_hw", "huge"),
             ("odd_7x9", "ok")]
    return rows


def _forward_value(name, x):
    special = {
        "extra_dim": lambda: x[None], "flattened": lambda: x.reshape(-1),
        "zero_size": lambda: x[:0], "zero_hw": lambda: x[:, :, :0],
        "wrong_channels": lambda: x[:, :2], "scalar": lambda: 1.5,
        "tiny_1x1": lambda: x[:, :, :1, :1], "odd_7x9": lambda: np.ones((1, 3, 7, 9), np.float32),
        "huge_view": lambda: as_strided(x, (2**40,) + x.shape[1:], (0,) + x.strides[1:]),
        "huge_view_hw": lambda: as_strided(x, (1, 3, 2**20, 2**20), (0, x.strides[1], 0, 0)),
    }
    if name in special:
        return special[name]()
    return {**FLOAT_EQUIV, **FLOAT_TYPEERR}[name](x)


FORWARD_ROWS = [(target, n, e) for target in ("ResNet.forward", "ResNet.forward_hard",
                                               "InferenceNet.forward")
                for n, e in _forward_rows()]


@pytest.mark.parametrize("row", FORWARD_ROWS, ids=[f"{r[0]}-{r[1]}" for r in FORWARD_ROWS])
def test_forward_matrix(row):
    target, name, exp = row
    net = _net("sal")
    if target == "InferenceNet.forward":
        f = salnp.export(net).forward
    else:
        hard = target.endswith("hard")
        f = lambda x: net.forward(x, train=False, hard=hard)  # noqa: E731
    x = _forward_value(name, XN)
    snap = _snap(x)
    status, got = _outcome(lambda: f(x))
    if snap is not None:
        np.testing.assert_array_equal(x, snap)
    if exp == "equivalent":
        ref_status, ref = _outcome(lambda: f(_contig_equivalent(x, "F")))
        assert status == ref_status, (got, ref)
        if status == "ok":
            _same(got, ref)
        return
    if exp == "ok":
        assert status == "ok", got
        assert got.shape == (np.shape(x)[0], 4)
        return
    assert status != "ok", f"forward accepted {name}"
    _check_error(got, exp, ("x", "forward"))


BACKWARD_ROWS = [(k, "equivalent") for k in FLOAT_EQUIV if k != "broadcast0"] + \
    [(k, "TypeError") for k in FLOAT_TYPEERR] + \
    [("extra_dim", "ValueError"), ("transposed", "ValueError"), ("zero_size", "ValueError"),
     ("wrong_batch", "ValueError"), ("scalar", "ValueError")]


@pytest.mark.parametrize("row", BACKWARD_ROWS, ids=[f"ResNet.backward-{r[0]}" for r in BACKWARD_ROWS])
def test_backward_matrix(row):
    name, exp = row
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=3)
    net.forward(XN, train=True)
    g = _f((2, 4), seed=31)
    special = {"extra_dim": lambda: g[None], "transposed": lambda: g.T.copy(),
               "zero_size": lambda: g[:0], "wrong_batch": lambda: g[:1], "scalar": lambda: 1.0}
    v = special[name]() if name in special else {**FLOAT_EQUIV, **FLOAT_TYPEERR}[name](g)

    def grads_of(value):
        net.zero_grad()
        net.backward(value)
        return net.arena.grads.copy()
    status, got = _outcome(lambda: grads_of(v))
    if exp == "equivalent":
        ref_status, ref = _outcome(lambda: grads_of(_contig_equivalent(v, "F")))
        assert status == ref_status == "ok", (got, ref)
        _same(got, ref)
        return
    assert status != "ok", f"backward accepted {name}"
    _check_error(got, exp, ("grad_logits", "backward"))


def _state_rows():
    return [("int_values", "ok"), ("float64", "ok"), ("list", "ok"), ("bigendian", "ok"),
            ("noncontig", "ok"), ("complex", "TypeError"), ("object", "TypeError"),
            ("str", "TypeError"), ("None_value", "ValueError"), ("wrong_shape", "ValueError"),
            ("transposed", "ValueError"), ("nan", "ValueError"), ("inf", "ValueError"),
            ("missing_key", "KeyError"), ("extra_key", "KeyError"), ("not_a_dict", "TypeError"),
            ("None_state", "TypeError"), ("huge_view", "ValueError")]


STATE_ROWS = _state_rows()


@pytest.mark.parametrize("row", STATE_ROWS, ids=[f"load_state_dict-{r[0]}" for r in STATE_ROWS])
def test_load_state_dict_matrix(row):
    name, exp = row
    net = salnp.models.resnet(8, 2, "cl", num_classes=4, seed=3)
    before = net.arena.params.copy()
    sd = net.state_dict()
    key = "layer1.0.conv1.weight"
    w = sd[key]
    mk = {"int_values": lambda: np.round(w * 4).astype(np.int16), "float64": lambda: w.astype(float),
          "list": lambda: w.tolist(), "bigendian": lambda: w.astype(">f4"),
          "noncontig": lambda: _noncontig(w), "complex": lambda: w.astype(complex),
          "object": lambda: w.astype(object), "str": lambda: w.astype(str),
          "None_value": lambda: None, "wrong_shape": lambda: w.reshape(-1),
          "transposed": lambda: w.T, "nan": lambda: _with(w, np.nan),
          "inf": lambda: _with(w, np.inf),
          "huge_view": lambda: as_strided(w, (2**40,) + w.shape[1:], (0,) + w.strides[1:])}
    state = dict(sd)
    if name in mk:
        state[key] = mk[name]()
    elif name == "missing_key":
        del state[key]
    elif name == "extra_key":
        state["bogus"] = w
    elif name == "not_a_dict":
        state = [1, 2, 3]
    elif name == "None_state":
        state = None
    status, got = _outcome(lambda: net.load_state_dict(state))
    if exp == "ok":
        assert status == "ok", got
        np.testing.assert_array_equal(dict(net.named_parameters())[key],
                                      np.asarray(state[key], np.float32))
        return
    assert status != "ok", f"load_state_dict accepted {name}"
    if exp == "KeyError":
        assert isinstance(got, KeyError) and ("bogus" in str(got) or key in str(got))
    else:
        _check_error(got, exp, (key, "load_state_dict", "state"))
    if name not in ("missing_key", "extra_key"):
        # a refused state leaves the network unchanged only when refused before copying;
        # all refusals of one entry happen before that entry is written
        assert np.all(np.isfinite(net.arena.params))
    del before


FIT_ROWS = [
    ("epochs", 0, "ValueError"), ("epochs", -1, "ValueError"), ("epochs", 1.5, "ValueError"),
    ("epochs", None, "ValueError"), ("epochs", "1", "ValueError"),
    ("batch_size", 0, "ValueError"), ("batch_size", 2.0, "ValueError"),
    ("batch_size", None, "ValueError"), ("batch_size", 2**70, "ok"),
    ("lr", float("nan"), "ValueError"), ("lr", float("inf"), "ValueError"), ("lr", -0.1, "ValueError"),
    ("lr", None, "ValueError"), ("lr", "0.1", "ValueError"),
    ("momentum", float("nan"), "ValueError"), ("momentum", -1, "ValueError"),
    ("weight_decay", float("inf"), "ValueError"),
    ("beta", (float("nan"), 1.0), "ValueError"), ("beta", (1.0, float("inf")), "ValueError"),
    ("beta", -1.0, "ValueError"), ("beta", (1.0,), "ValueError"), ("beta", (1, 2, 3), "ValueError"),
    ("beta", None, "error"), ("beta", "a", "error"), ("beta", (0.0, 1.0), "ValueError"),
    ("lr_schedule", "bogus", "ValueError"), ("beta_schedule", "bogus", "ValueError"),
    ("milestones", None, "ok"),   # None: the layer family's solver (net.solver)
    ("milestones", "ab", "ValueError"), ("milestones", (-1,), "ValueError"),
    ("milestones", (float("nan"),), "ValueError"),
    ("threads", 0, "ValueError"), ("threads", -1, "ValueError"), ("threads", 2**70, "ValueError"),
    ("threads", "x", "error"),
    ("seed", -1, "ValueError"), ("seed", 1.5, "error"), ("seed", None, "error"),
    ("train", None, "TypeError"), ("train", [1, 2], "TypeError"), ("train", XN, "TypeError"),
    ("test", "data", "TypeError"), ("test", 3, "TypeError"),
    ("callback", 3, "TypeError"), ("checkpoint", 3, "TypeError"),
    ("checkpoint", "__dir__", "ValueError"),
    ("resume", "__corrupt__", "ValueError"), ("threads", True, "ValueError"), ("net", None, "TypeError"),
    ("train", "__wrong_channels__", "ValueError"), ("train", "__more_classes__", "ValueError"),
]


@pytest.mark.parametrize("row", FIT_ROWS, ids=[f"fit-{r[0]}-{i}" for i, r in enumerate(FIT_ROWS)])
def test_fit_matrix(row, tmp_path):
    arg, v, exp = row
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=3)
    data = _tiny_data()
    kw = dict(epochs=1, batch_size=6, lr=0.05, progress=False, beta=(1.0, 2.0))
    special = v if isinstance(v, str) else None
    if special == "__dir__":
        v = tmp_path
    elif special == "__corrupt__":
        v = tmp_path / "corrupt.npz"
        v.write_bytes(b"PK\x03\x04garbage")
    elif special == "__wrong_channels__":
        v = _tiny_data(c=1)
    elif special == "__more_classes__":
        v = _tiny_data(classes=7)
    kw[arg] = v
    target = kw.pop("net", net)
    train = kw.pop("train", data)
    status, got = _outcome(lambda: salnp.fit(target, train, **kw))
    if status == "ok":
        assert exp == "ok", f"fit accepted {arg}={v!r}"
        assert len(got) == 1
        return
    _check_error(got, exp, (arg, "fit", "SGD", str(v)))


def test_fit_missing_resume_file(tmp_path):
    net = salnp.models.resnet(8, 2, "cl", num_classes=4)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        salnp.fit(net, _tiny_data(), epochs=1, progress=False, resume=tmp_path / "missing.npz")


COUNT_ROWS = [
    ("input_shape", (3,), "ValueError"), ("input_shape", (3, 0, 8), "ValueError"),
    ("input_shape", (3, -8, 8), "ValueError"), ("input_shape", (2, 8, 8), "ValueError"),
    ("input_shape", (3, 8.5, 8), "ValueError"), ("input_shape", None, "ok"),
    ("input_shape", "abc", "ValueError"), ("input_shape", (3, 2**31, 2**31), "huge"),
    ("input_shape", (3, 2**40, 2**40), "huge"), ("input_shape", (3, 2**62, 1), "huge"),
    ("input_shape", (3, 2**70, 1), "huge"), ("input_shape", (3, 1, 1), "ok"),
    ("input_shape", np.array([3, 9, 7]), "ok"), ("input_shape", (3, 2**16, 2**16), "huge_or_ok"),
    ("mode", "bogus", "ValueError"), ("mode", None, "ok"), ("mode", 1, "ValueError"),
    ("net", None, "TypeError"), ("net", "resnet20", "TypeError"), ("net", 3, "TypeError"),
]


@pytest.mark.parametrize("target", ["ResNet", "InferenceNet"])
@pytest.mark.parametrize("row", COUNT_ROWS, ids=[f"count-{r[0]}-{i}" for i, r in enumerate(COUNT_ROWS)])
def test_count_matrix(row, target):
    arg, v, exp = row
    net = _net("sal") if target == "ResNet" else salnp.export(_net("sal"))
    kw = dict(net=net, input_shape=(3, 8, 8))
    if target == "InferenceNet" and arg == "mode" and v not in (None, "inference"):
        exp = "ValueError"
    kw[arg] = v
    status, got = _outcome(lambda: salnp.count(**kw))
    if status == "ok":
        assert exp in ("ok", "huge_or_ok"), f"count accepted {arg}={v!r}"
        assert got.macs >= 0 and got.params > 0
        return
    _check_error(got, "huge" if exp == "huge_or_ok" else exp, (arg, "count", "input"))


EXPORT_ROWS = [("beta", float("nan"), "ValueError"), ("beta", float("inf"), "ValueError"),
               ("beta", -1.0, "ValueError"), ("beta", "a", "error"), ("beta", 1j, "error"),
               ("beta", 1e300, "ok"), ("beta", np.float32(3.0), "ok"), ("beta", 0, "ok"),
               ("net", None, "TypeError"), ("net", "x", "TypeError"), ("net", {}, "TypeError"),
               ("net_beta", float("nan"), "ValueError")]


@pytest.mark.parametrize("row", EXPORT_ROWS, ids=[f"export-{r[0]}-{i}" for i, r in enumerate(EXPORT_ROWS)])
def test_export_matrix(row):
    arg, v, exp = row
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=3)
    kw = dict(net=net)
    if arg == "net_beta":
        net.beta = v
        arg = "beta"
    else:
        kw[arg] = v
    status, got = _outcome(lambda: salnp.export(**kw))
    if status == "ok":
        assert exp == "ok", f"export accepted {arg}={v!r}"
        assert np.all(np.isfinite(got.forward(XN)))
        return
    _check_error(got, exp, (arg, "export"))


IO_ROWS = ["none_path", "int_path", "dir_path", "missing", "empty", "truncated", "garbage",
           "zip_not_npz", "foreign_npz", "pickled_object", "wrong_format", "bad_json",
           "wrong_kind", "config_not_dict", "config_huge_width", "config_bad_depth",
           "missing_array", "wrong_shape_array", "nan_array", "complex_array",
           "training_ckpt", "bitflip", "save_none_net", "save_none_path", "save_int_path"]


def _good_file(tmp_path):
    p = tmp_path / "good.npz"
    salnp.save(salnp.models.resnet(8, 2, "cl", num_classes=4), p)
    return p


def _rewrite(src, dst, edit):
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    edit(d)
    np.savez(dst, **d)
    return dst


@pytest.mark.parametrize("name", IO_ROWS)
def test_save_load_matrix(name, tmp_path):
    good = _good_file(tmp_path)
    p = tmp_path / f"{name}.npz"
    import json
    cfg = lambda d: json.loads(str(d["__config__"]))  # noqa: E731
    setcfg = lambda d, c: d.__setitem__("__config__", np.array(json.dumps(c)))  # noqa: E731
    makers = {
        "empty": lambda: p.write_bytes(b""),
        "truncated": lambda: p.write_bytes(good.read_bytes()[:300]),
        "garbage": lambda: p.write_bytes(os.urandom(2000)),
        "zip_not_npz": lambda: __import__("zipfile").ZipFile(p, "w").writestr("a.txt", "hello"),
        "foreign_npz": lambda: np.savez(p, a=np.arange(3)),
        "pickled_object": lambda: np.savez(p, a=np.array([{"x": 1}], dtype=object),
                                           __format__=1, __kind__="network", __config__="{}"),
        "wrong_format": lambda: _rewrite(good, p, lambda d: d.__setitem__("__format__",
                                                                          np.array(99))),
        "bad_json": lambda: _rewrite(good, p, lambda d: d.__setitem__("__config__",
                                                                      np.array("{not json"))),
        "wrong_kind": lambda: _rewrite(good, p, lambda d: d.__setitem__("__kind__",
                                                                        np.array("inference"))),
        "config_not_dict": lambda: _rewrite(good, p, lambda d: setcfg(d, {"model": [1, 2]})),
        "config_huge_width": lambda: _rewrite(good, p, lambda d: setcfg(
            d, {"model": dict(cfg(d)["model"], width=10**6)})),
        "config_bad_depth": lambda: _rewrite(good, p, lambda d: setcfg(
            d, {"model": dict(cfg(d)["model"], depth=7)})),
        "missing_array": lambda: _rewrite(good, p, lambda d: d.pop("linear.bias")),
        "wrong_shape_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.zeros(5, np.float32))),
        "nan_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.full(4, np.nan, np.float32))),
        "complex_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.zeros(4, np.complex64))),
        "bitflip": lambda: p.write_bytes(bytes(b ^ (0xFF if i == len(good.read_bytes()) // 2 else 0)
                                               for i, b in enumerate(good.read_bytes()))),
    }
    if name == "none_path":
        target, exp = None, "TypeError"
    elif name == "int_path":
        target, exp = 12345, "error"
    elif name == "dir_path":
        target, exp = tmp_path, "ValueError"
    elif name == "missing":
        with pytest.raises(FileNotFoundError):
            salnp.load(tmp_path / "nope.npz")
        return
    elif name == "training_ckpt":
        ck = tmp_path / "ck.npz"
        salnp.fit(salnp.models.resnet(8, 2, "cl", num_classes=4), _tiny_data(), epochs=1,
                  progress=False, checkpoint=ck)
        assert salnp.load(ck).config["width"] == 2      # a training checkpoint loads as a net
        return
    elif name.startswith("save_"):
        net = salnp.models.resnet(8, 2, "cl", num_classes=4)
        args = {"save_none_net": (None, tmp_path / "s.npz"), "save_none_path": (net, None),
                "save_int_path": (net, 3.5)}[name]
        status, got = _outcome(lambda: salnp.save(*args))
        assert status != "ok"
        _check_error(got, "TypeError", ("net", "path", "save"))
        return
    else:
        makers[name]()
        target, exp = p, "ValueError"
    status, got = _outcome(lambda: salnp.load(target))
    assert status != "ok", f"load accepted {name}"
    _check_error(got, exp, (str(target), "path", "load"))


# ---------------------------------------------------------------- data readers

DATASET_ROWS = [
    ("images", "float32", "ValueError"), ("images", "int64", "ValueError"),
    ("images", "3d", "ValueError"), ("images", "zero", "ValueError"), ("images", "None", "ValueError"),
    ("images", "noncontig", "ok"), ("images", "readonly", "ok"), ("images", "list", "error"),
    ("labels", "float", "ValueError"), ("labels", "negative", "ValueError"),
    ("labels", "short", "ValueError"), ("labels", "2d", "ValueError"), ("labels", "None", "ValueError"),
    ("labels", "uint64_huge", "ValueError"), ("labels", "list", "ok"), ("labels", "bool", "ValueError"),
    ("mean", "nan", "ValueError"), ("mean", "short", "ValueError"), ("mean", "str", "error"),
    ("std", "zero", "ValueError"), ("std", "negative", "ValueError"), ("std", "inf", "ValueError"),
    ("pad", "negative", "ValueError"), ("pad", "str", "error"), ("pad", "huge", "error"),
    ("pad", "1025", "ValueError"), ("pad", "float", "ValueError"),
    ("classes", "too_few", "ValueError"),
]


@pytest.mark.parametrize("row", DATASET_ROWS, ids=[f"Dataset-{r[0]}-{r[1]}" for r in DATASET_ROWS])
def test_dataset_matrix(row):
    arg, name, exp = row
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 2, 4, 4), dtype=np.uint8)
    kw = dict(images=imgs, labels=np.array([0, 1, 2, 0, 1, 2]), pad=1)
    vals = {
        ("images", "float32"): imgs.astype(np.float32), ("images", "int64"): imgs.astype(np.int64),
        ("images", "3d"): imgs[0], ("images", "zero"): imgs[:0], ("images", "None"): None,
        ("images", "noncontig"): _noncontig(imgs), ("images", "readonly"): _readonly(imgs),
        ("images", "list"): imgs.tolist(),
        ("labels", "float"): np.zeros(6), ("labels", "negative"): np.array([0, -1, 0, 0, 0, 0]),
        ("labels", "short"): np.zeros(5, int), ("labels", "2d"): np.zeros((6, 1), int),
        ("labels", "None"): None, ("labels", "uint64_huge"): np.full(6, 2**63 + 1, np.uint64),
        ("labels", "list"): [0, 1, 2, 0, 1, 2], ("labels", "bool"): np.zeros(6, bool),
        ("mean", "nan"): [np.nan, 0.5], ("mean", "short"): [0.5], ("mean", "str"): "ab",
        ("std", "zero"): [0.0, 1.0], ("std", "negative"): [-1.0, 1.0], ("std", "inf"): [np.inf, 1.0],
        ("pad", "negative"): -1, ("pad", "str"): "x", ("pad", "huge"): 2**70, ("pad", "1025"): 1025, ("pad", "float"): 1.0,
        ("classes", "too_few"): ["a"],
    }
    kw[arg] = vals[(arg, name)]
    status, got = _outcome(lambda: Dataset(**kw))
    if exp == "ok":
        assert status == "ok", got
        ref = Dataset(np.ascontiguousarray(np.asarray(kw["images"])), np.asarray(kw["labels"]), pad=1)
        np.testing.assert_array_equal(got.batch(np.arange(6)), ref.batch(np.arange(6)))
        return
    if status == "ok" and (arg, name) == ("pad", "huge"):
        # accepted as a number: the first augmented batch must refuse it
        with pytest.raises(ValueError, match="pad"):
            got.batch(np.arange(2), augment=True)
        return
    assert status != "ok", f"Dataset accepted {arg}={name}"
    _check_error(got, exp, (arg, "Dataset"))


READER_ROWS = ["cifar10_none", "cifar10_int", "cifar10_missing", "cifar10_file_not_dir",
               "cifar100_bad_labels", "fashion_missing", "load_bad_name", "load_no_root",
               "cifar10_empty_file", "cifar10_truncated", "fashion_bad_magic"]


@pytest.mark.parametrize("name", READER_ROWS)
def test_readers_matrix(name, tmp_path):
    d = salnp.data
    (tmp_path / "x.txt").write_text("hello")
    calls = {
        "cifar10_none": (lambda: d.cifar10(None), (TypeError,)),
        "cifar10_int": (lambda: d.cifar10(3), (TypeError,)),
        "cifar10_missing": (lambda: d.cifar10(tmp_path / "nope"), (FileNotFoundError,)),
        "cifar10_file_not_dir": (lambda: d.cifar10(tmp_path / "x.txt"), (FileNotFoundError,
                                                                          ValueError)),
        "cifar100_bad_labels": (lambda: d.cifar100(tmp_path, labels="medium"), (ValueError,)),
        "fashion_missing": (lambda: d.fashion_mnist(tmp_path / "nope"), (FileNotFoundError,)),
        "load_bad_name": (lambda: d.load("imagenet"), (ValueError,)),
        "load_no_root": (lambda: d.load("cifar10"), (ValueError,)),
        "cifar10_empty_file": (lambda: ((tmp_path / "test.bin").write_bytes(b""),
                                        d.cifar10(tmp_path, train=False)), (ValueError,)),
        "cifar10_truncated": (lambda: ((tmp_path / "test.bin").write_bytes(b"\x01" * 3000),
                                       d.cifar10(tmp_path, train=False)), (ValueError,)),
        "fashion_bad_magic": (lambda: ((tmp_path / "train-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x09\x03" + b"\x00" * 12), (tmp_path / "train-labels-idx1-ubyte")
            .write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00"), d.fashion_mnist(tmp_path)),
            (ValueError,)),
    }
    f, allowed = calls[name]
    with pytest.raises(allowed) as e:
        f()
    assert str(e.value)


BATCH_ROWS = [("index", "float", "TypeError"), ("index", "2d", "ValueError"),
              ("index", "empty", "ValueError"), ("index", "negative", "ValueError"),
              ("index", "too_big", "ValueError"), ("index", "None", "TypeError"),
              ("index", "list", "ok"), ("index", "noncontig", "ok"), ("index", "bigendian", "ok"),
              ("index", "uint8", "ok"), ("index", "bool", "TypeError"),
              ("seed", "negative", "ValueError"), ("seed", "float", "TypeError"),
              ("epoch", "2**64", "ValueError"), ("layout", "NHWC", "ValueError"),
              ("out", "float64", "TypeError"), ("out", "readonly", "TypeError"),
              ("out", "wrong_shape", "ValueError"), ("out", "noncontig", "TypeError")]


@pytest.mark.parametrize("row", BATCH_ROWS, ids=[f"batch-{r[0]}-{r[1]}" for r in BATCH_ROWS])
def test_batch_matrix(row):
    arg, name, exp = row
    ds = _tiny_data()
    idx = np.array([3, 0, 5], np.int64)
    vals = {("index", "float"): idx.astype(float), ("index", "2d"): idx[None],
            ("index", "empty"): idx[:0], ("index", "negative"): np.array([0, -1]),
            ("index", "too_big"): np.array([12]), ("index", "None"): None,
            ("index", "list"): idx.tolist(), ("index", "noncontig"): _noncontig(idx),
            ("index", "bigendian"): idx.astype(">i8"), ("index", "uint8"): idx.astype(np.uint8),
            ("index", "bool"): np.ones(3, bool),
            ("seed", "negative"): -1, ("seed", "float"): 1.5, ("epoch", "2**64"): 2**64,
            ("layout", "NHWC"): "NHWC", ("out", "float64"): np.empty((3, 3, 8, 8)),
            ("out", "readonly"): _readonly(np.empty((3, 3, 8, 8), np.float32)),
            ("out", "wrong_shape"): np.empty((4, 3, 8, 8), np.float32),
            ("out", "noncontig"): np.empty((8, 8, 3, 3), np.float32).T}
    kw = dict(index=idx, augment=True, seed=1, epoch=2)
    kw[arg] = vals[(arg, name)]
    status, got = _outcome(lambda: ds.batch(**kw))
    if exp == "ok":
        assert status == "ok", got
        np.testing.assert_array_equal(got, ds.batch(np.asarray(kw["index"]).astype(np.int64),
                                                     augment=True, seed=1, epoch=2))
        return
    assert status != "ok", f"batch accepted {arg}={name}"
    _check_error(got, exp, (arg,))


# ---------------------------------------------------------------- hostile files, shared state (issue 14)
#
# One row per failure class of the second reliability round; each row builds its hostile
# input, makes the call, and checks the exact outcome AND that nothing else changed (a
# FIFO never blocks, a device node is never replaced, a refused load leaves the network
# as it was, a bomb is refused before its data is decompressed).

import json as _json
import signal as _signal
import stat as _stat
import tracemalloc as _tracemalloc
import zipfile as _zipfile
import zlib as _zlib


class _Alarm:
    """Fail instead of hanging: SIGALRM after secs (a blocking open/read is interrupted)."""

    def __init__(self, secs=10):
        self.secs = secs

    def __enter__(self):
        def boom(*_):
            raise TimeoutError(f"blocked for {self.secs} s")
        self.old = _signal.signal(_signal.SIGALRM, boom)
        _signal.alarm(self.secs)

    def __exit__(self, *exc):
        _signal.alarm(0)
        _signal.signal(_signal.SIGALRM, self.old)


def _state_of(net):
    return {k: v.copy() for k, v in net.state_dict().items()}


def _same_state(net, ref):
    got = net.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def _small(layer="cl", **kw):
    return salnp.models.resnet(8, 2, layer, num_classes=4, **kw)


def _members(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_zip(path, members, method=_zipfile.ZIP_STORED):
    """members: list of (name, npy bytes) (duplicates allowed, as a hostile writer does)."""
    import io as _io
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # zipfile warns on duplicate names
        with _zipfile.ZipFile(path, "w", method) as z:
            for name, data in members:
                z.writestr(name, data)


def _npy(a):
    import io as _io
    b = _io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def _npy_header_only(shape, dtype="<f4"):
    """An .npy header announcing shape, with no data."""
    import io as _io
    b = _io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False,
                                             "shape": tuple(shape)})
    return b.getvalue()


def _file_members(path):
    with _zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


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


def _h_load_fifo(tmp_path):
    p = tmp_path / "fifo.npz"
    os.mkfifo(p)
    for fn in (salnp.load, salnp.export.load):
        _expect_load_error(p, "FIFO", fn=fn)


def _h_fit_resume_fifo(tmp_path):
    p = tmp_path / "fifo.npz"
    os.mkfifo(p)
    net = _small()
    ref = _state_of(net)
    with _Alarm(20), pytest.raises(ValueError, match="FIFO"):
        salnp.fit(net, _tiny_data(), epochs=1, progress=False, resume=p)
    _same_state(net, ref)
    with _Alarm(20), pytest.raises(ValueError, match="checkpoint: .*FIFO"):
        salnp.fit(net, _tiny_data(), epochs=1, progress=False, checkpoint=p)   # before training
    _same_state(net, ref)
    assert _stat.S_ISFIFO(os.lstat(p).st_mode)


def _h_load_device(tmp_path):
    _expect_load_error(os.devnull, "character device")


def _h_load_dir_export(tmp_path):
    _expect_load_error(tmp_path, "directory", fn=salnp.export.load)


def _h_save_fifo_refused(tmp_path):
    p = tmp_path / "fifo.npz"
    os.mkfifo(p)
    with _Alarm(20), pytest.raises(ValueError, match="FIFO"):
        salnp.save(_small(), p)
    assert _stat.S_ISFIFO(os.lstat(p).st_mode)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def _h_save_device_refused(tmp_path):
    p = tmp_path / "null"
    try:
        os.mknod(p, 0o666 | _stat.S_IFCHR, os.makedev(1, 3))   # a /dev/null of our own
    except PermissionError:
        p = os.devnull                                          # not root: the real one
    before = os.lstat(p)
    with pytest.raises(ValueError, match="character device"):
        salnp.save(_small(), p)
    after = os.lstat(p)
    assert _stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    net = _small()
    inf = salnp.export(net.eval())
    with pytest.raises(ValueError, match="character device"):
        inf.save(p)
    assert _stat.S_ISCHR(os.lstat(p).st_mode)


def _h_save_symlink_writes_through(tmp_path):
    real = tmp_path / "real.npz"
    link = tmp_path / "link.npz"
    salnp.save(_small(seed=1), real)
    os.chmod(real, 0o640)
    os.symlink(real.name, link)
    net = _small(seed=2)
    salnp.save(net, link)
    assert os.path.islink(link) and os.readlink(link) == real.name
    assert _stat.S_IMODE(os.stat(real).st_mode) == 0o640      # mode kept
    np.testing.assert_array_equal(salnp.load(real).arena.params, net.arena.params)
    dangling = tmp_path / "dangling.npz"
    os.symlink("target-to-be.npz", dangling)
    salnp.save(net, dangling)
    assert os.path.islink(dangling) and (tmp_path / "target-to-be.npz").is_file()
    fifo_link = tmp_path / "fifolink.npz"
    os.mkfifo(tmp_path / "f")
    os.symlink("f", fifo_link)
    with _Alarm(20), pytest.raises(ValueError, match="FIFO"):
        salnp.save(net, fifo_link)
    assert os.path.islink(fifo_link)


def _h_beta_saved(tmp_path):
    net = _small("sal")
    net.beta = 37.5
    p = tmp_path / "b.npz"
    salnp.save(net, p)
    got = salnp.load(p)
    assert got.beta == 37.5
    x = _f((2, 3, 8, 8), seed=40)
    np.testing.assert_array_equal(got.forward(x, train=False), net.forward(x, train=False))
    # a file from before beta was stored: loads with the documented default 1.0
    d = _members(p)
    c = _json.loads(str(d["__config__"]))
    del c["beta"]
    d["__config__"] = np.array(_json.dumps(c))
    old = tmp_path / "old.npz"
    np.savez(old, **d)
    assert salnp.load(old).beta == 1.0
    for bad in (-1.0, "x", None, True, float("nan")):
        c["beta"] = bad
        d["__config__"] = np.array(_json.dumps(c))
        np.savez(old, **d)
        _expect_load_error(old, "beta")


def _h_duplicate_member(tmp_path):
    good = _good_file(tmp_path)
    m = _file_members(good)
    bias = [x for x in m if x[0] == "linear.bias.npy"][0]
    p = tmp_path / "dup.npz"
    _write_zip(p, m + [(bias[0], _npy(np.full(4, 7.0, np.float32)))])
    _expect_load_error(p, "duplicate member 'linear.bias.npy'")


def _h_foreign_member(tmp_path):
    p = tmp_path / "extra.npz"
    _write_zip(p, _file_members(_good_file(tmp_path)) + [("notes.txt", b"hi")])
    _expect_load_error(p, "notes.txt")


def _h_unsupported_compression(tmp_path):
    p = tmp_path / "bz.npz"
    _write_zip(p, _file_members(_good_file(tmp_path)), _zipfile.ZIP_BZIP2)
    _expect_load_error(p, "compression method")


def _h_corrupt_deflate(tmp_path):
    good = _good_file(tmp_path)
    p = tmp_path / "deflate.npz"
    _write_zip(p, _file_members(good), _zipfile.ZIP_DEFLATED)
    raw = bytearray(p.read_bytes())
    with _zipfile.ZipFile(p) as z:
        info = z.getinfo("conv1.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2, start + min(info.compress_size, 40)):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    _expect_load_error(p, "conv1.weight")


def _h_npz_bomb_member(tmp_path):
    """A member whose header announces 2**26 floats (256 MB of zeros, deflated to ~250 kB):
    refused from its header (shape != the config's), before its data is decompressed."""
    good = _good_file(tmp_path)
    p = tmp_path / "bomb.npz"
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    with _zipfile.ZipFile(p, "w", _zipfile.ZIP_DEFLATED) as z:
        for name, data in m:
            z.writestr(name, data)
        with z.open("linear.bias.npy", "w", force_zip64=True) as f:
            f.write(_npy_header_only((2**26,)))
            chunk = bytes(1 << 22)
            for _ in range(64):
                f.write(chunk)
    assert p.stat().st_size < 2 << 20
    _tracemalloc.start()
    try:
        _expect_load_error(p, "linear.bias has shape (67108864,), expected (4,)")
        peak = _tracemalloc.get_traced_memory()[1]
    finally:
        _tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MiB while refusing the bomb"


def _h_lying_member_size(tmp_path):
    """A stored member whose header announces more data than the member holds, and a
    header whose size disagrees with the zip directory: refused before reading."""
    good = _good_file(tmp_path)
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    p = tmp_path / "lie.npz"
    _write_zip(p, m + [("linear.bias.npy", _npy_header_only((4,)) + b"\0" * 8)])
    _expect_load_error(p, "linear.bias")


def _h_config_bomb_expansion(tmp_path):
    """An SL file whose config asks for expansion 1000 (a network of gigabytes) with the
    small arrays of expansion 1: refused before any network is built."""
    p = tmp_path / "sl.npz"
    salnp.save(_small("sl"), p)
    d = _members(p)
    c = _json.loads(str(d["__config__"]))
    c["model"]["expansion"] = 1000
    d["__config__"] = np.array(_json.dumps(c))
    np.savez(p, **d)
    _tracemalloc.start()
    try:
        _expect_load_error(p, "does not match the arrays")
        peak = _tracemalloc.get_traced_memory()[1]
    finally:
        _tracemalloc.stop()
    assert peak < 32 << 20


def _h_config_deep_nesting(tmp_path):
    d = _members(_good_file(tmp_path))
    d["__config__"] = np.array('{"model": ' + "[" * 200000 + "]" * 200000 + "}")
    p = tmp_path / "deep.npz"
    np.savez(p, **d)
    _expect_load_error(p, "config")


def _h_metadata_wrong_types(tmp_path):
    good = _good_file(tmp_path)
    edits = {"__kind__": np.array([1, 2]), "__format__": np.array("1"),
             "__config__": np.array(3.5)}
    for k, v in edits.items():
        d = _members(good)
        d[k] = v
        p = tmp_path / f"meta{k}.npz"
        np.savez(p, **d)
        _expect_load_error(p, k if k != "__format__" else "format")
    d = _members(good)
    d["__config__"] = np.array("[1, 2]")
    np.savez(p, **d)
    _expect_load_error(p, "config")


def _h_config_model_garbage(tmp_path):
    good = _good_file(tmp_path)
    for model in ({"width": "x"}, {"depth": 2**80, "width": 2, "in_channels": 3,
                                   "num_classes": 4}, {"depth": None}, {}):
        d = _members(good)
        d["__config__"] = np.array(_json.dumps({"model": model}))
        p = tmp_path / "garbage.npz"
        np.savez(p, **d)
        _expect_load_error(p)


def _h_object_and_structured_members(tmp_path):
    good = _good_file(tmp_path)
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    for dt in ("|O", [("a", "<f4")], "<c8"):
        p = tmp_path / "obj.npz"
        import io as _io
        b = _io.BytesIO()
        np.lib.format.write_array_header_1_0(b, {"descr": dt if isinstance(dt, str) else dt,
                                                 "fortran_order": False, "shape": (4,)})
        _write_zip(p, m + [("linear.bias.npy", b.getvalue() + b"\0" * 64)])
        _expect_load_error(p, "linear.bias")


def _h_export_load_hostile(tmp_path):
    inf = salnp.export(_small("sl").eval())
    shift_op = int(np.flatnonzero(inf.ops[:, 0] == salnp.export.IOP_SHIFT)[0])
    good = tmp_path / "inf.npz"
    inf.save(good)
    d0 = _members(good)
    cfg0 = _json.loads(str(d0["__config__"]))
    cases = {
        "names_not_list": lambda d, c: c.__setitem__("names", "abc"),
        "names_short": lambda d, c: c.__setitem__("names", c["names"][:-1]),
        "model_missing": lambda d, c: c.pop("model"),
        "info_list": lambda d, c: c.__setitem__("info", [1]),
        "ops_float": lambda d, c: d.__setitem__("ops", d["ops"].astype(np.float64)),
        "weights_f64": lambda d, c: d.__setitem__("weights", d["weights"].astype(np.float64)),
        "weights_nan": lambda d, c: d["weights"].__setitem__(0, np.nan),
        "pairs_3col": lambda d, c: d.__setitem__("pairs", np.zeros((2, 3), np.int32)),
        "extra_array": lambda d, c: d.__setitem__("evil", np.zeros(3)),
        "ops_missing": lambda d, c: d.pop("ops"),
        "ioff_huge": lambda d, c: d["ops"].__setitem__((shift_op, IFIELDS_IOFF), 2**63 - 1),
        "p0_overflow": lambda d, c: d["ops"].__setitem__((0, IFIELDS_P0), 2**63 - 5),
        "inp_negative": lambda d, c: d["ops"].__setitem__((0, 1), -3),
        "channels_huge": lambda d, c: d["channels"].__setitem__(1, 2**40),
    }
    for name, edit in cases.items():
        d = {k: v.copy() for k, v in d0.items()}
        c = _json.loads(_json.dumps(cfg0))
        edit(d, c)
        d["__config__"] = np.array(_json.dumps(c))
        p = tmp_path / f"{name}.npz"
        np.savez(p, **d)
        try:
            _expect_load_error(p, fn=salnp.export.load)
        except BaseException as e:
            raise AssertionError(f"export.load case {name}: {e}") from e


IFIELDS_IOFF = salnp.export.IFIELDS.index("ioff")
IFIELDS_P0 = salnp.export.IFIELDS.index("p0")


def _h_load_state_dict_all_or_nothing(tmp_path):
    for layer in ("cl", "sal", "sl"):
        net = _small(layer)
        ref = _state_of(net)
        keys = list(ref)
        last = keys[-1]
        bn_var = [k for k in keys if k.endswith("running_var")][-1]
        good = {k: v + 1 if v.dtype.kind == "f" and not k.endswith(("mask", "running_var"))
                else v for k, v in ref.items()}
        bads = {
            "shape": {**good, last: np.zeros(ref[last].size + 1)},
            "nan_late": {**good, keys[-2]: np.full(ref[keys[-2]].shape, np.nan)},
            "f64_overflow": {**good, keys[-2]: np.full(ref[keys[-2]].shape, 1e300)},
            "negative_var": {**good, bn_var: -np.ones(ref[bn_var].shape)},
            "complex": {**good, last: ref[last].astype(np.complex64)},
            "nbt_negative": {**good, **{k: np.array(-1) for k in keys
                                        if k.endswith("num_batches_tracked")}},
        }
        if layer == "sal":
            mk = [k for k in keys if k.endswith("mask")][-1]
            bads["mask_2"] = {**good, mk: np.full(ref[mk].shape, 2.0)}
            bads["mask_row_empty"] = {**good, mk: np.zeros(ref[mk].shape)}
        if layer == "sl":
            ok = [k for k in keys if k.endswith("offsets")][-1]
            bads["offsets_fraction"] = {**good, ok: ref[ok] + 0.5}
            bads["offsets_int64_huge"] = {**good, ok: ref[ok].astype(np.int64) + 2**40}
        for name, st in bads.items():
            with pytest.raises((ValueError, TypeError)) as e:
                net.load_state_dict(st)
            assert "load_state_dict" in str(e.value), (layer, name, e.value)
            _same_state(net, ref)
        net.load_state_dict(good)        # and a good one is taken whole
        assert np.array_equal(net.arena.params, np.concatenate(
            [good[k].reshape(-1) for k, _ in net.named_parameters()]))


def _h_fit_resume_bad_untouched(tmp_path):
    ck = tmp_path / "ck.npz"
    data = _tiny_data()
    salnp.fit(_small(), data, epochs=1, progress=False, checkpoint=ck)
    d0 = _members(ck)
    edits = {
        "late_nan": lambda d: d.__setitem__("linear.bias", np.full(4, np.nan, np.float32)),
        "momentum_nan": lambda d: d["optim.momentum"].__setitem__(-1, np.inf),
        "momentum_short": lambda d: d.__setitem__("optim.momentum", d["optim.momentum"][:-1]),
        "negative_var": lambda d: d["layer3.0.bn2.running_var"].__setitem__(0, -1.0),
        "epoch_string": lambda d: d.__setitem__("__config__", np.array(
            str(d["__config__"]).replace('"epoch": 1', '"epoch": "1"'))),
        "extra_array": lambda d: d.__setitem__("evil", np.zeros(2)),
    }
    for name, edit in edits.items():
        d = {k: v.copy() for k, v in d0.items()}
        edit(d)
        bad = tmp_path / f"{name}.npz"
        np.savez(bad, **d)
        net = _small(seed=5)
        ref = _state_of(net)
        mom = net.arena.momentum.copy()
        with pytest.raises(ValueError) as e:
            salnp.fit(net, data, epochs=2, progress=False, resume=bad)
        assert str(bad) in str(e.value), (name, e.value)
        _same_state(net, ref)
        np.testing.assert_array_equal(net.arena.momentum, mom)


def _h_sl_offsets_after_forward(tmp_path):
    net = _small("sl")
    x = _f((2, 3, 8, 8), seed=41)
    y0 = net.forward(x, train=False)
    st = net.state_dict()
    rng = np.random.default_rng(7)
    for k in st:
        if k.endswith("offsets"):
            st[k] = rng.integers(-1, 2, st[k].shape).astype(np.int32)
    net.load_state_dict(st)
    fresh = _small("sl")
    fresh.load_state_dict(st)
    y1 = net.forward(x, train=False)
    assert not np.array_equal(y0, y1)
    np.testing.assert_array_equal(y1, fresh.forward(x, train=False))
    # an in-place edit of the offsets takes effect as well
    m = net.layer1[0].shift
    m.offsets[...] = 0
    fresh.layer1[0].shift.offsets[...] = 0
    np.testing.assert_array_equal(net.forward(x, train=False), fresh.forward(x, train=False))


def _h_export_nonfinite_refused(tmp_path):
    for layer in ("cl", "sal", "sl"):
        for what in ("weight_nan", "mean_inf", "var_negative"):
            net = _small(layer)
            if what == "weight_nan":
                net.conv1.weight[0, 0, 0, 0] = np.nan
                key = "conv1.weight"
            elif what == "mean_inf":
                net.layer2[0].bn1.running_mean[0] = np.inf
                key = "layer2.0.bn1.running_mean"
            else:
                net.bn1.running_var[1] = -0.5
                key = "bn1.running_var"
            with pytest.raises(ValueError, match=key.replace(".", r"\.")):
                salnp.export(net.eval())
            with pytest.raises(ValueError, match=key.replace(".", r"\.")):
                salnp.save(net, tmp_path / "nan.npz")
            assert not (tmp_path / "nan.npz").exists()


def _h_forward_nan_keeps_bn(tmp_path):
    for layer in ("cl", "sal", "sl", "asl"):
        net = _small(layer)
        x = _f((2, 3, 8, 8), seed=42)
        net.forward(x, train=True)
        ref = _state_of(net)
        bad = x.copy()
        bad[1, 2, 3, 4] = np.nan
        with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(1, 2, 3, 4\)\)"):
            net.forward(bad, train=True)
        _same_state(net, ref)
        with pytest.raises(RuntimeError):
            net.backward(np.zeros((2, 4), np.float32))       # no forward to follow
        net.forward(bad, train=False)                           # eval: NaN out, no state
        _same_state(net, ref)
        # parameters that make the batch statistics NaN: refused, statistics restored
        net.conv1.weight[...] = np.inf
        ref = _state_of(net)
        with pytest.raises((FloatingPointError, ValueError)):
            net.forward(x, train=True)
        _same_state(net, ref)


def _h_dataset_huge_label(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 1, 2, 2), dtype=np.uint8)
    with _Alarm(10), pytest.raises(ValueError, match="labels"):
        Dataset(imgs, np.array([0, 1, 2**62]))
    assert Dataset(imgs, np.array([0, 1, 2**20 - 1])).num_classes == 2**20   # the bound
    assert Dataset(imgs, np.array([0, 1, 2]), classes=["a", "b", "c"]).num_classes == 3


def _h_lenient_numbers(tmp_path):
    ds = _tiny_data()
    for call, exc in ((lambda: ds.subset(1.9), TypeError), (lambda: ds.subset(True), TypeError),
                      (lambda: ds.subset("3"), TypeError), (lambda: ds.batches(1.9), TypeError),
                      (lambda: ds.batches(np.float64(4.0)), TypeError),
                      (lambda: ds.batches(0), ValueError), (lambda: ds.num_batches(0), ValueError),
                      (lambda: ds.num_batches(2.5), TypeError),
                      (lambda: ds.num_batches(-1, drop_last=True), ValueError)):
        with pytest.raises(exc, match="n=|batch_size="):
            call()          # raised at the call, not at the first next()
    assert ds.num_batches(np.int64(5)) == 3 and len(ds.subset(np.int32(4))) == 4


def _h_viz_lazy(tmp_path):
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


def _gz(path, data_chunks, kind="gz"):
    import gzip
    import lzma
    opener = gzip.open if kind == "gz" else lzma.open
    with opener(path, "wb") as f:
        for c in data_chunks:
            f.write(c)


def _h_data_bombs(tmp_path, monkeypatch=None):
    d = salnp.data
    old = d.MAX_FILE_BYTES
    d.MAX_FILE_BYTES = 8 << 20       # a small cap keeps the test fast; the logic is the same
    try:
        # .gz / .xz of zeros far beyond the cap: stops at the cap + 1 byte
        for kind in ("gz", "xz"):
            sub = tmp_path / kind
            sub.mkdir()
            _gz(sub / f"test.bin.{kind}", (bytes(1 << 22) for _ in range(16)), kind)
            _tracemalloc.start()
            try:
                with pytest.raises(d.DataFormatError, match="more than 8388608 bytes"):
                    d.cifar10(sub, train=False)
                peak = _tracemalloc.get_traced_memory()[1]
            finally:
                _tracemalloc.stop()
            assert peak < 40 << 20, f"{kind}: peak {peak / 2**20:.0f} MiB"
        # an IDX header announcing 2**40 bytes: refused from the header
        sub = tmp_path / "idx"
        sub.mkdir()
        hdr = b"\0\0\x08\x03" + (2**16).to_bytes(4, "big") * 2 + (2**8).to_bytes(4, "big")
        _gz(sub / "train-images-idx3-ubyte.gz", [hdr, bytes(1000)])
        _gz(sub / "train-labels-idx1-ubyte.gz", [b"\0\0\x08\x01" + (4).to_bytes(4, "big"),
                                                 bytes(4)])
        with pytest.raises(d.DataFormatError, match="announces 1099511627776 data bytes"):
            d.fashion_mnist(sub)
        # an IDX announcing 4x28x28 bytes followed by 64 MB of zeros: stops after 1 byte more
        hdr = b"\0\0\x08\x03" + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        _gz(sub / "train-images-idx3-ubyte.gz", [hdr] + [bytes(1 << 22) for _ in range(16)])
        _tracemalloc.start()
        try:
            with pytest.raises(d.DataFormatError, match="trailing"):
                d.fashion_mnist(sub)
            peak = _tracemalloc.get_traced_memory()[1]
        finally:
            _tracemalloc.stop()
        assert peak < 16 << 20
        # a FIFO where a data file should be: never opened for reading
        sub = tmp_path / "fifo"
        sub.mkdir()
        os.mkfifo(sub / "test.bin")
        with _Alarm(20), pytest.raises((FileNotFoundError, ValueError)):
            d.cifar10(sub, train=False)
    finally:
        d.MAX_FILE_BYTES = old


HOSTILE = {k[3:]: v for k, v in sorted(globals().items()) if k.startswith("_h_")}
HOSTILE_ROWS = list(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_matrix(name, tmp_path):
    HOSTILE[name](tmp_path)


# ---------------------------------------------------------------- the count

def matrix_size():
    per_count_target = 2
    return (len(OPS_ROWS) + len(RESNET_ROWS) + len(FORWARD_ROWS) + len(BACKWARD_ROWS)
            + len(STATE_ROWS) + len(FIT_ROWS) + per_count_target * len(COUNT_ROWS)
            + len(EXPORT_ROWS) + len(IO_ROWS) + len(DATASET_ROWS) + len(READER_ROWS)
            + len(BATCH_ROWS) + len(HOSTILE_ROWS))


def test_matrix_size():
    n = matrix_size()
    funcs = {r[0].name for r in OPS_ROWS}
    print(f"\nbad-input matrix: {n} cases ({len(OPS_ROWS)} over {len(funcs)} ops entries)")
    missing = set(ops.__all__) - {f.replace("_eval", "") for f in funcs}
    assert not missing, f"ops without matrix rows: {missing}"
    assert n > 1500
