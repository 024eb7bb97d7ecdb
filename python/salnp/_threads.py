"""salnp's thread count: set_num_threads / get_num_threads, and threadpoolctl support.

libsal runs its loops and splits its GEMMs over one persistent pool of POSIX threads
(libsal/src/internal/pool.c): idle workers sleep, a process forked after a multi-threaded
op starts new workers instead of hanging, and BLIS is always called with one thread.
"""
from __future__ import annotations

import functools
import numbers
import os

from . import _core

# The count libsal uses when nobody set one (SAL_NUM_THREADS, OMP_NUM_THREADS, or the CPUs
# this process may run on), read once at import, before anything can have set it.
_DEFAULT = _core.get_num_threads()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def max_num_threads() -> int:
    """The largest count set_num_threads accepts: 4 x the usable CPUs, at most 256."""
    return min(256, 4 * _cpu_count())


def set_num_threads(n: int | None) -> None:
    """Set the threads used by libsal's loops and GEMMs; None restores the default.

    The default is SAL_NUM_THREADS, else OMP_NUM_THREADS, else the number of CPUs this
    process may run on.  n must be an integer in [1, max_num_threads()] (4 x CPUs, at
    most 256): more threads than that only wait for each other on a shared machine."""
    if n is None:
        _core.set_num_threads(_DEFAULT)
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError(f"set_num_threads: n={n!r}: must be an integer or None")
    cap = max_num_threads()
    if not 1 <= int(n) <= cap:
        raise ValueError(f"set_num_threads: n={int(n)}: must be in [1, {cap}] "
                         f"(4 x the {_cpu_count()} usable CPUs, at most 256), or None for "
                         f"the default ({_DEFAULT})")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by libsal (default: SAL_NUM_THREADS, OMP_NUM_THREADS, or the CPUs)."""
    return _core.get_num_threads()


def default_num_threads() -> int:
    """The count set_num_threads(None) restores."""
    return _DEFAULT


def restores_threads(f):
    """Decorator: the thread count in force before the call is back when it returns."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        before = _core.get_num_threads()
        try:
            return f(*args, **kwargs)
        finally:
            _core.set_num_threads(before)
    return wrapper


def _register_threadpoolctl() -> None:
    """Make threadpoolctl.threadpool_info / threadpool_limits see salnp (user_api
    "salnp"), when threadpoolctl is installed.  The controller finds salnp's extension
    module among the loaded libraries by its exported symbol sal_get_num_threads."""
    try:
        import threadpoolctl
    except ImportError:
        return
    if getattr(threadpoolctl, "_salnp_registered", False) or not hasattr(threadpoolctl, "register"):
        return

    class SalnpController(threadpoolctl.LibController):
        user_api = "salnp"
        internal_api = "libsal"
        filename_prefixes = ("_core",)
        check_symbols = ("sal_get_num_threads",)

        def get_num_threads(self):
            return get_num_threads()

        def set_num_threads(self, num_threads):
            set_num_threads(min(int(num_threads), max_num_threads()))

        def get_version(self):
            return _core.__version__

        def set_additional_attributes(self):
            info = _core.blas_info()
            self.blis_flavour = info.get("flavour")
            self.threading_layer = "pthread pool"

    threadpoolctl.register(SalnpController)
    threadpoolctl._salnp_registered = True


_register_threadpoolctl()
