"""The exported runtime against onnxruntime on salnp's ONNX export of the same network, per
family x batch x threads, in one interleaved run: salnp as it runs by default (streamed
evaluation forwards for large batches, sal/net.h "Streams"), salnp with streams off (every
op over the whole batch, the activations through DRAM between ops), and onnxruntime.

    PYTHONPATH=python python bench/bench_streams.py [--models sal,sal-shared,sl,asl]
        [--threads 1,2] [--batches 1,128] [--repeats 7] [--chunks 1,4] [--pause 0.1]
        [--clock wall|cpu] [--profile]

Per (family, batch, threads) the callables run round-robin `repeats` times after a warm-up;
each round gives one ratio onnxruntime time / salnp time (above 1: salnp faster); the
table shows the median time of each and the median and range of the per-round ratios.
--chunks adds rows with streams of a fixed chunk (sal_net_set_streams), to choose the
automatic one.

onnxruntime's pool threads spin-wait after a run (session.intra_op.allow_spinning, on by
default: we leave its default, its best setting for latency), and a spinning thread
would steal a core from the next callable in the round.  Every call is therefore followed
by a pause (--pause seconds, untimed) for every runtime alike, longer than the spin.
--clock cpu times process CPU seconds instead of wall time, at 1 thread only (both
runtimes then run on the calling thread): a figure a loaded host barely disturbs, since
it does not count the time other processes hold the core.  --profile prints salnp's
per-op thread CPU time per image (sal_net_profile) at 1 thread, by op kind and shape.

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
from common import interleave, table  # noqa: E402


KINDS = None


def profile(inf, eng, x, reps=5):
    """salnp's per-op thread CPU microseconds per image at 1 thread, summed by op kind and
    shape: [(label, ops, us)] largest first, and the total."""
    global KINDS
    KINDS = KINDS or _core.NET_KINDS
    salnp.set_num_threads(1)
    _core.net_set_streams(eng, -1)
    inf.forward(x)
    _core.net_profile(eng, True)
    for _ in range(reps):
        inf.forward(x)
    sec = _core.net_profile(eng, False) * 1e6 / reps / len(x)
    prog = inf.engine.program
    shapes, table = prog.shapes(x.shape[1:]), prog.table()
    agg = {}
    for i, us in enumerate(sec):
        kind, si, so = KINDS[int(table[i][0])], shapes[int(table[i][1])], shapes[int(table[i][2])]
        label = f"{kind} {si[0]}>{so[0]} {si[1]}x{si[2]}>{so[1]}x{so[2]}"
        n, t = agg.get(label, (0, 0.0))
        agg[label] = (n + 1, t + us)
    return sorted(((k, n, t) for k, (n, t) in agg.items()), key=lambda r: -r[2]), sec.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sal,sal-shared,sl,asl")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--repeats", type=int, default=7, help="batch >= 16; smaller ones 5x")
    ap.add_argument("--chunks", default="", help="also fixed chunk sizes, e.g. 1,2,4,8")
    ap.add_argument("--pause", type=float, default=0.1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and args.threads != "1":
        raise SystemExit("--clock cpu: CPU time is a latency only at --threads 1")
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
                times = interleave(list(fns.values()), reps, 2, clock, args.pause)
                t_ort = times[-1]
                for name, ts in zip(fns, times):
                    ratio = [o / t for o, t in zip(t_ort, ts)]
                    rows.append([key, n, nt, name, f"{1e3 * statistics.median(ts):.2f}",
                                 f"{statistics.median(ratio):.2f}x",
                                 f"{min(ratio):.2f}-{max(ratio):.2f}"])
                    print("  ".join(str(v) for v in rows[-1]), flush=True)
                if args.profile and nt == 1:
                    prof, total = profile(inf, eng, x)
                    print(f"profile {key} batch {n}: {total:.1f} us per image (thread CPU)")
                    for label, k, us in prof[:12]:
                        print(f"    {label:34s} x{k:<3d} {us:8.1f} us  {100 * us / total:5.1f} %")
    print(f"\nISA {_core.get_isa()}, onnxruntime {ort.__version__}, load average before "
          f"{tuple(round(v, 1) for v in load0)}, after "
          f"{tuple(round(v, 1) for v in os.getloadavg())}, {reps} rounds (batch < 16: 5x), "
          f"pause {args.pause} s after every call, clock {args.clock}")
    print(table(["model", "batch", "threads", "runtime", "ms / batch (median)",
                 "onnxruntime / this (median)", "range over rounds"], rows))


if __name__ == "__main__":
    main()
