"""PyTorch forms of salnp networks, both ways (PyTorch is optional: imported here only).

    import salnp.torch
    tnet = salnp.torch.to_torch(net)      # training net: the authors' SAL form, same names
    tinf = salnp.torch.to_torch(inf)      # exported net (salnp.export): the pruned form
    net = salnp.torch.from_torch(tnet)    # or a state dict, e.g. torch.load("ckpt.pth")
    inf = salnp.torch.from_torch(tinf)    # the pruned form back (weights fine-tuned in torch)

Training form (``ResNet``): plain torch.nn modules with salnp's parameter names
(``layer1.0.conv1.weight``, ``layer1.0.conv1.logits``, ``bn1.running_mean``...).  A SAL
layer (``SALConv2d``) is the released code's ShiftAttention: a 3x3 weight W and attention
logits A (O|1, C, 9); forward ``conv2d(x, W * softmax(beta A / std A))`` with the unbiased
std; ``beta`` (the inverse temperature) is a buffer of every SAL layer (``set_beta``
anneals them all), ``mask`` a 0/1 buffer for stepwise pruning (salnp.prune), and
``set_hard(True)`` binarises the attention (p > 0.5) as ``net.forward(hard=True)``.
Forward and gradients agree with salnp's (tests/test_torch.py, tests/test_models.py).

Pruned form (``PrunedResNet``): the ops of the InferenceNet, BN folded: convolutions with
a bias; an unshared SAL layer keeps only its kept weights, ``weight`` (P,) with
``pairs`` (P, 4) = (o, i, dy, dx) and ``bias`` (O,), run as a 3x3 convolution of the
scattered weights (differentiable: fine-tune it, then ``from_torch``); a shift has
``shifts`` (M, 3) = (src, dy, dx); a shared SAL layer is a 1x1 ``Conv2d`` (its name)
with a ``shift`` child.

``from_torch`` also reads the authors' checkpoints: ``attentionWeights`` is taken for
``logits``, a ``module.`` prefix (DataParallel) is dropped, and a checkpoint dict holding
the state under ``"net"``, ``"state_dict"`` or ``"model"`` is unwrapped.  The network's
config (depth, width, layer, shared, expansion, classes, input channels) is read from
the tensor shapes; mismatched or missing names and shapes raise errors that list them.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:     # pragma: no cover - the message is the point
    raise ImportError("salnp.torch needs PyTorch: pip install 'salnp[torch]' (or torch)") from e

from ._core import BN_EPS
from ._core import TAP_THRESHOLD_DEFAULT as _TAP_THRESHOLD_DEFAULT
from .infer import InferenceNet
from .models import ResNet as NpResNet
from .models import default_shift_offsets, resnet
from .program import ADD, BN, CONV, FIELDS, GATHER, LINEAR, POOL, SHIFT, Program

__all__ = ["to_torch", "from_torch", "ResNet", "PrunedResNet", "SALConv2d", "Shift",
           "ActiveShift", "BasicBlock", "ShiftBlock", "ActiveShiftBlock", "PreActASLBlock",
           "sal_probs", "shift", "active_shift"]

# tests may set this to a callable that sees every ReLU input (tests/torch_ref.py records
# how close a pre-activation came to the kink at 0)
relu_hook = None


def relu(x):
    if relu_hook is not None:
        relu_hook(x)
    return F.relu(x)


# ---------------------------------------------------------------- functional pieces
def sal_probs(a, beta, mask=None, hard=False):
    """SAL attention: softmax(beta a / std(a)) over the last axis (std unbiased, no mean
    subtraction in the numerator).  With a 0/1 mask: the std of all 9 logits, the softmax over
    the allowed positions only, p = 0 elsewhere.
    hard: (p > 0.5) as 0/1 (salnp's binarised mode).  A slice with std 0 is uniform."""
    if mask is None or bool((mask != 0).all()):
        s = a.std(-1, keepdim=True)
        z = beta * a / torch.where(s > 0, s, torch.ones_like(s))
        p = torch.where(s > 0, torch.softmax(z, -1), torch.full_like(a, 1.0 / a.shape[-1]))
    else:
        # stepwise pruning (salnp's extension): s stays the std of all 9 logits, the
        # softmax runs over the allowed positions only, p = 0 elsewhere; uniform over
        # them when s or beta is 0 (libsal's sal/attention.h "Masks")
        m = mask != 0
        s = a.std(-1, keepdim=True)
        flat = (s == 0) | (beta == 0)
        z = torch.where(flat, torch.zeros_like(a), beta * a / torch.where(flat, torch.ones_like(s), s))
        p = torch.softmax(z.masked_fill(~m, float("-inf")), -1)
    if hard:
        p = (p > 0.5).to(a.dtype)
    return p


def shift(x, offsets, stride=1):
    """y[n, c, Y, X] = x[n, c, s Y + dy_c, s X + dx_c], zero outside; offsets (C, 2)
    integer rows (dy, dx).  One slice per distinct offset; differentiable in x."""
    off = np.asarray(offsets.cpu() if torch.is_tensor(offsets) else offsets, np.int64).reshape(-1, 2)
    n, c, h, w = x.shape
    # beyond the input a shift samples only zeros: clamped to (h, w) it stays exact and
    # the padding below never exceeds the input
    off = np.stack([np.clip(off[:, 0], -h, h), np.clip(off[:, 1], -w, w)], 1)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    m = int(np.abs(off).max(initial=0))
    xp = F.pad(x, (m, m, m, m)) if m else x
    if len(off) and (off == off[0]).all():       # one offset (or all zero): no channel split
        dy, dx = (int(v) for v in off[0])
        return xp[:, :, m + dy:m + dy + stride * (ho - 1) + 1:stride,
                  m + dx:m + dx + stride * (wo - 1) + 1:stride]
    y = x.new_zeros((n, c, ho, wo))
    for dy, dx in sorted({(int(a), int(b)) for a, b in off}):
        ch = torch.from_numpy(np.flatnonzero((off[:, 0] == dy) & (off[:, 1] == dx)))
        y[:, ch] = xp[:, ch, m + dy:m + dy + stride * (ho - 1) + 1:stride,
                      m + dx:m + dx + stride * (wo - 1) + 1:stride]
    return y


def active_shift(x, off):
    """Bilinear sample at (Y + a_c, X + b_c), zero outside; differentiable in x and off
    (C, 2) real rows (dy, dx) (ASL, stride 1)."""
    n, c, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1) + off[:, 0].view(c, 1, 1)
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w) + off[:, 1].view(c, 1, 1)
    ys, xs = ys.expand(c, h, w), xs.expand(c, h, w)
    y0, x0 = torch.floor(ys).detach(), torch.floor(xs).detach()
    out = torch.zeros_like(x)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wgt = (1 - (ys - yy).abs()) * (1 - (xs - xx).abs())
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (yy.clamp(0, h - 1).long() * w + xx.clamp(0, w - 1).long())
            g = torch.gather(x.reshape(n, c, h * w), 2, idx.view(1, c, h * w).expand(n, c, h * w))
            out = out + g.view(n, c, h, w) * (wgt * valid).unsqueeze(0)
    return out


# ---------------------------------------------------------------- training-form modules
class SALConv2d(nn.Module):
    """Shift Attention Layer, 3x3, padding 1, no bias: parameters weight (O, C, 3, 3) and
    logits (O|1, C, 9) (the authors' attentionWeights), buffers mask (0/1, logits' shape),
    beta (the inverse temperature, a 0-d tensor) and tap_threshold (salnp's sparse training
    setting, carried so that a round trip keeps it; PyTorch computes every tap)."""

    def __init__(self, cin, cout, stride=1, shared=False, beta=1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.shared = cin, cout, stride, shared
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        self.logits = nn.Parameter(torch.empty(1 if shared else cout, cin, 9))
        self.register_buffer("mask", torch.ones(1 if shared else cout, cin, 9))
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("tap_threshold", torch.tensor(_TAP_THRESHOLD_DEFAULT))
        self.hard = False
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.uniform_(self.logits)

    def probs(self):
        return sal_probs(self.logits, self.beta, self.mask, self.hard)

    def forward(self, x):
        p = self.probs()
        w = self.weight * p.reshape(p.shape[0], p.shape[1], 3, 3)
        return F.conv2d(x, w, stride=self.stride, padding=1)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"shared={self.shared}, hard={self.hard}")


class Shift(nn.Module):
    """Fixed integer shift per channel (SL): buffer offsets int32 (C, 2) rows (dy, dx)."""

    def __init__(self, offsets, stride=1):
        super().__init__()
        self.register_buffer("offsets", torch.as_tensor(np.asarray(offsets, np.int32)))
        self.stride = stride

    def forward(self, x):
        return shift(x, self.offsets, self.stride)


class ActiveShift(nn.Module):
    """Active shift (ASL): parameter shift (C, 2) real rows (dy, dx), bilinear."""

    def __init__(self, c):
        super().__init__()
        self.shift = nn.Parameter(torch.empty(c, 2).uniform_(-1, 1))

    def forward(self, x):
        return active_shift(x, self.shift)


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """L(3x3) -> BN -> ReLU -> L(3x3) -> BN -> + shortcut -> ReLU, L = Conv2d or SALConv2d."""

    def __init__(self, cin, cout, stride, layer="cl", shared=False):
        super().__init__()
        if layer == "sal":
            self.conv1 = SALConv2d(cin, cout, stride, shared)
            self.conv2 = SALConv2d(cout, cout, 1, shared)
        else:
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        sc = _shortcut(cin, cout, stride)
        if sc is not None:
            self.shortcut = sc

    def forward(self, x):
        r = self.shortcut(x) if hasattr(self, "shortcut") else x
        h = relu(self.bn1(self.conv1(x)))
        return relu(self.bn2(self.conv2(h)) + r)


class _ShiftBlockBase(nn.Module):
    def __init__(self, cin, cout, stride, expansion, shift_module):
        super().__init__()
        mid = int(round(expansion * cout))
        self.conv1 = nn.Conv2d(cin, mid, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = shift_module(mid)
        self.conv2 = nn.Conv2d(mid, cout, 1, stride, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        sc = _shortcut(cin, cout, stride)
        if sc is not None:
            self.shortcut = sc

    def _body(self, x):
        h = relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(self.shift(h)))


class ShiftBlock(_ShiftBlockBase):
    """ShiftResNet block: 1x1, BN, ReLU, shift, 1x1 (stride), BN, ReLU, + shortcut."""

    def __init__(self, cin, cout, stride, expansion=1):

        super().__init__(cin, cout, stride, expansion, lambda c: Shift(default_shift_offsets(c)))

    def forward(self, x):
        r = self.shortcut(x) if hasattr(self, "shortcut") else x
        return relu(self._body(x)) + r


class ActiveShiftBlock(_ShiftBlockBase):
    """ASL block: 1x1, BN, ReLU, active shift, 1x1 (stride), BN, + shortcut, ReLU."""

    def __init__(self, cin, cout, stride, expansion=1):
        super().__init__(cin, cout, stride, expansion, ActiveShift)

    def forward(self, x):
        r = self.shortcut(x) if hasattr(self, "shortcut") else x
        return relu(self._body(x) + r)


class PreActASLBlock(nn.Module):
    """Jeon & Kim's ASNet block (layer "asl"): BN, ReLU, 1x1, BN, ReLU, ASL (stride), 1x1,
    + shortcut (identity, or a 1x1 conv with the stride and no BN on the pre-activated input)."""

    def __init__(self, cin, cout, stride, expansion=1):
        super().__init__()
        mid = int(round(expansion * cout))
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.shift = ActiveShift(mid)
        self.conv2 = nn.Conv2d(mid, cout, 1, 1, 0, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        h = relu(self.bn1(x))
        r = self.shortcut(h) if hasattr(self, "shortcut") else x
        t = self.shift(relu(self.bn2(self.conv1(h))))
        if self.stride > 1:    # active shift with a stride: sample at (s*Y + a, s*X + b)
            t = t[:, :, ::self.stride, ::self.stride]
        return self.conv2(t) + r


class ResNet(nn.Module):
    """The CIFAR ResNet of salnp.models.resnet in PyTorch, same module names; ``config``
    is salnp's config dict."""

    def __init__(self, depth=20, width=16, layer="sal", shared=False, expansion=1,
                 num_classes=10, in_channels=3, beta=1.0, seed=0):
        super().__init__()
        self.config = dict(depth=depth, width=width, layer=layer, shared=shared,
                           expansion=expansion, num_classes=num_classes,
                           in_channels=in_channels, seed=seed)
        n = (depth - 2) // 6
        self.preact = layer == "asl"     # Jeon & Kim's ASNet: bare stem, final BN + ReLU
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for stage, (cout, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)], 1):
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                if layer in ("cl", "sal"):
                    blocks.append(BasicBlock(cin, cout, s, layer, shared))
                elif layer == "sl":
                    blocks.append(ShiftBlock(cin, cout, s, expansion))
                elif layer == "asl":
                    blocks.append(PreActASLBlock(cin, cout, s, expansion))
                else:
                    blocks.append(ActiveShiftBlock(cin, cout, s, expansion))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        if self.preact:
            self.bn_final = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)
        self.set_beta(beta)

    def sal_layers(self):
        return [m for m in self.modules() if isinstance(m, SALConv2d)]

    def set_beta(self, beta):
        """Set the inverse temperature of every SAL layer (annealing: after each step)."""
        with torch.no_grad():
            for m in self.sal_layers():
                m.beta.fill_(float(beta))
        self._beta = float(beta)
        return self

    @property
    def beta(self):
        layers = self.sal_layers()
        return float(layers[0].beta) if layers else self._beta

    def set_hard(self, hard=True):
        """Binarised attention (p > 0.5) in every SAL layer, as net.forward(hard=True)."""
        for m in self.sal_layers():
            m.hard = bool(hard)
        return self

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = relu(self.bn_final(x))
        return self.linear(x.mean((2, 3)))


# ---------------------------------------------------------------- pruned form
class PrunedSAL(nn.Module):
    """A binarised unshared SAL layer with its BN folded: only the kept weights.
    weight (P,), pairs int32 (P, 4) = (o, i, dy, dx), bias (O,); 3x3, padding 1."""

    def __init__(self, pairs, weight, bias, in_channels, stride, out_channels=None):
        super().__init__()
        out_channels = len(bias) if out_channels is None else out_channels
        self.weight = nn.Parameter(torch.as_tensor(np.array(weight, np.float32)))
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(np.array(bias, np.float32)))
        self.register_buffer("pairs", torch.as_tensor(np.array(pairs, np.int32).reshape(-1, 4)))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def dense_weight(self):
        p = self.pairs.long()
        flat = (p[:, 0] * self.in_channels + p[:, 1]) * 9 + (p[:, 2] + 1) * 3 + (p[:, 3] + 1)
        w = self.weight.new_zeros(self.out_channels * self.in_channels * 9)
        w = w.index_add(0, flat, self.weight)
        return w.view(self.out_channels, self.in_channels, 3, 3)

    def forward(self, x):
        return F.conv2d(x, self.dense_weight(), self.bias, stride=self.stride, padding=1)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"kept={len(self.weight)}")


class PrunedShift(nn.Module):
    """out[c] = in[src_c] shifted by (dy_c, dx_c) with the stride; shifts int32 (M, 3)."""

    def __init__(self, shifts, stride):
        super().__init__()
        self.register_buffer("shifts", torch.as_tensor(np.array(shifts, np.int32).reshape(-1, 3)))
        self.stride = stride

    def forward(self, x):
        s = self.shifts
        src = s[:, 0].long()
        if not (len(src) == x.shape[1] and bool((src == torch.arange(len(src))).all())):
            x = x.index_select(1, src)
        return shift(x, s[:, 1:], self.stride)


class PrunedResNet(nn.Module):
    """The exported (InferenceNet) program as torch modules, BN folded, pruned slices
    dropped; modules under the training module names.  forward(x) equals inf.forward(x)."""

    def __init__(self, inf):

        super().__init__()
        F_ = {f: i for i, f in enumerate(FIELDS)}
        self.config = dict(inf.config)
        self.info = dict(inf.info)
        # the program, to run it and to rebuild the InferenceNet (from_torch)
        self._ops = inf.ops.copy()
        self._names = list(inf.names)
        self._channels = list(inf.channels)
        # a copy (its libsal engines are made on use): the module deep-copies and pickles
        self._template = InferenceNet(inf.program, inf.weights.copy(), inf.config, inf.info)
        W = inf.weights
        made = {}
        steps = []
        shapes = inf.program.shapes((inf.in_channels, 32, 32))
        for row, name in zip(inf.ops, inf.names):
            kind = int(row[F_["kind"]])
            cin = shapes[row[F_["inp"]]][0]
            cout = shapes[row[F_["out"]]][0]
            o, k = int(row[F_["o"]]), int(row[F_["k"]])
            s = int(row[F_["stride"]])
            mod_name = None
            if kind == CONV:
                # no bias when p1 < 0 (a conv whose output no BN folded into: ASNet)
                m = nn.Conv2d(cin, o, k, s, int(row[F_["pad"]]), bias=bool(row[F_["p1"]] >= 0))
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(W[row[F_["p0"]]:row[F_["p0"]] + o * cin * k * k]
                                                    .reshape(o, cin, k, k)))
                    if m.bias is not None:
                        m.bias.copy_(torch.from_numpy(W[row[F_["p1"]]:row[F_["p1"]] + o]))
                mod_name = name
            elif kind == GATHER:
                n = int(row[F_["npair"]])
                # no bias when p1 < 0 (a gather whose output no BN folded into)
                m = PrunedSAL(inf.pairs[row[F_["ioff"]]:row[F_["ioff"]] + n],
                              W[row[F_["p0"]]:row[F_["p0"]] + n],
                              W[row[F_["p1"]]:row[F_["p1"]] + o] if row[F_["p1"]] >= 0 else None,
                              cin, s, out_channels=o)
                mod_name = name
            elif kind == BN:
                m = nn.BatchNorm2d(cin, eps=BN_EPS).eval()
                with torch.no_grad():
                    for t, f in ((m.weight, "p0"), (m.bias, "p1"), (m.running_mean, "b0"),
                                 (m.running_var, "b1")):
                        t.copy_(torch.from_numpy(W[row[F_[f]]:row[F_[f]] + cin]))
                mod_name = name
            elif kind == LINEAR:
                m = nn.Linear(cin, o)
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(W[row[F_["p0"]]:row[F_["p0"]] + o * cin]
                                                    .reshape(o, cin)))
                    m.bias.copy_(torch.from_numpy(W[row[F_["p1"]]:row[F_["p1"]] + o]))
                mod_name = name
            elif kind == SHIFT:
                m = PrunedShift(inf.shifts[row[F_["ioff"]]:row[F_["ioff"]] + cout], s)
                mod_name = name
            if mod_name is not None:
                made.setdefault(mod_name, []).append(m)
            steps.append((kind, int(row[F_["inp"]]), int(row[F_["out"]]), int(row[F_["res"]]),
                          int(row[F_["relu"]]), int(row[F_["res_post"]]), mod_name,
                          len(made[mod_name]) - 1 if mod_name else -1))
        # a shared SAL layer has two ops under one name: the shift becomes the child
        # "shift" of the 1x1 convolution
        self._paths = {}
        for name, mods in made.items():
            main = [m for m in mods if not isinstance(m, PrunedShift)]
            if len(mods) == 1 or not main:
                self._attach(name, mods[0])
                paths = [name]
            elif len(mods) == 2 and len(main) == 1:
                self._attach(name, main[0])
                main[0].add_module("shift", mods[0] if mods[1] is main[0] else mods[1])
                paths = [name + ".shift" if isinstance(m, PrunedShift) else name for m in mods]
            else:
                raise NotImplementedError(f"to_torch: op name {name!r} used by {len(mods)} ops")
            self._paths[name] = paths
        self._steps = steps

    def _attach(self, dotted, module):
        parent = self
        parts = dotted.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p) or not isinstance(getattr(parent, p), nn.Module):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(parts[-1], module)

    def forward(self, x):

        bufs = {0: x}
        y = x
        for kind, inp, out, res, rl, post, name, j in self._steps:
            h = bufs[inp]
            if kind == POOL:
                y = h.mean((2, 3), keepdim=True)
            elif kind == ADD:
                y = h + bufs[res]
                y = F.relu(y) if rl else y
            else:
                m = self.get_submodule(self._paths[name][j])
                if isinstance(m, nn.Linear):
                    y = m(h.flatten(1))
                else:
                    y = m(h)
                    if res >= 0 and not post:
                        y = y + bufs[res]
                    if rl:
                        y = F.relu(y)
                    if res >= 0 and post:
                        y = y + bufs[res]
            bufs[out] = y
        return y


# ---------------------------------------------------------------- conversions
def to_torch(net, beta=None):
    """A torch.nn.Module of a salnp network (training form, ``ResNet``: the SAL layers'
    beta = beta or net.beta; train/eval mode copied) or of an exported network
    (salnp.export.InferenceNet: the pruned form, ``PrunedResNet``).  Copies the state."""

    if isinstance(net, InferenceNet):
        return PrunedResNet(net).eval()
    if not isinstance(net, NpResNet):
        raise TypeError(f"to_torch: net must be a salnp network (salnp.models.ResNet) or an "
                        f"exported one (salnp.export.InferenceNet), got {type(net).__name__}")
    b = float(net.beta if beta is None else beta)
    t = ResNet(**net.config, beta=b)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    for name, m in t.named_modules():
        if isinstance(m, SALConv2d):
            sd[f"{name}.beta"] = torch.tensor(b)
    t.load_state_dict(sd, strict=True)
    return t.train(net.training)


_WRAPPERS = ("net", "state_dict", "model", "model_state_dict")
# torch dtypes that float32 holds exactly: converted with .float() before numpy sees them
_SHORT_FLOATS = tuple(getattr(torch, n) for n in ("bfloat16", "float16", "float8_e4m3fn",
                                                  "float8_e5m2", "float8_e4m3fnuz",
                                                  "float8_e5m2fnuz") if hasattr(torch, n))


def _shape(v):
    """The shape a state value declares (a tensor's or array's; () for a number), read
    without converting or copying anything."""
    if torch.is_tensor(v) or isinstance(v, np.ndarray):
        return tuple(int(s) for s in v.shape)
    return tuple(np.shape(v)) if isinstance(v, (int, float, bool, np.number, list, tuple)) else None


def _as_array(k, v):
    """A state value as a numpy array without changing a value: tensors of dtypes that
    float32 holds exactly (bfloat16, float16, float8) become float32; sparse, meta,
    quantized and complex tensors, and values that are no arrays, are refused naming k."""
    if torch.is_tensor(v):
        if v.layout != torch.strided:
            raise ValueError(f"from_torch: {k}: a {v.layout} (sparse) tensor: expected a dense "
                             "one (.to_dense())")
        if v.device.type == "meta":
            raise ValueError(f"from_torch: {k}: a meta tensor holds no values")
        if v.is_quantized or v.is_complex():
            raise ValueError(f"from_torch: {k}: dtype {v.dtype}: expected real values")
        v = v.detach().cpu()
        return (v.float() if v.dtype in _SHORT_FLOATS else v).numpy()
    if _shape(v) is None:
        raise ValueError(f"from_torch: {k}: a {type(v).__name__}, not a tensor or an array")
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"from_torch: {k}: dtype {a.dtype}: expected real values")
    return a


def _exact(k, v, dtype):
    """v (a state value) as a numpy array of dtype when every value converts exactly
    (NaN to NaN); ValueError naming k and the first value that would change otherwise."""
    a = _as_array(k, v)
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore", invalid="ignore"):
        c = a.astype(dtype)
        back = c.astype(a.dtype)
    same = (back == a) | (np.isnan(a) & np.isnan(back)) if a.dtype.kind == "f" and \
        dtype.kind == "f" else back == a
    if not np.all(same):
        i = np.unravel_index(int(np.argmin(same)), a.shape) if a.ndim else ()
        raise ValueError(f"from_torch: {k}: {a.dtype} values not exactly {dtype} (at index "
                         f"{tuple(int(j) for j in i)}: {a[i]!r} -> {c[i]!r}); convert the "
                         f"module or state first if the rounding is intended (.float())")
    return c


def _beta_value(k, v, arg=False):
    """A beta (a buffer k, or the argument beta= when arg) as a float: a real number,
    finite and >= 0."""
    if torch.is_tensor(v) or isinstance(v, np.ndarray):
        if _shape(v) != () or v.dtype in (torch.bool, np.bool_) or \
                (torch.is_tensor(v) and (v.is_complex() or v.device.type == "meta")) or \
                (isinstance(v, np.ndarray) and v.dtype.kind not in "iuf"):
            raise ValueError(f"from_torch: {k}: a 0-d real tensor expected, got "
                             f"{getattr(v, 'dtype', type(v).__name__)} {_shape(v)}")
        v = float(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"from_torch: {k}={v!r}: must be a real number")
    v = float(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"from_torch: {k}{'=' if arg else ' = '}{v}: must be finite and >= 0 "
                         "(the SAL inverse temperature)")
    return v


def _as_state(obj):
    """(state: name -> the value as given, betas, hint config or None, training or None);
    nothing is converted yet (shapes are checked first)."""
    cfg, training, mbeta = None, None, None
    if isinstance(obj, nn.Module):
        cfg = getattr(obj, "config", None)
        training = obj.training
        if isinstance(obj, ResNet):
            mbeta = obj.beta
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"from_torch: expected a torch.nn.Module or a state dict (a mapping of "
                        f"names to tensors), got {type(obj).__name__}")
    for w in _WRAPPERS:   # a training checkpoint {"net": state_dict, "epoch": ...}
        if w in obj and isinstance(obj[w], Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            obj = obj[w]
            break
    keys = list(obj)
    if keys and all(str(k).startswith("module.") for k in keys):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    state, betas = {}, {}
    for k, v in obj.items():
        k = str(k)
        if k.endswith(".attentionWeights"):
            k = k[:-len("attentionWeights")] + "logits"
        if k.endswith(".beta") and _shape(v) == ():     # SALConv2d's inverse temperature
            betas[k] = _beta_value(k, v)
            continue
        state[k] = v
    if not betas and mbeta is not None:
        betas["beta"] = _beta_value("beta", mbeta)
    return state, betas, cfg, training


def _infer_config(state):
    """salnp.models.resnet keywords from the shapes of a ResNet state dict."""
    def need(k):
        if k not in state:
            raise KeyError(f"from_torch: key {k!r} missing: not a salnp/CIFAR ResNet state dict "
                           f"(keys start {sorted(state)[:6]})")
        s = _shape(state[k])
        if s is None:
            raise ValueError(f"from_torch: {k}: a {type(state[k]).__name__}, not a tensor")
        return s

    w0 = need("conv1.weight")
    if len(w0) != 4:
        raise ValueError(f"from_torch: conv1.weight has shape {w0}, expected (width, C, 3, 3)")
    width, cin = int(w0[0]), int(w0[1])
    lw = need("linear.weight")
    if len(lw) != 2:
        raise ValueError(f"from_torch: linear.weight has shape {lw}, expected (classes, C)")
    num_classes = int(lw[0])
    n = {}
    for s in (1, 2, 3):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{s}.")
               and k.split(".")[1].isdigit()}
        n[s] = len(idx)
    if n[1] == 0 or len(set(n.values())) != 1:
        raise ValueError(f"from_torch: blocks per stage {n[1]}, {n[2]}, {n[3]}: expected the "
                         f"same n >= 1 in layer1..3 (depth 6n+2)")
    if any(k.endswith(".logits") for k in state):
        layer = "sal"
    elif "layer1.0.shift.offsets" in state:
        layer = "sl"
    elif "layer1.0.shift.shift" in state:   # pre-activation ASNet: a final BN, no stem BN
        layer = "asl" if "bn_final.weight" in state else "asl-post"
    else:
        layer = "cl"
    cfg = dict(depth=6 * n[1] + 2, width=width, layer=layer, num_classes=num_classes,
               in_channels=cin)
    if layer == "sal":
        lg = need("layer1.0.conv1.logits")
        cfg["shared"] = bool(len(lg) == 3 and lg[0] == 1 and need("layer1.0.conv1.weight")[0] > 1)
    if layer in ("sl", "asl", "asl-post"):
        mid = int(need("layer1.0.conv1.weight")[0])
        e = mid / width
        cfg["expansion"] = int(e) if float(e).is_integer() else e
    return cfg


def _meta_state(cfg):
    """{name: shape} of the torch ResNet of cfg (its SAL beta buffers left out), built on
    the meta device: nothing is allocated, however large the config."""
    keys = ("depth", "width", "layer", "shared", "expansion", "num_classes", "in_channels")
    with torch.device("meta"):
        t = ResNet(**{k: cfg[k] for k in keys if k in cfg})
    return {k: tuple(v.shape) for k, v in t.state_dict().items()
            if not (k.endswith(".beta") and isinstance(t.get_submodule(k.rsplit(".", 1)[0]),
                                                       SALConv2d))}


def _memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def _check_keys(state, cfg):
    """Every key and shape the architecture of cfg needs, compared with the state before
    anything is built: names first (from a width-1 copy of the architecture: the names
    do not depend on the widths), then the size the state declares (at most this
    machine's memory), then every shape (the architecture on the meta device)."""
    try:
        resnet(**dict(cfg, width=1, num_classes=1, in_channels=1))    # the config's rules
    except (TypeError, ValueError) as e:
        raise ValueError(f"from_torch: config {cfg} does not make a salnp network: {e}") from None
    names = _meta_state(dict(cfg, width=1, num_classes=1, in_channels=1))
    optional = {k for k in names if k.endswith((".mask", ".tap_threshold"))}
    missing = [k for k in names if k not in state and k not in optional]
    unexpected = [k for k in state if k not in names]
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if not parts:
        declared = sum(math.prod(_shape(state[k]) or ()) for k in names if k in state)
        if 4 * declared > _memory_bytes():
            raise ValueError(f"from_torch: the state dict declares {declared} values "
                             f"({4 * declared / 2**30:.0f} GiB as float32), more than this "
                             f"machine's memory ({_memory_bytes() / 2**30:.0f} GiB); not built")
        want = _meta_state(cfg)
        shapes = [f"{k}: {_shape(state[k])}, expected {want[k]}" for k in want
                  if k in state and _shape(state[k]) != want[k]]
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes))
    if parts:
        raise ValueError(f"from_torch: the state dict does not fit a salnp ResNet {cfg}: "
                         + "; ".join(parts))


def _pruned_expected(mod, tpl):
    """{module path: (type, {name: shape}, {attribute: value})} the exported program
    needs of a PrunedResNet's modules."""
    F_ = {f: i for i, f in enumerate(FIELDS)}
    shapes = tpl.program.shapes((tpl.in_channels, 32, 32))
    want = {}
    for (kind, *_rest, name, j), row in zip(mod._steps, tpl.ops):
        if name is None:
            continue
        path = mod._paths[name][j]
        cin, o = shapes[int(row[F_["inp"]])][0], int(row[F_["o"]])
        s, bias = int(row[F_["stride"]]), int(row[F_["p1"]]) >= 0
        if kind == CONV:
            k, p = int(row[F_["k"]]), int(row[F_["pad"]])
            params = {"weight": (o, cin, k, k)} | ({"bias": (o,)} if bias else {})
            want[path] = (nn.Conv2d, params, dict(stride=(s, s), padding=(p, p),
                                                  dilation=(1, 1), groups=1,
                                                  padding_mode="zeros", in_channels=cin,
                                                  out_channels=o, kernel_size=(k, k)))
        elif kind == GATHER:
            n = int(row[F_["npair"]])
            params = {"weight": (n,), "pairs": (n, 4)} | ({"bias": (o,)} if bias else {})
            want[path] = (PrunedSAL, params, dict(stride=s, in_channels=cin, out_channels=o))
        elif kind == BN:
            want[path] = (nn.BatchNorm2d, {"weight": (cin,), "bias": (cin,),
                                           "running_mean": (cin,), "running_var": (cin,),
                                           "num_batches_tracked": ()},
                          dict(num_features=cin, eps=BN_EPS, affine=True,
                               track_running_stats=True))
        elif kind == LINEAR:
            want[path] = (nn.Linear, {"weight": (o, cin), "bias": (o,)},
                          dict(in_features=cin, out_features=o))
        elif kind == SHIFT:
            want[path] = (PrunedShift, {"shifts": (shapes[int(row[F_["out"]])][0], 3)},
                          dict(stride=s))
    return want


def _pruned_from_torch(mod):
    """The InferenceNet of a PrunedResNet, with the module's current weights.  Its
    structure must be the exported program's: every module's type and settings, every
    parameter's presence and shape (a bias removed or added, a conv replaced by another
    shape or stride is refused, naming it); values must convert to float32 exactly."""

    F_ = {f: i for i, f in enumerate(FIELDS)}
    tpl = mod._template
    want = _pruned_expected(mod, tpl)
    sd = mod.state_dict()
    keys = {f"{p}.{n}": s for p, (_, params, _) in want.items() for n, s in params.items()}
    missing = [k for k in keys if k not in sd]
    unexpected = [k for k in sd if k not in keys]
    shapes = [f"{k}: {tuple(sd[k].shape)}, expected {s}" for k, s in keys.items()
              if k in sd and tuple(sd[k].shape) != s]
    if missing or unexpected or shapes:
        parts = ([f"missing keys {missing}"] if missing else []) + \
            ([f"unexpected keys {unexpected}"] if unexpected else []) + \
            (["shape mismatch: " + "; ".join(shapes)] if shapes else [])
        raise ValueError("from_torch: the module's structure differs from the exported "
                         "program's (the pruned form is fixed; fine-tune weights only): "
                         + "; ".join(parts))
    for path, (cls, _, attrs) in want.items():
        m = mod.get_submodule(path)
        if type(m) is not cls:
            raise ValueError(f"from_torch: {path}: a {type(m).__name__}, expected the "
                             f"exported program's {cls.__name__}")
        for a, v in attrs.items():
            got = getattr(m, a, None)
            got = tuple(got) if isinstance(got, list) else got
            if got != v:
                raise ValueError(f"from_torch: {path}: {a} {got!r}, expected {v!r} (the "
                                 "exported program's)")
    weights = tpl.weights.copy()
    pairs, shifts = tpl.pairs.copy(), tpl.shifts.copy()
    for (kind, *_rest, name, j), row in zip(mod._steps, tpl.ops):
        if name is None:
            continue
        path = mod._paths[name][j]
        m = mod.get_submodule(path)

        def put(off, t, what):
            a = _exact(f"{path}.{what}", t, np.float32).reshape(-1)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"from_torch: {path}.{what} contains NaN or inf")
            weights[off:off + a.size] = a

        if isinstance(m, PrunedShift):
            got = m.shifts.cpu().numpy()
            ref = shifts[row[F_["ioff"]]:row[F_["ioff"]] + len(got)]
            if got.shape != ref.shape or not np.array_equal(got, ref):
                raise ValueError(f"from_torch: {path}.shifts differ from the exported program's "
                                 "(the pruned form's structure is fixed; fine-tune weights only)")
            continue
        if isinstance(m, PrunedSAL):
            got = m.pairs.cpu().numpy()
            n = int(row[F_["npair"]])
            if got.shape != (n, 4) or not np.array_equal(got, pairs[row[F_["ioff"]]:row[F_["ioff"]] + n]):
                raise ValueError(f"from_torch: {path}.pairs differ from the exported program's")
        put(int(row[F_["p0"]]), m.weight, "weight")
        if m.bias is not None:
            put(int(row[F_["p1"]]), m.bias, "bias")
        if isinstance(m, nn.BatchNorm2d):
            put(int(row[F_["b0"]]), m.running_mean, "running_mean")
            put(int(row[F_["b1"]]), m.running_var, "running_var")
    prog = Program.from_tables(tpl.ops, tpl.channels, shifts, pairs, tpl.names)
    return InferenceNet(prog, weights, tpl.config, tpl.info)


def from_torch(module_or_state_dict, beta=None, **config):
    """A salnp network from a PyTorch ResNet (a module or its state dict).

    Training form (salnp.torch.ResNet, the authors' SAL ResNets, torchvision-style CIFAR
    ResNets with these names): a salnp.models.ResNet with the same state; the config is
    read from the shapes (``config`` keywords override or complete it, e.g. seed=);
    beta: the SAL inverse temperature (default: the layers' beta buffers, else 1.0).
    Pruned form (salnp.torch.PrunedResNet from to_torch(inf)): a salnp.export.InferenceNet
    with the module's weights.  Errors name every missing, unexpected or mis-shaped key
    (checked before anything is built, so a small state dict declaring a huge network
    is refused without allocating it), a beta that is not finite and >= 0, and a value
    that its salnp dtype does not hold exactly (bfloat16, float16: converted; float64:
    only float32 values; complex, sparse, meta tensors: refused)."""

    if isinstance(module_or_state_dict, PrunedResNet):
        return _pruned_from_torch(module_or_state_dict)
    if beta is not None:
        beta = _beta_value("beta", beta, arg=True)
    state, betas, hint, training = _as_state(module_or_state_dict)
    cfg = dict(hint) if hint else _infer_config(state)
    cfg.update(config)
    _check_keys(state, cfg)
    try:
        net = resnet(**cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"from_torch: config {cfg} does not make a salnp network: {e}") from None
    own = dict(net.named_parameters())
    own.update(net.named_buffers())
    net.load_state_dict({k: _exact(k, v, own[k].dtype) for k, v in state.items()}, strict=False)
    if beta is None:
        vals = sorted(set(betas.values()))
        if len(vals) > 1:
            raise ValueError(f"from_torch: SAL layers have different beta buffers {vals}: salnp "
                             "uses one global beta; pass beta=")
        beta = vals[0] if vals else 1.0
    net.beta = beta
    if training is not None:
        net.train(training)
    return net
