"""3x3 convolutions of ResNet-20 (stride 1, padding 1, batch 128) at one thread: salnp's
direct kernels (CNHW) against PyTorch channels_last, GFLOP/s of the best of 5 calls.

    PYTHONPATH=python python bench/bench_conv3x3.py

Forward: y = conv(x, w).  Backward: the input and weight gradients together (PyTorch:
autograd.grad of a forward, minus that forward's time), counted as 2 x the forward FLOPs.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

import salnp
from salnp import ops


def best(f, reps=5):
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    salnp.set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| layer | salnp forward | PyTorch forward | salnp backward | PyTorch backward |")
    print("|---|---|---|---|---|")
    for n, c, h in ((128, 16, 32), (128, 32, 16), (128, 64, 8)):
        x = rng.standard_normal((c, n, h, h)).astype(np.float32)      # CNHW
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
        gy = rng.standard_normal((c, n, h, h)).astype(np.float32)
        flop = 2 * n * c * c * 9 * h * h
        sf = best(lambda: ops.conv2d(x, w, 1, 1, layout="CNHW"))
        sb = best(lambda: ops.conv2d_backward(x, w, gy, 1, 1, layout="CNHW"))
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3))).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        wt = torch.from_numpy(w).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.from_numpy(np.ascontiguousarray(gy.transpose(1, 0, 2, 3))).contiguous(
            memory_format=torch.channels_last)

        def tf():
            with torch.no_grad():
                F.conv2d(xt, wt, padding=1)
        pf = best(tf)
        pb = best(lambda: torch.autograd.grad(F.conv2d(xt, wt, padding=1), (xt, wt), g)) - pf
        print(f"| {c} -> {c}, {h} x {h} | {flop / sf / 1e9:.1f} | {flop / pf / 1e9:.1f} | "
              f"{2 * flop / sb / 1e9:.1f} | {2 * flop / pb / 1e9:.1f} |")


if __name__ == "__main__":
    main()
