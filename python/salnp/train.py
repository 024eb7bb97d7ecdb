"""Training: SGD with PyTorch's semantics over the parameter arena, LR and SAL beta
schedules, evaluation with soft and binarised attention, checkpoints and resume.

    history = salnp.fit(net, train, test, epochs=10)
    pandas.DataFrame(history)          # one plain dict per epoch

The SAL inverse temperature ``net.beta`` is annealed after every optimiser step, by
default geometrically from beta[0] to beta[1] over the run (DESIGN 1.4): this is the
pruning.  A checkpoint (parameters, momentum, BN statistics, beta, epoch, step,
history, config) is written atomically after every epoch; ``resume=`` continues a run
exactly (bit for bit at one thread: data order and augmentation are pure functions of
(seed, epoch, sample)).
"""
from __future__ import annotations

import logging
import math
import os
import platform
import signal
import threading
import time

import numpy as np

from . import _core, ops
from .data import Dataset
from .io import NpzReader, _fspath, _target_for_save, check_finite_state, save_npz_atomic
from .attention import kept_taps
from .models import ActiveShift, ResNet, SALConv2d, expected_state_shapes
from .runconfig import RunConfig, solver_of
from .nn import check_beta
from .prune import default_keep, prune_step
from ._threads import restores_threads, set_num_threads

log = logging.getLogger("salnp")

__all__ = ["fit", "evaluate", "SGD", "lr_at", "beta_at", "attention_stats", "CheckpointError"]


class CheckpointError(ValueError):
    """fit(resume=path): the checkpoint cannot be resumed from (truncated, corrupted, not
    a salnp training checkpoint, or another network's); the message starts with its path.
    Nothing of it was loaded: the network is as it was."""
# stepwise hard pruning: salnp.prune (prune_step, default_keep); fit(prune_epochs=...)


class SGD:
    """torch.optim.SGD over the network's flat arenas (one C loop per step).

    Per-parameter multipliers come from the module declarations (ASL shifts: lr x 0.01,
    no weight decay); ASL offset gradients are normalised per channel before the step.
    frozen: names of parameters (``net.arena.offsets`` keys, e.g. "layer1.0.conv1.logits")
    whose learning-rate and weight-decay multipliers are 0: the step leaves them bit for
    bit as they are (fit's freeze_attention)."""

    def __init__(self, net, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, frozen=()):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"SGD: {name}={v!r}: must be a finite number >= 0")
        self.net, self.lr, self.momentum = net, float(lr), float(momentum)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.steps = 0
        a = net.arena
        # runs of equal (lr_mult, wd_mult) over the flat arena
        keys = np.stack([a.lr_scale, a.decay], 1)
        self.frozen = tuple(frozen)
        for name in self.frozen:
            if name not in a.offsets or name not in dict(net.named_parameters()):
                raise ValueError(f"SGD: frozen={name!r}: not a parameter of the network")
            start, shape = a.offsets[name]
            keys[start:start + int(np.prod(shape))] = 0.0
        change = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [a.params.size]])
        self.segments = [(int(e - s), float(keys[s, 0]), float(keys[s, 1])) for s, e in zip(starts, ends)]
        self._ashift = [m for _, m in net.named_modules() if isinstance(m, ActiveShift)]

    def step(self, lr=None):
        for m in self._ashift:
            g = m._grads["shift"]
            g[...] = ops.normalize_shift_grad(g)
        a = self.net.arena
        ops.sgd_step(a.params, a.grads, a.momentum, self.lr if lr is None else float(lr),
                     momentum=self.momentum, weight_decay=self.weight_decay,
                     nesterov=self.nesterov, first_step=self.steps == 0, segments=self.segments)
        self.steps += 1


def lr_at(epoch, epochs, lr, schedule="step", milestones=(1 / 3, 2 / 3), gamma=0.1):
    """Learning rate of an epoch.  "step": x gamma at each milestone (fractions of the
    run, or epoch numbers when >= 1: the recipe's 0.1/0.01/0.001 at epochs 0/100/200 of
    300); "cosine": lr/2 (1 + cos(pi epoch / epochs)); "constant"; or a callable."""
    if callable(schedule):
        return float(schedule(epoch))
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        ms = [m * epochs if m < 1 else m for m in milestones]
        return lr * gamma ** sum(epoch >= m for m in ms)
    raise ValueError(f"fit: lr_schedule={schedule!r}: must be 'step', 'cosine', 'constant' or callable")


BETA_SCHEDULES = ("geometric", "linear", "cosine")


def _check_dataset(name, ds, net):
    """What fit needs of a data set, checked before the first step (a test set that does
    not fit the network was found only after an epoch of training)."""
    C, K = net.config["in_channels"], net.config["num_classes"]
    if len(ds) < 1:
        raise ValueError(f"fit: {name} is empty")
    if ds.images.ndim != 4 or ds.images.shape[1] != C:
        raise ValueError(f"fit: {name} has {ds.images.shape[1]} channels, the network {C}")
    lab = np.asarray(ds.labels)
    if lab.shape != (len(ds),) or lab.dtype.kind not in "iu":
        raise ValueError(f"fit: {name}.labels must be {len(ds)} integers, got {lab.dtype} "
                         f"{lab.shape}")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0:
        raise ValueError(f"fit: {name} has a label {lo}: labels must be >= 0")
    if hi >= K or ds.num_classes > K:
        raise ValueError(f"fit: {name} has labels up to {hi} ({ds.num_classes} classes), the "
                         f"network {K} outputs")


class _Snapshot:
    """The trained state of a network (parameters, buffers, momentum, beta) and the
    optimiser's step count, to put back after an interrupt or a divergence."""

    def __init__(self, net, opt):
        a = net.arena
        self.net, self.opt = net, opt
        self.arrays = (a.params.copy(), a.buffers.copy(), a.momentum.copy())
        self.beta, self.steps = net.beta, opt.steps

    def restore(self):
        a = self.net.arena
        for dst, src in zip((a.params, a.buffers, a.momentum), self.arrays):
            dst[...] = src
        self.net.beta, self.opt.steps = self.beta, self.steps


class _SigintDeferred:
    """Ctrl-C (SIGINT) held back for the block and raised at its end: the block runs
    whole (an epoch's checkpoint, history record and snapshot agree).  Main thread only;
    elsewhere a no-op."""

    def __enter__(self):
        self.old, self.hit = None, False
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.old = signal.signal(signal.SIGINT, lambda *_: setattr(self, "hit", True))
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit and exc[0] is None:
                raise KeyboardInterrupt
        return False


def beta_at(step, total_steps, beta0, beta1, schedule="geometric"):
    """SAL inverse temperature after `step` optimiser steps: geometric (DESIGN 1.4,
    beta <- beta * gamma each step, gamma = (beta1/beta0)^(1/total)), linear or cosine."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "geometric":
        if beta0 <= 0:
            raise ValueError(f"fit: beta=({beta0}, {beta1}): geometric annealing needs beta0 > 0")
        return beta0 * (beta1 / beta0) ** t
    if schedule == "linear":
        return beta0 + (beta1 - beta0) * t
    if schedule == "cosine":
        return beta1 + (beta0 - beta1) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"fit: beta_schedule={schedule!r}: must be 'geometric', 'linear' or 'cosine'")


def attention_stats(net):
    """Mean over all SAL slices of max p, and the fraction of slices already one-hot
    (probabilities under the pruning masks)."""
    maxp, onehot, count = 0.0, 0, 0
    for _, m in net.named_modules():
        if isinstance(m, SALConv2d):
            p = m.probs(net.beta)
            mx = p.max(-1)
            maxp += float(mx.sum())
            onehot += int((mx > 0.5).sum())
            count += mx.size
    if count == 0:
        return None, None
    return maxp / count, onehot / count


def _allowed_mean(net):
    """Mean allowed positions per SAL slice (9 without pruning), None without SAL."""
    n, tot = 0, 0.0
    for _, m in net.named_modules():
        if isinstance(m, SALConv2d):
            k = (m.mask.reshape(-1, 9) != 0).sum(1)
            n += k.size
            tot += float(k.sum())
    return tot / n if n else None


def _prune_plan(prune_epochs, prune_keep, epochs, is_sal):
    """{epoch (from 1): positions kept} from fit's prune arguments, validated."""
    if prune_epochs is None:
        if prune_keep is not None:
            raise ValueError("fit: prune_keep needs prune_epochs")
        return {}
    if not is_sal:
        raise ValueError("fit: prune_epochs applies to SAL networks (layer='sal') only")
    try:
        ep = [int(e) for e in prune_epochs]
        ok = all(int(e) == e for e in prune_epochs)
    except (TypeError, ValueError):
        ok = False
    if not ok or not ep or any(e < 1 or e > epochs for e in ep) or sorted(set(ep)) != ep:
        raise ValueError(f"fit: prune_epochs={prune_epochs!r}: must be increasing epoch "
                         f"numbers in [1, {epochs}]")
    keep = default_keep(len(ep)) if prune_keep is None else list(prune_keep)
    if (len(keep) != len(ep) or any(not isinstance(k, (int, np.integer)) or not 1 <= k <= 9
                                    for k in keep)
            or any(b >= a for a, b in zip(keep, keep[1:]))):
        raise ValueError(f"fit: prune_keep={prune_keep!r}: must be {len(ep)} decreasing "
                         "integers in [1, 9], one per prune epoch")
    return dict(zip(ep, (int(k) for k in keep)))


def evaluate(net, data, batch_size=500, hard=False):
    """(loss, accuracy) of net on a Dataset in eval mode (running BN statistics)."""
    total_loss, correct, n = 0.0, 0, 0
    for x, y in data.batches(batch_size, shuffle=False, augment=False):
        logits = net.forward(x, train=False, hard=hard)
        y32 = y.astype(np.int32)
        total_loss += ops.cross_entropy(logits, y32) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return total_loss / max(n, 1), correct / max(n, 1)


def _versions():
    return {"salnp": _core.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "blis": _core.blas_info()}


def _save_state(path, net, opt, epoch, history, run_cfg):
    arrays = dict(net.state_dict())
    arrays["optim.momentum"] = net.arena.momentum
    check_finite_state(arrays, "fit: checkpoint")   # never a checkpoint of a NaN network
    cfg = {"model": net.config, "run": run_cfg, "epoch": epoch, "optim_steps": opt.steps,
           "beta": net.beta, "history": history}
    save_npz_atomic(path, arrays, "training", cfg)


def _load_state(path, net, opt):
    """Resume state from a checkpoint, all or nothing: the file, the config, every array
    (shapes before any data is read; values after the float32 cast) and the optimiser
    state are validated before the network is touched."""

    path = _fspath(path, "fit")
    try:
        return _load_checked(path, net, opt)
    except FileNotFoundError:
        raise
    except ValueError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(path) else f"{path}: {msg}") from None


def _load_checked(path, net, opt):
    arch = lambda c: {k: v for k, v in (c if isinstance(c, dict) else {}).items() if k != "seed"}
    with NpzReader(path, kind="training") as z:
        cfg = z.config
        if arch(cfg.get("model")) != arch(net.config):
            raise ValueError(f"{path}: checkpoint of model {cfg.get('model')}, not {net.config}")
        want = expected_state_shapes(net)
        want["optim.momentum"] = net.arena.momentum.shape
        missing = [k for k in want if k not in z.headers]
        extra = [k for k in z.arrays if k not in want]
        if "optim.momentum" in missing:
            raise ValueError(f"{path}: no optimiser state of the right size")
        if extra:
            raise ValueError(f"{path}: unexpected arrays {extra[:5]}")
        for k in z.arrays:
            if z.shape(k) != tuple(want[k]):
                raise ValueError(f"{path}: {k} has shape {z.shape(k)}, expected {tuple(want[k])}"
                                 + (" (no optimiser state of the right size)"
                                    if k == "optim.momentum" else ""))
        try:
            epoch, steps = cfg["epoch"], cfg["optim_steps"]
            beta, history = cfg["beta"], cfg["history"]
            run = cfg.get("run", {})
            ok = (all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62
                      for v in (epoch, steps))
                  and isinstance(history, list) and isinstance(run, dict))
            beta = check_beta(beta, "beta")
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: corrupted training state (epoch, optim_steps, beta, "
                             "history, run)")
        arrays = {k: z.read(k, want[k]) for k in z.arrays}
    mom = arrays.pop("optim.momentum")
    mom32 = mom.astype(np.float32)
    if mom.dtype.kind not in "fiu" or not np.all(np.isfinite(mom32)):
        raise ValueError(f"{path}: optim.momentum contains NaN or inf (or is not real)")
    try:
        net.load_state_dict(arrays)          # transactional: validates before writing
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    net.arena.momentum[...] = mom32
    opt.steps = int(steps)
    net.beta = beta
    return int(epoch), list(history), run


_D = RunConfig()     # fit's defaults are the run configuration's


@restores_threads
def fit(net, train, test=None, epochs=_D.epochs, batch_size=_D.batch_size, lr=_D.lr,
        momentum=_D.momentum, weight_decay=_D.weight_decay, nesterov=_D.nesterov,
        lr_schedule=_D.lr_schedule, milestones=_D.milestones, lr_gamma=0.1,
        beta=(_D.beta0, _D.beta1), beta_schedule=_D.beta_schedule, augment=_D.augment,
        seed=_D.seed, eval_hard=None, eval_batch_size=500, checkpoint=None, resume=None,
        progress=_D.progress, threads=_D.threads, callback=None, prune_epochs=_D.prune_epochs,
        prune_keep=_D.prune_keep, skip_nonfinite=False, reset_momentum=_D.reset_momentum,
        freeze_attention=_D.freeze_attention, eval_every=_D.eval_every):
    """Train `net` on the Dataset `train`, evaluating on `test` after every epoch (every
    eval_every epochs and after the last one: the other records have no test entries).

    Returns the history: one dict per epoch (epoch, lr, beta, train_loss, train_acc,
    test_loss, test_acc, test_acc_hard (SAL), attn_maxp, attn_onehot, time_s,
    images_per_s).  checkpoint: a path written atomically after every epoch; resume: a
    checkpoint to continue from; callback(record) runs after every epoch (after the
    checkpoint) and a True result stops training there.

    The keywords are the fields of salnp.RunConfig of the same names, with its defaults
    (beta = (beta0, beta1)).  nesterov, milestones: None takes the layer family's reference
    solver (salnp.runconfig.solver_of, sources in salnp.recipes): ASL (Jeon & Kim) Nesterov
    with lr x0.1 at 1/2 and 3/4 of the run; SL at 1/2 and 3/4 (Wu et al.); CL and SAL plain
    momentum with steps at 1/3 and 2/3 (the SAL recipe's epochs 100 and 200 of 300).
    Milestones are fractions of the run, or epoch numbers when >= 1.  reset_momentum: zero
    momentum at the start of every epoch (the SAL authors' code makes a new optimiser per
    epoch).  freeze_attention (SAL): the attention logits keep their initial values bit for
    bit (learning rate and weight decay 0 on them; a control for whether the learned
    attention matters).
    Per-parameter weight-decay and learning-rate multipliers come from the modules (no
    decay on ASL's BN, FC bias and shifts; shift lr x 0.01).

    Stepwise hard pruning (SAL; salnp.prune): prune_epochs = epoch numbers (from 1, as in
    the history) before which every slice keeps only its most likely positions,
    prune_keep = how many after each step (default salnp.prune.default_keep: e.g. 5, 3,
    2, 1 for four steps; must decrease and end at 1 to leave one shift per slice).  It
    composes with any beta schedule; for a pure stepwise ablation hold beta constant,
    beta=(b, b).  History records get attn_allowed, the mean allowed positions per slice.

    Failures.  A NaN/inf loss, or parameters / optimiser state that are NaN/inf after an
    optimiser step (checked after EVERY step, the last one included), raise
    FloatingPointError naming the epoch and step; the network is put back to its state
    before that step and no checkpoint of a non-finite network is ever written (the last
    checkpoint stays the last good epoch).  A training batch with NaN/inf inputs raises
    ValueError naming the batch (1-based, within its epoch) and the step, before it
    reaches the network (BN running statistics are never updated from it); with
    skip_nonfinite=True such batches are skipped with a warning instead, and counted in
    the record's "skipped_batches".  Finite parameters whose outputs are NaN or inf (a
    huge learning rate: inf logits), checked at the end of every epoch on its last batch
    in eval mode and by the test loss, are a divergence too: FloatingPointError, the
    network put back to the last finished epoch.  Both data sets (channels, labels within
    the network's classes) and the beta schedule (a geometric one needs a finite ratio)
    are checked before the first step.  Ctrl-C returns the history so far, with the
    network put back to the end of the last finished epoch: the network, the history and
    the checkpoint (still resumable) describe one state.  An epoch's checkpoint, history
    record and that state are committed together (a Ctrl-C then waits for the commit)."""
    if not isinstance(net, ResNet):
        raise TypeError(f"fit: net must be a salnp network (salnp.models.ResNet), got "
                        f"{type(net).__name__}")
    if not isinstance(train, Dataset):
        raise TypeError(f"fit: train must be a salnp.data.Dataset, got {type(train).__name__}")
    if test is not None and not isinstance(test, Dataset):
        raise TypeError(f"fit: test must be a salnp.data.Dataset or None, got {type(test).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable or None, got {type(callback).__name__}")
    if not isinstance(skip_nonfinite, (bool, np.bool_)):
        raise TypeError(f"fit: skip_nonfinite={skip_nonfinite!r}: must be True or False")
    for name, p in (("checkpoint", checkpoint), ("resume", resume)):
        if p is not None:
            try:
                p = os.fspath(p)
            except TypeError:
                raise TypeError(f"fit: {name} must be a path or None, got {type(p).__name__}") from None
            if os.path.isdir(p):
                raise ValueError(f"fit: {name}={p!r} is a directory, not a file path")
    if checkpoint is not None:      # a FIFO or device as checkpoint: refused now, not after an epoch
        try:
            _target_for_save(os.fspath(checkpoint))
        except ValueError as e:
            raise ValueError(f"fit: checkpoint: {e}") from None
    if resume is not None and not os.path.exists(resume):
        raise FileNotFoundError(f"fit: resume={os.fspath(resume)!r}: no such file")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or isinstance(threads, bool)
                                or not 1 <= threads <= 1024):
        raise ValueError(f"fit: threads={threads!r}: must be an integer in [1, 1024] or None")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"fit: seed={seed!r}: must be an integer in [0, 2**64)")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs={epochs!r}: must be an integer >= 1")
    if not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1:
        raise ValueError(f"fit: eval_every={eval_every!r}: must be an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size={batch_size!r}: must be an integer >= 1")
    _check_dataset("train", train, net)
    if test is not None:
        _check_dataset("test", test, net)
    bb = tuple(beta) if isinstance(beta, (tuple, list, np.ndarray)) else (beta, beta)
    if len(bb) != 2:
        raise ValueError(f"fit: beta={beta!r}: must be a number or a pair (start, end) of numbers")
    b0, b1 = check_beta(bb[0], "fit: beta[0]"), check_beta(bb[1], "fit: beta[1]")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"fit: beta_schedule={beta_schedule!r}: must be one of {BETA_SCHEDULES}")
    if net.config["layer"] == "sal" and beta_schedule == "geometric" and not math.isfinite(b1 / b0):
        # every beta of the run lies between b0 and b1 only when the ratio is finite
        # (1e300 / 1e-300 overflowed to inf: beta was inf after the first step)
        raise ValueError(f"fit: beta={beta!r}: geometric annealing needs a finite ratio "
                         f"beta1 / beta0 (got {b1 / b0})")
    if not isinstance(reset_momentum, (bool, np.bool_)):
        raise TypeError(f"fit: reset_momentum={reset_momentum!r}: must be True or False")
    if not isinstance(freeze_attention, (bool, np.bool_)):
        raise TypeError(f"fit: freeze_attention={freeze_attention!r}: must be True or False")
    if freeze_attention and net.config["layer"] != "sal":
        raise ValueError(f"fit: freeze_attention=True: applies to SAL networks (layer='sal') "
                         f"only, not {net.config['layer']!r}")
    solver = solver_of(net.config["layer"])
    if nesterov is None:
        nesterov = bool(solver["nesterov"])
    if milestones is None:
        milestones = tuple(solver["milestones"])
    try:
        milestones = tuple(float(m) for m in milestones)
        ok = all(math.isfinite(m) and m > 0 for m in milestones)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"fit: milestones={milestones!r}: must be positive numbers (fractions "
                         "of the run, or epoch numbers when >= 1)")
    if threads is not None:
        set_num_threads(int(threads))   # fit restores the previous count when it returns
    is_sal = net.config["layer"] == "sal"
    eval_hard = is_sal if eval_hard is None else bool(eval_hard)
    prune_plan = _prune_plan(prune_epochs, prune_keep, epochs, is_sal)
    frozen = [f"{n}.logits" for n, m in net.named_modules()
              if isinstance(m, SALConv2d)] if freeze_attention else []
    opt = SGD(net, lr, momentum, weight_decay, nesterov, frozen=frozen)
    steps_per_epoch = train.num_batches(batch_size, drop_last=False)
    total_steps = epochs * steps_per_epoch
    run_cfg = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, nesterov=nesterov, lr_schedule=str(lr_schedule),
                   milestones=list(milestones), lr_gamma=lr_gamma, beta=[b0, b1],
                   reset_momentum=bool(reset_momentum), freeze_attention=bool(freeze_attention),
                   beta_schedule=beta_schedule, augment=augment, seed=seed,
                   prune_epochs=sorted(prune_plan), prune_keep=[prune_plan[e] for e in sorted(prune_plan)],
                   train=getattr(train, "name", "?"), train_size=len(train),
                   test=getattr(test, "name", None), test_size=len(test) if test is not None else 0,
                   threads=_core.get_num_threads(), versions=_versions())
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history, old = _load_state(resume, net, opt)
        log.info("resumed from %s at epoch %d", resume, start_epoch)
    else:
        net.beta = beta_at(0, total_steps, b0, b1, beta_schedule) if is_sal else net.beta
    taps_start = kept_taps(net) if is_sal else None     # the taps at step 0
    # the state of the last finished epoch (or the start): an interrupt or a divergence
    # puts the network back to it, so the network always matches the history returned
    good = _Snapshot(net, opt)
    net.train()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    try:
        for epoch in range(start_epoch, epochs):
            lr_e = lr_at(epoch, epochs, lr, lr_schedule, milestones, lr_gamma)
            if epoch + 1 in prune_plan:
                kept = prune_step(net, prune_plan[epoch + 1])
                log.info("epoch %d: pruned SAL slices to %d position(s): %s", epoch + 1,
                         prune_plan[epoch + 1], kept)
            if reset_momentum:       # a new optimiser per epoch, as the SAL authors' code
                net.arena.momentum[...] = 0.0
            t0 = time.perf_counter()
            loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
            batches = train.batches(batch_size, shuffle=True, augment=augment, seed=seed,
                                    epoch=epoch, reuse=True)
            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False) if tqdm else batches

            def where():
                if checkpoint is not None and epoch > start_epoch:
                    return f"the last good state is the checkpoint of epoch {epoch} ({checkpoint})"
                if resume is not None:
                    return f"the last good state is the checkpoint resumed from ({resume})"
                if checkpoint is not None:
                    return "no checkpoint was written yet (the first epoch failed)"
                return "no checkpoint was requested (checkpoint=None)"

            for batch_i, (x, y) in enumerate(bar, 1):
                if not np.isfinite(np.sum(x, dtype=np.float64)):
                    msg = (f"fit: training batch {batch_i} of epoch {epoch + 1} (step "
                           f"{opt.steps + 1}) contains NaN or inf inputs")
                    if skip_nonfinite:
                        log.warning("%s: skipped (skip_nonfinite=True)", msg)
                        skipped += 1
                        continue
                    raise ValueError(f"{msg}; the network was not updated from it "
                                     "(fit(skip_nonfinite=True) skips such batches)")
                y32 = y.astype(np.int32)
                try:
                    logits = net.forward(x, train=True)
                except (ValueError, FloatingPointError) as e:
                    # libsal refuses non-finite SAL logits (softmax of NaN); forward refuses
                    # non-finite batch statistics: a diverged state, reported with the step
                    if isinstance(e, ValueError) and np.all(np.isfinite(net.arena.params)):
                        raise
                    logits, loss, cause = None, float("nan"), f"; {e}"
                else:
                    loss, cause = ops.cross_entropy(logits, y32), ""
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"fit: loss is {loss} at epoch {epoch + 1}, step {opt.steps + 1}; "
                        f"{where()} (training batch {batch_i} of the epoch{cause})")
                net.zero_grad()
                net.backward(ops.cross_entropy_backward(logits, y32))
                a = net.arena
                before = (a.params.copy(), a.momentum.copy())
                opt.step(lr_e)
                if not (np.isfinite(a.params.sum(dtype=np.float64))
                        and np.isfinite(a.momentum.sum(dtype=np.float64))):
                    a.params[...], a.momentum[...] = before
                    opt.steps -= 1
                    raise FloatingPointError(
                        f"fit: parameters are NaN or inf after the optimiser step at epoch "
                        f"{epoch + 1}, step {opt.steps + 1}; {where()} (training batch "
                        f"{batch_i} of the epoch; the network was put back to its state "
                        f"before that step; gradients "
                        f"finite: {bool(np.isfinite(a.grads.sum(dtype=np.float64)))})")
                if is_sal:
                    net.beta = beta_at(opt.steps, total_steps, b0, b1, beta_schedule)
                loss_sum += loss * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                # (a skipped batch may later overwrite the reused buffer: keep a copy)
                last_x = x.copy() if skip_nonfinite else x
                if tqdm and progress:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            if seen == 0:
                raise ValueError(f"fit: every training batch of epoch {epoch + 1} was skipped "
                                 "(NaN or inf inputs)")
            # finite parameters can still give inf logits (lr 1e30: huge weights): the
            # network the epoch ends with must compute finite outputs (eval mode, the last
            # training batch), else it is a divergence like the others
            if not np.all(np.isfinite(net.forward(last_x, train=False))):
                _diverged(good, epoch, opt.steps, where(), "after")
            train_time = time.perf_counter() - t0
            rec = {"epoch": epoch + 1, "lr": lr_e, "beta": net.beta if is_sal else None,
                   "train_loss": loss_sum / seen, "train_acc": correct / seen}
            if test is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                rec["test_loss"], rec["test_acc"] = evaluate(net, test, eval_batch_size)
                if not math.isfinite(rec["test_loss"]):
                    _diverged(good, epoch, opt.steps, where(), "on the test set after")
                rec["test_acc_hard"] = evaluate(net, test, eval_batch_size, True)[1] if eval_hard else None
            rec["attn_maxp"], rec["attn_onehot"] = attention_stats(net)
            if is_sal:     # the taps training computes per slice, per layer, at the step
                rec["step"], rec["taps_kept"] = opt.steps, kept_taps(net)
                if epoch == 0:
                    rec["taps_kept_start"] = taps_start
            rec["attn_allowed"] = _allowed_mean(net)
            rec["time_s"] = time.perf_counter() - t0
            rec["images_per_s"] = seen / train_time
            if skip_nonfinite:
                rec["skipped_batches"] = skipped
            # the epoch's commit: checkpoint, record and snapshot together (Ctrl-C waits)
            with _SigintDeferred():
                if checkpoint is not None:
                    _save_state(checkpoint, net, opt, epoch + 1, history + [rec], run_cfg)
                history.append(rec)
                good = _Snapshot(net, opt)
            log.info("epoch %d: %s", epoch + 1, {k: v for k, v in rec.items() if k != "epoch"})
            if callback is not None and callback(rec):
                break
    except KeyboardInterrupt:
        good.restore()
        log.warning("fit interrupted; %d epoch(s) finished%s; the network is that of the "
                    "last finished epoch", len(history),
                    f", resumable from {checkpoint}" if checkpoint else "")
    net.eval()
    return history


def _diverged(good, epoch, step, where, when):
    """A network whose outputs are NaN or inf: put back to the last good state, raised."""
    good.restore()
    back = "its state after the last finished epoch" if good.steps else "its initial state"
    raise FloatingPointError(
        f"fit: the network's outputs are NaN or inf {when} epoch {epoch + 1} (step {step}) "
        f"though its parameters are finite (a learning rate too large?); {where}; the "
        f"network was put back to {back}")
