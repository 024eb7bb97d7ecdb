"""Wall-clock training steps, salnp against PyTorch, interleaved step by step: a quick
version of bench/run.py's training table for one machine state.

    PYTHONPATH=python python bench/bench_step.py [--threads 2] [--steps 15] [--models cl,sal]

Same models, batch, step functions and PyTorch twins as bench/run.py (ResNet-20 w=16,
batch 128, 32x32; salnp: forward, cross-entropy, zero_grad, backward, SGD; PyTorch NCHW and
channels_last).  Each round runs one step of every contender; the table gives the median
and the best (min) step time of the rounds as images/s.  On a shared machine the best of
the rounds is the steadier figure (a step preempted by another process only gets slower).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: models, twins, step functions)
from common import interleave  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--models", default="cl,sal")
    args = ap.parse_args()
    import numpy as np
    import torch
    import salnp
    from salnp.train import SGD
    import torch_fast
    salnp.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sz = run.sizes(False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    print(f"Training step, {args.threads} threads, batch {sz['batch']}, ResNet-{sz['depth']} "
          f"w={sz['width']}, images/s: median (best) of {args.steps} interleaved rounds; load "
          f"average before {os.getloadavg()[0]:.1f}")
    print("| model | salnp | PyTorch NCHW | PyTorch channels_last | salnp / best PyTorch "
          "(median; best) |")
    print("|---|---|---|---|---|")
    for key, label, layer, kw in run.TRAIN_MODELS:
        if key not in args.models.split(","):
            continue
        net = run.make_net(layer, kw, sz)
        opt = SGD(net, lr=0.05)
        fns = [lambda: run.salnp_step(net, opt, x, y)]
        for cl in (False, True):
            step, _, _ = run.torch_trainer(torch_fast.build(net, 20.0).train(), cl, x, y)
            fns.append(step)
        ts = interleave(fns, args.steps, warmup=2, pause=run.TRAIN_PAUSE)   # as run.py
        b = sz["batch"]
        med = [b / statistics.median(t) for t in ts]
        best = [b / min(t) for t in ts]
        cells = [f"{m:.0f} ({bb:.0f})" for m, bb in zip(med, best)]
        print(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | "
              f"**{med[0] / max(med[1:]):.2f}x**; **{best[0] / max(best[1:]):.2f}x** |",
              flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
