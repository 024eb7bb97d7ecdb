"""ONNX export of an exported (binarised, BN-folded) salnp network: salnp.export.to_onnx.

    inf = salnp.export(net)
    salnp.export.to_onnx(inf, "net.onnx", input_shape=(3, 32, 32))

    import onnxruntime as ort
    sess = ort.InferenceSession("net.onnx")
    logits = sess.run(None, {"input": x})[0]          # equals inf.forward(x)

Standard ONNX operators only (default opset 17: Conv, Pad, Slice, Gather, Concat, Add,
Relu, Sum, GlobalAveragePool, Flatten, Gemm), one initializer per weight tensor, the
batch dimension symbolic ("N").  Each op of the InferenceNet program becomes:

- conv (CL and every 1x1 / shortcut convolution; BN already folded): Conv with bias, then
  the epilogue as in libsal: Add(residual) before or after Relu;
- shift (SL, rounded ASL, shared SAL): ``shift_form``
    "conv" (default): a depthwise Conv (group = channels) with one-hot (2m+1)x(2m+1)
      kernels (m the largest |offset|), after a Gather of the kept channels if some
      were dropped;
    "slice": one Gather that orders the channels by offset (skipped when they
      already are), one Pad by the largest |offset|, one strided Slice per distinct
      offset, Concat.  The channel order this leaves is not undone: it is folded into the
      input columns of the convolution that reads the shift (a Gather restores the
      order only where something else reads it);
- unshared SAL (the pairs (o, i, dy, dx) of a gather op): ``gather_form``
    "conv" (default): a dense 3x3 Conv whose kernel slice (o, i) is one-hot at the kept
      position (zero for dropped slices), bias and epilogue as for conv;
    "slice": the distinct (position, input channel) columns the pairs use are gathered
      as shifted copies (Pad + one Slice per position + Concat), then one 1x1 Conv;
    "sum": one shifted copy of the input per used position, a 1x1 Conv with that
      position's masked weights on each, Sum.
  All forms are exact (a dropped or masked weight is a multiplication by zero).
  ``bench/bench_onnx.py --forms`` times them in onnxruntime; the defaults were the
  fastest there for SAL-ResNet-20 (w=16) at batch 1 and 128 (one run, 2 threads: the
  unshared SAL as one-hot 3x3 Conv took 13 / 336 ms against 46 / 2836 ms for "slice"
  and 54 / 2309 ms for "sum"; shared SAL shifts as depthwise Conv 1.1 / 361 ms against
  2.4 / 899 ms for "slice"; bench/RESULTS.md, section ONNX);
- bn (one that could not fold, eval mode): BatchNormalization, then Add (residual) and Relu;
- add: Add (+ Relu); avgpool: GlobalAveragePool; linear: Flatten + Gemm.

onnx is imported here only (pip install "salnp[onnx]").
"""
from __future__ import annotations

import numpy as np

from ._core import BN_EPS, SalError, __version__
from .program import ADD, BN, CONV, FIELDS, GATHER, LINEAR, POOL, SHIFT
from .report import check_input_shape

__all__ = ["to_onnx", "SHIFT_FORMS", "GATHER_FORMS", "DEFAULT_OPSET"]

SHIFT_FORMS = ("conv", "slice")
GATHER_FORMS = ("conv", "slice", "sum")
DEFAULT_OPSET = 17


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError("to_onnx needs the onnx package: pip install 'salnp[onnx]' "
                          "(or pip install onnx)") from e
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and initializers of the graph under construction, with unique names."""

    def __init__(self, helper, numpy_helper):
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.n = 0

    def name(self, stem):
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, stem, a, dtype=np.float32):
        name = self.name(stem)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(a, dtype), name))
        return name

    def node(self, op, inputs, stem, out=None, **attrs):
        out = out or self.name(stem)
        self.nodes.append(self.h.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out


def _check_shape(inf, input_shape):
    if input_shape is None:
        input_shape = (inf.in_channels, 32, 32)
    shape = tuple(input_shape)
    batch = None
    if len(shape) == 4:
        batch = shape[0]
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"to_onnx: input_shape={input_shape!r}: the batch (first of four "
                             "values) must be an integer >= 1; give (C, H, W) for a symbolic batch")
        shape = shape[1:]
    return int(batch) if batch is not None else None, check_input_shape(shape, inf.in_channels, "to_onnx")


def to_onnx(inf, path=None, input_shape=None, *, opset=DEFAULT_OPSET, shift_form="conv",
            gather_form="conv", graph_name="salnp"):
    """Write inf (a salnp.export.InferenceNet; salnp.export.to_onnx also takes a network and
    exports it first) to path as an ONNX model and return the ModelProto.

    input_shape: (C, H, W) (batch symbolic, "N") or (N, C, H, W); default (C, 32, 32).
    Input "input" float32 NCHW, output "logits" float32 (N, num_classes).
    path: a file name, or None to only return the model.
    shift_form, gather_form: see the module docstring (the defaults are the fastest in
    onnxruntime).  The model is checked with onnx.checker.check_model before it is written."""
    onnx, helper, numpy_helper = _import_onnx()
    if not hasattr(inf, "program") or not hasattr(inf, "weights"):
        raise TypeError(f"to_onnx: inf must be a salnp.export.InferenceNet (salnp.export(net)), "
                        f"got {type(inf).__name__}")
    if shift_form not in SHIFT_FORMS:
        raise ValueError(f"to_onnx: shift_form={shift_form!r}: must be one of {SHIFT_FORMS}")
    if gather_form not in GATHER_FORMS:
        raise ValueError(f"to_onnx: gather_form={gather_form!r}: must be one of {GATHER_FORMS}")
    if not isinstance(opset, (int, np.integer)) or not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"to_onnx: opset={opset!r}: must be an integer in "
                         f"[13, {onnx.defs.onnx_opset_version()}] (this onnx)")
    batch, shape = _check_shape(inf, input_shape)
    shapes = inf.program.shapes(shape)    # raises when the input is too small
    try:        # libsal checks the whole program (pairs within 3x3, shift sources, ...)
        inf.engine.get(shape)
    except (ValueError, SalError) as e:
        raise ValueError(f"to_onnx: the network's program is invalid: {e}") from None
    F = {f: i for i, f in enumerate(FIELDS)}
    W = inf.weights
    g = _Graph(helper, numpy_helper)

    # tensor of each buffer, and the channel order it holds: perm[j] = logical channel of
    # tensor channel j (None: the identity).  Shifts leave their output sorted by offset;
    # a conv or gather that reads it permutes its weight columns instead of the data.
    tensor = {0: "input"}
    perm = {0: None}
    last_out = int(inf.ops[-1, F["out"]])

    def logical(b):
        """The tensor of buffer b in logical channel order (a Gather if needed)."""
        if perm[b] is None:
            return tensor[b]
        inv = np.argsort(perm[b])
        t = g.node("Gather", [tensor[b], g.const("order", inv, np.int64)], f"b{b}_ordered", axis=1)
        tensor[b], perm[b] = t, None
        return t

    def out_name(b):
        return "logits" if b == last_out else f"b{b}"

    def epilogue(row, t):
        res, relu, post = int(row[F["res"]]), int(row[F["relu"]]), int(row[F["res_post"]])
        b = int(row[F["out"]])
        steps = []
        if res >= 0 and not post:
            steps.append("add")
        if relu:
            steps.append("relu")
        if res >= 0 and post:
            steps.append("add")
        for k, s in enumerate(steps):
            o = out_name(b) if k == len(steps) - 1 else None
            if s == "add":
                t = g.node("Add", [t, logical(res)], f"b{b}_add", out=o)
            else:
                t = g.node("Relu", [t], f"b{b}_relu", out=o)
        return t

    def conv(row, x, w, bias, k, stride, pad, group=1, last=True):
        b = int(row[F["out"]])
        ins = [x, g.const("w", w)] + ([g.const("bias", bias)] if bias is not None else [])
        has_epi = row[F["relu"]] or row[F["res"]] >= 0
        o = out_name(b) if last and not has_epi else None
        t = g.node("Conv", ins, f"b{b}_conv", out=o, kernel_shape=[k, k], strides=[stride, stride],
                   pads=[pad] * 4, group=group)
        return epilogue(row, t) if last else t

    def shift_groups(x, groups, stride, stem):
        """Tensors t[c, Y, X] = x[c, s Y + dy, s X + dx] (zero outside) for each group
        (a, e, dy, dx) of channels [a, e) of x: one Pad, one Slice per group."""
        m = int(max([0] + [max(abs(dy), abs(dx)) for _, _, dy, dx in groups]))
        xp = x
        if m:
            xp = g.node("Pad", [x, g.const("pads", [0, 0, m, m, 0, 0, m, m], np.int64)],
                        f"{stem}_pad", mode="constant")
        outs = []
        big = np.iinfo(np.int64).max
        nch = max(e for _, e, _, _ in groups)
        for a, e, dy, dx in groups:
            if m == 0 and stride == 1 and (a, e) == (0, nch) and len(groups) == 1:
                outs.append(xp)
                continue
            # padded index m + dy + s*Y for Y < ceil(H / s): end at -(m - dy) from the end
            starts = [a, m + dy, m + dx]
            ends = [e, -(m - dy) if m - dy else big, -(m - dx) if m - dx else big]
            outs.append(g.node("Slice", [xp, g.const("starts", starts, np.int64),
                                         g.const("ends", ends, np.int64),
                                         g.const("axes", [1, 2, 3], np.int64),
                                         g.const("steps", [1, stride, stride], np.int64)],
                               f"{stem}_slice"))
        return outs

    def sorted_shift(x, b_in, chans, dy, dx, stride, stem):
        """Logical channels chans of buffer b_in shifted by (dy, dx) each, concatenated in
        the order sorted by (dy, dx): (tensor, order) with order[j] = index into chans."""
        order = np.lexsort((np.asarray(chans), dx, dy))
        xg = channels(x, b_in, np.asarray(chans)[order], stem)
        groups = []
        for j, c in enumerate(order):
            key = (int(dy[c]), int(dx[c]))
            if groups and tuple(groups[-1][2:]) == key:
                groups[-1][1] = j + 1
            else:
                groups.append([j, j + 1, *key])
        parts = shift_groups(xg, groups, stride, stem)
        t = parts[0] if len(parts) == 1 else g.node("Concat", parts, f"{stem}_concat", axis=1)
        return t, order

    def channels(x, b, idx, stem):
        """Tensor channels of buffer b (logical channels idx) from tensor x: a Gather, or
        nothing when idx are all tensor channels in order."""
        p = perm[b]
        inv = np.argsort(p) if p is not None else None
        tidx = np.asarray(idx, np.int64) if inv is None else inv[np.asarray(idx, np.int64)]
        if len(tidx) == shapes[b][0] and np.array_equal(tidx, np.arange(len(tidx))):
            return x
        return g.node("Gather", [x, g.const("idx", tidx, np.int64)], f"{stem}_gather", axis=1)

    for row in inf.ops:
        kind = int(row[F["kind"]])
        inp, b = int(row[F["inp"]]), int(row[F["out"]])
        cin, cout = shapes[inp][0], shapes[b][0]
        stride = int(row[F["stride"]])
        perm[b] = None
        if kind == CONV:
            k, o = int(row[F["k"]]), int(row[F["o"]])
            w = W[row[F["p0"]]:row[F["p0"]] + o * cin * k * k].reshape(o, cin, k, k)
            if perm[inp] is not None:
                w = w[:, perm[inp]]
            bias = W[row[F["p1"]]:row[F["p1"]] + o] if row[F["p1"]] >= 0 else None
            tensor[b] = conv(row, tensor[inp], w, bias, k, stride, int(row[F["pad"]]))
        elif kind == GATHER:
            o, n = int(row[F["o"]]), int(row[F["npair"]])
            pr = inf.pairs[row[F["ioff"]]:row[F["ioff"]] + n].astype(np.int64)
            pw = W[row[F["p0"]]:row[F["p0"]] + n]
            bias = W[row[F["p1"]]:row[F["p1"]] + o] if row[F["p1"]] >= 0 else None
            q = (pr[:, 2] + 1) * 3 + (pr[:, 3] + 1)
            oo, ii = pr[:, 0], pr[:, 1]
            if perm[inp] is not None:               # logical channel -> tensor channel
                ii = np.argsort(perm[inp])[ii]
            x = tensor[inp]
            if gather_form == "conv" or n == 0:
                w = np.zeros((o, cin, 9), np.float32)
                np.add.at(w, (oo, ii, q), pw)
                tensor[b] = conv(row, x, w.reshape(o, cin, 3, 3), bias, 3, stride, 1)
            elif gather_form == "slice":
                # columns: the distinct (position, tensor channel) pairs, shifted copies
                cols = sorted(set(zip(q.tolist(), ii.tolist())))
                cq = np.array([c[0] for c in cols], np.int64)
                ci = np.array([c[1] for c in cols], np.int64)
                tperm = perm[inp]
                logical_ci = ci if tperm is None else np.asarray(tperm)[ci]
                t, order = sorted_shift(x, inp, logical_ci, cq // 3 - 1, cq % 3 - 1, stride, f"b{b}")
                where = {cols[k]: j for j, k in enumerate(order)}
                w = np.zeros((o, len(cols)), np.float32)
                np.add.at(w, (oo, np.array([where[c] for c in zip(q.tolist(), ii.tolist())],
                                            np.int64)), pw)
                tensor[b] = conv(row, t, w.reshape(o, -1, 1, 1), bias, 1, 1, 0)
            else:   # "sum": one shifted copy of the whole input per used position
                used = sorted(set(q.tolist()))
                sh = shift_groups(x, [(0, cin, qq // 3 - 1, qq % 3 - 1) for qq in used], stride,
                                  f"b{b}")
                ys = []
                for qq, t in zip(used, sh):
                    w = np.zeros((o, cin), np.float32)
                    sel = q == qq
                    np.add.at(w, (oo[sel], ii[sel]), pw[sel])
                    ys.append(g.node("Conv", [t, g.const("w", w.reshape(o, cin, 1, 1))],
                                     f"b{b}_conv", kernel_shape=[1, 1]))
                if bias is not None:
                    ys.append(g.const("bias", bias.reshape(1, o, 1, 1)))
                has_epi = row[F["relu"]] or row[F["res"]] >= 0
                t = ys[0] if len(ys) == 1 else \
                    g.node("Sum", ys, f"b{b}_sum", out=None if has_epi else out_name(b))
                tensor[b] = epilogue(row, t)
        elif kind == SHIFT:
            rows = inf.shifts[row[F["ioff"]]:row[F["ioff"]] + cout].astype(np.int64)
            src, dy, dx = rows[:, 0], rows[:, 1], rows[:, 2]
            # a shift by >= H rows (or >= W columns) samples only zeros: clamped to H
            # (W) it stays exact, and no Pad or kernel grows beyond the input
            _, hin, win = shapes[inp]
            dy, dx = np.clip(dy, -hin, hin), np.clip(dx, -win, win)
            if shift_form == "conv":
                x = channels(tensor[inp], inp, src, f"b{b}")
                live = (np.abs(dy) < hin) & (np.abs(dx) < win)   # the others: a zero kernel
                m = int(max(np.abs(dy[live]).max(initial=0), np.abs(dx[live]).max(initial=0)))
                w = np.zeros((cout, 1, 2 * m + 1, 2 * m + 1), np.float32)
                w[np.flatnonzero(live), 0, m + dy[live], m + dx[live]] = 1.0
                t = g.node("Conv", [x, g.const("w", w)], f"b{b}_dwconv", out=out_name(b),
                           kernel_shape=[2 * m + 1] * 2, strides=[stride, stride], pads=[m] * 4,
                           group=cout)
                tensor[b] = t
            else:
                t, order = sorted_shift(tensor[inp], inp, src, dy, dx, stride, f"b{b}")
                if t == tensor[inp]:                  # no shift at all, stride 1
                    t = g.node("Identity", [t], f"b{b}")
                tensor[b] = t
                perm[b] = None if np.array_equal(order, np.arange(cout)) else order
        elif kind == BN:
            c = cin
            prm = [W[row[F[f]]:row[F[f]] + c] for f in ("p0", "p1")]
            stat = [W[row[F[f]]:row[F[f]] + c] for f in ("b0", "b1")]   # the one arena
            has_epi = row[F["relu"]] or row[F["res"]] >= 0
            t = g.node("BatchNormalization",
                       [logical(inp)] + [g.const(n, v) for n, v in zip(("scale", "B", "mean", "var"),
                                                                        prm + stat)],
                       f"b{b}_bn", out=None if has_epi else out_name(b), epsilon=BN_EPS)
            tensor[b] = epilogue(row, t)
        elif kind == ADD:
            row2 = row.copy()
            row2[F["res_post"]] = 0
            tensor[b] = epilogue(row2, logical(inp))
        elif kind == POOL:
            tensor[b] = g.node("GlobalAveragePool", [logical(inp)], f"b{b}_pool", out=out_name(b))
        elif kind == LINEAR:
            o = int(row[F["o"]])
            w = W[row[F["p0"]]:row[F["p0"]] + o * cin].reshape(o, cin)
            bias = W[row[F["p1"]]:row[F["p1"]] + o]
            flat = g.node("Flatten", [logical(inp)], f"b{b}_flat", axis=1)
            tensor[b] = g.node("Gemm", [flat, g.const("fc_w", w), g.const("fc_b", bias)],
                               f"b{b}_fc", out=out_name(b), transB=1)
        else:
            raise NotImplementedError(f"to_onnx: op kind {kind} is not supported")

    if tensor[last_out] != "logits":
        g.node("Identity", [logical(last_out)], "logits", out="logits")
    c, h, w = shape
    x_info = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                           [batch if batch else "N", c, h, w])
    y_info = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                           [batch if batch else "N", inf.num_classes])
    graph = helper.make_graph(g.nodes, graph_name, [x_info], [y_info], g.inits)
    model = helper.make_model(graph, producer_name="salnp", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", int(opset))])
    model.ir_version = min(model.ir_version, 9)      # readable by older onnxruntime too
    model.doc_string = (f"salnp exported network {inf.config}; input (N, {c}, {h}, {w}) float32 "
                        f"NCHW, normalised as in training; output logits")
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, str(path))
    return model
