"""Train CL, SL (e=6) and SAL ResNet-20 with salnp and with PyTorch on the same batches.

    PYTHONPATH=python python bench/bench_training.py --train 5000 --test 2000 --epochs 3

Both frameworks see identical data: every batch (shuffle, random crop + flip,
normalisation) comes from salnp.data, so the only difference is the framework.  Same
recipe for both: SGD (momentum 0.9, weight decay 5e-4), batch 128, lr 0.1 (step x0.1 at
1/3 and 2/3 of the run), SAL beta 20 -> 70 geometric per step, and the same initial
weights (the torch twin is loaded from the salnp network).  Reports test accuracy (SAL:
soft and binarised attention), wall time and training images/s for each, same run.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import salnp  # noqa: E402
from salnp.train import beta_at, lr_at  # noqa: E402
from torch_ref import SALConv, from_salnp  # noqa: E402

CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-subset")


def torch_eval(tnet, test, hard=False):
    tnet.eval()
    saved = []
    if hard:   # binarised attention: p > 0.5 into the weights, like net.forward(hard=True)
        for m in tnet.modules():
            if isinstance(m, SALConv):
                a = m.logits.detach()
                p = torch.softmax(m.beta_ref[0] * a / a.std(-1, keepdim=True), -1)
                saved.append((m, m.forward))
                mask = (p > 0.5).to(a.dtype).reshape(p.shape[0], p.shape[1], 3, 3)
                m.forward = (lambda mm, mk: lambda x: F.conv2d(x, mm.weight * mk, stride=mm.stride,
                                                               padding=1))(m, mask)
    correct = n = 0
    with torch.no_grad():
        for x, y in test.batches(500):
            correct += int((tnet(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
            n += len(y)
    for m, f in saved:
        m.forward = f
    tnet.train()
    return correct / n


def train_torch(net0, train, test, args, is_sal):
    tnet = from_salnp(net0, args.beta0)
    opt = torch.optim.SGD(tnet.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = train.num_batches(args.batch)
    total = args.epochs * steps_per_epoch
    step, seen, t0 = 0, 0, time.perf_counter()
    tnet.train()
    for epoch in range(args.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch, args.epochs, args.lr)
        for x, y in train.batches(args.batch, shuffle=True, augment=True, seed=args.seed, epoch=epoch):
            loss = F.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            seen += len(y)
            if is_sal:
                tnet.beta_ref[0] = beta_at(step, total, args.beta0, args.beta1)
    wall = time.perf_counter() - t0
    soft = torch_eval(tnet, test)
    hard = torch_eval(tnet, test, hard=True) if is_sal else None
    return dict(test_acc=soft, test_acc_hard=hard, train_time_s=wall, images_per_s=seen / wall)


def train_salnp(net, train, test, args, is_sal):
    t0 = time.perf_counter()
    hist = salnp.fit(net, train, None, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                     beta=(args.beta0, args.beta1), seed=args.seed, progress=False)
    wall = time.perf_counter() - t0
    soft = salnp.evaluate(net, test)[1]
    hard = salnp.evaluate(net, test, hard=True)[1] if is_sal else None
    seen = sum(len(train) for _ in hist)
    return dict(test_acc=soft, test_acc_hard=hard, train_time_s=wall, images_per_s=seen / wall)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--beta0", type=float, default=20.0)
    ap.add_argument("--beta1", type=float, default=70.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="cl,sl,sal")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    salnp.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    train = salnp.data.cifar10(CIFAR, train=True).subset(args.train, seed=args.seed)
    test = salnp.data.cifar10(CIFAR, train=False).subset(args.test, seed=args.seed)
    rows = []
    for layer in args.models.split(","):
        kw = dict(expansion=6) if layer == "sl" else {}
        net = salnp.models.resnet(20, args.width, layer, seed=args.seed, **kw)
        net.beta = args.beta0
        is_sal = layer == "sal"
        ref = train_torch(net, train, test, args, is_sal)      # from the same initial weights
        ours = train_salnp(net, train, test, args, is_sal)
        rows.append(dict(model=f"{layer.upper()}-ResNet-20 w={args.width}" + (" e=6" if layer == "sl" else ""),
                         salnp=ours, torch=ref, params=net.num_parameters()))
        print(json.dumps(rows[-1]), flush=True)
    cfg = salnp.config()
    print(f"\nsalnp {cfg['salnp']} (BLIS {cfg['arch']}), torch {torch.__version__}, {args.threads} threads; "
          f"CIFAR-10 subset: {args.train} train / {args.test} test images, {args.epochs} epochs, batch "
          f"{args.batch}, lr {args.lr} step, beta {args.beta0}->{args.beta1}")
    print("| model | params | salnp acc | salnp acc (hard) | torch acc | torch acc (hard) | salnp img/s | torch img/s |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{100 * v:.2f} %"
    for r in rows:
        s, t = r["salnp"], r["torch"]
        print(f"| {r['model']} | {r['params']:,} | {f(s['test_acc'])} | {f(s['test_acc_hard'])} | "
              f"{f(t['test_acc'])} | {f(t['test_acc_hard'])} | {s['images_per_s']:.0f} | {t['images_per_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
