"""One training run from a config dict: what ``python -m salnp train`` and ``salnp.sweep``
both call.

A config is a plain dict whose keys are the options of ``python -m salnp train`` with
dashes as underscores (data, root, depth, width, layer, shared, expansion, epochs, subset,
test_subset, batch_size, lr, lr_schedule, milestones, momentum, weight_decay, beta0,
beta1, beta_schedule, prune_epochs, prune_keep, no_augment, seed, recipe).  ``normalize``
validates it with the command's own parser (the same types, choices and messages) and
fills in the defaults, so ``{"layer": "sal"}`` and ``{"layer": "sal", "width": 16}`` are
the same run; ``trial_id`` is a SHA-256 of the canonical JSON of the options that differ
from the defaults (stable across processes and machines, unlike Python's ``hash()``, and
across versions that add options).

    cfg = salnp.runs.normalize({"layer": "cl", "width": 8, "epochs": 2, "subset": 1000})
    summary = salnp.runs.train_run(cfg, "runs/cl-w8")     # summary.json, history.json, ...
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

import numpy as np

import salnp

from . import data
from .cli import _parser

__all__ = ["normalize", "identity", "trial_id", "trial_name", "train_run", "train_options", "RUNNER_KEYS", "LABEL_KEYS",
           "DEFAULT_ROOTS"]

DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}   # the Debian package
# options of `python -m salnp train` that say how to run, not what to train: the runner
# (the command line or salnp.sweep) sets them; they are not part of a trial's identity
RUNNER_KEYS = ("out", "resume", "threads", "no_progress")
# keys a sweep config may carry as labels for tables and plots (not training options)
LABEL_KEYS = ("name",)
_FLAGS = ("shared", "no_augment")             # store_true options
_LISTS = ("prune_epochs", "prune_keep", "milestones")

log = logging.getLogger("salnp")


class ConfigError(ValueError):
    pass


def _train_parser():
    """The `train` sub-parser of the command line, raising ConfigError instead of exiting."""
    ap = _parser()
    sub = next(a for a in ap._actions if a.dest == "cmd").choices["train"]

    def error(message):
        raise ConfigError(message)

    sub.error = error
    return sub


def train_options() -> dict:
    """{option: default} of `python -m salnp train` (dashes as underscores), runner keys
    excluded."""
    d = vars(_train_parser().parse_args(["--out", "-"]))
    return {k: v for k, v in d.items() if k not in RUNNER_KEYS}


def apply_recipe(cfg: dict) -> dict:
    """--recipe paper: the released CIFAR recipe overrides these options (as the command)."""
    if cfg.get("recipe") == "paper":
        cfg.update(epochs=300, lr=0.1, lr_schedule="step", batch_size=128, weight_decay=5e-4,
                   momentum=0.9, beta0=20.0, beta1=70.0, subset=0, test_subset=0,
                   milestones=None)   # fit's default 1/3, 2/3: epochs 100 and 200
    return cfg


def normalize(config, fn="sweep") -> dict:
    """The full, validated option dict of one training run (defaults filled in, the
    recipe applied, root resolved for fashion-mnist); ValueError naming the key and the
    rule otherwise.  Label keys (``name``) are kept; runner keys are refused."""
    if not isinstance(config, dict):
        raise TypeError(f"{fn}: a config must be a dict of `python -m salnp train` options, "
                        f"got {type(config).__name__}")
    sub = _train_parser()
    known = {a.dest: a for a in sub._actions if a.dest != "help"}
    argv, labels = ["--out", "-"], {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ValueError(f"{fn}: config key {key!r}: must be a string")
        k = key.replace("-", "_")
        if k in LABEL_KEYS:
            labels[k] = str(value)
            continue
        if k in RUNNER_KEYS:
            raise ValueError(f"{fn}: config key {key!r}: set by the runner, not by a config "
                             "(a sweep gives every trial its folder and thread budget: "
                             "out=, threads_per_trial=)")
        if k not in known:
            raise ValueError(f"{fn}: config key {key!r}: not an option of `python -m salnp "
                             f"train`; options: {sorted(set(known) - set(RUNNER_KEYS))}")
        opt = known[k].option_strings[-1]
        if k in _FLAGS:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{fn}: {key}={value!r}: must be True or False")
            if value:
                argv.append(opt)
        elif value is None:
            if known[k].default is not None:
                raise ValueError(f"{fn}: {key}=None: must be a value (default "
                                 f"{known[k].default!r})")
        elif k in _LISTS:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{fn}: {key}={value!r}: must be a list of numbers")
            items = list(value)
            if any(isinstance(v, (bool, str, bytes)) for v in items):
                raise ValueError(f"{fn}: {key}={value!r}: must be a list of numbers")
            argv += [opt, ",".join(repr(float(v)) if k == "milestones" else str(v) for v in items)]
        else:
            if isinstance(value, (bool, np.bool_, dict, list, tuple)):
                raise ValueError(f"{fn}: {key}={value!r}: must be a single "
                                 f"{getattr(known[k].type, '__name__', 'value')}")
            if isinstance(value, (float, np.floating)):
                value = repr(float(value))
            argv += [opt, str(value)]
    try:
        cfg = vars(sub.parse_args(argv))
    except ConfigError as e:
        raise ValueError(f"{fn}: config {config}: {e}") from None
    for k in RUNNER_KEYS:
        cfg.pop(k, None)
    if cfg["root"] is None:
        cfg["root"] = DEFAULT_ROOTS.get(cfg["data"])
        if cfg["root"] is None:
            raise ValueError(f"{fn}: config {config}: root is required for data={cfg['data']!r}")
    cfg["root"] = os.path.abspath(os.path.expanduser(cfg["root"]))
    for k in ("epochs", "batch_size", "depth", "width"):
        if cfg[k] < 1:
            raise ValueError(f"{fn}: {k}={cfg[k]}: must be >= 1")
    for k in ("subset", "test_subset", "seed"):
        if cfg[k] < 0:
            raise ValueError(f"{fn}: {k}={cfg[k]}: must be >= 0")
    apply_recipe(cfg)
    cfg.update(labels)
    return cfg


_DEFAULTS: dict = {}


def identity(cfg: dict) -> dict:
    """The options that make a run what it is: those of the normalised cfg that differ
    from the command's defaults, plus root (labels and runner keys excluded).  An option
    added to the command later, with a default, leaves existing trial ids unchanged."""
    if not _DEFAULTS:
        _DEFAULTS.update(train_options())
    missing = object()
    return {k: v for k, v in cfg.items() if k not in LABEL_KEYS and k not in RUNNER_KEYS
            and (k == "root" or _DEFAULTS.get(k, missing) != v)}


def trial_id(cfg: dict) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of identity(cfg)."""
    text = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def trial_name(cfg: dict) -> str:
    """A readable, stable folder name: layer, depth, width, seed and 12 hex of the id."""
    return (f"{cfg['layer']}-d{cfg['depth']}-w{cfg['width']}-s{cfg['seed']}-"
            f"{trial_id(cfg)[:12]}")


# ---------------------------------------------------------------- data (cached per process)
_DATA: dict = {}


def load_data(cfg):
    """(train, test) Datasets of a config; the full sets are read once per process."""
    out = []
    for train in (True, False):
        key = (cfg["data"], cfg["root"], train)
        if key not in _DATA:
            _DATA[key] = data.load(cfg["data"], cfg["root"], train=train)
        out.append(_DATA[key])
    tr, te = out
    if cfg["subset"]:
        tr = tr.subset(cfg["subset"], seed=cfg["seed"])
    if cfg["test_subset"]:
        te = te.subset(cfg["test_subset"], seed=cfg["seed"])
    return tr, te


def _write_json(path, obj):
    """Atomically (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _table(rows):
    w0 = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w0}}  {r[1]}" for r in rows)


def train_run(cfg, out, *, resume=None, threads=None, progress=False, figure=None,
              verbose=False, complete=False, export=True, extra=None):
    """Train, evaluate (soft and hard), count, export and time one run of cfg (a
    normalize()d config) into the folder out: train.log, checkpoint.npz (every epoch),
    history.json, inference.npz (the exported network), summary.json (written last, so
    its presence means the run finished).  resume: a checkpoint (or its folder) to
    continue from.  complete: a run interrupted by Ctrl-C raises KeyboardInterrupt
    instead of writing a summary of the epochs it finished.  Returns the summary dict."""
    if threads is not None:
        salnp.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    handler = logging.FileHandler(os.path.join(out, "train.log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    # only this run's messages (a Dask worker may train several runs in threads at once)
    me = threading.get_ident()
    handler.addFilter(lambda record: record.thread == me)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _train_run(salnp, cfg, out, resume, progress, figure, verbose, complete, export,
                          extra)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()


def _train_run(salnp, cfg, out, resume, progress, figure, verbose, complete, export, extra):
    say = print if verbose else (lambda *a, **k: None)
    t_start = time.perf_counter()
    train, test = load_data(cfg)
    in_shape = train.images.shape[1:]
    net = salnp.models.resnet(depth=cfg["depth"], width=cfg["width"], layer=cfg["layer"],
                              shared=cfg["shared"], expansion=cfg["expansion"],
                              num_classes=max(train.num_classes, 2), in_channels=in_shape[0],
                              seed=cfg["seed"])
    ckpt = os.path.join(out, "checkpoint.npz")
    if resume and os.path.isdir(resume):
        resume = os.path.join(resume, "checkpoint.npz")
    layer = cfg["layer"]
    e = f", e={cfg['expansion']:g}" if layer in ("sl", "asl") else ""
    say(f"salnp {salnp.__version__}: {layer.upper()}-ResNet-{cfg['depth']} (width {cfg['width']}"
        f"{', shared' if cfg['shared'] else ''}{e})"
        f" on {train.name}: {len(train)} train / {len(test)} test images, {cfg['epochs']} epochs, "
        f"{salnp.get_num_threads()} threads", flush=True)
    kw = {}
    if cfg.get("milestones"):
        kw["milestones"] = tuple(cfg["milestones"])
    t0 = time.perf_counter()
    history = salnp.fit(net, train, test, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                        lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                        lr_schedule=cfg["lr_schedule"], beta=(cfg["beta0"], cfg["beta1"]),
                        beta_schedule=cfg["beta_schedule"], augment=not cfg["no_augment"],
                        seed=cfg["seed"], checkpoint=ckpt, resume=resume,
                        prune_epochs=cfg["prune_epochs"], prune_keep=cfg["prune_keep"],
                        progress=progress, **kw)
    wall = time.perf_counter() - t0
    if not history:
        raise KeyboardInterrupt("no epoch finished") if complete else SystemExit("no epoch finished")
    if complete and len(history) < cfg["epochs"]:
        raise KeyboardInterrupt(f"{out}: interrupted after {len(history)} of {cfg['epochs']} "
                                "epochs (resumable from checkpoint.npz)")
    last = history[-1]
    summary = {
        "test_acc": last.get("test_acc"), "test_acc_hard": last.get("test_acc_hard"),
        "train_acc": last["train_acc"], "epochs": len(history), "wall_time_s": wall,
        # training + evaluation seconds summed over the epochs (a resumed run includes
        # the epochs before the resume)
        "train_eval_s": float(sum(h["time_s"] for h in history)),
        "images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "config": dict(cfg), "model": net.config,
        "train_size": len(train), "test_size": len(test), "threads": salnp.get_num_threads(),
        "versions": {"salnp": salnp.__version__, "numpy": np.__version__},
        "blas": salnp.config(),
    }
    summary.update(extra or {})
    rows = [("test accuracy, soft attention", f"{100 * last['test_acc']:.2f} %")]
    if last.get("test_acc_hard") is not None:
        rows.append(("test accuracy, binarised", f"{100 * last['test_acc_hard']:.2f} %"))
    tr = salnp.count(net, input_shape=in_shape, mode="train")
    inf = salnp.count(net, input_shape=in_shape, mode="inference")
    summary.update(params_train=tr.params, macs_train=tr.macs, train_macs=tr.train_macs,
                   params=inf.params, macs=inf.macs)
    rows += [("parameters (inference)", f"{inf.params:,.0f}"),
             ("MACs / image (inference)", f"{inf.macs:,.0f}  ({inf.macs / 1e6:.2f} M; FLOPs = 2 x MACs)"),
             ("parameters (training)", f"{tr.params:,.0f}"),
             ("MACs / image (training forward)", f"{tr.macs:,.0f}"),
             ("MACs / image (training, fwd + bwd)", f"{tr.train_macs:,.0f}")]
    rows += [("wall time", f"{wall:.1f} s"), ("training speed", f"{summary['images_per_s']:.0f} images/s")]
    say(_table(rows))
    files = ["summary.json", "history.json", "checkpoint.npz"]
    if export:
        salnp.export(net).save(os.path.join(out, "inference.npz"))
        files.append("inference.npz")
    _write_json(os.path.join(out, "history.json"), history)
    if figure is not None:      # e.g. salnp.viz.run_figure (the command line's figure)
        name = figure(net, history, out)
        if name is None:
            say("(matplotlib not installed: no figure; pip install 'salnp[notebooks]')")
        else:
            files.append(name)
    summary["total_s"] = time.perf_counter() - t_start
    _write_json(os.path.join(out, "summary.json"), summary)
    say(f"wrote {out}/" + ", ".join(files))
    return summary
