"""Export: the trained network's program rewritten into the binarised, folded inference
program (DESIGN 1.4), a program-to-program pass with one small rule per op kind.

    inf = salnp.export(net)            # binarise SAL (p > 0.5 with net.beta), fold BN
    logits = inf.forward(x)            # x float32 (N, C, H, W), runs in libsal
    inf.count(); inf.save("net-inf.npz"); inf2 = salnp.export.load("net-inf.npz")

The rules, op by op of the training program (salnp.models, salnp.program):
- conv and SAL: the BN (eval mode: running statistics, eps 1e-5) that reads the layer's
  output as its only reader is folded into it: scale = gamma / sqrt(running_var + eps)
  multiplies each output row of the weights, bias = beta - running_mean * scale; the BN's
  ReLU and residual add run in the layer's epilogue;
- CL: a convolution with that bias;
- SAL, unshared: p = (softmax(beta * a / std a) > 0.5) exactly as the hard forward; each
  kept slice (o, i) becomes one pair (o, i, dy, dx) with the raw weight W[o, i, q*] (times
  the BN scale); slices with no p > 0.5 are dropped.  libsal runs the pairs as a GATHER op
  that fuses the offsets into its addressing (no shifted copies; sal/gather.h);
- SAL, shared: one shift per kept input channel (a pure shift, dropped channels removed)
  then a 1x1 convolution with bias;
- SL: the shift; ASL: offsets rounded to the nearest integer (``info["asl_max_rounding"]``
  is the largest |offset - round(offset)|; 0 keeps the outputs exact), then a shift;
- add: fused into the conv/gather before it (after its ReLU, as in the SL block) when that
  layer's output has no other reader, else an add;
- a BN that cannot fold (pre-activation: it reads a sum, or a conv output that the
  shortcut reads too) stays a BN in eval mode, its parameters and running statistics
  copied into the weight arena;
- pool and linear: copied.

``salnp.export`` is this module, callable: ``salnp.export(net)`` is ``export(net)``;
``salnp.export.load`` reads a saved InferenceNet (salnp.infer), and
``salnp.export.to_onnx(inf_or_net, path, input_shape)`` writes an ONNX model (salnp._onnx;
needs the onnx package: ``pip install "salnp[onnx]"``).  The PyTorch form:
salnp.torch.to_torch.
"""
from __future__ import annotations

import sys
import types

import numpy as np

from . import _core, _onnx
from .infer import InferenceNet, load
from .io import check_finite_state
from .models import ResNet
from .nn import check_beta
from .program import (ADD, ASHIFT, BN, CONV, GATHER, LINEAR, POOL, SAL, SHIFT, Program)

__all__ = ["export", "load", "to_onnx", "InferenceNet", "BN_EPS"]

BN_EPS = _core.BN_EPS   # the eps of every BN in a training program (sal/layers.h)
# an exported shift offset beyond this is clamped to it: a shift beyond the input is all
# zeros, and every input libsal takes is smaller (sizes < 2**24), so the result is exact
MAX_SHIFT = 2**30


class _Rewrite:
    """The state of one export: the source program and arenas (float64 copies), the target
    program and its weight arena, the map from source to target buffers."""

    def __init__(self, net, beta):
        self.net, self.beta = net, beta
        self.src = net.program
        self.P = net.arena.params.astype(np.float64)
        self.B = net.arena.buffers.astype(np.float64)
        self.users = self.src.consumers()
        self.out = Program(net.in_channels)
        self.weights, self.nweights = [], 0
        self.bmap = {0: 0}            # source buffer -> target buffer
        self.done = set()             # source ops already rewritten (folded BNs)
        self.info = dict(beta=beta, sal_layers=[], asl_max_rounding=0.0, folded_bn=[],
                         source=dict(net.config))

    def arr(self, a) -> int:
        """Append a to the weight arena; its offset."""
        a = np.asarray(a, np.float32).reshape(-1)
        off = self.nweights
        self.weights.append(a)
        self.nweights += a.size
        return off

    def take(self, off, n):
        return self.P[off:off + n]

    def cout(self, op):
        return self.src.channels[op["out"]]

    def cin(self, op):
        return self.src.channels[op["inp"]]

    def folding_bn(self, op):
        """The BN op that reads op's output as its only reader, or None."""
        users = self.users.get(op["out"], [])
        if len(users) == 1:
            j = users[0]
            bn = self.src.ops[j]
            if bn["kind"] == BN and bn["inp"] == op["out"]:
                return j
        return None

    def epilogue(self, i, op):
        """(scale, bias arena offset or -1, relu, residual target buffer, source buffer the
        result stands for) of the layer op i, folding its BN if it has one."""
        o = op["o"]
        j = self.folding_bn(op)
        if j is None:
            return np.ones(o), -1, 0, -1, op["out"]
        bn = self.src.ops[j]
        gamma, beta_bn = self.take(bn["p0"], o), self.take(bn["p1"], o)
        rm, rv = self.B[bn["b0"]:bn["b0"] + o], self.B[bn["b1"]:bn["b1"] + o]
        scale = gamma / np.sqrt(rv + BN_EPS)
        self.done.add(j)
        self.info["folded_bn"].append(self.src.names[j])
        res = self.bmap[bn["res"]] if bn["res"] >= 0 else -1
        return scale, self.arr(beta_bn - rm * scale), bn["relu"], res, bn["out"]

    def emit(self, i, kind, out_c, **fields):
        """A target op for source op i writing a new buffer of out_c channels."""
        y = self.out.buf(out_c)
        self.out.op(self.src.names[i], kind, out=y, **fields)
        return y


# ---------------------------------------------------------------- one rule per op kind
def _conv(rw, i, op):
    scale, bias, relu, res, stands_for = rw.epilogue(i, op)
    c_in, k = rw.cin(op), op["k"]
    w = rw.take(op["p0"], op["o"] * c_in * k * k).reshape(op["o"], c_in, k, k)
    rw.bmap[stands_for] = rw.emit(i, CONV, op["o"], inp=rw.bmap[op["inp"]], res=res, relu=relu,
                                  o=op["o"], k=k, stride=op["stride"], pad=op["pad"],
                                  p0=rw.arr(w * scale[:, None, None, None]), p1=bias)


def _sal(rw, i, op):
    scale, bias, relu, res, stands_for = rw.epilogue(i, op)
    net, c_in, o = rw.net, rw.cin(op), op["o"]
    L = 1 if op["shared"] else o
    a = net.arena.params[op["p1"]:op["p1"] + L * c_in * 9].reshape(L, c_in, 9)
    mask = (net.arena.buffers[op["b0"]:op["b0"] + L * c_in * 9].reshape(L, c_in, 9)
            if op["b0"] >= 0 else None)      # stepwise pruning: masked never chosen
    p = _core.sal_probs(a, rw.beta, hard=True, mask=mask)
    kept, qstar = p.max(-1) > 0.5, p.argmax(-1)
    w9 = rw.take(op["p0"], o * c_in * 9).reshape(o, c_in, 9)
    rw.info["sal_layers"].append(dict(name=rw.src.names[i], shared=bool(op["shared"]),
                                      slices=int(L * c_in), kept=int(kept.sum())))
    x = rw.bmap[op["inp"]]
    if op["shared"] and kept.any():
        ks = np.nonzero(kept[0])[0]
        q = qstar[0, ks]
        rows = np.stack([ks, q // 3 - 1, q % 3 - 1], 1)
        z = rw.emit(i, SHIFT, len(ks), inp=x, stride=op["stride"], ioff=rw.out.add_shifts(rows),
                    index_bits=4)
        rw.bmap[stands_for] = rw.emit(i, CONV, o, inp=z, res=res, relu=relu, o=o, k=1, stride=1,
                                      pad=0, p0=rw.arr(w9[:, ks, q] * scale[:, None]), p1=bias)
        return
    if op["shared"]:                # every slice pruned: the output is the bias
        kept = np.zeros((o, c_in), bool)
    oo, ii = np.nonzero(kept)       # row-major: sorted by o
    q = qstar[oo, ii] if not op["shared"] else qstar[0, ii]
    pairs = np.stack([oo, ii, q // 3 - 1, q % 3 - 1], 1)
    rw.bmap[stands_for] = rw.emit(i, GATHER, o, inp=x, res=res, relu=relu, o=o,
                                  stride=op["stride"], k=3, pad=1, ioff=rw.out.add_pairs(pairs),
                                  npair=len(oo), p0=rw.arr(w9[oo, ii, q] * scale[oo]), p1=bias)


def _shift(rw, i, op):
    start = op["ioff"]
    rows = rw.src.shift_table()[start:start + rw.cout(op)]
    rw.bmap[op["out"]] = rw.emit(i, SHIFT, rw.cout(op), inp=rw.bmap[op["inp"]],
                                 stride=op["stride"], ioff=rw.out.add_shifts(rows))


def _ashift(rw, i, op):
    c = rw.cin(op)
    real = rw.take(op["p0"], 2 * c).reshape(c, 2)
    off = np.rint(real)
    rw.info["asl_max_rounding"] = max(rw.info["asl_max_rounding"], float(np.abs(real - off).max()))
    off = np.clip(off, -MAX_SHIFT, MAX_SHIFT).astype(np.int64)
    rows = np.concatenate([np.arange(c)[:, None], off], 1)
    rw.bmap[op["out"]] = rw.emit(i, SHIFT, c, inp=rw.bmap[op["inp"]], stride=op["stride"],
                                 ioff=rw.out.add_shifts(rows))


def _bn(rw, i, op):
    """A BN that could not fold: eval-mode BN over the weight arena."""
    c = rw.cin(op)
    off = rw.arr(np.concatenate([rw.take(op["p0"], c), rw.take(op["p1"], c),
                                 rw.B[op["b0"]:op["b0"] + c], rw.B[op["b1"]:op["b1"] + c]]))
    rw.bmap[op["out"]] = rw.emit(i, BN, c, inp=rw.bmap[op["inp"]],
                                 res=rw.bmap[op["res"]] if op["res"] >= 0 else -1,
                                 relu=op["relu"], p0=off, p1=off + c, b0=off + 2 * c,
                                 b1=off + 3 * c)


def _add(rw, i, op):
    src = rw.bmap[op["inp"]]
    last = rw.out.ops[-1] if rw.out.ops else None
    if (last is not None and last["out"] == src and last["res"] < 0
            and last["kind"] in (CONV, GATHER) and len(rw.users.get(op["inp"], [])) == 1):
        last["res"], last["res_post"] = rw.bmap[op["res"]], 1   # after the ReLU
        rw.bmap[op["out"]] = src
        return
    rw.bmap[op["out"]] = rw.emit(i, ADD, rw.cout(op), inp=src, res=rw.bmap[op["res"]])


def _pool(rw, i, op):
    rw.bmap[op["out"]] = rw.emit(i, POOL, rw.cout(op), inp=rw.bmap[op["inp"]])


def _linear(rw, i, op):
    o, c = op["o"], rw.cin(op)
    rw.bmap[op["out"]] = rw.emit(i, LINEAR, o, inp=rw.bmap[op["inp"]], o=o,
                                 p0=rw.arr(rw.take(op["p0"], o * c)),
                                 p1=rw.arr(rw.take(op["p1"], o)))


RULES = {CONV: _conv, SAL: _sal, SHIFT: _shift, ASHIFT: _ashift, BN: _bn, ADD: _add,
         POOL: _pool, LINEAR: _linear}


def export(net, beta=None) -> InferenceNet:
    """The inference network of net (salnp.models.ResNet) in eval mode with binarised
    SAL attention (beta: the SAL inverse temperature, default net.beta).  Its forward
    equals ``net.forward(x, train=False, hard=True)`` up to float rounding, except for
    ASL layers with non-integer offsets (rounded; see ``info["asl_max_rounding"]``)."""
    if not isinstance(net, ResNet):
        raise TypeError(f"export: net must be a salnp network (salnp.models.ResNet), "
                        f"got {type(net).__name__}")
    beta = net.beta if beta is None else check_beta(beta, "export: beta")
    # a NaN weight, a NaN BN statistic or a negative running variance would fold into
    # NaN (or constant) logits for every input: refuse, naming the entry
    check_finite_state(dict(net.named_parameters()) | dict(net.named_buffers()), "export")
    rw = _Rewrite(net, beta)
    for i, op in enumerate(rw.src.ops):
        if i not in rw.done:
            RULES[op["kind"]](rw, i, op)
    weights = np.concatenate(rw.weights) if rw.weights else np.zeros(0, np.float32)
    inf = InferenceNet(rw.out, weights, net.config, rw.info)
    inf.engine.get((net.in_channels, 32, 32))  # libsal validates the program now
    return inf


def to_onnx(inf, path=None, input_shape=None, **kwargs):
    """Write inf (an InferenceNet, or a salnp network, exported first with its beta) to path
    as an ONNX model and return the ModelProto; see salnp._onnx.to_onnx."""
    if isinstance(inf, ResNet):
        inf = export(inf)
    if not isinstance(inf, InferenceNet):
        raise TypeError(f"to_onnx: inf must be a salnp.export.InferenceNet (salnp.export(net)) "
                        f"or a salnp network, got {type(inf).__name__}")
    return _onnx.to_onnx(inf, path, input_shape, **kwargs)


class _CallableModule(types.ModuleType):
    """salnp.export is this module and callable: salnp.export(net) == export(net)."""

    def __call__(self, net, beta=None) -> InferenceNet:
        return export(net, beta)


sys.modules[__name__].__class__ = _CallableModule
