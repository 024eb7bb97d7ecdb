"""The command line's options (python -m salnp train | sweep): one parser, shared by
__main__ and by salnp.runs, which validates a sweep's configs against the train options."""
from __future__ import annotations

import argparse

from .recipes import DATASETS, add_train_options  # noqa: F401  (DATASETS: the choices)


def _parser():
    ap = argparse.ArgumentParser(prog="python -m salnp", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a CIFAR ResNet (CL / SL / ASL / SAL)")
    add_train_options(t)     # salnp.recipes: every default None, resolve() fills them
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
