"""One training run from a configuration (salnp.RunConfig): what ``python -m salnp train``
and ``salnp.sweep`` both call.

    cfg = salnp.RunConfig(layer="cl", width=8, epochs=2, subset=1000)
    summary = salnp.runs.train_run(cfg, "runs/cl-w8")     # summary.json, history.json, ...

``normalize`` turns a sweep's config (a RunConfig or a dict of its fields) into the full,
validated dict of a run (recipe applied, root resolved and checked); ``trial_id`` is a
SHA-256 of the canonical JSON of its identity (the fields that differ from the defaults;
stable across processes and machines, unlike Python's ``hash()``, and across versions that
add fields).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

import numpy as np

from . import _core, _threads, attention, data
from .runconfig import ConfigError, RunConfig
from .export import export
from .flops import count
from .models import resnet
from .train import fit

__all__ = ["normalize", "with_data_root", "trial_id", "trial_name", "train_run", "load_data",
           "ConfigError"]

log = logging.getLogger("salnp")


def normalize(config, fn="sweep") -> dict:
    """The full, validated field dict of one run (defaults filled in, the recipe applied, root
    resolved and checked to exist); ConfigError naming the field and the rule otherwise.
    How-to-run fields (out, resume, threads, progress) are refused: a sweep sets them."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ConfigError(f"{fn}: a config must be a RunConfig or a dict of its fields, got "
                          f"{type(config).__name__}")
    for key in config:
        if isinstance(key, str) and key.replace("-", "_") in ("out", "resume", "threads") \
                and config[key] is not None:
            raise ConfigError(f"{fn}: config key {key!r}: set by the runner, not by a config "
                              "(a sweep gives every trial its folder and thread budget: out=, "
                              "threads_per_trial=)")
    try:
        return with_data_root(RunConfig.make(config)).to_dict()
    except ConfigError as e:
        raise ConfigError(f"{fn}: {e}") from None


def with_data_root(cfg: RunConfig) -> RunConfig:
    """cfg with its data folder as an absolute path that exists; ConfigError otherwise."""
    root = os.path.abspath(os.path.expanduser(cfg.require_root()))
    if not os.path.isdir(root):
        raise ConfigError(f"root={root!r}: no such folder (data={cfg.data!r})")
    return cfg.replace(root=root)


def trial_id(cfg) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of the run's identity."""
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.make(cfg)
    text = json.dumps(c.identity(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def trial_name(cfg) -> str:
    """A readable, stable folder name: layer, depth, width, seed and 12 hex of the id."""
    c = cfg if isinstance(cfg, RunConfig) else RunConfig.make(cfg)
    return f"{c.layer}-d{c.depth}-w{c.width}-s{c.seed}-{trial_id(c)[:12]}"


# ---------------------------------------------------------------- data (cached per process)
_DATA: dict = {}


def load_data(cfg: RunConfig):
    """(train, test) Datasets of a config; the full sets are read once per process."""
    out = []
    for train in (True, False):
        key = (cfg.data, cfg.require_root(), train)
        if key not in _DATA:
            _DATA[key] = data.load(cfg.data, cfg.root, train=train)
        out.append(_DATA[key])
    tr, te = out
    if cfg.subset:
        tr = tr.subset(cfg.subset, seed=cfg.seed)
    if cfg.test_subset:
        te = te.subset(cfg.test_subset, seed=cfg.seed)
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
              verbose=False, complete=False, export_net=True, extra=None):
    """Train, evaluate (soft and hard), count, export and time one run of cfg (a RunConfig
    or a dict of its fields) into the folder out: train.log, checkpoint.npz (every epoch),
    history.json, inference.npz (the exported network), summary.json (written last, so its
    presence means the run finished).  resume: a checkpoint (or its folder) to continue
    from.  verbose: one line per epoch and the result table on stdout.  figure(net, history,
    out) -> names of the figures it wrote (the command line's: salnp.viz.run_figure).
    complete: a run interrupted by Ctrl-C raises KeyboardInterrupt instead of writing a
    summary of the epochs it finished.  Returns the summary dict."""
    cfg = RunConfig.make(cfg)
    if threads is not None:
        _threads.set_num_threads(threads)
    made = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    # train.log is created by its first message: an argument refused before training
    # starts leaves no log (and no folder that this call made)
    handler = logging.FileHandler(os.path.join(out, "train.log"), delay=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # only this run's messages (a Dask worker may train several runs in threads at once)
    me = threading.get_ident()
    handler.addFilter(lambda record: record.thread == me)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _train_run(cfg, out, resume, progress, figure, verbose, complete, export_net,
                          extra)
    except (ValueError, TypeError):
        if made and not os.listdir(out):
            os.rmdir(out)
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()


def _epoch_line(rec, t0):
    parts = [f"epoch {rec['epoch']:>3}", f"loss {rec['train_loss']:.4f}",
             f"train {100 * rec['train_acc']:5.2f} %"]
    if rec.get("test_acc") is not None:
        parts.append(f"test {100 * rec['test_acc']:5.2f} %")
    if rec.get("test_acc_hard") is not None:
        parts.append(f"binarised {100 * rec['test_acc_hard']:5.2f} %")
    if rec.get("beta") is not None:
        parts.append(f"beta {rec['beta']:.1f}")
    if rec.get("attn_moved") is not None:
        parts.append(f"moved {100 * rec['attn_moved']:.1f} %")
    parts += [f"{rec['images_per_s']:.0f} img/s", f"{time.perf_counter() - t0:.0f} s"]
    return "  ".join(parts)


def _train_run(cfg, out, resume, progress, figure, verbose, complete, export_net, extra):
    say = print if verbose else (lambda *a, **k: None)
    t_start = time.perf_counter()
    train, test = load_data(cfg)
    in_shape = train.images.shape[1:]
    net = resnet(depth=cfg.depth, width=cfg.width, layer=cfg.layer, shared=cfg.shared,
                 expansion=cfg.expansion, num_classes=max(train.num_classes, 2),
                 in_channels=in_shape[0], seed=cfg.seed)
    net.checkpointing = cfg.checkpointing
    if cfg.tap_threshold is not None and cfg.layer == "sal":
        net.tap_threshold = cfg.tap_threshold
    ckpt = os.path.join(out, "checkpoint.npz")
    if resume and os.path.isdir(resume):
        resume = os.path.join(resume, "checkpoint.npz")
    e = f", e={cfg.expansion:g}" if cfg.layer in ("sl", "asl", "asl-post") else ""
    say(f"salnp {_core.__version__}: {cfg.layer.upper()}-ResNet-{cfg.depth} (width {cfg.width}"
        f"{', shared' if cfg.shared else ''}{e}) on {train.name}: {len(train)} train / "
        f"{len(test)} test images, {cfg.epochs} epochs, {_threads.get_num_threads()} threads",
        flush=True)
    initial = attention.initial_state(net)     # the seed's logits (a resumed run too)
    t0 = time.perf_counter()

    def per_epoch(rec):
        rec["attn_moved"] = attention.moved_share(net, initial)
        say(_epoch_line(rec, t0), flush=True)

    solver = cfg.solver()
    history = fit(net, train, test, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                  nesterov=solver["nesterov"], milestones=solver["milestones"],
                  lr_schedule=cfg.lr_schedule, beta=(cfg.beta0, cfg.beta1),
                  beta_schedule=cfg.beta_schedule, augment=cfg.augment, seed=cfg.seed,
                  checkpoint=ckpt, resume=resume, prune_epochs=cfg.prune_epochs,
                  prune_keep=cfg.prune_keep, reset_momentum=cfg.reset_momentum,
                  freeze_attention=cfg.freeze_attention, eval_every=cfg.eval_every,
                  progress=progress, callback=per_epoch)
    wall = time.perf_counter() - t0
    if not history:
        raise KeyboardInterrupt("no epoch finished") if complete else SystemExit("no epoch finished")
    if complete and len(history) < cfg.epochs:
        raise KeyboardInterrupt(f"{out}: interrupted after {len(history)} of {cfg.epochs} "
                                "epochs (resumable from checkpoint.npz)")
    last = history[-1]
    summary = {
        "test_acc": last.get("test_acc"), "test_acc_hard": last.get("test_acc_hard"),
        "train_acc": last["train_acc"], "epochs": len(history), "wall_time_s": wall,
        # training + evaluation seconds summed over the epochs (a resumed run includes
        # the epochs before the resume)
        "train_eval_s": float(sum(h["time_s"] for h in history)),
        "images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "attn_moved": last.get("attn_moved"),
        "config": cfg.to_dict(), "model": net.config,
        "train_size": len(train), "test_size": len(test), "threads": _threads.get_num_threads(),
        "versions": {"salnp": _core.__version__, "numpy": np.__version__},
        "blas": dict(_core.blas_info()),
    }
    summary.update(extra or {})
    rows = [("test accuracy, soft attention", f"{100 * last['test_acc']:.2f} %")]
    if last.get("test_acc_hard") is not None:
        rows.append(("test accuracy, binarised", f"{100 * last['test_acc_hard']:.2f} %"))
    inf_net = export(net)               # the inference count is the count of the export
    tr = count(net, input_shape=in_shape, mode="train")
    inf = inf_net.count(in_shape)
    pap = count(net, input_shape=in_shape, convention="paper")
    summary.update(params_train=tr.params, macs_train=tr.macs, train_macs=tr.train_macs,
                   params=inf.params, macs=inf.macs, params_paper=pap.params,
                   macs_paper=pap.macs,
                   params_convention="exported (BN folded, pruned slices dropped)")
    rows += [("parameters (inference, exported convention)", f"{inf.params:,.0f}"),
             ("parameters (paper convention)", f"{pap.params:,.0f}"),
             ("MACs / image (inference)", f"{inf.macs:,.0f}  ({inf.macs / 1e6:.2f} M; FLOPs = 2 x MACs)"),
             ("parameters (training)", f"{tr.params:,.0f}"),
             ("MACs / image (training forward)", f"{tr.macs:,.0f}"),
             ("MACs / image (training, fwd + bwd)", f"{tr.train_macs:,.0f}")]
    if summary["attn_moved"] is not None:
        rows.append(("SAL slices whose shift moved", f"{100 * summary['attn_moved']:.1f} % "
                     "(chosen position now vs. at initialisation)"))
    rows += [("wall time", f"{wall:.1f} s"), ("training speed", f"{summary['images_per_s']:.0f} images/s")]
    say(_table(rows))
    files = ["summary.json", "history.json", "checkpoint.npz"]
    if export_net:
        inf_net.save(os.path.join(out, "inference.npz"))
        files.append("inference.npz")
    _write_json(os.path.join(out, "history.json"), history)
    if figure is not None:      # e.g. salnp.viz.run_figure (the command line's figures)
        names = figure(net, history, out)
        if names is None:
            say("(matplotlib not installed: no figure; pip install 'salnp[notebooks]')")
        else:
            files += [names] if isinstance(names, str) else list(names)
    summary["total_s"] = time.perf_counter() - t_start
    _write_json(os.path.join(out, "summary.json"), summary)
    say(f"wrote {out}/" + ", ".join(files))
    return summary
