"""SAL layer forward + backward: salnp's sparse taps and dense path against PyTorch running the
authors' dense expression, at the layer level, for the ResNet-20 SAL layers.

    PYTHONPATH=python python bench/bench_sal.py [--batch 128] [--betas 20,35,70]
        [--threads 1,2] [--repeats 7] [--shared] [--layers all] [--clock wall|cpu]
        [--align 64|16] [--write]

Layers (C_in x H x W -> C_out, stride): 16x32x32->16 s1, 16x32x32->32 s2, 32x16x16->32 s1,
32x16x16->64 s2, 64x8x8->64 s1; batch 128; logits U[0, 1) (the paper's initialisation:
real logits, so the kept taps are those of a fresh network at that beta).
Cases, each timed as a training step of the layer (forward, then dL/dx, dL/dw, dL/dlogits):
  salnp sparse   salnp.ops.sal_conv2d + sal_conv2d_backward, tap_threshold = the default
                 (the path chosen by the measured crossover, sal/attention.h);
  salnp dense    the same with tap_threshold = 0 (the dense 3x3 convolution);
  torch          the released code's expression in float32 autograd,
                     p = softmax(beta * a / a.std(-1, keepdim=True), -1)
                     y = conv2d(x, p.reshape(w.shape) * w, stride, padding=1); y.backward(gy)
                 in NCHW and in channels_last; the faster of the two is "torch best".
All results are compared before timing (torch in float64 is the reference).  The repeats
interleave the cases (the host sometimes steals a core); the table gives medians and the
kept taps per slice (mean over the slices, of 9).  --clock cpu times the calling thread's CPU
time instead (time.thread_time; 1 thread only, where salnp and torch both run on that
thread): a figure a loaded host barely disturbs (the caches are still shared), minimum of the
repeats.  The salnp ops work on NCHW arrays and
allocate their outputs and scratch per call, as a user's script does; the network
(CNHW, scratch once) is measured by bench/bench_taps.c and bench/bench_training.py.
--align: x and grad_y start on a 64-byte boundary (the default: the stride-1 layers then run
the direct sparse kernels, taps.c) or 16 bytes past one (as glibc places a large block: the
copy path).
--write records the table in bench/RESULTS.md ("## SAL layer (sparse taps)").
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import salnp  # noqa: E402
from common import table  # noqa: E402

LAYERS = {"16x32-16s1": (16, 32, 16, 1), "16x32-32s2": (16, 32, 32, 2),
          "32x16-32s1": (32, 16, 32, 1), "32x16-64s2": (32, 16, 64, 2),
          "64x8-64s1": (64, 8, 64, 1)}


def placed(a, align):
    """a copy of a starting on a 64-byte boundary (align 64) or 16 bytes past one (16)"""
    buf = np.empty(a.nbytes + 128, np.uint8)
    off = (-buf.ctypes.data) % 64 + (0 if align == 64 else 16)
    v = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v


def torch_step(x, w, a, beta, gy, stride):
    for t in (x, w, a):
        t.grad = None
    p = torch.softmax(beta * a / a.std(-1, keepdim=True), -1)
    wf = p.reshape(a.shape[0], a.shape[1], 3, 3) * w
    y = F.conv2d(x, wf, stride=stride, padding=1)
    y.backward(gy)
    return y


def torch_reference(x, w, a, beta, gy, stride):
    """float64 autograd of the same expression: (y, grad_x, grad_w, grad_logits)."""
    xt, wt, at = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x, w, a))
    y = torch_step(xt, wt, at, beta, torch.tensor(gy, dtype=torch.float64), stride)
    return [y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), at.grad.numpy()]


def check(got, ref, what, n_pos):
    """The PyTorch tolerances of tests/test_sal.py: atol 1e-4 (y, grad_x), 1e-4 * sqrt of the
    summed positions (grad_w, grad_logits), rtol 1e-3; a SystemExit when they fail."""
    for g, r, name in zip(got, ref, ["y", "grad_x", "grad_w", "grad_logits"]):
        atol = 1e-4 * (1.0 if name in ("y", "grad_x") else np.sqrt(n_pos))
        err = np.abs(np.asarray(g, np.float64) - r) - (atol + 1e-3 * np.abs(r))
        if err.max() > 0:
            raise SystemExit(f"{what}: {name} disagrees with the float64 reference "
                             f"(worst excess {err.max():.3g}); not timing")


def interleaved(fns, repeats, warmup=2, clock="wall"):
    """median wall time, or the minimum thread CPU time, of each of fns, interleaved"""
    now = time.perf_counter if clock == "wall" else time.thread_time
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = now()
            f()
            times[i].append(now() - t)
    return [statistics.median(t) if clock == "wall" else min(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--betas", default="20,35,70")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shared", action="store_true", help="shared SAL (logits (1, C, 9))")
    ap.add_argument("--layers", default="all", help="comma-separated keys of " + ",".join(LAYERS))
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the thread's CPU time (1 thread only)")
    ap.add_argument("--align", type=int, choices=[64, 16], default=64,
                    help="x and grad_y 64-byte aligned, or 16 bytes past (the copy path)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    keys = list(LAYERS) if args.layers == "all" else args.layers.split(",")
    if args.clock == "cpu" and args.threads != "1":
        raise SystemExit("--clock cpu measures the calling thread: use --threads 1")
    betas = [float(b) for b in args.betas.split(",")]
    N = args.batch
    cfg = salnp.config()
    load0 = os.getloadavg()
    rows = []
    for nt in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(nt)
        salnp.set_num_threads(nt)
        for key in keys:
            C, H, O, s = LAYERS[key]
            rng = np.random.default_rng(0)
            x = placed(rng.standard_normal((N, C, H, H), dtype=np.float32), args.align)
            w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
            a = rng.random((1 if args.shared else O, C, 9), dtype=np.float32)
            Ho = (H - 1) // s + 1
            gy = placed(rng.standard_normal((N, O, Ho, Ho), dtype=np.float32), args.align)
            xt, wt, at = (torch.tensor(v, requires_grad=True) for v in (x, w, a))
            xc = torch.tensor(x).contiguous(memory_format=torch.channels_last).requires_grad_()
            gyt = torch.tensor(gy)
            gyc = gyt.contiguous(memory_format=torch.channels_last)
            for beta in betas:
                def ours(t=None):
                    y = salnp.ops.sal_conv2d(x, w, a, beta, stride=s, **({} if t is None else
                                                                         dict(tap_threshold=t)))
                    return [y, *salnp.ops.sal_conv2d_backward(
                        x, w, a, beta, gy, stride=s, **({} if t is None else dict(tap_threshold=t)))]

                ref = torch_reference(x, w, a, beta, gy, s)   # agree before timing
                check(ours(), ref, f"{key} beta={beta} sparse", N * Ho * Ho)
                check(ours(0.0), ref, f"{key} beta={beta} dense", N * Ho * Ho)
                yt = torch_step(xt, wt, at, beta, gyt, s)
                check([yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), at.grad.numpy()],
                      ref, f"{key} beta={beta} torch", N * Ho * Ho)
                fns = [lambda: ours(), lambda: ours(0.0),
                       lambda: torch_step(xt, wt, at, beta, gyt, s),
                       lambda: torch_step(xc, wt, at, beta, gyc, s)]
                t = interleaved(fns, args.repeats, clock=args.clock)
                kept = salnp.ops.sal_kept_taps(a, beta).sum(-1).mean()
                best = min(t[2], t[3])
                rows.append([nt, key, f"{beta:g}", f"{kept:.2f}", f"{1e3 * t[0]:.2f}",
                             f"{1e3 * t[1]:.2f}", f"{1e3 * t[2]:.2f}", f"{1e3 * t[3]:.2f}",
                             f"{best / t[0]:.2f}x", f"{t[1] / t[0]:.2f}x"])
                print("  ".join(str(v) for v in rows[-1]), flush=True)
    load1 = os.getloadavg()
    header = ["threads", "layer", "beta", "kept/9", "sparse ms", "dense ms", "torch NCHW ms",
              "torch CL ms", "torch best / sparse", "dense / sparse"]
    result = table(header, rows)
    env = (f"{platform.processor() or platform.machine()}, isa {salnp._core.get_isa()}, "
           f"batch {N}, {'shared' if args.shared else 'unshared'}, "
           f"x and grad_y {'64-byte aligned' if args.align == 64 else '16 bytes past 64'}, "
           f"{'wall-clock medians' if args.clock == 'wall' else 'thread CPU time, minima'}, "
           f"torch {torch.__version__}, "
           f"salnp {salnp.__version__} (BLIS {cfg['blis_version']} {cfg['arch']}), "
           f"{datetime.date.today().isoformat()}, load average {tuple(round(v, 1) for v in load0)}"
           f" before, {tuple(round(v, 1) for v in load1)} after")
    print(env)
    print(result)
    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
        cmd = (f"PYTHONPATH=python python bench/bench_sal.py --batch {N} --betas {args.betas} "
               f"--threads {args.threads} --repeats {args.repeats} --clock {args.clock} "
               f"--align {args.align}"
               + (" --shared" if args.shared else "") + " --write")
        title = ("## SAL layer (sparse taps)" + (", shared" if args.shared else "")
                 + (", CPU time" if args.clock == "cpu" else ""))
        section = (f"{title}\n\n`{cmd}`  ({env})\n\nA layer's training step (forward and all "
                   "gradients), ms of interleaved repeats; every result checked against "
                   "float64 PyTorch first.\n\n```\n" + result + "\n```\n")
        start = text.find(title + "\n")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        with open(path, "w") as f:
            f.write(text)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
