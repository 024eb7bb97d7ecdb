"""The command line's options (python -m salnp train | sweep): one parser, shared by
__main__ and by salnp.runs, which validates a sweep's configs against the train options."""
from __future__ import annotations

import argparse

DATASETS = ("fashion-mnist", "cifar10", "cifar100")


def _int_list(text):
    """"2,4,6" -> [2, 4, 6] (argparse type)"""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _float_list(text):
    """"0.5,0.75" -> [0.5, 0.75] (argparse type)"""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def _parser():
    ap = argparse.ArgumentParser(prog="python -m salnp", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a CIFAR ResNet (CL / SL / ASL / SAL)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", choices=DATASETS, default="fashion-mnist")
    t.add_argument("--root", default=None, help="data folder (default for fashion-mnist: "
                   "the Debian package's /usr/share/datasets/fashion-mnist)")
    t.add_argument("--depth", type=int, default=20)
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--layer", choices=("sal", "cl", "sl", "asl"), default="sal")
    t.add_argument("--shared", action="store_true", help="SAL: one shift per input channel")
    t.add_argument("--expansion", type=float, default=1.0, help="SL/ASL block expansion e")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--subset", type=int, default=0, help="train on N class-balanced images (0: all)")
    t.add_argument("--test-subset", type=int, default=0, help="evaluate on N images (0: all)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--lr-schedule", choices=("step", "cosine", "constant"), default="step")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--beta0", type=float, default=20.0, help="SAL inverse temperature at start")
    t.add_argument("--beta1", type=float, default=70.0, help="... and at the end")
    t.add_argument("--beta-schedule", choices=("geometric", "linear", "cosine"), default="geometric")
    t.add_argument("--prune-epochs", type=_int_list, default=None,
                   help="SAL stepwise hard pruning: comma-separated epochs (from 1) before which "
                        "every slice keeps only its most likely positions, e.g. 2,4,6,8 "
                        "(use with --beta1 equal to --beta0 for a pure stepwise schedule)")
    t.add_argument("--prune-keep", type=_int_list, default=None,
                   help="positions kept after each prune step, e.g. 5,3,2,1 (default: about "
                        "9^(1 - j/steps), ending at 1)")
    t.add_argument("--milestones", type=_float_list, default=None,
                   help="--lr-schedule step: epochs (or fractions of the run when < 1) at which "
                        "the learning rate is multiplied by 0.1 (default: 1/3, 2/3)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--recipe", choices=("paper",), default=None,
                   help="paper: the released CIFAR recipe (300 epochs, lr 0.1/0.01/0.001 at "
                        "epochs 0/100/200, batch 128, wd 5e-4, beta 20 -> 70, all data)")
    t.add_argument("--resume", default=None, help="continue from DIR/checkpoint.npz or a path")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--no-progress", action="store_true")
    w = sub.add_parser("sweep", help="train a grid of configs (local processes or a Dask cluster)",
                       description="Train every config of GRID (JSON: a list of configs, or "
                       '{"axes": {option: [values]}, "seeds": [...], "fixed": {option: value}}; '
                       "keys are the options of `train`, dashes as underscores) into OUT/trials/; "
                       "a rerun skips finished trials and resumes interrupted ones.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("grid", help="JSON file with the configs or the grid")
    w.add_argument("--out", required=True, help="sweep folder")
    w.add_argument("--scheduler", default=None,
                   help="address of a Dask scheduler (tcp://host:8786); default: local processes")
    w.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per core, at most one per trial)")
    w.add_argument("--threads-per-trial", type=int, default=None,
                   help="threads of each trial (default: cores / workers)")
    w.add_argument("--retries", type=int, default=1,
                   help="times a failed or lost trial is run again")
    w.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    w.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return ap
