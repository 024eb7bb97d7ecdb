"""SAL layer forward + backward: salnp against the PyTorch reference expression.

    PYTHONPATH=python python bench/bench_sal.py [--batch 128] [--channels 16] [--size 32]
                                                [--repeats 15] [--threads 2]

The layer: x (N, C, H, W), w (C, C, 3, 3), unshared logits (C, C, 9), beta = 20, stride 1,
padding 1.  Reference (the released code's expression, float32, autograd):
    p = softmax(beta * a / a.std(-1, keepdim=True), -1); y = conv2d(x, p.reshape(w) * w)
    y.backward(grad_y)                       -> grad_x, grad_w, grad_logits
Ours: salnp.ops.sal_conv2d + salnp.ops.sal_conv2d_backward (which recomputes p and W_eff);
also timed: salnp's plain conv2d + conv2d_backward of the same shape, the cost underneath.
Both use the same number of threads.  Results are compared before timing; the timed
repeats interleave the two implementations (the host sometimes steals a core for a few
ms) and the table reports medians and the spread (min .. max).
"""
import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import salnp


def torch_step(x, w, a, beta, gy):
    for t in (x, w, a):
        t.grad = None
    p = torch.softmax(beta * a / a.std(-1, keepdim=True), -1)
    y = F.conv2d(x, p.reshape(w.shape) * w, padding=1)
    y.backward(gy)
    return y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--beta", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    salnp.set_num_threads(args.threads)
    cfg = salnp.config()
    N, C, S, beta = args.batch, args.channels, args.size, args.beta
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, S, S), dtype=np.float32)
    w = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    a = rng.random((C, C, 9), dtype=np.float32)
    gy = rng.standard_normal((N, C, S, S), dtype=np.float32)
    xt, wt, at = (torch.tensor(v, requires_grad=True) for v in (x, w, a))
    gyt = torch.tensor(gy)

    def ours_fwd():
        return salnp.ops.sal_conv2d(x, w, a, beta)

    def ours_step():
        y = salnp.ops.sal_conv2d(x, w, a, beta)
        return (y,) + salnp.ops.sal_conv2d_backward(x, w, a, beta, gy)

    def torch_fwd():
        with torch.no_grad():
            p = torch.softmax(beta * at / at.std(-1, keepdim=True), -1)
            return F.conv2d(xt, p.reshape(wt.shape) * wt, padding=1)

    # ---- agree before timing ----
    got = ours_step()
    yt = torch_step(xt, wt, at, beta, gyt)
    ref = (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), at.grad.numpy())
    for g, r, name in zip(got, ref, ["y", "grad_x", "grad_w", "grad_logits"]):
        scale = 1.0 if name in ("y", "grad_x") else np.sqrt(N * S * S)
        err = np.abs(g - r) - (1e-4 * scale + 1e-3 * np.abs(r))
        if err.max() > 0:
            raise SystemExit(f"{name}: results disagree (worst excess {err.max():.3g}); not timing")
    print(f"results agree (y, grad_x, grad_w, grad_logits)")

    # ---- interleaved timing ----
    def ours_conv_step():   # the plain 3x3 convolution underneath: the attention's overhead
        salnp.ops.conv2d(x, w, padding=1)
        return salnp.ops.conv2d_backward(x, w, gy, padding=1)

    cases = {"salnp fwd": ours_fwd, "torch fwd": torch_fwd,
             "salnp fwd+bwd": ours_step,
             "torch fwd+bwd": lambda: torch_step(xt, wt, at, beta, gyt),
             "salnp plain conv2d fwd+bwd": ours_conv_step}
    for f in cases.values():   # warm-up (allocator, BLIS and OpenMP thread pools)
        f()
        f()
    times = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)

    macs = N * S * S * C * C * 9
    print(f"\nSAL layer {C}->{C}, {S}x{S}, batch {N}, beta {beta}, unshared, stride 1, "
          f"{args.threads} threads (torch {torch.__version__}, salnp {salnp.__version__}, "
          f"BLIS {cfg['blis_version']} {cfg['flavour']} {cfg['arch']})")
    print(f"conv MACs per forward: {macs / 1e6:.1f} M; training step (fwd+bwd) ~ 3x that\n")
    print("| case | median ms | min .. max ms | GFLOP/s (2*MACs) |")
    print("|---|---|---|---|")
    for k, ts in times.items():
        med = statistics.median(ts)
        flops = 2 * macs * (3 if "bwd" in k else 1)
        print(f"| {k} | {med * 1e3:.2f} | {min(ts) * 1e3:.2f} .. {max(ts) * 1e3:.2f} "
              f"| {flops / med / 1e9:.1f} |")
    for part in ("fwd", "fwd+bwd"):
        r = statistics.median(times[f"torch {part}"]) / statistics.median(times[f"salnp {part}"])
        print(f"\n{part}: torch / salnp = {r:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
