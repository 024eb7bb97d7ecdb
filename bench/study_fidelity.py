"""Fidelity study: salnp against its PyTorch twin, several seeds, the same recipe and data.

    PYTHONPATH=python nice -n 10 python bench/study_fidelity.py --seeds 0-5 --out runs/fidelity
    PYTHONPATH=python python bench/study_fidelity.py --out runs/fidelity --report   # table only

For every seed, salnp (salnp.fit) and PyTorch (tests/torch_ref.py's twin, torch.optim.SGD)
train the same SAL-ResNet-20 from the same initial weights (the twin is loaded from the
salnp network) on identical batches (shuffle, crop, flip and normalisation from
salnp.data, seeded by the run's seed), with the same recipe: SGD momentum 0.9, weight
decay 5e-4 on everything, batch 128, lr 0.1 x 0.1 at 1/3 and 2/3 of the run, beta 20 -> 70
geometric per step.  The seed sets the initial weights, the logits and the data order;
the training subset is the same for every seed.  Each run is its own process with one
thread (OMP/BLIS/torch), `--jobs` at a time; a run whose JSON exists is not repeated.

The report gives mean, standard deviation and range per framework (test accuracy with
soft and with binarised attention), the per-seed differences (same seed = same start and
data, so the runs are paired), Welch's t-test, the paired t-test and an exact paired
permutation (sign-flip) test of the mean difference.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")


def _seeds(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b)))
    return [int(v) for v in text.split(",")]


def run_one(args, seed, framework):
    """Train one (seed, framework) run in this process; returns the result dict."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import numpy as np
    import torch
    import torch.nn.functional as F

    import salnp
    from salnp.train import beta_at, lr_at
    from torch_ref import SALConv, from_salnp

    salnp.set_num_threads(1)
    torch.set_num_threads(1)
    train = salnp.data.cifar10(args.root, train=True).subset(args.train, seed=0)
    test = salnp.data.cifar10(args.root, train=False).subset(args.test, seed=0)
    net = salnp.models.resnet(20, args.width, "sal", shared=args.shared, seed=seed)
    net.beta = args.beta0
    milestones = (1 / 3, 2 / 3)
    t0 = time.perf_counter()
    if framework == "salnp":
        hist = salnp.fit(net, train, None, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                         momentum=0.9, weight_decay=5e-4, nesterov=False, milestones=milestones,
                         beta=(args.beta0, args.beta1), seed=seed, progress=False, threads=1)
        wall = time.perf_counter() - t0
        soft = salnp.evaluate(net, test)[1]
        hard = salnp.evaluate(net, test, hard=True)[1]
        train_loss = hist[-1]["train_loss"]
    else:
        tnet = from_salnp(net, args.beta0)
        opt = torch.optim.SGD(tnet.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        total = args.epochs * train.num_batches(args.batch)
        step = 0
        tnet.train()
        for epoch in range(args.epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch, args.epochs, args.lr, "step", milestones)
            loss_sum = seen = 0
            for x, y in train.batches(args.batch, shuffle=True, augment=True, seed=seed,
                                      epoch=epoch):
                loss = F.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y))
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                tnet.beta_ref[0] = beta_at(step, total, args.beta0, args.beta1)
                loss_sum += loss.item() * len(y)
                seen += len(y)
        wall = time.perf_counter() - t0
        train_loss = loss_sum / seen

        def acc(hard):
            tnet.eval()
            saved = []
            if hard:       # binarised attention (p > 0.5) as net.forward(hard=True)
                for m in tnet.modules():
                    if isinstance(m, SALConv):
                        a = m.logits.detach()
                        p = torch.softmax(m.beta_ref[0] * a / a.std(-1, keepdim=True), -1)
                        mask = (p > 0.5).to(a.dtype).reshape(p.shape[0], p.shape[1], 3, 3)
                        saved.append((m, m.forward))
                        m.forward = (lambda mm, mk: lambda x: F.conv2d(
                            x, mm.weight * mk, stride=mm.stride, padding=1))(m, mask)
            correct = n = 0
            with torch.no_grad():
                for x, y in test.batches(500):
                    correct += int((tnet(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
                    n += len(y)
            for m, f in saved:
                m.forward = f
            return correct / n

        soft, hard = acc(False), acc(True)
    return dict(seed=seed, framework=framework, test_acc=soft, test_acc_hard=hard,
                train_loss=train_loss, train_s=wall, train=len(train), test=len(test),
                epochs=args.epochs, width=args.width, shared=args.shared, batch=args.batch,
                lr=args.lr,
                versions=dict(salnp=salnp.__version__, torch=torch.__version__,
                              numpy=np.__version__))


def _path(out, seed, fw):
    return os.path.join(out, f"{fw}-seed{seed}.json")


def drive(args):
    os.makedirs(args.out, exist_ok=True)
    # a run is skipped when its result exists or another driver started it (.started)
    todo = [(s, fw) for s, fw in itertools.product(args.seeds, ("salnp", "torch"))
            if not os.path.exists(_path(args.out, s, fw))
            and not os.path.exists(_path(args.out, s, fw) + ".started")]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               BLIS_NUM_THREADS="1")
    running = []
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--out", args.out,
            "--root", args.root, "--train", str(args.train), "--test", str(args.test),
            "--epochs", str(args.epochs), "--width", str(args.width), "--lr", str(args.lr),
            "--beta0", str(args.beta0), "--beta1", str(args.beta1), "--batch", str(args.batch)]
    if args.shared:
        base.append("--shared")
    while todo or running:
        while todo and len(running) < args.jobs:
            s, fw = todo.pop(0)
            if os.path.exists(_path(args.out, s, fw)) or os.path.exists(_path(args.out, s, fw) + ".started"):
                continue
            open(_path(args.out, s, fw) + ".started", "w").close()
            cmd = ["nice", "-n", str(args.nice)] + base + ["--seeds", str(s), "--framework", fw]
            running.append(((s, fw), subprocess.Popen(cmd, env=env)))
        time.sleep(2)
        for item in list(running):
            (s, fw), p = item
            if p.poll() is not None:
                running.remove(item)
                print(f"seed {s} {fw}: exit {p.returncode}", flush=True)
                if p.returncode != 0:
                    raise SystemExit(f"run seed {s} {fw} failed")


def report(out):
    import numpy as np
    from scipy import stats

    runs = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))
            if f.endswith(".json") and "-seed" in f]
    by = {fw: {r["seed"]: r for r in runs if r["framework"] == fw} for fw in ("salnp", "torch")}
    seeds = sorted(set(by["salnp"]) & set(by["torch"]))
    if not seeds:
        raise SystemExit(f"{out}: no finished pairs")
    r0 = by["salnp"][seeds[0]]
    lines = [f"SAL-ResNet-20 w={r0['width']}{' shared' if r0['shared'] else ''}, CIFAR-10 subset "
             f"{r0['train']} train / {r0['test']} test images, {r0['epochs']} epochs, batch "
             f"{r0.get('batch', '?')}, lr {r0.get('lr', '?')} (x0.1 at 1/3 and 2/3), "
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); salnp {r0['versions']['salnp']}, "
             f"torch {r0['versions']['torch']}, 1 thread per run", ""]
    lines.append("| metric | salnp mean ± std [min, max] | PyTorch mean ± std [min, max] | "
                 "mean diff (salnp − torch) ± std | Welch t p | paired t p | sign-flip p |")
    lines.append("|---|---|---|---|---|---|---|")
    res = {}
    for key, label in (("test_acc", "test acc, soft"), ("test_acc_hard", "test acc, binarised"),
                       ("train_loss", "last-epoch train loss")):
        a = np.array([by["salnp"][s][key] for s in seeds], float)
        b = np.array([by["torch"][s][key] for s in seeds], float)
        d = a - b
        welch = stats.ttest_ind(a, b, equal_var=False).pvalue
        paired = stats.ttest_rel(a, b).pvalue
        # exact sign-flip permutation test of the mean paired difference
        flips = np.array(list(itertools.product((1, -1), repeat=len(d))))
        null = np.abs((flips * d).mean(1))
        perm = float((null >= abs(d.mean()) - 1e-12).mean())
        scale = 100 if key != "train_loss" else 1
        unit = " %" if key != "train_loss" else ""
        f = lambda v: f"{scale * v:.2f}"
        lines.append(f"| {label} | {f(a.mean())} ± {f(a.std(ddof=1))} [{f(a.min())}, {f(a.max())}]"
                     f"{unit} | {f(b.mean())} ± {f(b.std(ddof=1))} [{f(b.min())}, {f(b.max())}]{unit}"
                     f" | {f(d.mean())} ± {f(d.std(ddof=1))}{unit} | {welch:.3f} | {paired:.3f} | "
                     f"{perm:.3f} |")
        res[key] = dict(salnp=a.tolist(), torch=b.tolist(), welch_p=welch, paired_p=paired,
                        signflip_p=perm)
    lines.append("")
    lines.append("per seed (soft / binarised test accuracy, %):")
    for s in seeds:
        a, b = by["salnp"][s], by["torch"][s]
        lines.append(f"- seed {s}: salnp {100 * a['test_acc']:.2f} / {100 * a['test_acc_hard']:.2f}"
                     f", torch {100 * b['test_acc']:.2f} / {100 * b['test_acc_hard']:.2f}"
                     f" (train {a['train_s']:.0f} s / {b['train_s']:.0f} s)")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(out, "report.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=_seeds, default=_seeds("0-5"), help="e.g. 0-5 or 0,3,7")
    ap.add_argument("--root", default=CIFAR)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--shared", action="store_true")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--beta0", type=float, default=20.0)
    ap.add_argument("--beta1", type=float, default=70.0)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="only print the report")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--framework", choices=("salnp", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        (seed,) = args.seeds
        res = run_one(args, seed, args.framework)
        tmp = _path(args.out, seed, args.framework) + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(res, fh, indent=1)
        os.replace(tmp, _path(args.out, seed, args.framework))
        return
    if not args.report:
        drive(args)
    report(args.out)


if __name__ == "__main__":
    main()
