"""Modules in the manner of a small PyTorch, whose parameters live in one arena, and the
leaf layers (Conv2d, SALConv2d, Shift, ActiveShift, BatchNorm2d, Linear, Sequential) with
the ops they emit into a network's program (salnp.program; blocks and ResNets:
salnp.models).

Every leaf module declares its parameters (name, shape, initialiser) and buffers.
When a network is built, all parameters are packed into ONE float32 arena, their
gradients into a second and the optimiser's momentum into a third, each of the same
length; ``named_parameters()`` returns NumPy views into the arena, so the optimiser is
one loop over flat memory and Python sees the very memory C works on, without copies.
Non-trainable state (BatchNorm running statistics, fixed shift offsets) lives in a
buffer arena the same way.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np

from . import _core
from .ops import default_shift_offsets   # the one definition: libsal's (sal/shift.h)
from .program import ASHIFT, BN, CONV, LINEAR, SAL, SHIFT

__all__ = ["Module", "ParamSpec", "Arena", "Conv2d", "SALConv2d", "Shift", "ActiveShift",
           "BatchNorm2d", "Linear", "Sequential", "default_shift_offsets", "check_beta",
           "check_tap_threshold"]

Init = Callable[[np.random.Generator, tuple], np.ndarray]


def kaiming_uniform_a_sqrt5(fan_in: int) -> Init:
    """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape)


def kaiming_normal_fan_in(fan_in: int) -> Init:
    """Caffe's "msra" filler (He et al.): N(0, 2 / fan_in)."""
    std = np.sqrt(2.0 / fan_in)
    return lambda rng, shape: rng.normal(0.0, std, size=shape)


def xavier_uniform_fan_in(fan_in: int) -> Init:
    """Caffe's "xavier" filler (default FAN_IN): U(-sqrt(3 / fan_in), sqrt(3 / fan_in))."""
    bound = np.sqrt(3.0 / fan_in)
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape)


def uniform(lo: float, hi: float) -> Init:
    return lambda rng, shape: rng.uniform(lo, hi, size=shape)


def constant(v: float) -> Init:
    return lambda rng, shape: np.full(shape, v)


def check_beta(value, what="beta") -> float:
    """A SAL inverse temperature as a float: a real number, finite and > 0.  The one check
    every setter of beta uses (the network's property, export, fit's schedule, from_torch);
    TypeError / ValueError naming what and the rule."""
    bad_type = isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating))
    try:
        v = float(value) if not bad_type and np.ndim(value) == 0 else None
    except (TypeError, ValueError, OverflowError):
        v = None
    if v is None:
        raise TypeError(f"{what}={value!r}: must be a real number")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what}={value!r}: must be finite and > 0")
    return v


def check_tap_threshold(value, what="tap_threshold") -> float:
    """A SAL tap threshold as a float: a real number in [0, 1] (above 1 it would drop the
    largest tap); TypeError / ValueError naming what and the value."""
    bad_type = isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating))
    try:
        v = float(value) if not bad_type and np.ndim(value) == 0 else None
    except (TypeError, ValueError, OverflowError):
        v = None
    if v is None:
        raise TypeError(f"{what}={value!r}: must be a real number")
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what}={value!r}: must be finite and in [0, 1] (0: every tap; above "
                         "1 it would drop the largest tap)")
    return v


class ParamSpec:
    """A declared parameter or buffer before the arena exists."""

    __slots__ = ("name", "shape", "init", "dtype", "decay", "lr_scale")

    def __init__(self, name, shape, init, dtype=np.float32, decay=True, lr_scale=1.0):
        self.name, self.shape, self.init, self.dtype = name, tuple(int(s) for s in shape), init, dtype
        self.decay, self.lr_scale = decay, lr_scale


class Module:
    """Base class: declared parameters/buffers, child modules, train/eval, state dicts."""

    def __init__(self):
        self._param_specs: "OrderedDict[str, ParamSpec]" = OrderedDict()
        self._buffer_specs: "OrderedDict[str, ParamSpec]" = OrderedDict()
        self._params: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._grads: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._buffers: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._modules: "OrderedDict[str, Module]" = OrderedDict()
        self.training = True

    # -- declaration -------------------------------------------------------------
    def add_param(self, name, shape, init, decay=True, lr_scale=1.0):
        self._param_specs[name] = ParamSpec(name, shape, init, np.float32, decay, lr_scale)

    def add_buffer(self, name, shape, init, dtype=np.float32):
        self._buffer_specs[name] = ParamSpec(name, shape, init, dtype)

    def __setattr__(self, name, value):
        if isinstance(getattr(type(self), name, None), property):   # its setter checks it
            object.__setattr__(self, name, value)
            return
        d = self.__dict__
        for table, what in (("_params", "parameter"), ("_buffers", "buffer")):
            if table in d and name in d[table]:
                # the array is a view of the network's arena: training reads the arena, so
                # an assignment copies into the view (replacing it would be ignored)
                view = d[table][name]
                value = np.asarray(value)
                if value.shape != view.shape or not np.can_cast(value.dtype, view.dtype,
                                                               "same_kind"):
                    raise ValueError(
                        f"{type(self).__name__}.{name} = array: the {what} is a view of the "
                        f"network's arena, {view.dtype} {view.shape}; the value must have that "
                        f"shape and a compatible dtype, got {value.dtype} {value.shape}")
                view[...] = value
                return
        if isinstance(value, Module) and "_modules" in d and not name.startswith("_"):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name: str, m: "Module"):
        self._modules[name] = m
        object.__setattr__(self, name, m)

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("_params", "_buffers"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # -- traversal ---------------------------------------------------------------
    def named_modules(self, prefix="") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for n, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{n}" if prefix else n)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix="") -> Iterator[tuple[str, np.ndarray]]:
        for mp, m in self.named_modules(prefix):
            for n, p in m._params.items():
                yield (f"{mp}.{n}" if mp else n), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_grads(self, prefix=""):
        for mp, m in self.named_modules(prefix):
            for n, g in m._grads.items():
                yield (f"{mp}.{n}" if mp else n), g

    def named_buffers(self, prefix=""):
        for mp, m in self.named_modules(prefix):
            for n, b in m._buffers.items():
                yield (f"{mp}.{n}" if mp else n), b

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- modes -------------------------------------------------------------------
    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # -- state -------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of parameters and buffers under PyTorch-style dotted names."""
        d = OrderedDict((n, p.copy()) for n, p in self.named_parameters())
        d.update((n, b.copy()) for n, b in self.named_buffers())
        return d

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into the arena in place; shapes must match, names too when strict.

        All or nothing: every entry is checked first (name, shape, a real dtype, the
        value after the cast to the destination's dtype: finite for floats, in range
        and integral for integer buffers, BN running variances >= 0, SAL masks 0/1 with
        an allowed position per slice) and only then is anything written.  A failing
        call leaves the module exactly as it was."""
        from collections.abc import Mapping

        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays, got "
                            f"{type(state).__name__}")
        own = OrderedDict(self.named_parameters())
        own.update(self.named_buffers())
        # buffers a module declares optional (newer than some checkpoints) may be absent:
        # they are reset to their initial value
        optional = {}
        for mp, m in self.named_modules():
            for n in getattr(m, "_optional_buffers", ()):
                key = f"{mp}.{n}" if mp else n
                if key not in state and n in m._buffer_specs:
                    optional[key] = m._buffer_specs[n]
        missing = [k for k in own if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged = []
        for k, dst in own.items():
            if k not in state:
                if k in optional:
                    staged.append((dst, np.asarray(optional[k].init(np.random.default_rng(0),
                                                                    dst.shape), dst.dtype)))
                continue
            src = np.asarray(state[k])
            if src.shape != dst.shape:
                raise ValueError(f"load_state_dict: {k} has shape {src.shape}, expected {dst.shape}")
            if src.dtype.kind not in "fiub":
                raise TypeError(f"load_state_dict: {k} has dtype {src.dtype}, expected a real array")
            staged.append((dst, _checked_cast(k, src, dst.dtype)))
        for dst, v in staged:
            dst[...] = v
        return self

    # -- travelling: pickle, copy.deepcopy, multiprocessing, Dask ---------------------
    def __reduce_ex__(self, protocol):
        """A network travels as its config plus its state.

        Unpickling (or ``copy.deepcopy``, ``copy.copy``) calls ``type(net)(**net.config)``,
        which builds the module tree and a fresh arena of its own, then copies the state
        in: the arena's flat arrays (parameters, gradients, momentum, float buffers), the
        buffers outside it (integer shift offsets, BN batch counters), every module's
        train/eval flag, the root's public attributes and its ``_state_properties``
        (``beta``, ``checkpointing``).  Parameter views
        therefore always point into the copy's own arena, and no C engine travels: the
        next forward rebuilds it.  Only the module that owns the arena (a network such as
        salnp.models.ResNet, with ``config`` = its constructor's keyword arguments) can
        travel; a sub-module is a set of views into its network's arena."""
        d = self.__dict__
        arena, config = d.get("arena"), d.get("config")
        if not isinstance(arena, Arena) or not isinstance(config, dict):
            raise TypeError(f"cannot pickle or copy a {type(self).__name__} on its own: its "
                            "parameters are views into its network's arena; pickle or copy the "
                            "network (the module with .config and .arena)")
        in_arena = set(arena.offsets)
        state = {
            "arena": {k: getattr(arena, k) for k in Arena.STATE},
            "buffers": {n: b for n, b in self.named_buffers() if n not in in_arena},
            "training": [m.training for _, m in self.named_modules()],
            "attrs": {k: v for k, v in d.items()
                      if not k.startswith("_") and k not in ("arena", "config", "training")
                      and not isinstance(v, Module)},
        }
        # the properties that hold state outside the arena (beta), set back through the setter
        for k in getattr(type(self), "_state_properties", ()):
            state["attrs"][k] = getattr(self, k)
        return _rebuild_module, (type(self), dict(config)), state

    def __setstate__(self, state):
        arena = self.arena
        for k in Arena.STATE:
            src = np.asarray(state["arena"][k])
            dst = getattr(arena, k)
            if src.shape != dst.shape:
                raise ValueError(f"{type(self).__name__}: saved arena {k} has shape "
                                 f"{src.shape}, the rebuilt network {dst.shape}")
            dst[...] = src
        own = dict(self.named_buffers())
        for n, src in state["buffers"].items():
            if n not in own or np.shape(src) != own[n].shape:
                raise ValueError(f"{type(self).__name__}: saved buffer {n!r} does not fit "
                                 "the rebuilt network")
            own[n][...] = src
        mods = [m for _, m in self.named_modules()]
        if len(mods) != len(state["training"]):
            raise ValueError(f"{type(self).__name__}: saved state has "
                             f"{len(state['training'])} modules, the rebuilt network {len(mods)}")
        for m, t in zip(mods, state["training"]):
            m.training = bool(t)
        for k, v in state["attrs"].items():
            setattr(self, k, v)


def _rebuild_module(cls, config):
    """Unpickling and copies: a fresh module tree and arena from the config."""
    return cls(**config)


def _checked_cast(k, src, dtype):
    """src cast to dtype, refusing values the cast would change or that no state holds."""
    if np.dtype(dtype).kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            v = src.astype(dtype)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"load_state_dict: {k} contains NaN or inf"
                             + (" (after the cast to float32)" if np.all(np.isfinite(src)) else ""))
        if k.endswith("running_var") and v.size and float(v.min()) < 0:
            raise ValueError(f"load_state_dict: {k} has a negative value ({float(v.min())}): "
                             "a running variance must be >= 0")
        if (k.endswith(".tap_threshold") or k == "tap_threshold") and not (
                v.size and 0.0 <= float(v.min()) and float(v.max()) <= 1.0):
            raise ValueError(f"load_state_dict: {k}: a tap threshold must be in [0, 1]")
        if k.endswith(".mask") or k == "mask":
            m = v.reshape(-1, v.shape[-1]) if v.ndim else v.reshape(1, 1)
            if not np.all((m == 0) | (m == 1)) or not np.all(m.any(axis=-1)):
                raise ValueError(f"load_state_dict: {k}: mask values must be 0 or 1 with at "
                                 "least one allowed position per slice")
        return v
    info = np.iinfo(dtype)
    if src.dtype.kind == "f":
        if not np.all(np.isfinite(src)) or not np.all(src == np.round(src)):
            raise ValueError(f"load_state_dict: {k} must hold integers, got non-integral values")
    if src.size and (src.min() < info.min or src.max() > info.max):
        raise ValueError(f"load_state_dict: {k} has values outside [{info.min}, {info.max}] "
                         f"({np.dtype(dtype)})")
    if k.endswith("num_batches_tracked") and src.size and src.min() < 0:
        raise ValueError(f"load_state_dict: {k} must be >= 0")
    return src.astype(dtype)


class Arena:
    """Packs the declared parameters of a module tree into flat float32 arrays.

    params, grads and momentum have the same length; ``decay`` and ``lr_scale`` hold a
    per-element weight-decay switch and learning-rate multiplier for the optimiser.
    ``offsets[name] = (start, shape)`` for every parameter and buffer (C gets offsets).
    """

    # the flat arrays that carry a network's state when it travels (Module.__reduce_ex__);
    # decay, lr_scale and offsets follow from the module declarations
    STATE = ("params", "grads", "momentum", "buffers")

    def __init__(self, root: Module, seed: int = 0):
        specs = []
        for mp, m in root.named_modules():
            for n, s in m._param_specs.items():
                specs.append((mp, m, n, s))
        total = sum(int(np.prod(s.shape)) for *_, s in specs)
        self.params = np.zeros(total, np.float32)
        self.grads = np.zeros(total, np.float32)
        self.momentum = np.zeros(total, np.float32)
        self.decay = np.ones(total, np.float32)
        self.lr_scale = np.ones(total, np.float32)
        self.offsets: dict[str, tuple[int, tuple]] = {}
        ss = np.random.SeedSequence(seed)
        children = ss.spawn(len(specs) + 1)
        pos = 0
        for (mp, m, n, s), child in zip(specs, children):
            size = int(np.prod(s.shape))
            view = self.params[pos:pos + size].reshape(s.shape)
            view[...] = s.init(np.random.default_rng(child), s.shape)
            m._params[n] = view
            m._grads[n] = self.grads[pos:pos + size].reshape(s.shape)
            self.decay[pos:pos + size] = 1.0 if s.decay else 0.0
            self.lr_scale[pos:pos + size] = s.lr_scale
            self.offsets[f"{mp}.{n}" if mp else n] = (pos, s.shape)
            pos += size
        # buffers: float32 buffers in one arena, others (int32 offsets) in their own arrays
        bspecs = [(mp, m, n, s) for mp, m in root.named_modules() for n, s in m._buffer_specs.items()]
        ftotal = sum(int(np.prod(s.shape)) for *_, s in bspecs if s.dtype == np.float32)
        self.buffers = np.zeros(ftotal, np.float32)
        pos = 0
        for mp, m, n, s in bspecs:
            size = int(np.prod(s.shape))
            if s.dtype == np.float32:
                view = self.buffers[pos:pos + size].reshape(s.shape)
                self.offsets[f"{mp}.{n}" if mp else n] = (pos, s.shape)
                pos += size
            else:
                view = np.zeros(s.shape, s.dtype)
            view[...] = s.init(np.random.default_rng(children[-1]), s.shape)
            m._buffers[n] = view

    def zero_grad(self):
        self.grads[...] = 0.0


# ---------------------------------------------------------------- leaf layers
class Conv2d(Module):
    """k x k convolution, no bias (BN follows)."""

    def __init__(self, cin, cout, k=3, stride=1, padding=None, init=None):
        super().__init__()
        self.cin, self.cout, self.k, self.stride = cin, cout, k, stride
        self.padding = k // 2 if padding is None else padding
        init = kaiming_uniform_a_sqrt5 if init is None else init
        self.add_param("weight", (cout, cin, k, k), init(cin * k * k))

    def emit(self, prog, arena, name, x):
        y = prog.buf(self.cout)
        prog.op(name, CONV, inp=x, out=y, o=self.cout, k=self.k, stride=self.stride,
                pad=self.padding, p0=arena.offsets[f"{name}.weight"][0])
        return y


class SALConv2d(Module):
    """Shift Attention Layer: a 3x3 convolution whose kernel slices learn one shift each.

    logits (C_out, C_in, 9) unshared, or (1, C_in, 9) shared; init U[0, 1).
    mask (a buffer of the logits' shape, float 0/1, all ones at first): the positions
    each slice may still use.  Stepwise hard pruning (salnp.prune) clears entries; the std
    stays that of all 9 logits, the softmax runs over the allowed positions only and p = 0
    elsewhere (libsal sal/attention.h, "Masks").  All ones computes exactly what no mask
    computes."""

    # files from before masks load with all ones, from before thresholds with the default
    _optional_buffers = ("mask", "tap_threshold")

    def __init__(self, cin, cout, stride=1, shared=False):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.padding, self.shared = cin, cout, 3, stride, 1, shared
        self.add_param("weight", (cout, cin, 3, 3), kaiming_uniform_a_sqrt5(cin * 9))
        self.add_param("logits", (1 if shared else cout, cin, 9), uniform(0.0, 1.0))
        self.add_buffer("mask", (1 if shared else cout, cin, 9), constant(1.0))
        self.add_buffer("tap_threshold", (), constant(_core.TAP_THRESHOLD_DEFAULT))

    @property
    def tap_threshold(self) -> float:
        """The taps this layer's training computes with: those whose attention p >= t * max p of
        their slice (libsal sal/attention.h; the default skips taps that cannot change a float32
        result; 0: every tap, the dense convolution)."""
        return float(self._buffers["tap_threshold"])

    @tap_threshold.setter
    def tap_threshold(self, value):
        self._buffers["tap_threshold"][...] = check_tap_threshold(value, "tap_threshold")

    def probs(self, beta, hard=False):
        """The attention p (O|1, C, 9) at inverse temperature beta, under the mask."""
        return _core.sal_probs(self.logits, float(beta), hard=bool(hard), mask=self.mask)

    def emit(self, prog, arena, name, x):
        y = prog.buf(self.cout)
        prog.op(name, SAL, inp=x, out=y, o=self.cout, k=3, stride=self.stride, pad=1,
                p0=arena.offsets[f"{name}.weight"][0], p1=arena.offsets[f"{name}.logits"][0],
                b0=arena.offsets[f"{name}.mask"][0], b1=arena.offsets[f"{name}.tap_threshold"][0],
                shared=int(self.shared))
        return y


class Shift(Module):
    """Fixed per-channel integer shift (SL, Wu et al.); 0 parameters, 0 MACs."""

    def __init__(self, c, stride=1, offsets=None):
        super().__init__()
        self.c, self.stride = c, stride
        off = default_shift_offsets(c) if offsets is None else np.asarray(offsets, np.int32)
        self.add_buffer("offsets", (c, 2), lambda rng, shape: off, dtype=np.int32)

    def emit(self, prog, arena, name, x):
        y = prog.buf(self.c)
        rows = np.column_stack([np.arange(self.c), self._buffers["offsets"]])   # (c, dy, dx)
        prog.op(name, SHIFT, inp=x, out=y, stride=self.stride, ioff=prog.add_shifts(rows))
        return y


class ActiveShift(Module):
    """Active shift (ASL, Jeon & Kim): learned real (dy, dx) per channel, bilinear.

    Offsets init U(-1, 1), no weight decay, learning-rate multiplier 0.01; their gradient
    is normalised to unit length per channel before the update (reference training)."""

    def __init__(self, c, stride=1, lr_scale=0.01):
        super().__init__()
        self.c, self.stride = c, stride
        self.add_param("shift", (c, 2), uniform(-1.0, 1.0), decay=False, lr_scale=lr_scale)

    def emit(self, prog, arena, name, x):
        y = prog.buf(self.c)
        prog.op(name, ASHIFT, inp=x, out=y, stride=self.stride,
                p0=arena.offsets[f"{name}.shift"][0])
        return y


class BatchNorm2d(Module):
    """BatchNorm (momentum 0.1, eps 1e-5 as PyTorch); the program fuses (+ residual)(ReLU)."""

    def __init__(self, c, decay=True):
        super().__init__()
        self.c = c
        self.add_param("weight", (c,), constant(1.0), decay=decay)
        self.add_param("bias", (c,), constant(0.0), decay=decay)
        self.add_buffer("running_mean", (c,), constant(0.0))
        self.add_buffer("running_var", (c,), constant(1.0))
        self.add_buffer("num_batches_tracked", (), constant(0), dtype=np.int64)

    def emit(self, prog, arena, name, x, relu=False, res=-1):
        y = prog.buf(self.c)
        prog.op(name, BN, inp=x, out=y, res=res, relu=int(relu),
                p0=arena.offsets[f"{name}.weight"][0], p1=arena.offsets[f"{name}.bias"][0],
                b0=arena.offsets[f"{name}.running_mean"][0],
                b1=arena.offsets[f"{name}.running_var"][0])
        return y


class Linear(Module):
    """y = x W^T + b.  Default init PyTorch's; caffe=True: Jeon & Kim's ("xavier" weights,
    zero bias without weight decay)."""

    def __init__(self, fin, fout, caffe=False):
        super().__init__()
        self.fin, self.fout = fin, fout
        if caffe:
            self.add_param("weight", (fout, fin), xavier_uniform_fan_in(fin))
            self.add_param("bias", (fout,), constant(0.0), decay=False)
        else:
            self.add_param("weight", (fout, fin), kaiming_uniform_a_sqrt5(fin))
            self.add_param("bias", (fout,), kaiming_uniform_a_sqrt5(fin))

    def emit(self, prog, arena, name, x):
        y = prog.buf(self.fout)
        prog.op(name, LINEAR, inp=x, out=y, o=self.fout, p0=arena.offsets[f"{name}.weight"][0],
                p1=arena.offsets[f"{name}.bias"][0])
        return y


class Sequential(Module):
    def __init__(self, *mods):
        super().__init__()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def __getitem__(self, i):
        return self._modules[str(i)]

    def __len__(self):
        return len(self._modules)
