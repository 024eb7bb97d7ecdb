"""The exported network: a binarised, BN-folded program and its weights, forward only.

    inf = salnp.export(net)              # salnp.export: the program rewrite that makes it
    logits = inf.forward(x)              # x float32 (N, C, H, W), runs in libsal
    inf.count(); inf.save("net-inf.npz"); inf2 = salnp.export.load("net-inf.npz")

An InferenceNet is a program (salnp.program) over one weight arena, run by the same executor
as the training network; the arena also holds the running statistics of any BN that could
not be folded (it is passed as both of libsal's arenas).  Files: ``save`` / ``load`` (.npz,
no pickle; format 2; format-1 files of earlier versions are converted when read).
"""
from __future__ import annotations

import numpy as np

from ._onnx import to_onnx
from .io import NpzReader, _fspath, save_npz_atomic
from .program import FIELDS, KINDS, Engine, Program
from .report import CountReport, check_input_shape

__all__ = ["InferenceNet", "load", "INFERENCE_FORMAT"]

INFERENCE_FORMAT = 2
# format 1 (salnp <= 0.1 before the one op table): its own op fields and kinds
_V1_KINDS = ("conv", "gather", "shift", "add", "pool", "linear")


class InferenceNet:
    """A binarised, BN-folded shift network that runs forward in libsal.

    program: a salnp.program.Program (op rows, per-buffer channels, shift rows (src, dy, dx),
    SAL pairs (o, i, dy, dx), the module name of every op); weights: the float32 arena;
    config: the training network's model config; info: what the export did (beta, the SAL
    layers' kept slices, ASL rounding)."""

    def __init__(self, program: Program, weights, config, info=None):
        if not isinstance(program, Program):
            raise TypeError(f"InferenceNet: program must be a salnp.program.Program, got "
                            f"{type(program).__name__}")
        self.program = program
        self.weights = np.ascontiguousarray(weights, np.float32).reshape(-1)
        self.config = dict(config)
        self.info = dict(info or {})
        self.engine = Engine(program, self.weights.size, self.weights.size)

    def __reduce__(self):
        """Pickle / copy as the program's tables and the weights; the engine is rebuilt."""
        p = self.program
        return (_rebuild, (p.table(), p.channels, p.shift_table(), p.pair_table(), p.names,
                           self.weights, self.config, self.info))

    # the program's tables, for inspection
    @property
    def ops(self) -> np.ndarray:
        return self.program.table()

    @property
    def channels(self) -> list[int]:
        return self.program.channels

    @property
    def shifts(self) -> np.ndarray:
        return self.program.shift_table()

    @property
    def pairs(self) -> np.ndarray:
        return self.program.pair_table()

    @property
    def names(self) -> list[str]:
        return self.program.names

    @property
    def in_channels(self) -> int:
        return self.program.channels[0]

    @property
    def num_classes(self) -> int:
        return self.program.channels[self.program.ops[-1]["out"]]

    def forward(self, x) -> np.ndarray:
        """Logits (N, num_classes) for x (N, C, H, W) (any real float array)."""
        x = self.engine.check_input(x, "forward")
        return self.engine.forward(x, self.weights, self.weights)

    __call__ = forward

    def count(self, input_shape=None) -> CountReport:
        """The accounting per image of input_shape (C, H, W), default (C, 32, 32): what the
        program holds (sal/count.h), in the "exported" convention."""
        shape = check_input_shape(input_shape, self.in_channels)
        return CountReport(self.engine.count_rows(shape), "inference", shape,
                           self.info.get("beta"), "exported")

    def save(self, path) -> None:
        """Write to path (.npz, atomic, no pickle)."""
        p = self.program
        arrays = dict(ops=p.table(), channels=np.array(p.channels, np.int64),
                      shifts=p.shift_table(), pairs=p.pair_table(), weights=self.weights)
        save_npz_atomic(path, arrays, "inference",
                        dict(inference_format=INFERENCE_FORMAT, fields=list(FIELDS),
                             kinds=list(KINDS), names=p.names, model=self.config, info=self.info))

    def to_onnx(self, path=None, input_shape=None, **kwargs):
        """salnp.export.to_onnx(self, path, input_shape, **kwargs)."""
        return to_onnx(self, path, input_shape, **kwargs)

    def __repr__(self):
        return (f"InferenceNet({len(self.program)} ops, {self.weights.size:,} weights, "
                f"{self.program.npair:,} SAL pairs, model={self.config})")


def _rebuild(ops, channels, shifts, pairs, names, weights, config, info):
    return InferenceNet(Program.from_tables(ops, channels, shifts, pairs, names), weights,
                        config, info)


def _v1_ops(ops, fields):
    """Format-1 op rows (their own field order and kinds) as rows of today's table."""
    out = np.zeros((len(ops), len(FIELDS)), np.int64)
    out[:, [FIELDS.index(f) for f in ("res", "p0", "p1", "b0", "b1", "ioff")]] = -1
    for j, f in enumerate(fields):
        if f not in FIELDS:
            raise ValueError(f"format 1: unknown op field {f!r}")
        out[:, FIELDS.index(f)] = ops[:, j]
    kinds = out[:, FIELDS.index("kind")]
    if kinds.size and (kinds.min() < 0 or kinds.max() >= len(_V1_KINDS)):
        raise ValueError("format 1: op kind out of range")
    out[:, FIELDS.index("kind")] = [KINDS.index(_V1_KINDS[k]) for k in kinds]
    return out


def load(path) -> InferenceNet:
    """An InferenceNet saved by InferenceNet.save; ValueError naming the file otherwise.

    The config (format, op fields and kinds, names, model) and every array's header (dtype,
    shape: ops (len(names), fields) int64, channels (B,) int64, shifts (M, 3) int32, pairs
    (P, 4) int32, weights (W,) float32) are checked before any array data is read; libsal
    then validates the whole program (bounds with overflow-checked arithmetic)."""
    path = _fspath(path, "load")
    with NpzReader(path, kind="inference") as z:
        config = z.config
        try:
            fmt = config.get("inference_format")
            if fmt not in (1, INFERENCE_FORMAT):
                raise ValueError(f"inference format {fmt!r}, this salnp reads 1 and "
                                 f"{INFERENCE_FORMAT}")
            fields = config.get("fields")
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise ValueError("fields must be a list of strings")
            if fmt == INFERENCE_FORMAT and (fields != list(FIELDS)
                                            or config.get("kinds") != list(KINDS)):
                raise ValueError("op fields or kinds differ from this salnp's")
            names = config.get("names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise ValueError("names must be a non-empty list of strings")
            if not isinstance(config.get("model"), dict):
                raise ValueError("no model config")
            info = config.get("info")
            if info is not None and not isinstance(info, dict):
                raise ValueError("info must be a JSON object")
            want = dict(ops=(np.int64, (len(names), len(fields))), channels=(np.int64, None),
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
        ops = arrays["ops"] if fmt == INFERENCE_FORMAT else _v1_ops(arrays["ops"], fields)
        if len(arrays["channels"]) < 1:
            raise ValueError("no buffers")
        prog = Program.from_tables(ops, arrays["channels"], arrays["shifts"], arrays["pairs"], names)
        net = InferenceNet(prog, arrays["weights"], config["model"], info)
        net.engine.get((net.in_channels, 32, 32))   # libsal validates the whole program
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as e:
        raise ValueError(f"{path}: not a valid exported network ({type(e).__name__}: {e})") from None
    return net
