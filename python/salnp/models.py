"""CIFAR ResNets with CL, SL, ASL or SAL layers (DESIGN.md section 2).

    net = salnp.models.resnet(depth=20, width=16, layer="sal")
    logits = net.forward(x)          # x float32 (N, C, H, W)

A network is a tree of Modules (PyTorch-style names: ``layer1.0.conv1.weight``) whose
parameters live in one arena, plus a *program* (salnp.program): the flat list of ops the
tree emits (conv, SAL, shift, BN(+add)(+ReLU), pool, linear) over activation buffers.
libsal runs the program forward and backward with every buffer allocated once per batch
size, in the channel-major layout.

    salnp.save(net, "net.npz"); net = salnp.load("net.npz")      # .npz, never pickle
"""
from __future__ import annotations


import numpy as np

from .io import NpzReader, _fspath, check_finite_state, save_npz_atomic
# the leaf layers live in salnp.nn; re-exported here
from .nn import (ActiveShift, Arena, BatchNorm2d, Conv2d, Linear, Module, SALConv2d, Sequential,
                 Shift, check_beta, check_tap_threshold, default_shift_offsets,
                 kaiming_normal_fan_in)
from .program import ADD, POOL, Engine, Program

__all__ = ["resnet", "ResNet", "Conv2d", "SALConv2d", "Shift", "ActiveShift", "BatchNorm2d",
           "Linear", "BasicBlock", "ShiftBlock", "ActiveShiftBlock", "PreActASLBlock",
           "default_shift_offsets", "LAYERS", "BETA0", "save", "load"]

LAYERS = ("sal", "cl", "sl", "asl", "asl-post")

# The paper's initial SAL inverse temperature (CIFAR, DESIGN 1.4): a fresh network starts
# there, so that counting or exporting an untrained net binarises at the beta training
# starts from (at beta = 1 the attention is nearly uniform and most slices would drop).
BETA0 = 20.0

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
        y = prog.buf(prog.channels[h])
        prog.op(f"{name}.add", ADD, inp=h, out=y, res=r)
        return y


class ActiveShiftBlock(_ShiftBlockBase):
    """layer="asl-post": a post-activation ASL block in the ShiftResNet mould (salnp's ASL
    before it followed Jeon & Kim; kept for comparison): 1x1 in->e*out, BN, ReLU, active
    shift, 1x1 e*out->out with the stride, BN, + shortcut (option B: 1x1 conv + BN), ReLU.
    Not the authors' network: see PreActASLBlock."""

    shift_module = ActiveShift

    def emit(self, prog, arena, name, x):
        r = _emit_shortcut(self._sc, prog, arena, name, x)
        h = self._emit_body(prog, arena, name, x)
        return self.bn2.emit(prog, arena, f"{name}.bn2", h, relu=True, res=r)


class PreActASLBlock(Module):
    """layer="asl": Jeon & Kim's CIFAR ASNet block, as in their prototxts
    (jyh2986/Active-Shift, models/ASL_Model/CIFAR10/[16xE]solver.prototxt):

        x -> BN -> ReLU -> h -> 1x1 in->e*out -> BN -> ReLU -> ASL (stride) -> 1x1 e*out->out
          -> + shortcut

    pre-activation; no BN after the second 1x1; the stride sits in the active shift; the
    shortcut is the identity or, when the shape changes, a 1x1 conv with the stride and no
    BN, applied to the pre-activated h.  Convolutions have no bias and Caffe's "msra" init
    N(0, 2/fan_in); BN scale/shift get no weight decay; shifts U(-1, 1), lr x 0.01, no
    decay, gradients normalised per channel (ActiveShift)."""

    def __init__(self, cin, cout, stride, expansion=1):
        super().__init__()
        mid = int(round(expansion * cout))
        self.bn1 = BatchNorm2d(cin, decay=False)
        self.conv1 = Conv2d(cin, mid, 1, 1, 0, init=kaiming_normal_fan_in)
        self.bn2 = BatchNorm2d(mid, decay=False)
        self.shift = ActiveShift(mid, stride)
        self.conv2 = Conv2d(mid, cout, 1, 1, 0, init=kaiming_normal_fan_in)
        self.has_shortcut = not (stride == 1 and cin == cout)
        if self.has_shortcut:
            self.shortcut = Conv2d(cin, cout, 1, stride, 0, init=kaiming_normal_fan_in)

    def emit(self, prog, arena, name, x):
        h = self.bn1.emit(prog, arena, f"{name}.bn1", x, relu=True)
        r = self.shortcut.emit(prog, arena, f"{name}.shortcut", h) if self.has_shortcut else x
        t = self.conv1.emit(prog, arena, f"{name}.conv1", h)
        t = self.bn2.emit(prog, arena, f"{name}.bn2", t, relu=True)
        t = self.shift.emit(prog, arena, f"{name}.shift", t)
        t = self.conv2.emit(prog, arena, f"{name}.conv2", t)
        y = prog.buf(prog.channels[t])
        prog.op(f"{name}.add", ADD, inp=t, out=y, res=r)
        return y


# ---------------------------------------------------------------- the network
class ResNet(Module):
    """CIFAR ResNet (He et al.): stem 3x3 conv + BN + ReLU, three stages of widths
    w, 2w, 4w with n blocks each (stride 2 entering stages 2 and 3), global average
    pool, Linear.  ``layer`` picks the block: "cl", "sal" (BasicBlock), "sl" (ShiftBlock),
    "asl" (PreActASLBlock, Jeon & Kim's ASNet: its stem is the 3x3 conv alone and a final
    BN + ReLU precedes the pool; Caffe init of the Linear layer) or "asl-post"
    (ActiveShiftBlock).  A fresh network's SAL beta is BETA0 = 20."""

    _state_properties = ("beta", "checkpointing")   # travel with pickles and copies

    def __init__(self, depth=20, width=16, layer="sal", shared=False, expansion=1,
                 num_classes=10, in_channels=3, seed=0, input_size=None):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"resnet: layer={layer!r}: must be 'cl', 'sal', 'sl', 'asl' or "
                             "'asl-post'")
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
        preact = layer == "asl"
        self.conv1 = Conv2d(in_channels, width, 3, 1, init=kaiming_normal_fan_in if preact else None)
        if not preact:
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
                elif layer == "asl":
                    blocks.append(PreActASLBlock(cin, cout, s, expansion))
                else:
                    blocks.append(ActiveShiftBlock(cin, cout, s, expansion))
                cin = cout
            self.add_module(f"layer{stage}", Sequential(*blocks))
        if preact:
            self.bn_final = BatchNorm2d(cin, decay=False)
        self.linear = Linear(cin, num_classes, caffe=preact)
        self.arena = Arena(self, seed)
        self._program = self._engine_ = None
        self._offsets_seen = None
        self._checkpointing = None
        self.beta = BETA0  # SAL inverse temperature (fit anneals it from its beta[0])

    @property
    def beta(self) -> float:
        """The SAL inverse temperature: a finite number > 0, checked where it is set."""
        return self._beta

    @beta.setter
    def beta(self, value):
        self._beta = check_beta(value, "net.beta")

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def tap_threshold(self):
        """The SAL layers' tap threshold (SALConv2d.tap_threshold): the one value they share,
        or {layer name: value} when they differ; None without SAL layers.  Setting it sets
        every SAL layer (a real number in [0, 1]; 0: the dense path)."""
        vals = {n: m.tap_threshold for n, m in self.named_modules() if isinstance(m, SALConv2d)}
        if not vals:
            return None
        return next(iter(vals.values())) if len(set(vals.values())) == 1 else vals

    @tap_threshold.setter
    def tap_threshold(self, value):
        t = check_tap_threshold(value, "net.tap_threshold")
        for _, m in self.named_modules():
            if isinstance(m, SALConv2d):
                m.tap_threshold = t

    def _shift_offsets(self):
        """The current offsets of every Shift, in module order (the program copies them
        into its shift table: a change (load_state_dict, an in-place edit) rebuilds it)."""
        return [m._buffers["offsets"] for _, m in self.named_modules() if isinstance(m, Shift)]

    @property
    def program(self) -> Program:
        """The program this network runs (salnp.program): the ops its modules emit, the
        module name of every op; the same for every input size."""
        cur = self._shift_offsets()
        seen = self._offsets_seen
        if self._program is None or len(seen) != len(cur) or any(
                not np.array_equal(a, b) for a, b in zip(seen, cur)):
            prog = Program(self.in_channels)
            x = self.conv1.emit(prog, self.arena, "conv1", 0)
            if "bn1" in self._modules:
                x = self.bn1.emit(prog, self.arena, "bn1", x, relu=True)
            for stage in (1, 2, 3):
                seq = self._modules[f"layer{stage}"]
                for i in range(len(seq)):
                    x = seq[i].emit(prog, self.arena, f"layer{stage}.{i}", x)
            if "bn_final" in self._modules:
                x = self.bn_final.emit(prog, self.arena, "bn_final", x, relu=True)
            y = prog.buf(prog.channels[x])
            prog.op("avgpool", POOL, inp=x, out=y)
            self.linear.emit(prog, self.arena, "linear", y)
            self._program, self._engine_ = prog, None
            self._offsets_seen = [np.array(a, copy=True) for a in cur]
        return self._program

    @property
    def checkpointing(self):
        """Activation checkpointing of training: None (every activation kept; the default),
        "blocks" or "stages": backward recomputes the activations inside each residual block
        (or each stage) from its input instead of keeping them (about one more forward of
        the network; the results are bit for bit the same)."""
        return self._checkpointing

    @checkpointing.setter
    def checkpointing(self, value):
        if value not in (None, "blocks", "stages"):
            raise ValueError(f"net.checkpointing={value!r}: must be None, 'blocks' or 'stages'")
        self._checkpointing = value
        if self._engine_ is not None:       # else the engine applies it when it is made
            self._apply_checkpoints()

    def _apply_checkpoints(self):
        """The program's op ranges of the blocks / stages (names layer<s>.<b>.*) to the engine."""
        mode, names = self._checkpointing, self.program.names
        keys = []
        for n in names:
            parts = n.split(".")
            key = None
            if mode and parts[0].startswith("layer") and len(parts) > 2:
                key = parts[0] if mode == "stages" else ".".join(parts[:2])
            keys.append(key)
        bounds, i = [], 0
        while i < len(keys):
            j = i
            while j < len(keys) and keys[j] is not None and keys[j] == keys[i]:
                j += 1
            if j > i:
                bounds.append((i, j))
                i = j
            else:
                i += 1
        self.engine.set_checkpoints(bounds)

    @property
    def engine(self) -> Engine:
        """The program's engine (libsal engines per input size, the input check, the lock)."""
        prog = self.program
        if self._engine_ is None:
            self._engine_ = Engine(prog, self.arena.params.size, self.arena.buffers.size)
            if self._checkpointing:
                self._apply_checkpoints()
        return self._engine_

    def forward(self, x, train=None, hard=False):
        """Logits (N, num_classes) for x (N, C, H, W).  train=None follows self.training
        (batch statistics, running-stat update); hard=True binarises SAL attention."""
        eng = self.engine
        x = eng.check_input(x, "forward")
        train = self.training if train is None else bool(train)
        a = self.arena
        if not train:
            return eng.forward(x, a.params, a.buffers, False, hard, self.beta)
        # training mode updates the BN running statistics: a NaN/inf input (or a NaN
        # batch statistic from non-finite parameters) would poison them for good, so the
        # input is checked first and the statistics are restored if they went non-finite
        if not np.all(np.isfinite(x)):
            eng.forget()           # backward after a refused forward raises
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"forward: x contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
                             "in training mode it would poison the BN running statistics")
        with eng.lock:
            saved = a.buffers.copy()
            bns = [m for _, m in self.named_modules() if isinstance(m, BatchNorm2d)]

            def undo():
                a.buffers[...] = saved
                for m in bns:
                    m._buffers["num_batches_tracked"][...] -= 1
                eng.forget()       # backward then refuses: there is no forward to follow

            for m in bns:
                m._buffers["num_batches_tracked"][...] += 1
            try:
                out = eng.forward(x, a.params, a.buffers, True, hard, self.beta)
            except BaseException:
                undo()
                raise
            if not np.isfinite(a.buffers.sum(dtype=np.float64)):
                undo()
                raise FloatingPointError("forward: the batch statistics are NaN or inf (non-"
                                         "finite parameters?); the BN running statistics were "
                                         "left unchanged")
            return out

    __call__ = forward

    def backward(self, grad_logits):
        """Accumulate parameter gradients (into the grad arena) for the last forward."""
        self.engine.backward(self.arena.params, self.arena.grads, grad_logits)

    def zero_grad(self):
        self.arena.zero_grad()


def resnet(depth=20, width=16, layer="sal", shared=False, expansion=1, num_classes=10,
           in_channels=3, seed=0) -> ResNet:
    """A CIFAR ResNet-`depth` of width `width` with CL / SL / ASL / SAL layers
    (layer: "cl", "sal", "sl", "asl" = Jeon & Kim's pre-activation ASNet, "asl-post")."""
    return ResNet(depth, width, layer, shared, expansion, num_classes, in_channels, seed)


# ---------------------------------------------------------------- files
def _check_model_config(path, cfg, shapes):
    """The config must describe the arrays in the file (so a foreign or edited file cannot
    make load build a network far larger than the file: width, depth, classes, channels,
    the shift blocks' expansion are checked against the stored stem, head, blocks).
    shapes: {name: shape} from the .npy headers (no data read)."""
    try:
        w = tuple(shapes["conv1.weight"])
        lin = tuple(shapes["linear.weight"])
        blocks = {k.split(".")[1] for k in shapes if k.startswith("layer1.")}
        depth = int(cfg["depth"])
        width = int(cfg["width"])
        ok = (w == (width, int(cfg["in_channels"]), 3, 3)
              and lin == (int(cfg["num_classes"]), 4 * width)
              and len(blocks) * 6 + 2 == depth)
        if ok and cfg.get("layer") in ("sl", "asl"):
            e = cfg["expansion"]
            mid = int(round(float(e) * width))
            ok = tuple(shapes["layer1.0.conv1.weight"]) == (mid, width, 1, 1)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: model config {cfg} does not match the arrays in the file")


def _beta_of(path, config):
    """The file's SAL beta (files from before it was stored: 1.0, the constructor's default
    then, which is what those networks had unless fit had annealed it)."""
    try:
        return check_beta(config.get("beta", 1.0), "beta")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def save(net, path) -> None:
    """Save a network (parameters, buffers, config, SAL beta) to path (.npz).

    Refuses (ValueError) a network with NaN/inf values or a negative BN running variance:
    load would refuse the file."""
    if not isinstance(net, ResNet):
        raise TypeError(f"save: net must be a salnp network (salnp.models.ResNet), got "
                        f"{type(net).__name__}")
    state = net.state_dict()
    check_finite_state(state, "save")
    save_npz_atomic(path, state, "network", {"model": net.config, "beta": net.beta})


def expected_state_shapes(net) -> dict:
    shapes = {k: v.shape for k, v in net.named_parameters()}
    shapes.update((k, v.shape) for k, v in net.named_buffers())
    return shapes


def load(path):
    """Load a network saved by save() (or a training checkpoint of fit); returns a new
    network with its weights and beta."""
    path = _fspath(path, "load")
    with NpzReader(path) as z:
        if z.kind not in ("network", "training"):
            raise ValueError(f"{path}: holds a {z.kind!r}, not a network")
        model_cfg = z.config.get("model")
        if not isinstance(model_cfg, dict):
            raise ValueError(f"{path}: no model config")
        beta = _beta_of(path, z.config)
        _check_model_config(path, model_cfg, z.headers_shapes)
        try:
            net = resnet(**model_cfg)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{path}: model config {model_cfg} not understood ({e})") from None
        want = expected_state_shapes(net)
        names = [k for k in z.arrays if not k.startswith(("optim.", "train."))]
        unexpected = [k for k in names if k not in want]
        if unexpected:
            raise ValueError(f"{path}: unexpected arrays {unexpected[:5]}")
        for k in names:      # every shape checked before any data is decompressed
            if z.shape(k) != want[k]:
                raise ValueError(f"{path}: {k} has shape {z.shape(k)}, expected {want[k]}")
        state = {k: z.read(k, want[k]) for k in names}
    try:
        net.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    net.beta = beta
    return net
