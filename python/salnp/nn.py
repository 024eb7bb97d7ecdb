"""Modules in the manner of a small PyTorch, whose parameters live in one arena.

Every leaf module declares its parameters (name, shape, initialiser) and buffers.
When a network is built, all parameters are packed into ONE float32 arena, their
gradients into a second and the optimiser's momentum into a third, each of the same
length; ``named_parameters()`` returns NumPy views into the arena, so the optimiser is
one loop over flat memory and Python sees the very memory C works on, without copies.
Non-trainable state (BatchNorm running statistics, fixed shift offsets) lives in a
buffer arena the same way.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np

__all__ = ["Module", "ParamSpec", "Arena"]

Init = Callable[[np.random.Generator, tuple], np.ndarray]


def kaiming_uniform_a_sqrt5(fan_in: int) -> Init:
    """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape)


def uniform(lo: float, hi: float) -> Init:
    return lambda rng, shape: rng.uniform(lo, hi, size=shape)


def constant(v: float) -> Init:
    return lambda rng, shape: np.full(shape, v)


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
        if isinstance(value, Module) and "_modules" in self.__dict__ and not name.startswith("_"):
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
        """Copy arrays into the arena in place; shapes must match, names too when strict."""
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
        for k, dst in own.items():
            if k not in state:
                if k in optional:
                    dst[...] = optional[k].init(np.random.default_rng(0), dst.shape)
                continue
            src = np.asarray(state[k])
            if src.shape != dst.shape:
                raise ValueError(f"load_state_dict: {k} has shape {src.shape}, expected {dst.shape}")
            if src.dtype.kind not in "fiub":
                raise TypeError(f"load_state_dict: {k} has dtype {src.dtype}, expected a real array")
            if not np.all(np.isfinite(src)):
                raise ValueError(f"load_state_dict: {k} contains NaN or inf")
            dst[...] = src
        return self

    # -- travelling: pickle, copy.deepcopy, multiprocessing, Dask ---------------------
    def __reduce_ex__(self, protocol):
        """A network travels as its config plus its state.

        Unpickling (or ``copy.deepcopy``, ``copy.copy``) calls ``type(net)(**net.config)``,
        which builds the module tree and a fresh arena of its own, then copies the state
        in: the arena's flat arrays (parameters, gradients, momentum, float buffers), the
        buffers outside it (integer shift offsets, BN batch counters), every module's
        train/eval flag and the root's public plain attributes (``beta``).  Parameter views
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
