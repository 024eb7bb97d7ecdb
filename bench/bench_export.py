"""Inference time of an exported SAL-ResNet-20 (w=16, unshared) at batch 1 and 128:
salnp.export's network vs the training network in hard eval mode vs PyTorch running the
same binarised network, 2 threads, interleaved medians, results checked before timing.

    PYTHONPATH=python python bench/bench_export.py [--threads 2,1] [--write]

Binarisation: the attention logits keep their random initialisation U[0, 1) and beta is
set to 70 (the CIFAR beta_final of the reference recipe), so that p = softmax(beta a /
std a) is peaked and p > 0.5 keeps one position in almost every slice; BN running
statistics come from 3 training-mode forwards on random batches, BN gamma/beta are
randomised.  No training: the speed does not depend on the weights' values, only on the
kept-slice count, which is printed.

PyTorch columns: the twin (tests/torch_ref.py) with every SAL layer replaced by a dense
3x3 nn.Conv2d holding the binarised weights (p_hard * W), BN in eval mode; and the same
with every BN folded into its convolution (torch.nn.utils.fusion.fuse_conv_bn_eval).
--write appends (or replaces) the "Export" section of bench/RESULTS.md.
"""
import argparse
import datetime
import os
import platform
import sys

import numpy as np
import torch
import torch.nn as tnn
from torch.nn.utils.fusion import fuse_conv_bn_eval

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import salnp  # noqa: E402
from common import interleaved, table  # noqa: E402
from torch_ref import SALConv, from_salnp  # noqa: E402


def binarised_torch(net, fold):
    """The torch twin with SAL layers as dense convs of the binarised weights."""
    t = from_salnp(net, net.beta).eval()
    with torch.no_grad():
        for mod in list(t.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, SALConv):
                    p = salnp.ops.sal_probs(child.logits.numpy(), net.beta, hard=True)
                    w = child.weight * torch.tensor(p.reshape(p.shape[0], p.shape[1], 3, 3))
                    conv = tnn.Conv2d(w.shape[1], w.shape[0], 3, child.stride, 1, bias=False)
                    conv.weight.copy_(w)
                    setattr(mod, name, conv)
        t.eval()
        if fold:
            for mod in list(t.modules()):
                pairs = [("conv1", "bn1"), ("conv2", "bn2")]
                if hasattr(mod, "shortcut"):
                    mod.shortcut[0] = fuse_conv_bn_eval(mod.shortcut[0], mod.shortcut[1])
                    mod.shortcut[1] = tnn.Identity()
                for c, b in pairs:
                    if isinstance(getattr(mod, c, None), tnn.Conv2d) and \
                            isinstance(getattr(mod, b, None), tnn.BatchNorm2d):
                        setattr(mod, c, fuse_conv_bn_eval(getattr(mod, c), getattr(mod, b)))
                        setattr(mod, b, tnn.Identity())
    return t.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2", help="thread counts to time, e.g. 2 or 2,1")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = ap.parse_args()
    threads = [int(t) for t in str(args.threads).split(",")]
    load0 = os.getloadavg()[0]
    rng = np.random.default_rng(0)

    net = salnp.models.resnet(20, 16, "sal", shared=False, seed=0)
    for name, p in net.named_parameters():
        if ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    for _ in range(3):
        net.forward(rng.standard_normal((64, 3, 32, 32), dtype=np.float32), train=True)
    net.beta = 70.0
    inf = salnp.export(net)
    slices = sum(d["slices"] for d in inf.info["sal_layers"])
    kept = sum(d["kept"] for d in inf.info["sal_layers"])
    t_masked, t_folded = binarised_torch(net, False), binarised_torch(net, True)
    ctrain, cinf = salnp.count(net, mode="train"), inf.count()

    rows, checks = [], []
    for nt, N, reps in [(nt, N, r) for nt in threads
                        for N, r in ((1, 10 * args.repeats), (128, args.repeats))]:
        salnp.set_num_threads(nt)
        torch.set_num_threads(nt)
        x = rng.standard_normal((N, 3, 32, 32), dtype=np.float32)
        xt = torch.tensor(x)
        ref = net.forward(x, train=False, hard=True)
        got = {"salnp export": inf.forward(x)}
        with torch.no_grad():
            got["torch masked + BN"] = t_masked(xt).numpy()
            got["torch masked, BN folded"] = t_folded(xt).numpy()
        scale = float(np.abs(ref).max())
        for k, v in got.items():
            err = float(np.abs(v - ref).max())
            checks.append(f"threads {nt}, batch {N}: {k} vs training net hard eval: max |diff| {err:.2e} "
                          f"(max |logit| {scale:.2f})")
            assert err <= 1e-4 * scale + 1e-6, (k, N, err)

        def run_torch(m):
            def f():
                with torch.no_grad():
                    m(xt)
            return f

        names = ["salnp export", "salnp training net, hard eval", "torch masked + BN",
                 "torch masked, BN folded"]
        fns = [lambda: inf.forward(x), lambda: net.forward(x, train=False, hard=True),
               run_torch(t_masked), run_torch(t_folded)]
        times = interleaved(fns, repeats=reps, warmup=3)
        base = times[0]
        for n, t in zip(names, times):
            rows.append([nt, N, n, f"{1e3 * t:.3f}", f"{N / t:,.0f}", f"{t / base:.2f}x"])

    header = ["threads", "batch", "network", "ms / batch", "images/s", "time vs export"]
    result = table(header, rows)
    cfg = salnp.config()
    env = (f"{platform.processor() or platform.machine()}, threads {args.threads}, BLIS "
           f"{cfg['blis_version']} {cfg['flavour']} ({cfg['arch']}), torch {torch.__version__}, "
           f"{datetime.date.today().isoformat()}, load average {load0:.1f} before "
           f"and {os.getloadavg()[0]:.1f} after the run on {os.cpu_count()} CPUs")
    summary = (f"SAL-ResNet-20 (w=16, unshared), 32x32, beta = 70 on random-init logits "
               f"(not trained): kept slices {kept:,} / {slices:,} ({100 * kept / slices:.1f} %).\n"
               f"Training network (soft SAL as dense 3x3): {ctrain.macs:,} MACs, "
               f"{ctrain.params:,} params (+ {ctrain.train_only_params:,} training-only logits).\n"
               f"Exported network: {cinf.macs:,} MACs, {cinf.params:,.3f} params "
               f"(BN folded, binarised SAL 36/32 per kept weight).")
    print(summary)
    print("\n".join(checks))
    print(result)
    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
        section = ("## Export\n\n"
                   "`PYTHONPATH=python python bench/bench_export.py --threads "
                   f"{args.threads} --write`  ({env})\n\n"
                   + summary.replace("\n", "  \n") + "\n\n"
                   "Inference time, median of interleaved repeats (batch 1: "
                   f"{10 * args.repeats}, batch 128: {args.repeats}); every result checked "
                   "against the training network in hard eval mode (<= 1e-4 relative) first.  "
                   "When the load average exceeds the CPU count the host is shared with other "
                   "jobs: every column suffers, the 2-thread ones most (a parallel region "
                   "waits for its preempted thread).\n\n"
                   "```\n" + result + "\n```\n")
        start = text.find("## Export\n")
        if start >= 0:                      # replace our own earlier section only
            end = text.find("\n## ", start + 1)
            text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        with open(path, "w") as f:
            f.write(text)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
