"""Command line: python -m salnp train ... | sweep GRID.json --out DIR (see --help)."""
from __future__ import annotations

import sys

from . import viz
from .cli import _parser
from .runs import DEFAULT_ROOTS, RUNNER_KEYS, apply_recipe, train_run
from .sweep import run_cli

def cmd_train(args):
    cfg = apply_recipe({k: v for k, v in vars(args).items() if k != "cmd" and k not in RUNNER_KEYS})
    cfg["root"] = args.root or DEFAULT_ROOTS.get(args.data)
    if cfg["root"] is None:
        raise SystemExit(f"--root is required for --data {args.data}")
    train_run(cfg, args.out, resume=args.resume, threads=args.threads,
              progress=not args.no_progress, figure=viz.run_figure, verbose=True,
              extra={"run": {k: getattr(args, k) for k in RUNNER_KEYS}})
    return 0


def cmd_sweep(args):
    return run_cli(args)


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.cmd == "train":
        return cmd_train(args)
    if args.cmd == "sweep":
        return cmd_sweep(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
