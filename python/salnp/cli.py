"""The command line's parser, generated from salnp.RunConfig's fields (their help, groups,
choices and defaults): ``python -m salnp train`` takes exactly the fields of a RunConfig,
``python -m salnp sweep`` a grid of them."""
from __future__ import annotations

import argparse
import dataclasses

from .runconfig import FIELD_GROUPS, RunConfig

__all__ = ["parser"]

DESCRIPTION = """\
Train and compare shift networks on the CPU: CIFAR-style ResNets whose 3x3 convolutions are
Shift Attention Layers (SAL), plain convolutions (CL), fixed shifts (SL) or active shifts
(ASL), on Fashion-MNIST (the default, from Debian's dataset-fashion-mnist) or CIFAR-10/100."""

TRAIN_EPILOG = """\
examples:
  python -m salnp train --out runs/sal                        # SAL-ResNet-20 on Fashion-MNIST
  python -m salnp train --epochs 3 --subset 12000 --out runs/quick
  python -m salnp train --data cifar10 --root ~/data/cifar10 --layer cl --width 16 --out runs/cl
  python -m salnp train --recipe paper --root ~/data/cifar10 --out runs/paper     # 300 epochs
  python -m salnp train --recipe paper --epochs 3 --subset 2000 --root DIR --out runs/p3
  python -m salnp train --resume runs/sal --out runs/sal      # continue an interrupted run

The run folder gets summary.json, history.json, checkpoint.npz (every epoch), inference.npz
(the exported network: salnp.export.load), curves.png, attention.png and train.log."""

SWEEP_EPILOG = """\
GRID is a JSON file: a list of configs, or
  {"axes": {"layer": ["cl", "sl", "sal"], "width": [8, 16]}, "seeds": [0, 1, 2],
   "fixed": {"data": "cifar10", "root": "data/cifar10", "epochs": 3, "subset": 2000}}
whose keys are the options of `train` (dashes or underscores).  Every trial is checked
(keys, values, data folders) before any starts; a rerun skips finished trials and resumes
interrupted ones.

examples:
  python -m salnp sweep grid.json --out runs/ablation
  python -m salnp sweep grid.json --out runs/ablation --workers 2 --threads-per-trial 1
  python -m salnp sweep grid.json --out runs/ablation --scheduler tcp://host:8786"""


def _number_list(text):
    """"100,200" -> [100, 200]; "0.5,0.75" -> [0.5, 0.75]"""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    return [int(v) if v.is_integer() else v for v in vals]


_TYPES = {int: int, float: float, str: str}
_LISTS = ("milestones", "prune_epochs", "prune_keep")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One option per RunConfig field, grouped as the fields are; every default None, so that
    RunConfig.make sees which options were given (they win over a recipe)."""
    groups = {g: p.add_argument_group(f"{g} options") for g in FIELD_GROUPS}
    for f in dataclasses.fields(RunConfig):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        g = groups[meta["group"]]
        default = f.default
        shown = "" if default is None else f" (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"
        if meta["flag"] == "no":
            g.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                           default=None, help=f"turn off: {meta['help']}")
        elif meta["flag"] == "tristate":
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=meta["help"])
        elif isinstance(default, bool):
            g.add_argument(flag, dest=f.name, action="store_true", default=None, help=meta["help"])
        elif f.name in _LISTS:
            g.add_argument(flag, dest=f.name, type=_number_list, default=None, metavar="N,N",
                           help=meta["help"])
        else:
            typ = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(f.type, str)
            g.add_argument(flag, dest=f.name, type=_TYPES.get(typ, str), default=None,
                           choices=meta["choices"],
                           metavar=None if meta["choices"] else f.name.split("_")[-1].upper(),
                           help=meta["help"] + (shown if meta["choices"] is None else
                                                f" (default: {default})" if default else ""))


class _Parser(argparse.ArgumentParser):
    """A mistake on the command line is one line (and exit status 2), not the usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m salnp", description=DESCRIPTION,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true",
                    help="show the full Python traceback of an error, not only its message")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{train,sweep}",
                            parser_class=_Parser)
    t = sub.add_parser("train", help="train one network, evaluate, count and export it",
                       description="Train one network: a RunConfig's fields as options.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(t)
    w = sub.add_parser("sweep", help="train a grid of configurations (local processes or Dask)",
                       description="Train every configuration of GRID into OUT/trials/.",
                       epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("grid", metavar="GRID", help="JSON file with the configs or the grid")
    w.add_argument("--out", required=True, metavar="DIR",
                   help="sweep folder: trials/, results.jsonl, summary.csv")
    w.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a Dask scheduler to run on (tcp://host:8786); without it, local processes")
    w.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes; default: one per core, at most one per trial")
    w.add_argument("--threads-per-trial", type=int, default=None, metavar="N",
                   help="threads of each trial; default: the cores divided by the workers")
    w.add_argument("--retries", type=int, default=1, metavar="N",
                   help="how often a failed or lost trial is run again (default: 1)")
    w.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on the trials not finished after this long")
    w.add_argument("--csv", default=None, metavar="FILE", help="also write the table to this CSV file")
    return ap
