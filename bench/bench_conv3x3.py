"""The convolutions of a CL ResNet-20 (batch 128, 32x32 inputs), pass by pass: forward,
input gradient and weight gradient of each distinct layer, salnp against PyTorch.

    PYTHONPATH=python python bench/bench_conv3x3.py [--threads 1,2] [--repeats 7] [--json F]
        [--stat median|min] [--clock wall|cpu]

GFLOP/s count direct-convolution FLOPs, 2 N O C K^2 Ho Wo per pass, whatever the algorithm
does (Winograd F(4x4, 3x3) does 2.2-3.3x fewer): the figure is a rate of useful work.
salnp: ops.conv2d and ops.conv2d_backward(grad_x=..., grad_w=...) in the channel-major
layout networks use (CNHW); the algorithm of each pass from ops.conv2d_algo.  PyTorch:
F.conv2d under no_grad and aten.convolution_backward with one output mask at a time, in
NCHW and channels_last; the faster layout counts.  Each timing is the median of interleaved
repeats (salnp, PyTorch NCHW, PyTorch channels_last, one call each per round), every result
checked against PyTorch's first.  "network" sums count x time over the layers: the
convolution part of a training step (the stem needs no input gradient).  On a loaded
machine: --stat min (the best of the repeats) and, at one thread, --clock cpu (process CPU
time, which other processes do not inflate).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import salnp
from salnp import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py)

N = 128
# (name, count in ResNet-20, C, O, H (input), K, stride)
LAYERS = [
    ("stem 3->16, 32x32", 1, 3, 16, 32, 3, 1),
    ("16->16, 32x32", 6, 16, 16, 32, 3, 1),
    ("16->32, 32x32, stride 2", 1, 16, 32, 32, 3, 2),
    ("16->32 1x1, stride 2", 1, 16, 32, 32, 1, 2),
    ("32->32, 16x16", 5, 32, 32, 16, 3, 1),
    ("32->64, 16x16, stride 2", 1, 32, 64, 16, 3, 2),
    ("32->64 1x1, stride 2", 1, 32, 64, 16, 1, 2),
    ("64->64, 8x8", 5, 64, 64, 8, 3, 1),
]
PASSES = ("forward", "input_grad", "weight_grad")


def cnhw(a):
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3))


def salnp_fns(x, w, gy, s, p):
    xc, gc = cnhw(x), cnhw(gy)
    return {
        "forward": lambda: ops.conv2d(xc, w, s, p, layout="CNHW"),
        "input_grad": lambda: ops.conv2d_backward(xc, w, gc, s, p, layout="CNHW", grad_w=False)[0],
        "weight_grad": lambda: ops.conv2d_backward(xc, w, gc, s, p, layout="CNHW", grad_x=False)[1],
    }


def torch_fns(x, w, gy, s, p, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).contiguous(memory_format=fmt)
    wt = torch.from_numpy(w).contiguous(memory_format=fmt)
    gt = torch.from_numpy(gy).contiguous(memory_format=fmt)
    bwd = torch.ops.aten.convolution_backward

    def fwd():
        with torch.no_grad():
            return F.conv2d(xt, wt, stride=s, padding=p)

    def back(mask):
        with torch.no_grad():
            return bwd(gt, xt, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

    return {"forward": fwd, "input_grad": lambda: back([True, False, False])[0],
            "weight_grad": lambda: back([False, True, False])[1]}


def check(got, ref, name, scale):
    """salnp's result (CNHW for activations) against PyTorch's, within float32 error"""
    ref = ref.detach().numpy()
    if got.ndim == 4 and got.shape != ref.shape:
        got = got.transpose(1, 0, 2, 3)
    err = float(np.max(np.abs(got - ref)))
    if not err <= 1e-4 * scale:
        raise AssertionError(f"{name}: salnp differs from PyTorch by {err:.3g} (scale {scale:.3g})")


# Untimed seconds slept after every call at 2+ threads: PyTorch's OpenMP threads spin-wait
# after a call and took a core from the next callable (salnp's 16->32 stride-2 forward
# measured 3.7 ms interleaved without it, 2.0 ms alone).
PAUSE = 0.01


def times(fns, repeats, stat, clock, threads):
    ts = common.interleave(fns, repeats, warmup=1, clock=clock, pause=PAUSE if threads > 1 else 0)
    return [stat(t) for t in ts]


def run(threads, repeats, rng, stat, clock):
    salnp.set_num_threads(threads)
    torch.set_num_threads(threads)
    rows = []
    for name, count, C, O, H, K, s in LAYERS:
        p = K // 2
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((O, C, K, K)) / np.sqrt(C * K * K)).astype(np.float32)
        Ho = (H + 2 * p - K) // s + 1
        gy = rng.standard_normal((N, O, Ho, Ho)).astype(np.float32)
        flop = 2.0 * N * O * C * K * K * Ho * Ho
        algo = ops.conv2d_algo((C, N, H, H), (O, C, K, K), s, p, layout="CNHW")
        sf = salnp_fns(x, w, gy, s, p)
        tf = [torch_fns(x, w, gy, s, p, cl) for cl in (False, True)]
        for ps in PASSES:
            if ps == "input_grad" and name.startswith("stem"):
                continue
            ref = tf[0][ps]()
            check(sf[ps](), ref, f"{name} {ps}", float(np.max(np.abs(ref.numpy()))) + 1.0)
            t_s, t_nchw, t_cl = times([sf[ps], tf[0][ps], tf[1][ps]], repeats, stat, clock, threads)
            t_t = min(t_nchw, t_cl)
            rows.append({"threads": threads, "layer": name, "count": count, "pass": ps,
                         "algo": algo[ps], "salnp_s": t_s, "torch_nchw_s": t_nchw,
                         "torch_cl_s": t_cl, "gflop": flop / 1e9,
                         "torch_layout": "NCHW" if t_nchw <= t_cl else "channels_last"})
    return rows


def table(rows, threads, how):
    print(f"\n### {threads} thread{'s' * (threads > 1)}, batch {N}, GFLOP/s (direct-convolution "
          f"FLOPs) at the {how}\n")
    print("| layer | pass | salnp algorithm | salnp | PyTorch (faster layout) | salnp / PyTorch |")
    print("|---|---|---|---|---|---|")
    tot_s = tot_t = 0.0
    for r in rows:
        if r["threads"] != threads:
            continue
        t_t = min(r["torch_nchw_s"], r["torch_cl_s"])
        tot_s += r["count"] * r["salnp_s"]
        tot_t += r["count"] * t_t
        print(f"| {r['layer']} | {r['pass'].replace('_', ' ')} | {r['algo']} | "
              f"{r['gflop'] / r['salnp_s']:.1f} | {r['gflop'] / t_t:.1f} ({r['torch_layout']}) | "
              f"**{t_t / r['salnp_s']:.2f}x** |")
    print(f"| network (count x time, all passes) | | | {tot_s * 1e3:.1f} ms | {tot_t * 1e3:.1f} ms"
          f" | **{tot_t / tot_s:.2f}x** |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--stat", default="median", choices=["median", "min"])
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.clock == "cpu" and threads != [1]:
        ap.error("--clock cpu: one thread only (--threads 1): CPU time adds up the threads")
    stat = statistics.median if args.stat == "median" else min
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rng = np.random.default_rng(0)
    rows = []
    for t in threads:
        rows += run(t, args.repeats, rng, stat, clock)
    print(f"salnp {salnp.__version__} (ISA {salnp._core.get_isa()}), torch {torch.__version__}; "
          f"{args.repeats} interleaved repeats, {args.stat} of {args.clock}-clock times; load "
          f"average {os.getloadavg()[0]:.1f}")
    how = f"{args.stat} {'CPU ' if args.clock == 'cpu' else ''}time"
    for t in threads:
        table(rows, t, how)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
