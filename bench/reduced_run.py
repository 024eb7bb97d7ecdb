"""A whole reduced SAL run on the paper's schedule: salnp (sparse taps, the default), salnp
with tap_threshold=0 (every tap, the dense path) and PyTorch at its best running the
authors' dense SAL, on the same batches.

    PYTHONPATH=python python bench/reduced_run.py [--epochs 5] [--seeds 0,1,2] [--threads 2]

SAL-ResNet-20 w=16 (unshared, or --shared), the 10,000-image CIFAR-10 subset
(../shared/data/cifar10-subset, tested on its 10,000 test images), batch 128, SGD lr 0.1
momentum 0.9 weight decay 5e-4 with lr x0.1 at 1/3 and 2/3 of the run, beta 20 -> 70
geometric per step (salnp.train.beta_at).  Every arm trains from the same initial weights
(salnp.models.resnet(seed)) on the same augmented batches (salnp.data: crop + flip, drawn
before the clock starts); the time counted is the training steps: forward, cross-entropy,
backward, SGD, set beta.  PyTorch runs bench/torch_fast.py's twin in NCHW and channels_last
(a short probe picks the faster; its cost does not depend on beta).  The arms of one seed
run one after the other in a rotating order.  Printed: per arm and seed the wall seconds,
the test accuracy (soft attention, and binarised for salnp), and the ratios.  --json writes
the raw rows; bench/run.py --reduced-run puts the table in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "cifar10-subset")
ARMS = ("salnp", "salnp dense", "torch")


def load(root):
    import salnp
    return (salnp.data.cifar10(root, train=True), salnp.data.cifar10(root, train=False))


def epoch_batches(train, batch, seed, epoch):
    return list(train.batches(batch, shuffle=True, augment=True, seed=seed, epoch=epoch))


def lr_of(epoch, epochs, lr=0.1):
    from salnp.train import lr_at
    return lr_at(epoch, epochs, lr, "step", (1 / 3, 2 / 3))


def run_salnp(net, train, test, epochs, batch, seed, tap_threshold):
    import numpy as np
    import salnp
    from salnp import ops
    from salnp.train import SGD, beta_at
    if tap_threshold is not None:
        net.tap_threshold = tap_threshold
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = epochs * train.num_batches(batch)
    step, wall = 0, 0.0
    for e in range(epochs):
        data = epoch_batches(train, batch, seed, e)
        lr = lr_of(e, epochs)
        t = time.perf_counter()
        for x, y in data:
            y = y.astype(np.int32)
            net.beta = beta_at(step, steps, 20.0, 70.0)
            logits = net.forward(x, train=True)
            ops.cross_entropy(logits, y)
            net.zero_grad()
            net.backward(ops.cross_entropy_backward(logits, y))
            opt.step(lr)
            step += 1
        wall += time.perf_counter() - t
    net.beta = beta_at(steps, steps, 20.0, 70.0)
    _, soft = salnp.train.evaluate(net, test)
    _, hard = salnp.train.evaluate(net, test, hard=True)
    kept = float(np.mean(list(salnp.attention.kept_taps(net).values())))
    return {"wall_s": wall, "test_acc": soft, "test_acc_hard": hard, "kept_taps_end": kept}


def torch_step_fn(model, xs, ys, opt):
    import torch.nn.functional as F

    def step(i):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs[i]), ys[i]).backward()
        opt.step()
    return step


def run_torch(net, train, test, epochs, batch, seed, threads):
    import numpy as np
    import torch
    import torch_fast
    from salnp.train import beta_at
    torch.set_num_threads(threads)
    steps = epochs * train.num_batches(batch)
    # the faster layout, by a probe of a few steps on a copy (its cost does not depend on beta)
    first = epoch_batches(train, batch, seed, 0)[:4]
    rates = {}
    for cl in (False, True):
        m = torch_fast.build(net, 20.0).train()
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = m.to(memory_format=fmt)
        xs = [torch.from_numpy(x).contiguous(memory_format=fmt) for x, _ in first]
        ys = [torch.from_numpy(y) for _, y in first]
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                              foreach=True)
        f = torch_step_fn(m, xs, ys, opt)
        f(0)
        t = time.perf_counter()
        for i in range(1, 4):
            f(i)
        rates[cl] = time.perf_counter() - t
    cl = rates[True] < rates[False]
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = torch_fast.build(net, 20.0).train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          foreach=True)
    step, wall = 0, 0.0
    for e in range(epochs):
        data = epoch_batches(train, batch, seed, e)
        xs = [torch.from_numpy(x).contiguous(memory_format=fmt) for x, _ in data]
        ys = [torch.from_numpy(y) for _, y in data]
        for g in opt.param_groups:
            g["lr"] = lr_of(e, epochs)
        f = torch_step_fn(model, xs, ys, opt)
        t = time.perf_counter()
        for i in range(len(xs)):
            model.beta_ref[0] = beta_at(step, steps, 20.0, 70.0)
            f(i)
            step += 1
        wall += time.perf_counter() - t
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test.batches(500):
            xt = torch.from_numpy(x).contiguous(memory_format=fmt)
            correct += int((model(xt).argmax(1).numpy() == y).sum())
    return {"wall_s": wall, "test_acc": correct / len(test), "layout":
            "channels_last" if cl else "NCHW", "probe_s": {str(k): v for k, v in rates.items()}}


def run_arm(arm, seed, epochs, threads, shared, root=DATA, batch=128):
    import salnp
    salnp.set_num_threads(threads)
    train, test = load(root)
    net = salnp.models.resnet(20, 16, "sal", shared=shared, seed=seed)
    if arm == "torch":
        r = run_torch(net, train, test, epochs, batch, seed, threads)
    else:
        r = run_salnp(net, train, test, epochs, batch, seed, 0.0 if arm == "salnp dense" else None)
    return {"arm": arm, "seed": seed, "epochs": epochs, "threads": threads, "shared": shared, **r}


def spawn_arm(arm, seed, args, preload=None):
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", arm, "--seeds", str(seed),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--root", args.root]
    cmd += ["--shared"] if args.shared else []
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_all(args, preload=None, log=sys.stderr):
    """Every arm for every seed, each in a fresh process, the order rotated per seed."""
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for k, seed in enumerate(seeds):
        for j in range(len(ARMS)):
            arm = ARMS[(j + k) % len(ARMS)]
            if arm == "torch" and args.no_torch:
                continue
            rows.append(spawn_arm(arm, seed, args, preload))
            print(json.dumps(rows[-1]), file=log, flush=True)
    return rows


def table(rows):
    """Markdown: per seed the three arms, then the ratios' medians and ranges."""
    by = {}
    for r in rows:
        by.setdefault(r["seed"], {})[r["arm"]] = r
    out = ["| seed | salnp s | salnp dense s | PyTorch s (layout) | PyTorch / salnp | dense / salnp "
           "| test acc salnp / dense / PyTorch (%) | binarised salnp / dense (%) | kept taps at the end |",
           "|---|---|---|---|---|---|---|---|---|"]
    vt, vd, dacc = [], [], []
    for seed in sorted(by):
        a = by[seed]
        s, d, t = a.get("salnp"), a.get("salnp dense"), a.get("torch")
        if not s or not d:
            continue
        vd.append(d["wall_s"] / s["wall_s"])
        dacc.append(100 * (s["test_acc"] - d["test_acc"]))
        tcell, rt, tacc = "–", "–", "–"
        if t:
            vt.append(t["wall_s"] / s["wall_s"])
            tcell, rt = f"{t['wall_s']:.0f} ({t['layout']})", f"**{vt[-1]:.2f}x**"
            tacc = f"{100 * t['test_acc']:.2f}"
        out.append(f"| {seed} | {s['wall_s']:.0f} | {d['wall_s']:.0f} | {tcell} | {rt} | "
                   f"**{vd[-1]:.2f}x** | {100 * s['test_acc']:.2f} / {100 * d['test_acc']:.2f} / "
                   f"{tacc} | {100 * s['test_acc_hard']:.2f} / {100 * d['test_acc_hard']:.2f} | "
                   f"{s['kept_taps_end']:.2f} |")
    summ = []
    if vt:
        summ.append(f"PyTorch / salnp wall time: median {statistics.median(vt):.2f}x "
                    f"({min(vt):.2f}–{max(vt):.2f}) over {len(vt)} seeds")
    if vd:
        summ.append(f"dense / sparse: median {statistics.median(vd):.2f}x "
                    f"({min(vd):.2f}–{max(vd):.2f})")
    if dacc:
        summ.append("test accuracy sparse - dense, same seed: "
                    + ", ".join(f"{v:+.2f}" for v in dacc) + " points")
    return "\n".join(out) + "\n\n" + "; ".join(summ) + ".\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", action="store_true")
    ap.add_argument("--root", default=DATA)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, choices=ARMS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_arm(args.worker, int(args.seeds), args.epochs, args.threads,
                                 args.shared, args.root)), flush=True)
        return
    rows = run_all(args)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
