"""1x1 convolutions of a ShiftResNet-20 at batch 128: salnp vs PyTorch, same run, 2 threads.

    PYTHONPATH=python python bench/bench_conv1x1.py [--threads 2] [--repeats 15]

Rows: channels 16/32/64 at 32x32/16x16/8x8 (expansion 1) and the e=6 expand/reduce shapes.
Columns: GFLOP/s (2 * MACs / median time) of the forward and of forward + backward, for
salnp's NCHW op (one GEMM per image), salnp's channel-major op (one GEMM for the batch)
and torch.nn.functional.conv2d.  Results are checked against torch before timing.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import salnp  # noqa: E402
from common import interleaved, table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    salnp.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    N = args.batch
    shapes = [(16, 16, 32), (32, 32, 16), (64, 64, 8), (16, 96, 32), (96, 16, 32), (64, 384, 8)]
    rng = np.random.default_rng(0)
    rows = []
    for C, O, H in shapes:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = rng.standard_normal((O, C, 1, 1), dtype=np.float32)
        gy = rng.standard_normal((N, O, H, H), dtype=np.float32)
        xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
        gyc = np.ascontiguousarray(gy.transpose(1, 0, 2, 3))
        xt, wt, gyt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True), torch.tensor(gy)
        ref = F.conv2d(xt, wt).detach().numpy()
        for got in (salnp.ops.conv2d(x, w), salnp.ops.conv2d(xc, w, layout="CNHW").transpose(1, 0, 2, 3)):
            err = np.abs(got - ref).max()
            assert err <= 1e-3 * (1 + np.abs(ref).max()), f"result mismatch {err}"

        def torch_fb():
            xt.grad = wt.grad = None
            F.conv2d(xt, wt).backward(gyt)

        fns = [lambda: salnp.ops.conv2d(x, w),
               lambda: salnp.ops.conv2d(xc, w, layout="CNHW"),
               lambda: F.conv2d(xt.detach(), wt.detach()),
               lambda: (salnp.ops.conv2d(x, w), salnp.ops.conv2d_backward(x, w, gy)),
               lambda: (salnp.ops.conv2d(xc, w, layout="CNHW"),
                        salnp.ops.conv2d_backward(xc, w, gyc, layout="CNHW")),
               torch_fb]
        with torch.no_grad():
            t = interleaved(fns[:3], args.repeats)
        t += interleaved(fns[3:], args.repeats)
        flop = 2.0 * N * C * O * H * H
        g = [flop / s / 1e9 for s in t[:3]] + [3 * flop / s / 1e9 for s in t[3:]]
        rows.append([f"{C}->{O} @{H}x{H}", *(f"{v:.1f}" for v in g)])
    cfg = salnp.config()
    print(f"salnp {cfg['salnp']}, BLIS {cfg['blis_version']} {cfg['flavour']} '{cfg['arch']}', "
          f"torch {torch.__version__}; threads {args.threads}; batch {N}; GFLOP/s, median of {args.repeats}")
    print(table(["1x1 conv", "fwd NCHW", "fwd CNHW", "fwd torch", "f+b NCHW", "f+b CNHW", "f+b torch"], rows))


if __name__ == "__main__":
    main()
