"""Export: from a trained network to the binarised, folded inference network (DESIGN 1.4).

    inf = salnp.export(net)            # binarise SAL (p > 0.5 with net.beta), fold BN
    logits = inf.forward(x)            # x float32 (N, C, H, W), runs in libsal
    inf.count(); inf.save("net-inf.npz"); inf2 = salnp.export.load("net-inf.npz")

What the export does, op by op of the training program (salnp.models):
- every BN (eval mode: running statistics, eps 1e-5) that follows a convolution or SAL
  layer is folded into it: scale = gamma / sqrt(running_var + eps) multiplies each output
  row of the weights, bias = beta - running_mean * scale; the BN's ReLU and residual add
  run in the layer's epilogue;
- CL: a convolution with that bias;
- SAL, unshared: p = (softmax(beta * a / std a) > 0.5) exactly as the hard forward; each
  kept slice (o, i) becomes one pair (o, i, dy, dx) with the raw weight W[o, i, q*] (times
  the BN scale); slices with no p > 0.5 are dropped.  libsal runs the pairs with a gather
  kernel that fuses the offsets into its addressing (no shifted copies; sal/infer.h);
- SAL, shared: one shift per kept input channel (a pure shift, dropped channels removed)
  then a 1x1 convolution with bias;
- SL: the shift, then the 1x1 convolution with bias (its trailing residual add is fused
  into that convolution's epilogue, after the ReLU as in the block);
- ASL: offsets rounded to the nearest integer (``inf.info["asl_max_rounding"]`` is the
  largest |offset - round(offset)|; 0 keeps the outputs exact), then as SL.

``salnp.export`` is this module, callable: ``salnp.export(net)`` is ``export(net)``, and
``salnp.export.to_onnx(inf, path, input_shape)`` writes an ONNX model (salnp._onnx; needs
the onnx package: ``pip install "salnp[onnx]"``).  The PyTorch form: salnp.torch.to_torch.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np

from . import _core
from .flops import CountReport, check_input_shape, count_rows
from .io import NpzReader, _fspath, check_finite_state, save_npz_atomic
from .models import (OP_ADD, OP_ASHIFT, OP_BN, OP_CONV, OP_LINEAR, OP_POOL, OP_SAL, OP_SHIFT,
                     ResNet)
from .nn import net_lock

__all__ = ["export", "load", "to_onnx", "InferenceNet", "IFIELDS"]

# op kinds and the field order of one inference op row, as libsal describes them
# (sal/infer.h); the field "in" is spelled "inp" here
IFIELDS = tuple("inp" if f == "in" else f for f in _core.INFER_FIELDS)
IOP_CONV, IOP_GATHER, IOP_SHIFT, IOP_ADD, IOP_POOL, IOP_LINEAR = (
    _core.INFER_KINDS.index(k) for k in ("conv", "gather", "shift", "add", "pool", "linear"))
_TYPES = {IOP_CONV: "conv", IOP_GATHER: "sal_gather", IOP_SHIFT: "shift", IOP_ADD: "add",
          IOP_POOL: "avgpool", IOP_LINEAR: "linear"}
INFERENCE_FORMAT = 1
BN_EPS = _core.BN_EPS   # the eps of every BN in a training program (sal/layers.h)


class InferenceNet:
    """A binarised, BN-folded shift network that runs forward in libsal.

    ops: int64 (n, len(IFIELDS)) rows; channels: per-buffer channel count (buffer 0 is
    the input); shifts int32 (M, 3) rows (src, dy, dx); pairs int32 (P, 4) rows
    (o, i, dy, dx); weights: float32 arena; names: the training module of every op."""

    def __init__(self, ops, channels, shifts, pairs, weights, names, config, info=None):
        self.ops = np.ascontiguousarray(ops, np.int64).reshape(-1, len(IFIELDS))
        self.channels = [int(c) for c in channels]
        self.shifts = np.ascontiguousarray(shifts, np.int32).reshape(-1, 3)
        self.pairs = np.ascontiguousarray(pairs, np.int32).reshape(-1, 4)
        self.weights = np.ascontiguousarray(weights, np.float32).reshape(-1)
        self.names = [str(n) for n in names]
        self.config = dict(config)
        self.info = dict(info or {})
        if len(self.names) != len(self.ops):
            raise ValueError(f"InferenceNet: {len(self.names)} names for {len(self.ops)} ops")
        self._engines = {}

    def __reduce__(self):
        """Pickle / copy as the program and weights; the C engine is rebuilt lazily."""
        return (InferenceNet, (self.ops, self.channels, self.shifts, self.pairs, self.weights,
                               self.names, self.config, self.info))

    @property
    def in_channels(self) -> int:
        return self.channels[0]

    @property
    def num_classes(self) -> int:
        return self.channels[int(self.ops[-1, IFIELDS.index("out")])]

    def _shapes(self, in_shape):
        """Per-buffer (C, H, W) for an input (C, H, W), in op order."""
        shapes = [None] * len(self.channels)
        shapes[0] = tuple(int(v) for v in in_shape)
        F = {f: i for i, f in enumerate(IFIELDS)}
        nb = len(shapes)
        for i, row in enumerate(self.ops):
            # plain Python ints (no NumPy overflow or division warnings); libsal checks the
            # program in full, this only has to be defined for every row
            inp, out = int(row[F["inp"]]), int(row[F["out"]])
            k, s, p, kind = (int(row[F[f]]) for f in ("k", "stride", "pad", "kind"))
            if not (0 <= inp < nb and 0 < out < nb and shapes[inp] is not None):
                raise ValueError(f"op {i}: buffers in={inp} out={out}: not a produced buffer "
                                 f"in [0, {nb})")
            if kind in (IOP_CONV, IOP_GATHER, IOP_SHIFT) and s < 1:
                raise ValueError(f"op {i}: stride={s}: must be >= 1")
            _, h, w = shapes[inp]
            if kind == IOP_CONV:
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            elif kind in (IOP_GATHER, IOP_SHIFT):
                h, w = (h - 1) // s + 1, (w - 1) // s + 1
            elif kind in (IOP_POOL, IOP_LINEAR):
                h = w = 1
            if h < 1 or w < 1:
                raise ValueError(f"input (C, H, W) = {tuple(in_shape)} is too small for this network")
            shapes[out] = (self.channels[out], int(h), int(w))
        if any(sh is None for sh in shapes):
            raise ValueError("a buffer is never produced by any op")
        return shapes

    def _engine(self, in_shape):
        key = tuple(int(v) for v in in_shape)
        if key not in self._engines:
            self._engines[key] = _core.infer_create(np.array(self._shapes(key), np.int64),
                                                    self.ops, self.shifts, self.pairs,
                                                    self.weights.size)
        return self._engines[key]

    def forward(self, x) -> np.ndarray:
        """Logits (N, num_classes) for x (N, C, H, W) (any real float array)."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"forward: x must be a real floating-point array, got dtype {x.dtype}")
        c = self.in_channels
        if x.ndim != 4 or x.shape[1] != c or min(x.shape) < 1:
            raise ValueError(f"forward: x must have shape (N, C={c}, H, W) with N, H, W >= 1, "
                             f"got {x.shape}")
        x = np.ascontiguousarray(x, np.float32)
        with net_lock(self):    # one forward at a time per network (its buffers)
            return _core.infer_forward(self._engine(x.shape[1:]), self.weights, x)

    __call__ = forward

    def count_report(self, input_shape=None, mode=None) -> CountReport:
        """salnp.count(self, input_shape, mode): an exported network counts as 'inference'."""
        if mode not in (None, "inference"):
            raise ValueError(f"count: mode={mode!r}: an exported network counts as 'inference'")
        return self.count(input_shape)

    def count(self, input_shape=None):
        """The accounting (salnp.flops, inference mode) per image of input_shape (C, H, W);
        default (C, 32, 32)."""
        if input_shape is None:
            input_shape = (self.in_channels, 32, 32)
        shape = check_input_shape(input_shape, self.in_channels)
        ints, params = _core.infer_count(self._engine(shape))
        types_ = []
        for row in self.ops:
            t = _TYPES[int(row[0])]
            if row[0] == IOP_CONV:
                t = f"conv{row[IFIELDS.index('k')]}x{row[IFIELDS.index('k')]}"
            elif row[0] == IOP_SHIFT and row[IFIELDS.index("index_bits")]:
                t = "sal_shift"
            types_.append(t)
        return CountReport(count_rows(ints, params, self.names, types_), "inference", shape,
                           self.info.get("beta"))

    def save(self, path) -> None:
        """Write to path (.npz, atomic, no pickle)."""
        arrays = dict(ops=self.ops, channels=np.array(self.channels, np.int64), shifts=self.shifts,
                      pairs=self.pairs, weights=self.weights)
        save_npz_atomic(path, arrays, "inference",
                        dict(inference_format=INFERENCE_FORMAT, fields=list(IFIELDS),
                             names=self.names, model=self.config, info=self.info))

    def to_onnx(self, path=None, input_shape=None, **kwargs):
        """salnp.export.to_onnx(self, path, input_shape, **kwargs)."""
        return __getattr__("to_onnx")(self, path, input_shape, **kwargs)

    def __repr__(self):
        return (f"InferenceNet({len(self.ops)} ops, {self.weights.size:,} weights, "
                f"{len(self.pairs):,} SAL pairs, model={self.config})")


def load(path) -> InferenceNet:
    """An InferenceNet saved by InferenceNet.save; ValueError naming the file otherwise.

    The config (format, op fields, names, model) and every array's header (dtype, shape:
    ops (len(names), len(IFIELDS)) int64, channels (B,) int64, shifts (M, 3) int32,
    pairs (P, 4) int32, weights (W,) float32) are checked before any array data is read;
    libsal then validates the whole program (bounds with overflow-checked arithmetic)."""
    path = _fspath(path, "load")
    with NpzReader(path, kind="inference") as z:
        config = z.config
        try:
            if config.get("inference_format") != INFERENCE_FORMAT:
                raise ValueError(f"inference format {config.get('inference_format')!r}, "
                                 f"this salnp reads {INFERENCE_FORMAT}")
            if config.get("fields") != list(IFIELDS):
                raise ValueError("op fields differ from this salnp's")
            names = config.get("names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise ValueError("names must be a non-empty list of strings")
            if not isinstance(config.get("model"), dict):
                raise ValueError("no model config")
            info = config.get("info")
            if info is not None and not isinstance(info, dict):
                raise ValueError("info must be a JSON object")
            want = dict(ops=(np.int64, (len(names), len(IFIELDS))), channels=(np.int64, None),
                        shifts=(np.int32, 3), pairs=(np.int32, 4), weights=(np.float32, None))
            for k, (dt, tail) in want.items():
                if k not in z.headers:
                    raise ValueError(f"missing array {k!r}")
                shp = z.shape(k)
                if z.dtype(k) != np.dtype(dt):
                    raise ValueError(f"{k} has dtype {z.dtype(k)}, expected {np.dtype(dt)}")
                ok = (shp == tail if isinstance(tail, tuple) else
                      len(shp) == 1 if tail is None else len(shp) == 2 and shp[1] == tail)
                if not ok:
                    raise ValueError(f"{k} has shape {shp}")
            extra = set(z.arrays) - set(want)
            if extra:
                raise ValueError(f"unexpected arrays {sorted(extra)[:5]}")
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a valid exported network ({e})") from None
        arrays = {k: z.read(k) for k in want}
    try:
        if not np.all(np.isfinite(arrays["weights"])):
            raise ValueError("weights must be finite float32")
        net = InferenceNet(arrays["ops"], arrays["channels"], arrays["shifts"], arrays["pairs"],
                           arrays["weights"], names, config["model"], info)
        net._engine((net.in_channels, 32, 32))   # libsal validates the whole program
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as e:
        raise ValueError(f"{path}: not a valid exported network ({type(e).__name__}: {e})") from None
    return net


def __getattr__(name):
    """salnp.export.to_onnx (salnp._onnx.to_onnx) on first use: salnp._onnx builds on this
    module, and the onnx package it needs is optional (pip install "salnp[onnx]")."""
    if name == "to_onnx":
        return importlib.import_module("._onnx", __package__).to_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- the export
class _Builder:
    def __init__(self, in_channels):
        self.channels = [int(in_channels)]
        self.rows, self.names = [], []
        self.shifts, self.pairs, self.weights = [], [], []
        self.nweights = self.nshift = self.npair = 0

    def buf(self, c):
        self.channels.append(int(c))
        return len(self.channels) - 1

    def arr(self, a) -> int:
        a = np.asarray(a, np.float32).reshape(-1)
        off = self.nweights
        self.weights.append(a)
        self.nweights += a.size
        return off

    def op(self, name, **f):
        row = dict.fromkeys(IFIELDS, 0)
        row.update(res=-1, p0=-1, p1=-1, ioff=-1)
        row.update(f)
        self.rows.append(row)
        self.names.append(name)
        return len(self.rows) - 1

    def add_shifts(self, rows):
        rows = np.asarray(rows, np.int32).reshape(-1, 3)
        off = self.nshift
        self.shifts.append(rows)
        self.nshift += len(rows)
        return off

    def add_pairs(self, rows):
        rows = np.asarray(rows, np.int32).reshape(-1, 4)
        off = self.npair
        self.pairs.append(rows)
        self.npair += len(rows)
        return off


def export(net, beta=None) -> InferenceNet:
    """The inference network of net (salnp.models.ResNet) in eval mode with binarised
    SAL attention (beta: the SAL inverse temperature, default net.beta).  Its forward
    equals ``net.forward(x, train=False, hard=True)`` up to float rounding, except for
    ASL layers with non-integer offsets (rounded; see ``info["asl_max_rounding"]``)."""
    if not isinstance(net, ResNet):
        raise TypeError(f"export: net must be a salnp network (salnp.models.ResNet), "
                        f"got {type(net).__name__}")
    b = net.beta if beta is None else beta
    if isinstance(b, (str, bytes, complex, np.complexfloating)) or np.ndim(b) != 0:
        raise TypeError(f"export: beta={b!r}: must be a real number")
    beta = float(b)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"export: beta={beta!r}: must be finite and >= 0")
    # a NaN weight, a NaN BN statistic or a negative running variance would fold into
    # NaN (or constant) logits for every input: refuse, naming the entry
    check_finite_state(dict(net.named_parameters()) | dict(net.named_buffers()), "export")
    cin = net.config["in_channels"]
    shape = (cin, 32, 32)
    prog = net.program(shape)
    names = prog.names
    P, Bf = net.arena.params.astype(np.float64), net.arena.buffers.astype(np.float64)
    ops = prog.ops
    consumers = {}
    for i, op in enumerate(ops):
        for b in (op["inp"], op["res"]):
            if b >= 0:
                consumers.setdefault(b, []).append(i)

    b = _Builder(cin)
    bmap = {0: 0}                   # training buffer -> inference buffer
    done = set()                    # BN ops folded into the layer before them
    info = dict(beta=beta, sal_layers=[], asl_max_rounding=0.0, source=dict(net.config))

    def take(off, n):
        return P[off:off + n]

    def folding_bn(i, op):
        """The BN op reading op's output as its only consumer, or None."""
        users = consumers.get(op["out"], [])
        if len(users) == 1 and ops[users[0]]["kind"] == OP_BN and ops[users[0]]["inp"] == op["out"]:
            return users[0]
        return None

    for i, op in enumerate(ops):
        kind = op["kind"]
        if i in done:
            continue
        cout = prog.shapes[op["out"]][0]
        c_in = prog.shapes[op["inp"]][0]
        if kind in (OP_CONV, OP_SAL):
            j = folding_bn(i, op)
            scale, bias = np.ones(op["o"]), np.zeros(op["o"])
            relu, res, out_t = 0, -1, op["out"]
            if j is not None:
                bn = ops[j]
                gamma, beta_bn = take(bn["p0"], cout), take(bn["p1"], cout)
                rm, rv = Bf[bn["b0"]:bn["b0"] + cout], Bf[bn["b1"]:bn["b1"] + cout]
                scale = gamma / np.sqrt(rv + BN_EPS)
                bias = beta_bn - rm * scale
                relu, res, out_t = bn["relu"], bn["res"], bn["out"]
                done.add(j)
            res_i = bmap[res] if res >= 0 else -1
            w = take(op["p0"], op["o"] * c_in * op["k"] * op["k"]).reshape(op["o"], c_in, op["k"], op["k"])
            if kind == OP_CONV:
                y = b.buf(cout)
                b.op(names[i], kind=IOP_CONV, inp=bmap[op["inp"]], out=y, res=res_i, relu=relu,
                     o=op["o"], k=op["k"], stride=op["stride"], pad=op["pad"],
                     p0=b.arr(w * scale[:, None, None, None]), p1=b.arr(bias))
                bmap[out_t] = y
                continue
            L = op["o"] if not op["shared"] else 1
            a = net.arena.params[op["p1"]:op["p1"] + L * c_in * 9].reshape(L, c_in, 9)
            mask = (net.arena.buffers[op["b0"]:op["b0"] + L * c_in * 9].reshape(L, c_in, 9)
                    if op["b0"] >= 0 else None)      # stepwise pruning: masked never chosen
            p = _core.sal_probs(a, beta, hard=True, mask=mask)
            kept = p.max(-1) > 0.5
            qstar = p.argmax(-1)
            w9 = w.reshape(op["o"], c_in, 9)
            lay = dict(name=names[i], shared=bool(op["shared"]), slices=int(L * c_in),
                       kept=int(kept.sum()))
            info["sal_layers"].append(lay)
            if op["shared"] and kept.any():
                ks = np.nonzero(kept[0])[0]
                q = qstar[0, ks]
                z = b.buf(len(ks))
                b.op(names[i], kind=IOP_SHIFT, inp=bmap[op["inp"]], out=z, stride=op["stride"],
                     ioff=b.add_shifts(np.stack([ks, q // 3 - 1, q % 3 - 1], 1)), index_bits=4)
                wk = w9[:, ks, q] * scale[:, None]          # (O, C_kept)
                y = b.buf(cout)
                b.op(names[i], kind=IOP_CONV, inp=z, out=y, res=res_i, relu=relu, o=op["o"], k=1,
                     stride=1, pad=0, p0=b.arr(wk), p1=b.arr(bias))
            else:
                if op["shared"]:          # every slice pruned: the output is the bias
                    kept = np.zeros((op["o"], c_in), bool)
                oo, ii = np.nonzero(kept)   # row-major: sorted by o
                q = qstar[oo, ii] if not op["shared"] else qstar[0, ii]
                y = b.buf(cout)
                b.op(names[i], kind=IOP_GATHER, inp=bmap[op["inp"]], out=y, res=res_i, relu=relu,
                     o=op["o"], stride=op["stride"], k=3, pad=1,
                     ioff=b.add_pairs(np.stack([oo, ii, q // 3 - 1, q % 3 - 1], 1)), npair=len(oo),
                     p0=b.arr(w9[oo, ii, q] * scale[oo]), p1=b.arr(bias))
            bmap[out_t] = y
        elif kind in (OP_SHIFT, OP_ASHIFT):
            if kind == OP_SHIFT:
                off = np.asarray(prog.int_offsets[op["ioff"]], np.int64)
            else:
                real = take(op["p0"], 2 * c_in).reshape(c_in, 2)
                off = np.rint(real).astype(np.int64)
                info["asl_max_rounding"] = max(info["asl_max_rounding"],
                                               float(np.abs(real - off).max()))
            y = b.buf(cout)
            b.op(names[i], kind=IOP_SHIFT, inp=bmap[op["inp"]], out=y, stride=op["stride"],
                 ioff=b.add_shifts(np.concatenate([np.arange(c_in)[:, None], off], 1)))
            bmap[op["out"]] = y
        elif kind == OP_ADD:
            src = bmap[op["inp"]]
            last = b.rows[-1] if b.rows else None
            if (last is not None and last["out"] == src and last["res"] < 0
                    and last["kind"] in (IOP_CONV, IOP_GATHER)
                    and len(consumers.get(op["inp"], [])) == 1):
                last["res"], last["res_post"] = bmap[op["res"]], 1   # after the ReLU
                bmap[op["out"]] = src
            else:
                y = b.buf(cout)
                b.op(names[i], kind=IOP_ADD, inp=src, out=y, res=bmap[op["res"]], relu=0)
                bmap[op["out"]] = y
        elif kind == OP_POOL:
            y = b.buf(cout)
            b.op(names[i], kind=IOP_POOL, inp=bmap[op["inp"]], out=y)
            bmap[op["out"]] = y
        elif kind == OP_LINEAR:
            y = b.buf(cout)
            b.op(names[i], kind=IOP_LINEAR, inp=bmap[op["inp"]], out=y, o=op["o"],
                 p0=b.arr(take(op["p0"], op["o"] * c_in)), p1=b.arr(take(op["p1"], op["o"])))
            bmap[op["out"]] = y
        elif kind == OP_BN:
            raise NotImplementedError(f"export: op {i} ({names[i]}): a BN that does not follow "
                                      "a convolution cannot be folded")
        else:
            raise NotImplementedError(f"export: op {i}: kind {kind} is not supported")

    table = np.array([[r[f] for f in IFIELDS] for r in b.rows], np.int64)
    cat = lambda parts, shape, dt: (np.concatenate(parts).astype(dt) if parts
                                    else np.zeros(shape, dt))
    inf = InferenceNet(table, b.channels, cat(b.shifts, (0, 3), np.int32),
                       cat(b.pairs, (0, 4), np.int32), cat(b.weights, (0,), np.float32),
                       b.names, net.config, info)
    inf._engine(shape)   # libsal validates the program now, not at the first forward
    return inf


class _CallableModule(types.ModuleType):
    """salnp.export is this module and callable: salnp.export(net) == export(net)."""

    def __call__(self, net, beta=None) -> InferenceNet:
        return export(net, beta)


sys.modules[__name__].__class__ = _CallableModule
