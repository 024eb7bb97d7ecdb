"""CIFAR ResNets with CL, SL, ASL or SAL layers (DESIGN.md section 2).

    net = salnp.models.resnet(depth=20, width=16, layer="sal")
    logits = net.forward(x)          # x float32 (N, C, H, W)

A network is a tree of Modules (PyTorch-style names: ``layer1.0.conv1.weight``) whose
parameters live in one arena, plus a *program*: the flat list of C ops the tree emits
(conv, SAL, shift, BN(+add)(+ReLU), pool, linear) over activation buffers.  libsal runs
the program forward and backward with every buffer allocated once per batch size, in
the channel-major layout.
"""
from __future__ import annotations

import numpy as np

from . import _core
from .flops import CountReport, check_input_shape, count_rows, program_types
# the leaf layers and the program they emit live in salnp.nn; re-exported here
from .nn import (FIELDS, OP_ADD, OP_ASHIFT, OP_BN, OP_CONV, OP_LINEAR, OP_POOL, OP_SAL,
                 OP_SHIFT, ActiveShift, Arena, BatchNorm2d, Conv2d, Linear, Module, Program,
                 SALConv2d, Sequential, Shift, default_shift_offsets, net_lock)

__all__ = ["resnet", "ResNet", "Conv2d", "SALConv2d", "Shift", "ActiveShift", "BatchNorm2d",
           "Linear", "BasicBlock", "ShiftBlock", "ActiveShiftBlock", "default_shift_offsets"]

def _shortcut(cin, cout, stride):
    """Option B: identity, or 1x1 conv with stride + BN when the shape changes."""
    if stride == 1 and cin == cout:
        return None
    return Sequential(Conv2d(cin, cout, 1, stride, 0), BatchNorm2d(cout))


def _emit_shortcut(sc, prog, arena, name, x):
    if sc is None:
        return x
    y = sc[0].emit(prog, arena, f"{name}.shortcut.0", x)
    return sc[1].emit(prog, arena, f"{name}.shortcut.1", y)


# ---------------------------------------------------------------- blocks
class BasicBlock(Module):
    """L(3x3) -> BN -> ReLU -> L(3x3) -> BN -> + shortcut -> ReLU, L = CL or SAL."""

    def __init__(self, cin, cout, stride, layer="cl", shared=False):
        super().__init__()
        if layer == "sal":
            self.conv1 = SALConv2d(cin, cout, stride, shared)
            self.conv2 = SALConv2d(cout, cout, 1, shared)
        else:
            self.conv1 = Conv2d(cin, cout, 3, stride)
            self.conv2 = Conv2d(cout, cout, 3, 1)
        self.bn1 = BatchNorm2d(cout)
        self.bn2 = BatchNorm2d(cout)
        sc = _shortcut(cin, cout, stride)
        if sc is not None:
            self.shortcut = sc
        self._sc = sc

    def emit(self, prog, arena, name, x):
        r = _emit_shortcut(self._sc, prog, arena, name, x)
        h = self.conv1.emit(prog, arena, f"{name}.conv1", x)
        h = self.bn1.emit(prog, arena, f"{name}.bn1", h, relu=True)
        h = self.conv2.emit(prog, arena, f"{name}.conv2", h)
        return self.bn2.emit(prog, arena, f"{name}.bn2", h, relu=True, res=r)


class _ShiftBlockBase(Module):
    """1x1 in->e*out, BN, ReLU, a shift (the subclass's), 1x1 e*out->out with the stride,
    BN, and an option-B shortcut; the subclass says how the shortcut joins."""

    shift_module = None

    def __init__(self, cin, cout, stride, expansion=1):
        super().__init__()
        mid = int(round(expansion * cout))
        self.conv1 = Conv2d(cin, mid, 1, 1, 0)
        self.bn1 = BatchNorm2d(mid)
        self.shift = self.shift_module(mid)
        self.conv2 = Conv2d(mid, cout, 1, stride, 0)
        self.bn2 = BatchNorm2d(cout)
        sc = _shortcut(cin, cout, stride)
        if sc is not None:
            self.shortcut = sc
        self._sc = sc

    def _emit_body(self, prog, arena, name, x):
        h = self.conv1.emit(prog, arena, f"{name}.conv1", x)
        h = self.bn1.emit(prog, arena, f"{name}.bn1", h, relu=True)
        h = self.shift.emit(prog, arena, f"{name}.shift", h)
        return self.conv2.emit(prog, arena, f"{name}.conv2", h)


class ShiftBlock(_ShiftBlockBase):
    """ShiftResNet block (DESIGN 1.2): 1x1 in->e*out, BN, ReLU, shift, 1x1 e*out->out with
    the stride, BN, ReLU, then + shortcut."""

    shift_module = Shift

    def emit(self, prog, arena, name, x):
        r = _emit_shortcut(self._sc, prog, arena, name, x)
        h = self._emit_body(prog, arena, name, x)
        h = self.bn2.emit(prog, arena, f"{name}.bn2", h, relu=True)
        y = prog.buf(*prog.shapes[h])
        prog.op(f"{name}.add", kind=OP_ADD, inp=h, out=y, res=r)
        return y


class ActiveShiftBlock(_ShiftBlockBase):
    """ASL block: 1x1 in->e*out, BN, ReLU, active shift, 1x1 e*out->out with the stride, BN,
    + shortcut (option B), ReLU."""

    shift_module = ActiveShift

    def emit(self, prog, arena, name, x):
        r = _emit_shortcut(self._sc, prog, arena, name, x)
        h = self._emit_body(prog, arena, name, x)
        return self.bn2.emit(prog, arena, f"{name}.bn2", h, relu=True, res=r)


# ---------------------------------------------------------------- the network
class ResNet(Module):
    """CIFAR ResNet (He et al.): stem 3x3 conv + BN + ReLU, three stages of widths
    w, 2w, 4w with n blocks each (stride 2 entering stages 2 and 3), global average
    pool, Linear.  ``layer`` picks the block: "cl", "sal" (BasicBlock), "sl", "asl"."""

    def __init__(self, depth=20, width=16, layer="sal", shared=False, expansion=1,
                 num_classes=10, in_channels=3, seed=0, input_size=None):
        super().__init__()
        if layer not in ("cl", "sal", "sl", "asl"):
            raise ValueError(f"resnet: layer={layer!r}: must be 'cl', 'sal', 'sl' or 'asl'")
        if not isinstance(depth, (int, np.integer)) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"resnet: depth={depth!r}: must be 6n+2 (20, 32, 44, 56, 110)")
        # upper bounds keep every size product far from int64 overflow; a network near
        # them does not fit in memory anyway (MemoryError when the arena is allocated)
        for name, v in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(v, (int, np.integer)) or not 1 <= v <= 2**24:
                raise ValueError(f"resnet: {name}={v!r}: must be an integer in [1, 2**24]")
        if not (isinstance(expansion, (int, float, np.integer, np.floating))
                and 0 < expansion <= 2**10):
            raise ValueError(f"resnet: expansion={expansion!r}: must be a number in (0, 1024]")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"resnet: seed={seed!r}: must be an integer >= 0")
        if shared and layer != "sal":
            raise ValueError("resnet: shared=True applies to layer='sal' only")
        self.config = dict(depth=int(depth), width=int(width), layer=layer, shared=bool(shared),
                           expansion=expansion, num_classes=int(num_classes),
                           in_channels=int(in_channels), seed=int(seed))
        n = (depth - 2) // 6
        self.conv1 = Conv2d(in_channels, width, 3, 1)
        self.bn1 = BatchNorm2d(width)
        cin = width
        for stage, (cout, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)], 1):
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                if layer in ("cl", "sal"):
                    blocks.append(BasicBlock(cin, cout, s, layer, shared))
                elif layer == "sl":
                    blocks.append(ShiftBlock(cin, cout, s, expansion))
                else:
                    blocks.append(ActiveShiftBlock(cin, cout, s, expansion))
                cin = cout
            self.add_module(f"layer{stage}", Sequential(*blocks))
        self.linear = Linear(cin, num_classes)
        self.arena = Arena(self, seed)
        self._engines = {}
        self._last = None
        self.beta = 1.0  # SAL inverse temperature (fit anneals it)

    def _shift_offsets(self):
        """The fixed SL offsets the programs were built with are copied into libsal: an
        engine built before a change (load_state_dict, an in-place edit) would keep
        the old ones.  Returns the current offsets of every Shift, in module order."""
        return [m._buffers["offsets"] for _, m in self.named_modules() if isinstance(m, Shift)]

    def _check_offsets(self):
        cur = self._shift_offsets()
        seen = getattr(self, "_offsets_seen", None)
        if seen is None or len(seen) != len(cur) or any(
                not np.array_equal(a, b) for a, b in zip(seen, cur)):
            self._engines.clear()
            self._last = None
            self._offsets_seen = [np.array(a, copy=True) for a in cur]

    def program(self, input_shape) -> Program:
        """The program (buffers, op rows, the module name of every op) this network runs
        for inputs of per-sample shape input_shape = (C, H, W)."""
        self._check_offsets()
        key = tuple(int(v) for v in input_shape)
        if key not in self._engines:
            prog = Program(key)
            x = self.conv1.emit(prog, self.arena, "conv1", 0)
            x = self.bn1.emit(prog, self.arena, "bn1", x, relu=True)
            for stage in (1, 2, 3):
                seq = self._modules[f"layer{stage}"]
                for i in range(len(seq)):
                    x = seq[i].emit(prog, self.arena, f"layer{stage}.{i}", x)
            y = prog.buf(prog.shapes[x][0], 1, 1)
            prog.op("avgpool", kind=OP_POOL, inp=x, out=y)
            self.linear.emit(prog, self.arena, "linear", y)
            self._engines[key] = (prog, None)
        return self._engines[key][0]

    # the C engine of the program for one input size (activations allocated once)
    def _engine(self, in_shape):
        prog = self.program(in_shape)
        key = tuple(int(v) for v in in_shape)
        if self._engines[key][1] is None:
            offs = (np.concatenate(prog.int_offsets) if prog.int_offsets
                    else np.zeros((0, 2), np.int32))
            starts = np.cumsum([0] + [len(o) for o in prog.int_offsets])[:-1]
            table = prog.table()
            for row in table:
                if row[FIELDS.index("ioff")] >= 0:
                    row[FIELDS.index("ioff")] = starts[row[FIELDS.index("ioff")]]
            self._engines[key] = (prog, _core.net_create(
                np.array(prog.shapes, np.int64), table, np.ascontiguousarray(offs, np.int32),
                self.arena.params.size, self.arena.buffers.size))
        return self._engines[key][1]

    def count_report(self, input_shape=(3, 32, 32), mode=None) -> CountReport:
        """salnp.count(self, input_shape, mode): mode "train" (default) or "inference"."""
        mode = "train" if mode is None else mode
        if mode not in ("train", "inference"):
            raise ValueError(f"count: mode={mode!r}: must be 'train' or 'inference'")
        shape = check_input_shape(input_shape, self.config["in_channels"])
        eng, prog = self._engine(shape), self.program(shape)
        beta = float(self.beta)
        ints, params = _core.net_count(eng, self.arena.params, beta, mode == "inference",
                                       buffers=self.arena.buffers)
        return CountReport(count_rows(ints, params, prog.names, program_types(prog)), mode,
                           shape, beta if any(r["kind"] == OP_SAL for r in prog.ops) else None)

    def _check_input(self, x, fn):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"{fn}: x must be a real floating-point array, got dtype {x.dtype}")
        c = self.config["in_channels"]
        if x.ndim != 4 or x.shape[1] != c or min(x.shape) < 1:
            raise ValueError(f"{fn}: x must have shape (N, C={c}, H, W) with N, H, W >= 1, "
                             f"got {x.shape}")
        return np.ascontiguousarray(x, np.float32)

    def forward(self, x, train=None, hard=False):
        """Logits (N, num_classes) for x (N, C, H, W).  train=None follows self.training
        (batch statistics, running-stat update); hard=True binarises SAL attention."""
        x = self._check_input(x, "forward")
        train = self.training if train is None else bool(train)
        with net_lock(self):    # one call at a time per network (salnp.nn.net_lock)
            return self._forward_locked(x, train, hard)

    def _forward_locked(self, x, train, hard):
        if not train:
            eng = self._last = self._engine(x.shape[1:])
            return _core.net_forward(eng, self.arena.params, self.arena.buffers, x, False,
                                     bool(hard), float(self.beta))
        # training mode updates the BN running statistics: a NaN/inf input (or a NaN
        # batch statistic from non-finite parameters) would poison them for good, so the
        # input is checked first and the statistics are restored if they went non-finite
        if not np.all(np.isfinite(x)):
            self._last = None      # backward after a refused forward raises
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"forward: x contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
                             "in training mode it would poison the BN running statistics")
        eng = self._last = self._engine(x.shape[1:])
        saved = self.arena.buffers.copy()
        bns = [m for _, m in self.named_modules() if isinstance(m, BatchNorm2d)]
        for m in bns:
            m._buffers["num_batches_tracked"][...] += 1
        try:
            out = _core.net_forward(eng, self.arena.params, self.arena.buffers, x, True,
                                    bool(hard), float(self.beta))
        except BaseException:
            self.arena.buffers[...] = saved
            for m in bns:
                m._buffers["num_batches_tracked"][...] -= 1
            self._last = None      # backward then refuses: there is no forward to follow
            raise
        if not np.isfinite(self.arena.buffers.sum(dtype=np.float64)):
            self.arena.buffers[...] = saved
            for m in bns:
                m._buffers["num_batches_tracked"][...] -= 1
            self._last = None
            raise FloatingPointError("forward: the batch statistics are NaN or inf (non-finite "
                                     "parameters?); the BN running statistics were left unchanged")
        return out

    __call__ = forward

    def backward(self, grad_logits):
        """Accumulate parameter gradients (into the grad arena) for the last forward."""
        if getattr(self, "_last", None) is None:
            raise RuntimeError("backward: call forward(x, train=True) first")
        # no np.ascontiguousarray here: _core converts and checks (a complex or string
        # grad_logits must be refused with the argument named, not cast silently)
        with net_lock(self):
            if self._last is None:
                raise RuntimeError("backward: call forward(x, train=True) first")
            _core.net_backward(self._last, self.arena.params, self.arena.grads, grad_logits)

    def zero_grad(self):
        self.arena.zero_grad()


def resnet(depth=20, width=16, layer="sal", shared=False, expansion=1, num_classes=10,
           in_channels=3, seed=0) -> ResNet:
    """A CIFAR ResNet-`depth` of width `width` with CL / SL / ASL / SAL layers."""
    return ResNet(depth, width, layer, shared, expansion, num_classes, in_channels, seed)
