"""Exported runtime at batch 128, two ways, against onnxruntime on salnp's ONNX export, in
one interleaved run: the whole batch as one forward (every op over 128 images, the
activations in DRAM between ops), and per-image streams (each of THREADS threads runs
its share of the images one forward at a time, on its own InferenceNet copy, each
forward on one thread: every activation stays in the L2 cache from op to op).

    PYTHONPATH=python python bench/bench_streams.py [--models sl,sal-shared,asl]
        [--threads 1] [--chunks 1,4] [--repeats 5]

The streams are what an executor that splits a batch over its threads image by image
would run; this measures the idea from Python (the GIL is released inside forward).
Networks as bench_onnx.py builds them; outputs compared with the batched forward first.
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import salnp  # noqa: E402
from bench_onnx import MODELS, build  # noqa: E402
from common import interleaved  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sl,sal-shared,asl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", default="1,4", help="images per forward in the streams")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import onnxruntime as ort
    nt = args.threads
    so = ort.SessionOptions()
    so.intra_op_num_threads = nt
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    pool = ThreadPoolExecutor(nt)
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    for key in args.models.split(","):
        inf = build(MODELS[key], rng)
        nets = [inf] + [salnp.export.InferenceNet(inf.ops, inf.channels, inf.shifts, inf.pairs,
                                                  inf.weights, inf.names, inf.config, inf.info)
                        for _ in range(nt - 1)]
        model = salnp.export.to_onnx(inf, None, (3, 32, 32)).SerializeToString()
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)

        def whole():
            salnp.set_num_threads(nt)
            return inf.forward(x)

        def streams(c):
            def run(k):
                lo, hi = 128 * k // nt, 128 * (k + 1) // nt
                return np.concatenate([nets[k].forward(x[i:min(i + c, hi)])
                                       for i in range(lo, hi, c)])

            def f():
                salnp.set_num_threads(1)
                return np.concatenate(list(pool.map(run, range(nt))))
            return f

        fns = {"salnp, batch 128": whole}
        for c in (int(v) for v in args.chunks.split(",")):
            fns[f"salnp, {nt} stream(s) of {c}"] = streams(c)
        fns["onnxruntime, batch 128"] = lambda: sess.run(None, {"input": x})[0]
        ref = whole()
        for name, f in fns.items():
            err = float(np.abs(f() - ref).max())
            assert err <= 1e-4 * float(np.abs(ref).max()) + 1e-6, (key, name, err)
        times = interleaved(list(fns.values()), repeats=args.repeats, warmup=1)
        for name, t in zip(fns, times):
            print(f"{key:10s} {nt} thread(s)  {name:28s} {1e3 * t:8.1f} ms   "
                  f"onnxruntime / this {times[-1] / t:.2f}x", flush=True)
    print(f"load average before {tuple(round(v, 1) for v in load0)}, after "
          f"{tuple(round(v, 1) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
