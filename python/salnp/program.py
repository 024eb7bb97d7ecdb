"""The network program: one op table, one builder, one engine.

A network, trained or exported, is a *program*: activation buffers (a channel count each;
buffer 0 is the input) and a flat list of op rows over them, plus two integer tables --
shift rows (src, dy, dx) and SAL pairs (o, i, dy, dx).  libsal describes the op row
(``sal_op`` in sal/net.h: ``_core.NET_FIELDS``, the kinds ``_core.NET_KINDS``), derives every
buffer's (H, W) from the input size by the ops' own rules (``Program.shapes``), validates a
program once where it is created and runs it with one executor, forward and backward.

    prog = Program(in_channels=3)
    y = prog.buf(16)
    prog.op("conv1", CONV, inp=0, out=y, o=16, k=3, stride=1, pad=1, p0=offset)
    eng = Engine(prog, nparams, nbuffers)         # C engines per input size, the lock
    logits = eng.forward(x, params, buffers, train=False)

Modules emit their ops into a Program (salnp.nn, salnp.models); salnp.export rewrites a
trained network's program into the exported one (salnp.infer.InferenceNet).
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from . import _core
from .report import count_rows

__all__ = ["FIELDS", "KINDS", "CONV", "SAL", "GATHER", "SHIFT", "ASHIFT", "BN", "ADD", "POOL",
           "LINEAR", "Program", "Engine"]

# the op row as libsal describes it; the field "in" is spelled "inp" here
FIELDS = tuple("inp" if f == "in" else f for f in _core.NET_FIELDS)
KINDS = tuple(_core.NET_KINDS)
CONV, SAL, GATHER, SHIFT, ASHIFT, BN, ADD, POOL, LINEAR = (
    KINDS.index(k) for k in ("conv", "sal", "gather", "shift", "ashift", "bn", "add", "pool",
                             "linear"))
# fields whose "none" is -1 (an optional buffer, arena offset or table row)
_OPTIONAL = ("res", "p0", "p1", "b0", "b1", "ioff")

# the layer type of a row in count tables
_TYPES = {CONV: "conv", SAL: "sal", GATHER: "sal_gather", SHIFT: "shift", ASHIFT: "active_shift",
          BN: "bn", ADD: "add", POOL: "avgpool", LINEAR: "linear"}


class Program:
    """Buffers (channel counts), op rows (dicts of FIELDS), the name of the module that
    emitted each op, shift rows (src, dy, dx) and SAL pairs (o, i, dy, dx)."""

    def __init__(self, in_channels):
        self.channels = [int(in_channels)]
        self.ops: list[dict] = []
        self.names: list[str] = []
        self._shifts: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []

    # -- building --------------------------------------------------------------------
    def buf(self, c) -> int:
        """A new buffer of c channels; its index."""
        self.channels.append(int(c))
        return len(self.channels) - 1

    def op(self, name, kind, **fields) -> int:
        """Append an op of kind (CONV, SAL, ...) emitted by the module called name; fields
        not given are 0, or -1 (none) for res, p0, p1, b0, b1 and ioff.  Its index."""
        row = dict.fromkeys(FIELDS, 0)
        row.update(dict.fromkeys(_OPTIONAL, -1))
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise TypeError(f"Program.op: unknown fields {sorted(unknown)}")
        row.update(fields, kind=int(kind))
        self.ops.append({k: int(v) for k, v in row.items()})
        self.names.append(str(name))
        return len(self.ops) - 1

    def add_shifts(self, rows) -> int:
        """Append shift rows (src, dy, dx); the offset of the first."""
        return self._append(self._shifts, rows, 3)

    def add_pairs(self, rows) -> int:
        """Append SAL pairs (o, i, dy, dx); the offset of the first."""
        return self._append(self._pairs, rows, 4)

    @staticmethod
    def _append(table, rows, cols) -> int:
        a = np.asarray(rows)
        if a.size and a.dtype != np.int32:     # refused, never wrapped by the cast (2**32 -> 0)
            ok = (a >= -2**31) & (a < 2**31) & (a == np.round(a)) if a.dtype.kind in "iuf" else None
            if ok is None or not ok.all():
                i = 0 if ok is None else int(np.argmin(ok.reshape(-1)))
                name = "shifts" if cols == 3 else "pairs"
                raise ValueError(f"Program: {name}[{i // cols}, {i % cols}] = "
                                 f"{a.reshape(-1)[i].item()!r}: must fit int32")
        rows = np.ascontiguousarray(a, np.int32).reshape(-1, cols)
        off = sum(len(t) for t in table)
        table.append(rows)
        return off

    @property
    def nshift(self) -> int:
        return sum(len(t) for t in self._shifts)

    @property
    def npair(self) -> int:
        return sum(len(t) for t in self._pairs)

    @classmethod
    def from_tables(cls, ops, channels, shifts, pairs, names) -> "Program":
        """A program from its arrays (a file): ops (n, len(FIELDS)) int64, channels (B,),
        shifts (M, 3) and pairs (P, 4) int32, names (n)."""
        ops = np.asarray(ops, np.int64).reshape(-1, len(FIELDS))
        if len(names) != len(ops):
            raise ValueError(f"Program: {len(names)} names for {len(ops)} ops")
        p = cls(int(channels[0]))
        p.channels = [int(c) for c in channels]
        p.ops = [dict(zip(FIELDS, (int(v) for v in row))) for row in ops]
        p.names = [str(n) for n in names]
        p.add_shifts(shifts)
        p.add_pairs(pairs)
        return p

    # -- reading -----------------------------------------------------------------------
    def table(self) -> np.ndarray:
        """The op rows, int64 (n, len(FIELDS))."""
        return np.array([[r[k] for k in FIELDS] for r in self.ops], np.int64).reshape(-1, len(FIELDS))

    def shift_table(self) -> np.ndarray:
        return (np.concatenate(self._shifts) if self._shifts else np.zeros((0, 3), np.int32))

    def pair_table(self) -> np.ndarray:
        return (np.concatenate(self._pairs) if self._pairs else np.zeros((0, 4), np.int32))

    def shapes(self, input_shape) -> list[tuple[int, int, int]]:
        """Per-buffer (C, H, W) for an input of per-sample shape (C, H, W), by the ops' own
        size rules (libsal's sal_net_shapes); ValueError when the input is too small."""
        s = _core.net_shapes(self.table(), np.array(self.channels, np.int64),
                             np.array(input_shape, np.int64))
        return [tuple(int(v) for v in r) for r in s]

    def consumers(self) -> dict[int, list[int]]:
        """{buffer: indices of the ops that read it (as input or residual)}."""
        users: dict[int, list[int]] = {}
        for i, r in enumerate(self.ops):
            for b in (r["inp"], r["res"]):
                if b >= 0:
                    users.setdefault(b, []).append(i)
        return users

    def types(self) -> list[str]:
        """The layer type of every op for count tables: conv3x3, conv1x1, sal, sal_shared,
        sal_gather, shift, sal_shift (a learned shift), active_shift, bn, add, avgpool,
        linear."""
        out = []
        for r in self.ops:
            t = _TYPES.get(r["kind"], "?")
            if r["kind"] == CONV:
                t = f"conv{r['k']}x{r['k']}"
            elif r["kind"] == SAL and r["shared"]:
                t = "sal_shared"
            elif r["kind"] == SHIFT and r["index_bits"]:
                t = "sal_shift"
            out.append(t)
        return out

    def __len__(self):
        return len(self.ops)

    def __repr__(self):
        kinds = {}
        for r in self.ops:
            kinds[KINDS[r["kind"]]] = kinds.get(KINDS[r["kind"]], 0) + 1
        return (f"Program({len(self.ops)} ops over {len(self.channels)} buffers: "
                + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")


# every Engine, so that a forked child can reset their locks (a fork while another thread
# held one would leave the child waiting for a thread it does not have) and drop their
# libsal engines (one that thread was inside is marked busy in the child for ever)
_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _reset_locks_in_child():
    for e in list(_ENGINES):
        e.lock = threading.RLock()
        e._c.clear()         # rebuilt at the next call
        e._last = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


class Engine:
    """Runs one program: a libsal engine per input size (activations allocated once per
    batch size), the input check and the lock.

    Sharing between threads: every forward and backward holds ``lock`` for its whole run,
    so calls from several threads never overlap on one engine's buffers (they queue;
    different engines run in parallel, the GIL is released in C).  backward differentiates
    the most recent forward of ANY thread: training one network from several threads at
    once needs the caller's own lock around each forward+backward pair."""

    def __init__(self, program: Program, nparams: int, nbuffers: int):
        self.program = program
        self.nparams, self.nbuffers = int(nparams), int(nbuffers)
        self._table = program.table()
        self._shifts, self._pairs = program.shift_table(), program.pair_table()
        self._c = {}             # input (C, H, W) -> libsal engine
        self._last = None        # the engine of the last forward (what backward differentiates)
        self._checkpoints = np.zeros((0, 2), np.int64)
        self.lock = threading.RLock()
        _ENGINES.add(self)

    @property
    def in_channels(self) -> int:
        return self.program.channels[0]

    def get(self, input_shape):
        """The libsal engine for inputs of per-sample shape (C, H, W); validated (every
        offset and count) when it is made."""
        key = tuple(int(v) for v in input_shape)
        if key not in self._c:
            shapes = np.array(self.program.shapes(key), np.int64)
            eng = _core.net_create(shapes, self._table, self._shifts, self._pairs,
                                   self.nparams, self.nbuffers)
            if len(self._checkpoints):
                _core.net_set_checkpoints(eng, self._checkpoints)
            self._c[key] = eng
        return self._c[key]

    def set_checkpoints(self, bounds) -> None:
        """Activation checkpointing: [first op, end op) of each segment whose inner
        activations backward recomputes instead of keeping (sal_net_set_checkpoints);
        an empty list turns it off.  Leaves no forward to differentiate."""
        b = np.asarray(bounds, np.int64).reshape(-1, 2)
        with self.lock:
            self._checkpoints = b
            for eng in self._c.values():
                _core.net_set_checkpoints(eng, b)
            self._last = None

    def check_input(self, x, fn="forward") -> np.ndarray:
        """x as float32 C-contiguous (N, C, H, W); TypeError/ValueError naming fn otherwise."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            hint = (" (a Dataset's raw uint8 images: dataset.batch(range(n)) gives them "
                    "normalised as float32, dataset.labels[:n] their labels)"
                    if x.dtype.kind in "ui" else "")
            raise TypeError(f"{fn}: x must be a real floating-point array, got dtype "
                            f"{x.dtype}{hint}")
        c = self.in_channels
        if x.ndim != 4 or x.shape[1] != c or min(x.shape) < 1:
            raise ValueError(f"{fn}: x must have shape (N, C={c}, H, W) with N, H, W >= 1, "
                             f"got {x.shape}")
        return np.ascontiguousarray(x, np.float32)

    def forward(self, x, params, buffers, train=False, hard=False, beta=1.0) -> np.ndarray:
        """Logits (N, K) for x (checked with check_input first).  Holds the lock."""
        with self.lock:
            eng = self.get(x.shape[1:])
            self._last = None
            out = _core.net_forward(eng, params, buffers, x, bool(train), bool(hard), float(beta))
            self._last = eng
            return out

    def backward(self, params, grads, grad_logits) -> None:
        """grads += dL/dparams for the last forward."""
        with self.lock:
            if self._last is None:
                raise RuntimeError("backward: call forward(x, train=True) first")
            _core.net_backward(self._last, params, grads, grad_logits)

    def forget(self) -> None:
        """No forward to differentiate (after a refused or undone forward)."""
        self._last = None

    def info(self, input_shape) -> dict:
        """libsal's view of the program at this input size: macs per image, trainable."""
        return _core.net_info(self.get(input_shape))

    def count_rows(self, input_shape) -> list[dict]:
        """The per-op rows of libsal's count (sal/count.h) at this input size."""
        ints, params = _core.net_count(self.get(input_shape))
        return count_rows(ints, params, self.program.names, self.program.types())
