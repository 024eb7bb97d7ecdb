"""Shift + 1x1 convolution layers of the exported networks, one layer at a time: the fused
shifted-row GEMM (salnp.ops.shift_conv1x1, libsal/src/shiftconv.c) against today's
exported path (SHIFT pass + BLIS 1x1 + epilogue pass), BLIS on a packed shifted panel, and
onnxruntime on the graph salnp's ONNX export makes of the layer (depthwise one-hot Conv +
1x1 Conv with bias + Relu [+ Add]).

    PYTHONPATH=python python bench/bench_shiftconv.py [--threads 1,2] [--batches 1,128]
        [--repeats 9] [--layers SUBSTRING] [--no-c] [--no-ort] [--write]

Two parts, each interleaved repeats and medians within its own process:
  C      bench/bench_shiftconv.c (compiled here against build/dev/libsal.a): today / fused
         (mode auto, direct, panel) / BLIS panel, microseconds per call, each checked
         against the naive reference first;
  ORT    salnp.ops.shift_conv1x1 on channel-major data (as inside the network) against
         onnxruntime on NCHW data (as inside its graph), outputs compared first.
Layers: ShiftResNet-20 e=6 (w=16) reduce layers (residual added after the ReLU; the
stride-2 blocks carry the stride on the 1x1) and expand layers (a plain 1x1: rows
(c, 0, 0)); shared SAL ResNet-20 (w=16): shift with the stride, 1x1, BN bias, ReLU.
Random weights and data; the speed does not depend on their values.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import salnp  # noqa: E402
from common import interleaved, table  # noqa: E402

# name, C, H, O, S, conv_stride (SL: the stride is the 1x1's), plain (rows (c, 0, 0)),
# relu, res, res_post -- the same list as bench_shiftconv.c
LAYERS = [
    ("sl.s1 96>16 32x32", 96, 32, 16, 1, 0, 0, 1, 1, 1),
    ("sl.s2.0 192>32 32x32/2", 192, 32, 32, 2, 1, 0, 1, 1, 1),
    ("sl.s2 192>32 16x16", 192, 16, 32, 1, 0, 0, 1, 1, 1),
    ("sl.s3.0 384>64 16x16/2", 384, 16, 64, 2, 1, 0, 1, 1, 1),
    ("sl.s3 384>64 8x8", 384, 8, 64, 1, 0, 0, 1, 1, 1),
    ("sl.exp 16>96 32x32", 16, 32, 96, 1, 0, 1, 1, 0, 0),
    ("sl.exp 64>384 8x8", 64, 8, 384, 1, 0, 1, 1, 0, 0),
    ("sals.s1 16>16 32x32", 16, 32, 16, 1, 0, 0, 1, 0, 0),
    ("sals.s2.0 16>32 32x32/2", 16, 32, 32, 2, 0, 0, 1, 0, 0),
    ("sals.s2 32>32 16x16", 32, 16, 32, 1, 0, 0, 1, 1, 0),
    ("sals.s3.0 32>64 16x16/2", 32, 16, 64, 2, 0, 0, 1, 0, 0),
    ("sals.s3 64>64 8x8", 64, 8, 64, 1, 0, 0, 1, 1, 0),
]


def build_c():
    """bench_shiftconv.c linked with the development build's libsal.a; the executable path."""
    lib = os.path.join(ROOT, "build", "dev", "libsal.a")
    if not os.path.exists(lib):
        raise SystemExit(f"{lib} missing: run scripts/dev-build.sh first")
    cache = open(os.path.join(ROOT, "build", "dev", "CMakeCache.txt")).read()
    blis = next(line.split("=", 1)[1] for line in cache.splitlines()
                if line.startswith(("BLIS_FLAVOUR_LIBRARY:", "BLIS_LIBRARY:")))
    exe = os.path.join(tempfile.mkdtemp(), "bench_shiftconv")
    subprocess.run(["cc", "-O2", "-std=gnu11", "-I", os.path.join(ROOT, "libsal", "include"),
                    "-I", os.path.join(ROOT, "libsal", "src"),
                    os.path.join(HERE, "bench_shiftconv.c"), lib, blis, "-lpthread", "-lm",
                    "-o", exe], check=True)
    return exe


def run_c(exe, threads, batch, repeats, layers):
    out = subprocess.run([exe, str(threads), str(batch), str(repeats), salnp._core.get_isa(),
                          layers or ""], check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        name, method, med, lo, hi, gmacs = line.split("|")
        rows.setdefault(name, {})[method] = (float(med), float(lo), float(hi), float(gmacs))
    return rows


def layer_rows(C, rng, plain, sl):
    if plain:
        return np.stack([np.arange(C), np.zeros(C), np.zeros(C)], 1).astype(np.int32)
    off = salnp.ops.default_shift_offsets(C) if sl else rng.integers(-1, 2, (C, 2))
    return np.concatenate([np.arange(C)[:, None], off], 1).astype(np.int32)


def onnx_layer(rows, w, bias, C, O, S, conv_stride, relu, res, post):
    """The layer as salnp's ONNX export writes it (shift_form 'conv'): a depthwise Conv with
    one-hot 3x3 kernels (group C), the 1x1 Conv with bias, Relu and the residual Add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    dw = np.zeros((C, 1, 3, 3), np.float32)
    dw[np.arange(C), 0, rows[:, 1] + 1, rows[:, 2] + 1] = 1.0
    ss, cs = (1, S) if conv_stride else (S, 1)
    nodes = [helper.make_node("Conv", ["x", "dw"], ["z"], group=C, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[ss, ss]),
             helper.make_node("Conv", ["z", "w", "b"], ["c"], kernel_shape=[1, 1],
                              strides=[cs, cs])]
    last = "c"
    if res and not post:
        nodes.append(helper.make_node("Add", [last, "res"], ["a"]))
        last = "a"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["r"]))
        last = "r"
    if res and post:
        nodes.append(helper.make_node("Add", [last, "res"], ["a2"]))
        last = "a2"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, "H", "W"])]
    yshape = ["N", O, "Ho", "Wo"]
    if res:
        inputs.append(helper.make_tensor_value_info("res", TensorProto.FLOAT, yshape))
    g = helper.make_graph(nodes, "layer", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)],
                          [numpy_helper.from_array(dw, "dw"),
                           numpy_helper.from_array(w[:, :, None, None], "w"),
                           numpy_helper.from_array(bias, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


def run_ort(threads, batch, repeats, layers, rng):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    salnp.set_num_threads(threads)
    rows_out = {}
    for name, C, H, O, S, conv_stride, plain, relu, res, post in LAYERS:
        if layers and layers not in name:
            continue
        rows = layer_rows(C, rng, plain, name.startswith("sl"))
        w = (rng.standard_normal((O, C)) / np.sqrt(C)).astype(np.float32)
        bias = rng.standard_normal(O).astype(np.float32)
        Ho = (H - 1) // S + 1
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        r = rng.standard_normal((batch, O, Ho, Ho), dtype=np.float32)
        xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
        rc = np.ascontiguousarray(r.transpose(1, 0, 2, 3))
        model = onnx_layer(rows, w, bias, C, O, S, conv_stride, relu, res, post)
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {"x": x, "res": r} if res else {"x": x}
        kw = dict(bias=bias, res=rc if res else None, relu=bool(relu), res_post=bool(post),
                  stride=S, layout="CNHW")
        got = salnp.ops.shift_conv1x1(xc, rows, w, **kw).transpose(1, 0, 2, 3)
        want = sess.run(None, feed)[0]
        err = float(np.abs(got - want).max())
        assert err <= 1e-4 * (1 + float(np.abs(want).max())), (name, err)
        fns = [lambda: salnp.ops.shift_conv1x1(xc, rows, w, **kw), lambda: sess.run(None, feed)]
        t = interleaved(fns, repeats=repeats, warmup=3)
        rows_out[name] = t
    return rows_out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--repeats", type=int, default=9, help="batch 128; batch 1 uses 20x")
    ap.add_argument("--layers", default="", help="only layers whose name contains this")
    ap.add_argument("--no-c", action="store_true")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    exe = None if args.no_c else build_c()
    sections = []
    for nt in threads:
        for N in batches:
            reps = args.repeats * (20 if N == 1 else 1)
            c = {} if args.no_c else run_c(exe, nt, N, reps, args.layers)
            o = {} if args.no_ort else run_ort(nt, N, reps, args.layers, rng)
            out = []
            for name, *_ in LAYERS:
                if args.layers and args.layers not in name:
                    continue
                row = [name]
                if c:
                    m = c[name]
                    f = m["fused"][0]
                    row += [f"{m['today'][0]:.1f}", f"{f:.1f}", f"{m['fused-direct'][0]:.1f}",
                            f"{m['fused-panel'][0]:.1f}", f"{m['blis-panel'][0]:.1f}",
                            f"{m['fused'][3]:.1f}", f"{m['today'][0] / f:.2f}x"]
                if o:
                    ts, tort = o[name]
                    row += [f"{1e6 * ts:.1f}", f"{1e6 * tort:.1f}", f"{tort / ts:.2f}x"]
                out.append(row)
            head = ["layer"]
            if c:
                head += ["today us", "fused us", "direct", "panel", "BLIS panel", "GMAC/s",
                         "today/fused"]
            if o:
                head += ["salnp op us", "ORT us", "ORT/salnp"]
            sections.append((nt, N, table(head, out)))
    load1 = os.getloadavg()
    env = (f"{platform.processor() or platform.machine()}, ISA {salnp._core.get_isa()}, salnp "
           f"{salnp.__version__}, {datetime.date.today().isoformat()}, load average (1, 5, 15 "
           f"min) {tuple(round(v, 1) for v in load0)} before, {tuple(round(v, 1) for v in load1)} "
           f"after, {os.cpu_count()} CPUs")
    text = env + "\n"
    for nt, N, t in sections:
        text += f"\nthreads {nt}, batch {N} (microseconds per call, medians)\n{t}\n"
    print(text)
    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        doc = open(path).read()
        cmd = ("PYTHONPATH=python python bench/bench_shiftconv.py " +
               " ".join(a for a in sys.argv[1:] if a != "--write"))
        section = ("## Shift + 1x1 layers\n\n" f"`{cmd}`\n\n```\n{text}```\n")
        start = doc.find("## Shift + 1x1 layers\n")
        if start >= 0:
            end = doc.find("\n## ", start + 1)
            doc = doc[:start] + section + (doc[end + 1:] if end >= 0 else "")
        else:
            doc = doc.rstrip("\n") + "\n\n" + section
        open(path, "w").write(doc)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
