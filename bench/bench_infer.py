"""Exported CL (or another model) against onnxruntime running salnp's own ONNX export, at
batch 1 and 128, robust to a loaded machine (issue 21, the inference target).

    PYTHONPATH=python python bench/bench_infer.py [--models cl] [--threads 1]
        [--rounds 15] [--clock cpu|wall] [--batches 1,128] [--pause 0.1] [--block 5]

Each round times every runtime once per batch, round-robin, so a load change hits all of
them alike.  --clock cpu (the default at one thread): time.thread_time of the calling
thread, which onnxruntime with intra_op_num_threads=1 and salnp at one thread both run
on, so other processes on the machine do not inflate it; a sample is then as many calls
as take >= 20 ms.  --clock wall: time.perf_counter (needed at 2 threads), one call per
sample, --block calls of a runtime in a row and then a pause (--pause seconds, untimed, for
every runtime alike): onnxruntime's pool thread spin-waits 30-50 ms after a run (its
default, its best setting for latency), and a spinning thread would take a core from the
next runtime's calls.  Prints the median and the range (min - max) of ms per batch and the ratio
onnxruntime / salnp of the medians, and of the minima.  Every output is checked against
salnp's first.
Networks as bench/bench_onnx.py builds them (ResNet-20 w=16, random BN, beta 70).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import salnp  # noqa: E402
from bench_onnx import MODELS, build  # noqa: E402
from common import table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None)
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--pause", type=float, default=0.1, help="--clock wall: seconds after a block")
    ap.add_argument("--block", type=int, default=5, help="--clock wall: calls in a row, each timed")
    args = ap.parse_args()
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    if clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures the calling thread: only with --threads 1")
    now = time.thread_time if clock == "cpu" else time.perf_counter

    import onnxruntime as ort

    nt = args.threads
    salnp.set_num_threads(nt)
    so = ort.SessionOptions()
    so.intra_op_num_threads = nt
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    rng = np.random.default_rng(0)
    rows = []
    load0 = os.getloadavg()
    for key in args.models.split(","):
        inf = build(MODELS[key], rng)
        sess = ort.InferenceSession(salnp.export.to_onnx(inf, None, (3, 32, 32))
                                    .SerializeToString(), so, providers=["CPUExecutionProvider"])
        for N in (int(b) for b in args.batches.split(",")):
            x = rng.standard_normal((N, 3, 32, 32), dtype=np.float32)
            ref = inf.forward(x)
            err = float(np.abs(sess.run(None, {"input": x})[0] - ref).max())
            assert err <= 1e-4 * float(np.abs(ref).max()) + 1e-6, (key, N, err)
            fns = [lambda: inf.forward(x), lambda: sess.run(None, {"input": x})]
            for f in fns:   # warm up, and the calls per sample
                t = time.perf_counter()
                for _ in range(3):
                    f()
            calls = max(1, int(0.02 / ((time.perf_counter() - t) / 3))) if clock == "cpu" else 1
            samples = [[], []]
            for _ in range(args.rounds):
                for i, f in enumerate(fns):
                    for _ in range(args.block if clock == "wall" else 1):
                        t = now()
                        for _ in range(calls):
                            f()
                        samples[i].append((now() - t) / calls)
                    if clock == "wall":
                        time.sleep(args.pause)
            med = [statistics.median(s) for s in samples]
            lo = [min(s) for s in samples]
            for name, s, m in zip(("salnp export", "onnxruntime"), samples, med):
                rows.append([key, N, name, f"{1e3 * m:.3f}",
                             f"{1e3 * min(s):.3f} - {1e3 * max(s):.3f}",
                             f"{med[1] / med[0]:.2f}x" if name == "onnxruntime" else "",
                             f"{lo[1] / lo[0]:.2f}x" if name == "onnxruntime" else ""])
    print(f"{nt} thread(s) each, clock {clock}"
          + (f" ({args.block} calls in a row, then a pause of {args.pause} s)" if clock == "wall" else "")
          + f", {args.rounds} rounds, onnxruntime "
          f"{ort.__version__}, load average {tuple(round(v, 1) for v in load0)} before, "
          f"{tuple(round(v, 1) for v in os.getloadavg())} after")
    print(table(["model", "batch", "runtime", "ms median", "range", "ORT/salnp (median)",
                 "(min)"], rows))


if __name__ == "__main__":
    main()
