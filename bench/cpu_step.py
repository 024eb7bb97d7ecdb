"""CPU time per training step at one thread: a figure a loaded machine barely disturbs.

    PYTHONPATH=python python bench/cpu_step.py [--steps 4] [--models cl,sal]

On a shared host wall-clock rates mostly measure the other jobs; the process CPU time
(time.process_time) of a one-thread step measures the work itself (caches are still shared).
Same models, batch and PyTorch twins as bench/run.py (salnp vs PyTorch NCHW and
channels_last, 1 thread each, interleaved).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: models, twins, step functions)
from common import interleave  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--models", default="cl,sal,sal_shared,sl,asl")
    ap.add_argument("--salnp-only", action="store_true",
                    help="no PyTorch steps: for a profile (perf record -g python bench/cpu_step.py "
                         "--models sal --salnp-only)")
    args = ap.parse_args()
    import numpy as np
    import torch
    import salnp
    from salnp.train import SGD
    import torch_fast
    salnp.set_num_threads(1)
    torch.set_num_threads(1)
    sz = run.sizes(False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    print(f"CPU seconds per training step, 1 thread, batch {sz['batch']}, ResNet-{sz['depth']} "
          f"w={sz['width']} (median of {args.steps}, interleaved); load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| model | salnp | PyTorch NCHW | PyTorch channels_last | best PyTorch / salnp |")
    print("|---|---|---|---|---|")
    for key, label, layer, kw in run.TRAIN_MODELS:
        if key not in args.models.split(","):
            continue
        net = run.make_net(layer, kw, sz)
        opt = SGD(net, lr=0.05)
        fns = [lambda: run.salnp_step(net, opt, x, y)]
        for cl in (False, True)[:0 if args.salnp_only else 2]:
            step, _, _ = run.torch_trainer(torch_fast.build(net, 20.0).train(), cl, x, y)
            fns.append(step)
        cpu = interleave(fns, args.steps, warmup=1, clock=time.process_time)
        m = [statistics.median(c) for c in cpu]
        if args.salnp_only:
            print(f"| {label} | {m[0]:.2f} s | | | |", flush=True)
            continue
        print(f"| {label} | {m[0]:.2f} s | {m[1]:.2f} s | {m[2]:.2f} s | "
              f"**{min(m[1], m[2]) / m[0]:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
