"""The first call after an idle pause: an exported network's latency when requests come
apart (a serving loop, an interactive notebook), salnp against onnxruntime on salnp's own
ONNX export, the same threads.

    PYTHONPATH=python python bench/bench_cold.py [--models cl,sal_shared] [--threads 1]
        [--batches 1,8] [--pause-ms 20] [--rounds 60] [--block 10]

Per round: an idle pause (time.sleep), one timed call (cold), then one more right after
(warm).  The runtimes alternate in blocks of --block rounds, each block after an untimed
settling pause of 150 ms: at 2 threads onnxruntime's pool thread spins 30-50 ms after a call
and, with the runtimes alternating round by round, took a core from salnp's next calls (its
warm batch-8 call then ran at one thread's speed).  Within its own block a runtime keeps what
it does between calls (onnxruntime's spinning included: that is what a serving loop with
such gaps gets).  Prints the median and 90th percentile of each, in microseconds.  Networks and
outputs as bench/run.py's exported rows (run.exported_net, checked against each other).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cl,sal_shared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--pause-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="run.py's tiny sizes, 3 rounds")
    args = ap.parse_args()
    import numpy as np
    import salnp
    salnp.set_num_threads(args.threads)
    sz = run.sizes(args.quick)
    rounds = 3 if args.quick else args.rounds
    rng = np.random.default_rng(0)
    print(f"First call after a {args.pause_ms:g} ms pause (cold) and the call right after "
          f"(warm), us: median / p90 of {rounds} rounds in blocks of {args.block}; "
          f"{args.threads} thread(s); load average before {os.getloadavg()[0]:.1f}")
    print("| network | batch | runtime | cold | warm | cold / warm |")
    print("|---|---|---|---|---|---|")
    lat = run.CoreLatency() if args.threads > 1 else None
    for key, label, layer, kw in run.INFER_MODELS:
        if key not in args.models.split(","):
            continue
        before = lat() if lat else None
        _net, inf = run.exported_net(layer, kw, sz, rng)
        sess = run.ort_session(inf, sz, args.threads)
        for batch in (int(b) for b in args.batches.split(",")):
            x = rng.standard_normal((batch, 3, sz["hw"], sz["hw"])).astype(np.float32)
            fns = {"salnp export": lambda x=x: inf.forward(x)}
            if sess is not None:
                y, yo = inf.forward(x), sess.run(None, {"input": x})[0]
                assert float(np.abs(y - yo).max()) <= 1e-4 * float(np.abs(y).max()) + 1e-5
                fns["onnxruntime"] = lambda x=x: sess.run(None, {"input": x})
            for f in fns.values():
                for _ in range(20):
                    f()
            cold = {k: [] for k in fns}
            warm = {k: [] for k in fns}
            block = max(1, min(args.block, rounds))
            for _ in range((rounds + block - 1) // block):
                for k, f in fns.items():
                    time.sleep(0.15)
                    for _ in range(block):
                        time.sleep(args.pause_ms / 1e3)
                        t0 = time.perf_counter()
                        f()
                        t1 = time.perf_counter()
                        f()
                        t2 = time.perf_counter()
                        cold[k].append(1e6 * (t1 - t0))
                        warm[k].append(1e6 * (t2 - t1))
            for k in fns:
                c, w = statistics.median(cold[k]), statistics.median(warm[k])
                print(f"| {label} | {batch} | {k} | {c:,.0f} / {pct(cold[k], 0.9):,.0f} | "
                      f"{w:,.0f} / {pct(warm[k], 0.9):,.0f} | {c / w:.2f}x |", flush=True)
        if before is not None:   # 2-thread rows follow the vCPUs' placement (run.py)
            after = lat()
            print(f"| {label}: core round trip before / after, ns (bench/core_latency.c) | "
                  f"{before:.0f} / {after:.0f} | | | | |" if after is not None else "", flush=True)


if __name__ == "__main__":
    main()
