"""Command line: python -m salnp train ... (see --help)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from .recipes import DATASETS, add_train_options, resolve as resolve_train_args  # noqa: F401

DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}


def _parser():
    ap = argparse.ArgumentParser(prog="python -m salnp", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a CIFAR ResNet (CL / SL / ASL / SAL)")
    add_train_options(t)
    t.add_argument("--resume", default=None, help="continue from DIR/checkpoint.npz or a path")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--no-progress", action="store_true")
    return ap


def _load_data(args):
    from . import data

    root = args.root or DEFAULT_ROOTS.get(args.data)
    if root is None:
        raise SystemExit(f"--root is required for --data {args.data}")
    train = data.load(args.data, root, train=True)
    test = data.load(args.data, root, train=False)
    if args.subset:
        train = train.subset(args.subset, seed=args.seed)
    if args.test_subset:
        test = test.subset(args.test_subset, seed=args.seed)
    return train, test


def _table(rows):
    w0 = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w0}}  {r[1]}" for r in rows)


def cmd_train(args):
    import salnp

    args = resolve_train_args(args)
    if args.threads is not None:
        salnp.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[logging.FileHandler(os.path.join(args.out, "train.log"))])
    train, test = _load_data(args)
    in_shape = train.images.shape[1:]
    net = salnp.models.resnet(depth=args.depth, width=args.width, layer=args.layer,
                              shared=args.shared, expansion=args.expansion,
                              num_classes=max(train.num_classes, 2), in_channels=in_shape[0],
                              seed=args.seed)
    ckpt = os.path.join(args.out, "checkpoint.npz")
    resume = args.resume
    if resume and os.path.isdir(resume):
        resume = os.path.join(resume, "checkpoint.npz")
    print(f"salnp {salnp.__version__}: {args.layer.upper()}-ResNet-{args.depth} (width {args.width}"
          f"{', shared' if args.shared else ''}{f', e={args.expansion:g}' if args.layer in ('sl', 'asl', 'asl-post') else ''})"
          f" on {train.name}: {len(train)} train / {len(test)} test images, {args.epochs} epochs, "
          f"{salnp.get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    history = salnp.fit(net, train, test, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                        nesterov=args.nesterov, milestones=args.milestones,
                        lr_schedule=args.lr_schedule, beta=(args.beta0, args.beta1),
                        beta_schedule=args.beta_schedule, augment=not args.no_augment,
                        seed=args.seed, checkpoint=ckpt, resume=resume,
                        prune_epochs=args.prune_epochs, prune_keep=args.prune_keep,
                        progress=not args.no_progress, threads=args.threads)
    wall = time.perf_counter() - t0
    if not history:
        raise SystemExit("no epoch finished")
    last = history[-1]
    summary = {
        "test_acc": last.get("test_acc"), "test_acc_hard": last.get("test_acc_hard"),
        "train_acc": last["train_acc"], "epochs": len(history), "wall_time_s": wall,
        "images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "config": {k: v for k, v in vars(args).items()}, "model": net.config,
        "train_size": len(train), "test_size": len(test),
        "versions": {"salnp": salnp.__version__, "numpy": np.__version__},
        "blas": salnp.config(),
    }
    rows = [("test accuracy, soft attention", f"{100 * last['test_acc']:.2f} %")]
    if last.get("test_acc_hard") is not None:
        rows.append(("test accuracy, binarised", f"{100 * last['test_acc_hard']:.2f} %"))
    count = getattr(salnp, "count", None)
    if count is not None:
        tr = count(net, input_shape=in_shape, mode="train")
        inf = count(net, input_shape=in_shape, mode="inference")
        pap = count(net, input_shape=in_shape, convention="paper")
        summary.update(params_train=tr.params, macs_train=tr.macs, params=inf.params,
                       macs=inf.macs, params_paper=pap.params, macs_paper=pap.macs,
                       params_convention="exported (BN folded, pruned slices dropped)")
        rows += [("parameters (inference, exported convention)", f"{inf.params:,.0f}"),
                 ("parameters (paper convention)", f"{pap.params:,.0f}"),
                 ("MACs / image (inference)", f"{inf.macs:,.0f}  ({inf.macs / 1e6:.2f} M; FLOPs = 2 x MACs)"),
                 ("parameters (training)", f"{tr.params:,.0f}"),
                 ("MACs / image (training forward)", f"{tr.macs:,.0f}")]
    else:
        summary["params_train"] = net.num_parameters()
        rows.append(("parameters (training)", f"{net.num_parameters():,}"))
    rows += [("wall time", f"{wall:.1f} s"), ("training speed", f"{summary['images_per_s']:.0f} images/s")]
    print(_table(rows))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(history, f, indent=2, default=float)
    fig_path = None
    try:
        import matplotlib
        matplotlib.use("Agg")
        from . import viz
        if args.layer == "sal":
            fig = viz.attention_grid(net)
            fig_path = os.path.join(args.out, "attention.png")
        else:
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(5, 3.5))
            viz.training_curves(history, ax=ax)
            fig_path = os.path.join(args.out, "curves.png")
        fig.savefig(fig_path, dpi=120, bbox_inches="tight")
    except ImportError:
        print("(matplotlib not installed: no figure; pip install 'salnp[notebooks]')")
    print(f"wrote {args.out}/summary.json, history.json, checkpoint.npz"
          + (f", {os.path.basename(fig_path)}" if fig_path else ""))
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.cmd == "train":
        return cmd_train(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
