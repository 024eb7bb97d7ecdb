"""The exported runtime against onnxruntime on salnp's ONNX export of the same network, per
family x batch x threads, in one interleaved run: salnp as it runs by default (streamed
evaluation forwards for large batches, sal/net.h "Streams"), salnp with streams off (every
op over the whole batch, the activations through DRAM between ops), and onnxruntime.

    PYTHONPATH=python python bench/bench_streams.py [--models sal,sal-shared,sl,asl]
        [--threads 1,2] [--batches 1,128] [--repeats 7] [--chunks 1,4] [--pause 0.01]

Per (family, batch, threads) the callables run round-robin `repeats` times after a warm-up;
each round gives one ratio onnxruntime time / salnp time (above 1: salnp faster); the
table shows the median time of each and the median and range of the per-round ratios.
--chunks adds rows with streams of a fixed chunk (sal_net_set_streams), to choose the
automatic one.

onnxruntime's pool threads spin-wait after a run (session.intra_op.allow_spinning, on by
default: we leave its default, its best setting for latency), and a spinning thread
would steal a core from the next callable in the round.  Every call is therefore followed
by a pause (--pause seconds, untimed) for every runtime alike, longer than the spin.
Networks as bench_onnx.py builds them; every output is checked first against salnp's
whole-batch forward (<= 1e-4 of the largest logit).
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
from salnp import _core  # noqa: E402
from bench_onnx import MODELS, build  # noqa: E402
from common import table  # noqa: E402


def rounds(fns, repeats, warmup, pause):
    """times[i][r]: seconds of callable i in round r (round-robin, a pause after each)."""
    for f in fns:
        for _ in range(warmup):
            f()
            time.sleep(pause)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t)
            time.sleep(pause)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sal,sal-shared,sl,asl")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--repeats", type=int, default=7, help="batch >= 16; smaller ones 5x")
    ap.add_argument("--chunks", default="", help="also fixed chunk sizes, e.g. 1,2,4,8")
    ap.add_argument("--pause", type=float, default=0.01)
    args = ap.parse_args()
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    chunks = [int(v) for v in args.chunks.split(",") if v]
    rows = []
    for key in args.models.split(","):
        inf = build(MODELS[key], rng)
        eng = inf.engine.get((3, 32, 32))
        model = salnp.export.to_onnx(inf, None, (3, 32, 32)).SerializeToString()
        for nt in (int(v) for v in args.threads.split(",")):
            so = ort.SessionOptions()
            so.intra_op_num_threads = nt
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            for n in (int(v) for v in args.batches.split(",")):
                x = rng.standard_normal((n, 3, 32, 32), dtype=np.float32)

                def ours(c):
                    def f():
                        salnp.set_num_threads(nt)
                        _core.net_set_streams(eng, c)
                        return inf.forward(x)
                    return f

                fns = {"salnp": ours(-1), "salnp, whole batch": ours(0)}
                for c in chunks:
                    fns[f"salnp, chunks of {c}"] = ours(c)
                fns["onnxruntime"] = lambda: sess.run(None, {"input": x})[0]
                ref = ours(0)()
                scale = float(np.abs(ref).max())
                for name, f in fns.items():
                    err = float(np.abs(f() - ref).max())
                    assert err <= 1e-4 * scale + 1e-6, (key, n, nt, name, err)
                reps = args.repeats * (5 if n < 16 else 1)
                times = rounds(list(fns.values()), reps, 2, args.pause)
                t_ort = times[-1]
                for name, ts in zip(fns, times):
                    ratio = [o / t for o, t in zip(t_ort, ts)]
                    rows.append([key, n, nt, name, f"{1e3 * statistics.median(ts):.2f}",
                                 f"{statistics.median(ratio):.2f}x",
                                 f"{min(ratio):.2f}-{max(ratio):.2f}"])
                    print("  ".join(str(v) for v in rows[-1]), flush=True)
    print(f"\nISA {_core.get_isa()}, onnxruntime {ort.__version__}, load average before "
          f"{tuple(round(v, 1) for v in load0)}, after "
          f"{tuple(round(v, 1) for v in os.getloadavg())}, {reps} rounds (batch < 16: 5x), "
          f"pause {args.pause} s after every call")
    print(table(["model", "batch", "threads", "runtime", "ms / batch (median)",
                 "onnxruntime / this (median)", "range over rounds"], rows))


if __name__ == "__main__":
    main()
