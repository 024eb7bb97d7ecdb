"""Memory and references (issue 6): 10,000 calls of every op on tiny arrays leave the
reference counts of the inputs and the process RSS flat; so do repeated network
forward/backward, count and export.

RSS is read from /proc/self/statm and the C heap in use from glibc's mallinfo2 (RSS alone
misses a leak that reuses memory freed by earlier tests), after a warm-up; the larger
growth must stay under the slack (RSS_SLACK_MB, default 3 MiB) for allocator noise.  A leak of one output array per call (>= 600 bytes here) would
grow RSS by >= 6 MiB over 10,000 calls.  About 20-30 s in all.
"""
from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

import salnp
from salnp import ops

N_CALLS = int(os.environ.get("SALNP_MEMORY_CALLS", "10000"))
SLACK = float(os.environ.get("RSS_SLACK_MB", "3")) * 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")


@pytest.fixture(autouse=True)
def _one_thread():
    salnp.set_num_threads(1)   # no OpenMP fork/join per tiny call (conftest restores)


class _Mallinfo2(__import__("ctypes").Structure):
    _fields_ = [(n, __import__("ctypes").c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mallinfo():
    import ctypes
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _Mallinfo2
    return f


_MALLINFO = _mallinfo()


def heap():
    """Bytes in use in the C heap (glibc mallinfo2: uordblks + mmapped blocks), or RSS.
    Unlike RSS it does not hide a leak that reuses memory freed by earlier tests."""
    if _MALLINFO is None:
        return rss()
    m = _MALLINFO()
    return m.uordblks + m.hblkhd


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _f(shape, seed, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _cases():
    x = _f((2, 3, 5, 5), 1)
    w = _f((4, 3, 3, 3), 2)
    gy = _f((2, 4, 5, 5), 3)
    x9 = _f((2, 9, 4, 4), 4)
    offi = np.asarray(ops.default_shift_offsets(9))
    offf = _f((9, 2), 5, -1.5, 1.5)
    gy9 = _f((2, 9, 4, 4), 6)
    lg = _f((4, 3, 9), 7, 0, 1)
    g3, b3 = _f((3,), 8, 0.5, 1.5), _f((3,), 9)
    y, sm, si = ops.batch_norm(x, g3, b3)
    yr, smr, sir = ops.batch_norm_relu(x, g3, b3, residual=x)
    lx, lw, lb, lgy = _f((4, 6), 10), _f((5, 6), 11), _f((5,), 12), _f((4, 5), 13)
    lab = np.array([0, 4, 2, 1], np.int32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    p, gr, mom = _f((50,), 14), _f((50,), 15), np.zeros(50, np.float32)
    # (name, function, args, kwargs); inputs in args/kwargs get their refcounts checked
    return [
        ("conv2d", ops.conv2d, (x, w), dict(stride=1, padding=1)),
        ("conv2d_backward", ops.conv2d_backward, (x, w, gy), dict(stride=1, padding=1)),
        ("shift", ops.shift, (x9, offi), {}),
        ("shift_backward", ops.shift_backward, (gy9, offi, (2, 9, 4, 4)), {}),
        ("default_shift_offsets", ops.default_shift_offsets, (9,), {}),
        ("active_shift", ops.active_shift, (x9, offf), {}),
        ("active_shift_backward", ops.active_shift_backward, (x9, offf, gy9), {}),
        ("normalize_shift_grad", ops.normalize_shift_grad, (offf,), {}),
        ("sal_conv2d", ops.sal_conv2d, (x, w, lg, 2.0), {}),
        ("sal_conv2d_backward", ops.sal_conv2d_backward, (x, w, lg, 2.0, gy), {}),
        ("sal_probs", ops.sal_probs, (lg, 2.0), {}),
        ("batch_norm", ops.batch_norm, (x, g3, b3, rm, rv), {}),
        ("batch_norm_backward", ops.batch_norm_backward, (x, g3, gy[:, :3].copy(), sm, si), {}),
        ("batch_norm_relu", ops.batch_norm_relu, (x, g3, b3), dict(residual=x)),
        ("batch_norm_relu_backward", ops.batch_norm_relu_backward,
         (x, g3, yr, gy[:, :3].copy(), smr, sir), {}),
        ("relu", ops.relu, (x,), {}),
        ("relu_backward", ops.relu_backward, (x, x), {}),
        ("add", ops.add, (x, x), {}),
        ("global_avg_pool", ops.global_avg_pool, (x,), {}),
        ("global_avg_pool_backward", ops.global_avg_pool_backward, (lx[:2, :3].copy(), (2, 3, 5, 5)),
         {}),
        ("linear", ops.linear, (lx, lw, lb), {}),
        ("linear_backward", ops.linear_backward, (lx, lw, lgy), {}),
        ("cross_entropy", ops.cross_entropy, (lgy, lab), {}),
        ("cross_entropy_backward", ops.cross_entropy_backward, (lgy, lab), {}),
        ("sgd_step", ops.sgd_step, (p, gr, mom, 1e-6), dict(momentum=0.9)),
        # conversions on the way in (a copy per call that must be released)
        ("conv2d_float64_noncontig", ops.conv2d, (x.astype(np.float64)[:, :, ::-1], w), {}),
        ("shift_int64_offsets", ops.shift, (x9, offi.astype(np.int64)), {}),
        ("cross_entropy_int64_labels", ops.cross_entropy, (lgy, lab.astype(np.int64)), {}),
        # error paths must release what they took too
        ("conv2d_error", ops.conv2d, (x, w[:, :2]), {}),
        ("linear_error", ops.linear, (lx, lw, lb[:3]), {}),
        ("sal_conv2d_error", ops.sal_conv2d, (x, w, lg, float("nan")), {}),
    ]


CASES = _cases()


def _leak_check(fn, args, kwargs, n=N_CALLS, warm=300):
    inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, (np.ndarray, tuple))]

    def call():
        try:
            fn(*args, **kwargs)
        except (TypeError, ValueError):
            pass
    for _ in range(warm):
        call()
    gc.collect()
    refs0 = [sys.getrefcount(a) for a in inputs]
    r0, h0 = rss(), heap()
    for _ in range(n):
        call()
    gc.collect()
    r1, h1 = rss(), heap()
    refs1 = [sys.getrefcount(a) for a in inputs]
    # the larger of the two growths: RSS (what the OS sees) and the heap in use (precise)
    return refs0, refs1, max(r1 - r0, h1 - h0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_refcounts_and_rss_flat(case):
    name, fn, args, kwargs = case
    refs0, refs1, grew = _leak_check(fn, args, kwargs)
    assert refs0 == refs1, f"{name}: input refcounts {refs0} -> {refs1} after {N_CALLS} calls"
    assert grew <= SLACK, f"{name}: memory grew {grew / 2**20:.2f} MiB over {N_CALLS} calls"
    print(f"{name}: {N_CALLS} calls, RSS/heap {grew / 2**10:+.0f} KiB, refcounts flat")


def test_network_forward_backward_count_export_flat():
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=0)
    x = _f((2, 3, 8, 8), 20)
    g = _f((2, 4), 21)

    def step():
        net.forward(x, train=True)
        net.zero_grad()
        net.backward(g)
        net.forward(x, train=False, hard=True)
    refs0, refs1, grew = _leak_check(step, (), {}, n=1000, warm=50)
    assert grew <= SLACK, f"forward/backward: RSS grew {grew / 2**20:.2f} MiB"
    assert sys.getrefcount(x) == sys.getrefcount(x)   # (x is captured by the closure)

    def account():
        salnp.count(net, (3, 8, 8))
        e = salnp.export(net)
        e.forward(x)
        e.count((3, 8, 8))
    _, _, grew = _leak_check(account, (), {}, n=300, warm=20)
    assert grew <= SLACK, f"count/export: RSS grew {grew / 2**20:.2f} MiB"
    # new networks built and dropped: engines (C objects behind capsules) are freed
    def build():
        n2 = salnp.models.resnet(8, 2, "cl", num_classes=4)
        n2.forward(x)
    _, _, grew = _leak_check(build, (), {}, n=100, warm=10)
    assert grew <= SLACK, f"build/drop networks: RSS grew {grew / 2**20:.2f} MiB"


def test_the_detector_sees_a_leak():
    """The RSS check is not blind: keeping every output of 10,000 calls is seen."""
    x = np.ones((2, 3, 5, 5), np.float32)
    kept = []
    _, _, grew = _leak_check(lambda: kept.append(ops.relu(x)), (), {})
    assert grew > SLACK, f"kept {len(kept)} outputs, RSS grew only {grew / 2**20:.2f} MiB"
    x2 = np.ones(3, np.float32)
    held = []
    refs0, refs1, _ = _leak_check(lambda a: held.append(a), (x2,), {}, n=10, warm=0)
    assert refs1[0] == refs0[0] + 10
