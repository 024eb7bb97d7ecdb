"""Command line: python -m salnp train ... | sweep GRID.json --out DIR (see --help).

A mistake in the configuration or the data (a wrong option value, a missing data folder, a
misspelt sweep key) ends in one line naming it and exit status 2; --debug shows the
traceback."""
from __future__ import annotations

import signal
import sys

from . import viz
from .cli import parser
from .runconfig import ConfigError, RunConfig
from .runs import train_run, with_data_root
from .sweep import run_cli


def cmd_train(args):
    opts = {k: v for k, v in vars(args).items() if k not in ("cmd", "debug")}
    cfg = with_data_root(RunConfig.make(opts))
    if cfg.out is None:
        raise ConfigError("--out: required (the run's folder)")
    train_run(cfg, cfg.out, resume=cfg.resume, threads=cfg.threads, progress=cfg.progress,
              figure=viz.run_figure, verbose=True,
              extra={"run": {k: getattr(cfg, k) for k in ("out", "resume", "threads", "progress")}})
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv=None):
    args = parser().parse_args(argv)
    if args.cmd == "train":
        # SIGTERM (Slurm, timeout, docker stop) and SIGHUP end a run as Ctrl-C does: the
        # network back at its last finished epoch, and every output describing that state
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
    try:
        if args.cmd == "train":
            return cmd_train(args)
        return run_cli(args)
    except (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        print(f"python -m salnp {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
