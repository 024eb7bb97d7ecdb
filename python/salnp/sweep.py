"""Ablation sweeps: train a grid of configs on local processes or a Dask cluster.

    configs = salnp.sweep.grid({"layer": ["cl", "sl", "sal"], "width": [8, 16]},
                               seeds=[0, 1, 2], epochs=3, subset=2000, data="cifar10",
                               root="data/cifar10")
    result = salnp.sweep(configs, out="runs/ablation")           # local, one process per core
    result = salnp.sweep(configs, client=dask_client, out=...)   # the same on a Dask cluster
    result.summary().to_dataframe()      # mean and std over seeds, grouped by everything else
    result.to_csv("ablation.csv")

Each config is a salnp.RunConfig or a dict of its fields (the options of ``python -m salnp
train``); a ``name`` is carried to the table as a label.  Every config is checked (its keys,
with the nearest field named for a misspelt one; its values; its data folder) before any
trial starts.  Every trial is trained, evaluated
(soft and binarised attention), counted (parameters, inference MACs, training MACs) and
timed by the same function as the command line (salnp.runs.train_run), in its own
folder ``OUT/trials/<layer>-d<depth>-w<width>-s<seed>-<id>/``: config.json, train.log,
checkpoint.npz (after every epoch), history.json, inference.npz (the exported network)
and summary.json, written last.  The trial id is a SHA-256 of the normalised config.

Crash safety: results are appended to ``OUT/results.jsonl`` as trials finish; a rerun
with the same ``out`` skips every trial that has its summary.json and resumes an
interrupted one from its checkpoint (bit for bit at one thread per trial).  Locally, a
worker process that dies (killed, out of memory) loses only its running trial's current
epoch: the pool is restarted and the trial resumes (``retries`` times).  On Dask the
scheduler reschedules the tasks of a dead worker and ``retries`` reruns a trial that
raised; OUT must then be a folder every worker can see (a shared file system) for the
resume to find the checkpoint.

Threads: locally ``workers x threads_per_trial <= cores`` always holds (ValueError
otherwise); every worker is started with OMP_NUM_THREADS etc. set to its budget before
salnp is imported, by the ``spawn`` method (a clean interpreter: libsal itself survives
fork, but other libraries a trial may load, e.g. PyTorch's OpenMP, do not), and
calls ``salnp.set_num_threads``.  On Dask each trial uses ``threads_per_trial`` threads, by
default the cores of the worker's machine divided by the threads of all Dask workers there.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import itertools
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import types
import uuid
import warnings

from ._threads import set_num_threads
from .runconfig import ConfigError, RunConfig
from .runs import _write_json, normalize, train_run, trial_id, trial_name
from .summary import seed_groups
from .train import CheckpointError

__all__ = ["sweep", "grid", "load", "SweepResult", "run_trial", "METRICS"]

# what every result row carries besides the config's keys
METRICS = ("test_acc", "test_acc_hard", "params", "macs", "train_macs", "wall_s")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


# ---------------------------------------------------------------- configs
def grid(axes=None, seeds=(0,), **fixed) -> list:
    """The product of the options in ``axes`` (option -> list of values) times ``seeds``,
    each merged over the ``fixed`` options; seeds vary fastest.

    An axis value that is a dict sets several options together (for matched pairs):
    ``grid({"model": [dict(layer="cl", width=6), dict(layer="sal", width=16)]})``.
    seeds: a list of seeds or an int n (seeds 0..n-1).

        grid({"layer": ["cl", "sal"], "width": [8, 16]}, seeds=3, epochs=2)   # 12 configs
    """
    axes = {} if axes is None else axes
    if not isinstance(axes, dict):
        raise TypeError(f"grid: axes must be a dict of option -> list of values, got "
                        f"{type(axes).__name__}")
    for k, vals in axes.items():
        if isinstance(vals, (str, bytes, dict)) or not hasattr(vals, "__iter__"):
            raise ValueError(f"grid: axes[{k!r}]={vals!r}: must be a list of values (a fixed "
                             "option goes in the keyword arguments)")
        if not list(vals):
            raise ValueError(f"grid: axes[{k!r}] is empty")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list, tuple, range)):
        raise TypeError(f"grid: seeds={seeds!r}: must be an int n or a list of seeds")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"grid: seeds={seeds!r}: must be a non-empty list of integers >= 0")
    if "seed" in fixed or "seed" in axes:
        raise ValueError("grid: give seeds with seeds=, not as an option")
    try:        # every key a RunConfig field (a misspelt one named with the nearest field)
        for k in fixed:
            RunConfig.field_name(k)
        for k, vals in axes.items():
            for v in vals:
                for kk in (v if isinstance(v, dict) else {k: v}):
                    RunConfig.field_name(kk)
    except ConfigError as e:
        raise ConfigError(f"grid: {e}") from None
    out = []
    for combo in itertools.product(*[list(v) for v in axes.values()]):
        cfg = dict(fixed)
        for k, v in zip(axes, combo):
            if isinstance(v, dict):
                cfg.update(v)
            else:
                cfg[k] = v
        for s in seeds:
            out.append(dict(cfg, seed=s))
    return out


class _Trial:
    __slots__ = ("cfg", "id", "name", "dir")

    def __init__(self, cfg, out):
        self.cfg = cfg
        self.id = trial_id(cfg)
        self.name = trial_name(cfg)
        self.dir = os.path.join(out, "trials", self.name)


def _columns(configs):
    """The config keys a row carries: every key given in some config (dashes as
    underscores), in order of appearance, plus layer and seed."""
    cols = []
    for c in configs:
        for k in c:
            k = k.replace("-", "_")
            if k not in cols:
                cols.append(k)
    for k in ("layer", "seed"):
        if k not in cols:
            cols.append(k)
    if "name" in cols:
        cols.remove("name")
        cols.insert(0, "name")
    return cols


def _plan(configs, out, fn="sweep"):
    if isinstance(configs, dict):
        raise TypeError(f"{fn}: configs must be a list of config dicts (salnp.sweep.grid "
                        "builds one), got a dict")
    try:
        configs = list(configs)
    except TypeError:
        raise TypeError(f"{fn}: configs must be a list of config dicts, got "
                        f"{type(configs).__name__}") from None
    if not configs:
        raise ValueError(f"{fn}: configs is empty")
    trials, seen = [], {}
    for i, c in enumerate(configs):
        t = _Trial(normalize(c, fn), out)
        if t.id in seen:
            continue      # the same run twice: trained once, one row
        seen[t.id] = i
        trials.append(t)
    return trials, _columns(configs)


# ---------------------------------------------------------------- one trial (in a worker)
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return os.cpu_count() or 1


def _dask_budget(client):
    """{worker address: threads per trial}: a host's cores divided by the threads of all
    the Dask workers on that host (each worker thread runs one trial at a time)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    per_host = {}
    for addr, w in workers.items():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads", 1))
    return {addr: max(1, int(cores.get(addr, 1)) // max(1, per_host[w.get("host")]))
            for addr, w in workers.items()}


def _dask_threads(budget):
    """This Dask worker's entry of the budget (1 when unknown, e.g. a worker that joined
    after the sweep started)."""
    try:
        from distributed import get_worker

        return int(budget.get(get_worker().address, 1))
    except Exception:
        return 1


def _metrics(summary, tdir):
    row = {k: summary.get(k) for k in METRICS if k != "wall_s"}
    row["wall_s"] = summary.get("train_eval_s")
    row["dir"] = tdir
    return row


def _warn(msg):
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


_SUMMARY_NUMBERS = ("test_acc", "test_acc_hard", "params", "macs", "train_macs", "train_eval_s")


def _read_summary(tdir, tid, warn=True):
    """The trial's summary.json when it is the finished summary of trial tid, else None.
    A file that is valid JSON but no summary (not an object, a metric that is no number)
    is not a finished trial: a warning says so and the trial runs again."""
    path = os.path.join(tdir, "summary.json")
    try:
        with open(path) as f:
            s = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    why = None
    if not isinstance(s, dict):
        why = f"a JSON {type(s).__name__}, not an object"
    else:
        bad = [k for k in _SUMMARY_NUMBERS if s.get(k) is not None and (
            isinstance(s[k], bool) or not isinstance(s[k], (int, float)))]
        if bad:
            why = f"{bad[0]}={s[bad[0]]!r:.40} is not a number"
    if why is not None:
        if warn:
            _warn(f"{path}: not a trial summary ({why}): the trial runs again")
        return None
    return s if s.get("trial_id") == tid else None


# ---------------------------------------------------------------- one trial's claim
_CLAIM_POLL_S = 0.2


@contextlib.contextmanager
def _claim(tdir):
    """Hold the trial folder's claim (an exclusive flock on tdir/.claim) for the block:
    two sweeps on one folder never train one trial at once; the second waits, then finds
    it done.  The kernel drops the lock of a process that dies, so a stale claim of a
    killed process is taken over at once.  The file names the holder (pid, host)."""
    import fcntl      # POSIX only: imported where a sweep needs it

    path = os.path.join(tdir, ".claim")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    try:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    except OSError:
                        holder = "?"
                    print(f"sweep: {os.path.basename(tdir)}: claimed by another process "
                          f"({holder or '?'}); waiting for it", file=sys.stderr, flush=True)
                    said = True
                time.sleep(_CLAIM_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)     # releases the lock


def run_trial(cfg, tdir, threads=None) -> dict:
    """Run one normalised config into the folder tdir (skip it when its summary.json is
    there, resume it from tdir/checkpoint.npz when that is there) and return its metrics
    (METRICS and dir).  threads: the trial's threads, or {Dask worker address: threads}.
    The trial is claimed first (_claim: another sweep training it is waited for).  A
    checkpoint that cannot be resumed (corrupt, truncated, another network's) is moved
    aside to checkpoint.npz.corrupt-<time> and the trial restarts from scratch; the
    metrics then carry a "note" saying so.  What the sweep's workers execute; importable
    on Dask workers."""
    tid = trial_id(cfg)
    done = _read_summary(tdir, tid)
    if done is not None:
        return dict(_metrics(done, tdir), skipped=True, resumed=False)
    os.makedirs(tdir, exist_ok=True)
    with _claim(tdir):
        done = _read_summary(tdir, tid, warn=False)   # finished while we waited
        if done is not None:
            return dict(_metrics(done, tdir), skipped=True, resumed=False)
        threads = _dask_threads(threads) if isinstance(threads, dict) else int(threads or 1)
        set_num_threads(threads)
        with open(os.path.join(tdir, "attempts.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} threads {threads}\n")
        _write_json(os.path.join(tdir, "config.json"), dict(cfg, trial_id=tid))
        ckpt = os.path.join(tdir, "checkpoint.npz")
        resume = ckpt if os.path.exists(ckpt) else None
        note = None
        extra = {"trial_id": tid, "trial": os.path.basename(tdir)}
        try:
            s = train_run(cfg, tdir, resume=resume, threads=threads, progress=False,
                          complete=True, extra=dict(extra, resumed=bool(resume)))
        except CheckpointError as e:
            if resume is None:
                raise
            aside = f"{ckpt}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            os.replace(ckpt, aside)
            note = (f"{ckpt}: cannot be resumed ({str(e)[len(ckpt) + 2:][:300]}); moved aside "
                    f"to {os.path.basename(aside)}, the trial restarted from scratch")
            with open(os.path.join(tdir, "attempts.log"), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {note}\n")
            resume = None
            s = train_run(cfg, tdir, resume=None, threads=threads, progress=False,
                          complete=True, extra=dict(extra, resumed=False, restarted=note))
    return dict(_metrics(s, tdir), skipped=False, resumed=bool(resume),
                **({"note": note} if note else {}))


def _die_with(parent):
    """Linux: this process gets SIGKILL when the process that started it dies (even by
    SIGKILL), so no worker keeps training for a sweep that is gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:                            # it died before the prctl
        os._exit(1)


def _worker_init(threads, parent=None):
    """Local pool worker: Ctrl-C is the parent's to handle; dies with the parent; the
    thread budget."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _die_with(parent)
    for k in _THREAD_ENV:
        os.environ[k] = str(threads)
    set_num_threads(threads)


def _attempts(t):
    try:
        with open(os.path.join(t.dir, "attempts.log")) as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# ---------------------------------------------------------------- progress
class _Progress:
    def __init__(self, total, done, mode, slots, stream=None):
        self.total, self.done, self.failed, self.mode = total, done, 0, mode
        self.slots, self.stream = slots, stream or sys.stderr
        self.bar = None
        if mode is True:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=done, desc="sweep", unit="trial")
            except ImportError:  # pragma: no cover
                self.mode = "lines"
        self.show()

    @property
    def running(self):
        return min(self.slots, self.total - self.done - self.failed)

    def show(self, last=""):
        if self.bar is not None:
            self.bar.set_postfix(running=self.running, failed=self.failed, refresh=True)
        elif self.mode == "lines":
            print(f"[{self.done + self.failed:>{len(str(self.total))}}/{self.total}] done "
                  f"{self.done}, running {self.running}, failed {self.failed}"
                  + (f"  {last}" if last else ""), file=self.stream, flush=True)

    def finished(self, name, row):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        acc = row.get("test_acc_hard") if row.get("test_acc_hard") is not None else row.get("test_acc")
        acc = f"{acc:.4f}" if isinstance(acc, (int, float)) else "n/a"
        wall = row.get("wall_s") if isinstance(row.get("wall_s"), (int, float)) else 0
        self.show(f"{name}: accuracy {acc}, {wall:.1f} s"
                  + (" (resumed)" if row.get("resumed") else ""))

    def fail(self, name, err):
        self.failed += 1
        self.show(f"{name}: FAILED ({err})")

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the sweep
@contextlib.contextmanager
def _thread_env(threads):
    old = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: str(threads) for k in _THREAD_ENV})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kill_pool(ex):
    ex.shutdown(wait=False, cancel_futures=True)
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except Exception:  # pragma: no cover
            pass
    for p in procs:
        p.join(5)


class _Signalled(BaseException):
    """Raised in the main thread by SIGTERM / SIGHUP during a sweep: unwinds through the
    finally blocks that stop the workers (not an Exception: nothing catches it on the way)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_the_sweep():
    """SIGTERM (Slurm, `timeout`, `docker stop`) and SIGHUP (a closed terminal) stop the
    sweep like Ctrl-C does: the worker processes are killed (their trials resume from
    their checkpoints on a rerun), then the signal is delivered again under the handler
    that was there before (by default the process ends with it).  Only in the main
    thread, and not for a signal that was ignored (nohup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame):
        raise _Signalled(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(sig)
        if prev in (signal.SIG_IGN, None):
            continue
        old[sig] = prev
        signal.signal(sig, handler)
    try:
        yield
    except _Signalled as e:
        for sig, prev in old.items():
            signal.signal(sig, prev)
        old = {}
        name = signal.Signals(e.signum).name
        print(f"sweep: {name}: the workers were stopped; a rerun with the same out= resumes "
              "the unfinished trials", file=sys.stderr, flush=True)
        os.kill(os.getpid(), e.signum)
        raise KeyboardInterrupt(f"sweep: stopped by {name}") from None
    finally:
        for sig, prev in old.items():
            signal.signal(sig, prev)


def _check_count(name, v, cores):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cores:
        raise ValueError(f"sweep: {name}={v!r}: must be an integer in [1, {cores}] (the cores "
                         "this process may use)")
    return v


def _budget(workers, threads, n, cores):
    workers = _check_count("workers", workers, cores)
    threads = _check_count("threads_per_trial", threads, cores)
    if workers is None and threads is None:
        workers = max(1, min(cores, n))
    if workers is None:
        workers = max(1, min(n, cores // threads))
    if threads is None:
        threads = max(1, cores // workers)
    if workers * threads > cores:
        raise ValueError(f"sweep: workers={workers} x threads_per_trial={threads} = "
                         f"{workers * threads} threads: must be <= {cores} cores")
    return workers, threads


def _run_local(todo, workers, threads, retries, deadline, done, fail):
    ctx = multiprocessing.get_context("spawn")
    lost = {t.id: 0 for t in todo}
    seen = {t.id: _attempts(t) for t in todo}
    pending = list(todo)
    barren = 0     # pools in a row that broke before any trial started or finished
    with _thread_env(threads):
        while pending:
            if barren >= 2:
                raise RuntimeError(
                    "sweep: the worker processes die before running a trial. In a script, "
                    "call salnp.sweep under `if __name__ == \"__main__\":` (workers are "
                    "started with `spawn` and import the main module); otherwise see the "
                    "workers' messages above")
            barren += 1
            ex = cf.ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx,
                                        initializer=_worker_init,
                                        initargs=(threads, os.getpid()))
            clean = False
            try:
                futs = {ex.submit(run_trial, t.cfg, t.dir, threads): t for t in pending}
                pending = []
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                for f in cf.as_completed(futs, timeout=left):
                    t = futs[f]
                    try:
                        row = f.result()
                    except cf.process.BrokenProcessPool:
                        # a worker died: every unfinished trial comes back; one that had
                        # started counts an attempt and resumes from its checkpoint
                        n = _attempts(t)
                        if n > seen[t.id]:
                            lost[t.id] += 1
                            seen[t.id] = n
                            barren = 0
                        if lost[t.id] > retries:
                            fail(t, f"its worker process died {lost[t.id]} times (killed, or "
                                    "out of memory?)")
                        else:
                            pending.append(t)
                    except Exception as e:
                        lost[t.id] += 1
                        if lost[t.id] > retries:
                            fail(t, f"{type(e).__name__}: {e}")
                        else:
                            pending.append(t)
                    else:
                        barren = 0
                        done(t, row)
                clean = True
            except cf.TimeoutError:
                raise TimeoutError(f"sweep: timeout: {len(futs) - sum(f.done() for f in futs)} "
                                   "trials unfinished (a rerun resumes them)") from None
            finally:
                if clean:
                    ex.shutdown(wait=True)
                else:
                    _kill_pool(ex)


def _run_dask(client, todo, threads, retries, deadline, done, fail):
    from distributed import as_completed

    tag = uuid.uuid4().hex[:8]
    futs = {}
    for t in todo:
        f = client.submit(run_trial, t.cfg, t.dir, threads, key=f"salnp-trial-{t.name}-{tag}",
                          pure=False, retries=retries)
        futs[f] = t
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        for f in as_completed(list(futs), with_results=False, raise_errors=False, timeout=left):
            t = futs[f]
            if f.status == "finished":
                done(t, f.result())
            elif f.status == "error":
                e = f.exception()
                fail(t, f"{type(e).__name__}: {e}")
            else:
                fail(t, f"Dask task {f.status} (the client or the cluster closed?)")
    except BaseException as e:
        client.cancel(list(futs))
        if isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutError":
            raise TimeoutError(f"sweep: timeout: trials unfinished on the cluster (a rerun "
                               "resumes them)") from None
        raise


def _jsonl_rows(text, path, warn=True):
    """The JSON objects of the lines of text; other lines (a line cut by a crash, JSON
    that is not an object) are skipped, the latter with a warning."""
    rows, foreign = [], 0
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(r, dict):
            rows.append(r)
        else:
            foreign += 1
    if foreign and warn:
        _warn(f"{path}: {foreign} line(s) are not JSON objects (not rows of a sweep): skipped")
    return rows


@contextlib.contextmanager
def _locked_file(path):
    """The file opened for reading and appending, under an exclusive flock (sweeps that
    share a folder append one at a time)."""
    import fcntl      # POSIX only: imported where a sweep needs it

    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _read_fd(fd):
    size = os.fstat(fd).st_size
    parts, got = [], 0
    while got < size:
        b = os.pread(fd, size - got, got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _append_jsonl(path, rows):
    """Append rows (dicts with a trial_id) to the JSON-lines file path, each as one whole
    line in one write, under a lock; rows whose trial_id is already logged are left out.
    A torn last line (a crash mid-append: no newline at its end) is cut first, with a
    warning; its trial's row is logged again from its summary."""
    if not rows:
        return
    with _locked_file(path) as fd:
        data = _read_fd(fd)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            _warn(f"{path}: a torn last line ({len(data) - keep} bytes, a crash mid-append) "
                  "was cut")
            os.ftruncate(fd, keep)
            data = data[:keep]
        logged = {r.get("trial_id") for r in
                  _jsonl_rows(data.decode("utf-8", "replace"), path, warn=False)}
        out = []
        for r in rows:
            if r.get("trial_id") not in logged:
                logged.add(r.get("trial_id"))
                out.append(json.dumps(r, default=float, sort_keys=True) + "\n")
        buf = "".join(out).encode()
        while buf:
            n = os.write(fd, buf)
            buf = buf[n:]
        os.fsync(fd)


def _logged_ids(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return set()
    return {r.get("trial_id") for r in _jsonl_rows(text, path)}


def _row(t, columns, metrics):
    row = {c: t.cfg.get(c) for c in columns}
    row.update({k: metrics.get(k) for k in METRICS})
    row["dir"] = metrics.get("dir", t.dir)
    return row


def sweep(configs, client=None, out=None, workers=None, threads_per_trial=None, retries=1,
          timeout=None, progress=True) -> "SweepResult":
    """Train every config (a list of dicts of ``python -m salnp train`` options, e.g. from
    grid()) and return the table: a SweepResult, one row per distinct config in the given
    order, with the configs' keys plus test_acc, test_acc_hard, params, macs (inference,
    per image), train_macs (training forward + backward, per image), wall_s (training
    and evaluation seconds) and dir (the trial folder).

    client: None runs a local pool of ``workers`` processes (spawn) with
    ``threads_per_trial`` threads each (workers x threads <= cores; defaults: one worker
    per core, at most one per trial); a ``dask.distributed.Client`` runs the trials as
    Dask tasks.  out: the sweep folder (required); a rerun skips finished trials and
    resumes interrupted ones.  retries: how often a trial that raised or whose worker
    died runs again.  timeout: seconds for the whole sweep (TimeoutError; a rerun
    resumes).  progress: True (a tqdm bar), "lines" (one line per finished trial on
    stderr, as the command line) or False.  Failed trials are left out of the table and
    listed in ``result.failed`` (with a warning); see the module docstring for details."""
    if out is None:
        raise ValueError("sweep: out= is required (the folder for the trials and results)")
    out = os.path.abspath(os.fspath(out))
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"sweep: timeout={timeout!r}: must be a number of seconds > 0 or None")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"sweep: retries={retries!r}: must be an integer >= 0")
    if progress not in (True, False, "lines"):
        raise ValueError(f"sweep: progress={progress!r}: must be True, False or 'lines'")
    trials, columns = _plan(configs, out)
    if client is not None and not callable(getattr(client, "submit", None)):
        raise TypeError(f"sweep: client must be None (local processes) or a "
                        f"dask.distributed.Client, got {type(client).__name__}")
    os.makedirs(os.path.join(out, "trials"), exist_ok=True)
    _write_json(os.path.join(out, "sweep.json"),
                {"columns": columns, "trials": [dict(t.cfg, trial_id=t.id, dir=t.dir)
                                                for t in trials]})
    log_path = os.path.join(out, "results.jsonl")
    logged = _logged_ids(log_path)
    rows, skipped = {}, []
    for t in trials:
        s = _read_summary(t.dir, t.id)
        if s is not None:
            rows[t.id] = _row(t, columns, _metrics(s, t.dir))
            skipped.append(t.id)
    _append_jsonl(log_path, [dict(rows[i], trial_id=i) for i in skipped if i not in logged])
    todo = [t for t in trials if t.id not in rows]

    if client is None:
        workers, threads = _budget(workers, threads_per_trial, max(len(todo), 1), _cores())
        slots = workers
    else:
        threads = threads_per_trial
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"sweep: threads_per_trial={threads!r}: must be an integer >= 1")
        slots = max(1, sum(client.nthreads().values()))
        if threads is None and todo:
            threads = _dask_budget(client)
    prog = _Progress(len(trials), len(skipped), progress, slots)
    result = SweepResult(columns=columns, out=out)
    result.skipped = [t.dir for t in trials if t.id in rows]

    def done(t, metrics):
        if metrics.get("note"):
            _warn(f"sweep: {t.name}: {metrics['note']}")
        row = _row(t, columns, metrics)
        rows[t.id] = row
        _append_jsonl(log_path, [dict(row, trial_id=t.id)])
        if not metrics.get("skipped"):
            result.ran.append(t.dir)
        prog.finished(t.name, dict(row, resumed=metrics.get("resumed")))

    def fail(t, err):
        result.failed.append(dict(t.cfg, dir=t.dir, error=str(err)))
        try:
            with open(os.path.join(t.dir, "error.txt"), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {err}\n")
        except OSError:
            pass
        prog.fail(t.name, err)

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        if todo:
            with _signals_stop_the_sweep():
                if client is None:
                    _run_local(todo, workers, threads, retries, deadline, done, fail)
                else:
                    _run_dask(client, todo, threads, retries, deadline, done, fail)
    finally:
        prog.close()
    result.extend(rows[t.id] for t in trials if t.id in rows)
    result.to_csv(os.path.join(out, "results.csv"))
    if result.failed:
        warnings.warn(f"sweep: {len(result.failed)} of {len(trials)} trials failed (see "
                      f"result.failed and their error.txt); a rerun retries them",
                      RuntimeWarning, stacklevel=2)
    return result


def load(out) -> "SweepResult":
    """The table of the sweep in folder out (its last call's configs), from the trials'
    summary.json files; unfinished trials are left out."""
    out = os.path.abspath(os.fspath(out))
    path = os.path.join(out, "sweep.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"load: {out} holds no sweep (no sweep.json)") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"load: {path}: not valid JSON ({e})") from None
    ok = (isinstance(spec, dict) and isinstance(spec.get("columns"), list)
          and isinstance(spec.get("trials"), list)
          and all(isinstance(c, dict) and isinstance(c.get("trial_id"), str)
                  and isinstance(c.get("dir"), str) for c in spec["trials"]))
    if not ok:
        raise ValueError(f"load: {path}: not the description of a sweep (an object with "
                         "'columns' and 'trials', each trial with its trial_id and dir)")
    result = SweepResult(columns=spec["columns"], out=out)
    for cfg in spec["trials"]:
        tid, tdir = cfg.pop("trial_id"), cfg.pop("dir")
        s = _read_summary(tdir, tid)
        if s is not None:
            row = {c: cfg.get(c) for c in spec["columns"]}
            m = _metrics(s, tdir)
            row.update({k: m.get(k) for k in METRICS})
            row["dir"] = tdir
            result.append(row)
    return result


# ---------------------------------------------------------------- the table
class SweepResult(list):
    """The rows of a sweep (a list of dicts), with ``columns`` (the config keys of the
    rows), ``out`` (the sweep folder), ``ran`` / ``skipped`` (trial folders trained by
    this call / already finished before it) and ``failed`` (configs with their error)."""

    def __init__(self, rows=(), columns=None, out=None, metrics=METRICS):
        super().__init__(rows)
        if columns is None:
            columns = []
            for r in self:
                columns += [k for k in r if k not in columns and k not in metrics
                            and k != "dir" and not k.endswith(("_mean", "_std"))
                            and k not in ("n", "seeds")]
        self.columns = list(columns)
        self.metrics = tuple(metrics)
        self.out = out
        self.ran, self.skipped, self.failed = [], [], []

    def to_csv(self, path=None):
        """Write the rows as CSV (lists as JSON text); path None returns the text."""
        keys = []
        for r in self:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in self:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else
                        ("" if v is None else v) for k, v in r.items()})
        if path is None:
            return buf.getvalue()
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
        return path

    def to_dataframe(self):
        """A pandas DataFrame of the rows (pandas is an optional extra: salnp[sweep])."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover
            raise ImportError("to_dataframe needs pandas: pip install 'salnp[sweep]'") from e
        return pd.DataFrame(list(self))

    def summary(self, metrics=None) -> "SweepResult":
        """Mean and standard deviation (n - 1; None for a single seed) of each metric over
        the seeds, one row per group of rows equal in every config key but the seed:
        the group's keys, n, seeds, and <metric>_mean, <metric>_std."""
        metrics = tuple(self.metrics if metrics is None else metrics)
        keys = [c for c in self.columns if c != "seed"]
        rows = []
        for g in seed_groups(self, keys, metrics):
            for m in metrics:
                g[f"{m}_mean"], g[f"{m}_std"] = g.pop(m)
            rows.append(g)
        res = SweepResult(rows, columns=keys, out=self.out, metrics=metrics)
        res._grouped = True
        return res

    def table(self) -> str:
        """The rows as fixed-width text: the config keys that differ between rows (and
        layer), then the metrics (accuracies in %, MACs in millions)."""
        if not self:
            return "(no finished trials)"
        grouped = getattr(self, "_grouped", False)
        show = [c for c in self.columns
                if c in ("name", "layer") or len({json.dumps(r.get(c), default=str) for r in self}) > 1]
        if grouped:
            show.append("n")
        fmt = {"test_acc": lambda v: f"{100 * v:.2f}", "test_acc_hard": lambda v: f"{100 * v:.2f}",
               "params": lambda v: f"{v:,.0f}", "macs": lambda v: f"{v / 1e6:.2f}",
               "train_macs": lambda v: f"{v / 1e6:.2f}", "wall_s": lambda v: f"{v:.1f}"}
        head_names = {"test_acc": "acc %", "test_acc_hard": "acc hard %", "params": "params",
                      "macs": "MMACs", "train_macs": "train MMACs", "wall_s": "wall s"}

        def cell(r, m):
            f = fmt.get(m, lambda v: f"{v:.4g}")
            if grouped:
                mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
                if mean is None:
                    return "-"
                return f(mean) + ("" if std is None else f" ± {f(std)}")
            v = r.get(m)
            return "-" if v is None else f(v)

        head = show + [head_names.get(m, m) for m in self.metrics]
        body = [[str(r.get(c)) if not isinstance(r.get(c), list) else
                 ",".join(map(str, r.get(c))) for c in show] + [cell(r, m) for m in self.metrics]
                for r in self]
        width = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, width)),
                 "  ".join("-" * w for w in width)]
        lines += ["  ".join(v.rjust(w) for v, w in zip(b, width)) for b in body]
        return "\n".join(lines)

    def __repr__(self):
        return f"SweepResult({len(self)} rows, columns={self.columns})"


# ---------------------------------------------------------------- the command line
def read_grid(path) -> list:
    """The configs of a grid JSON file: a list of configs, or an object with "axes",
    "seeds" and "fixed" (the arguments of grid())."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        extra = set(spec) - {"axes", "seeds", "fixed"}
        if extra:
            raise ConfigError(f"{path}: unknown keys {sorted(extra)}: a grid file holds a list "
                              'of configs or {"axes": {...}, "seeds": [...], "fixed": {...}}')
        fixed = spec.get("fixed", {})
        if not isinstance(fixed, dict):
            raise ConfigError(f"{path}: \"fixed\" must be an object of option: value, got "
                              f"{type(fixed).__name__}")
        return grid(spec.get("axes"), spec.get("seeds", [0]), **fixed)
    raise ConfigError(f"{path}: must hold a list of configs or a grid object")


def run_cli(args) -> int:
    configs = read_grid(args.grid)
    client = None
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs dask.distributed: pip install 'salnp[sweep]'")
        client = Client(args.scheduler, timeout=60)
        print(f"sweep: Dask scheduler {args.scheduler}: {len(client.nthreads())} workers",
              file=sys.stderr)
    try:
        n = len(configs)
        print(f"sweep: {n} configs -> {os.path.abspath(args.out)}", file=sys.stderr)
        res = sweep(configs, client=client, out=args.out, workers=args.workers,
                    threads_per_trial=args.threads_per_trial, retries=args.retries,
                    timeout=args.timeout, progress="lines")
    finally:
        if client is not None:
            client.close()
    print(res.table())
    summ = res.summary()
    if any(r["n"] > 1 for r in summ):
        print("\nmean ± std over seeds:")
        print(summ.table())
    print(f"\n{len(res.ran)} trained, {len(res.skipped)} already done, {len(res.failed)} "
          f"failed; table: {os.path.join(res.out, 'results.csv')}")
    if args.csv:
        res.to_csv(args.csv)
    for f in res.failed:
        print(f"FAILED {f['dir']}: {f['error']}", file=sys.stderr)
    return 1 if res.failed else 0


class _CallableModule(types.ModuleType):
    """salnp.sweep is this module and callable: salnp.sweep(configs, ...) == sweep(...)."""

    def __call__(self, configs, client=None, out=None, workers=None, threads_per_trial=None,
                 retries=1, timeout=None, progress=True) -> SweepResult:
        return sweep(configs, client, out, workers, threads_per_trial, retries, timeout, progress)


sys.modules[__name__].__class__ = _CallableModule
