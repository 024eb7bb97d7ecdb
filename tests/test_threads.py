"""The thread model (libsal/src/internal/pool.c, python/salnp/_threads.py).

- a process forked after multi-threaded work runs ops without hanging;
- idle workers sleep (no CPU time burnt between ops);
- results at 1 and 2 threads agree;
- set_num_threads(None), the cap, fit(threads=...) restoring, threadpoolctl."""
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import salnp
from salnp import ops


def _work(rng, n=8):
    """A few ops covering the pool's users: direct 3x3 conv (fwd, bwd), im2col conv with
    stride 2, 1x1 GEMM (split over threads), BN+ReLU, shift, SAL."""
    x = rng.standard_normal((n, 16, 16, 16)).astype(np.float32)
    w3 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
    a = rng.standard_normal((16, 16, 9)).astype(np.float32)
    out = {}
    out["conv3"] = ops.conv2d(x, w3, padding=1)
    out["conv3_s2"] = ops.conv2d(x, w3, stride=2, padding=1)
    out["conv1"] = ops.conv2d(x, w1)
    gy = rng.standard_normal(out["conv3"].shape).astype(np.float32)
    out["conv3_dx"], out["conv3_dw"] = ops.conv2d_backward(x, w3, gy, padding=1)
    g1 = rng.standard_normal(out["conv1"].shape).astype(np.float32)
    out["conv1_dx"], out["conv1_dw"] = ops.conv2d_backward(x, w1, g1)
    gamma = np.ones(16, np.float32)
    beta = np.zeros(16, np.float32)
    out["bnrelu"] = ops.batch_norm_relu(x, gamma, beta)[0]
    out["shift"] = ops.shift(x, ops.default_shift_offsets(16))
    out["sal"] = ops.sal_conv2d(x, w3, a, beta=5.0, padding=1)
    return out


def _child(q):
    try:
        t = time.perf_counter()
        res = _work(np.random.default_rng(7))
        q.put(("ok", time.perf_counter() - t, float(res["conv3"].sum())))
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put(("error", repr(e), 0.0))


def test_fork_after_two_thread_ops_does_not_hang():
    salnp.set_num_threads(2)
    _work(np.random.default_rng(1), n=16)  # the pool's workers exist now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("a child forked after 2-thread ops hung in its first conv (60 s)")
    assert p.exitcode == 0
    status, t, _ = q.get(timeout=5)
    assert status == "ok", t


def test_fork_after_network_step_does_not_hang():
    salnp.set_num_threads(2)
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    x = np.random.default_rng(2).standard_normal((8, 3, 16, 16)).astype(np.float32)
    net.train()
    net.forward(x)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child(q):
        try:
            y = net.forward(x)
            q.put(("ok", float(np.asarray(y).sum())))
        except BaseException as e:  # pragma: no cover
            q.put(("error", repr(e)))

    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("a child forked after a 2-thread network forward hung (60 s)")
    assert p.exitcode == 0
    assert q.get(timeout=5)[0] == "ok"


def test_idle_workers_sleep():
    """After a 2-thread op the process uses (almost) no CPU while it sleeps."""
    salnp.set_num_threads(2)
    _work(np.random.default_rng(3), n=16)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.5)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # the workers poll for at most 100 us (SAL_SPIN_US) before they sleep
    assert cpu < 0.02, f"{cpu:.3f} s of CPU while idle for 0.5 s: a waiting thread spins"


def test_woken_workers_keep_their_cpu_masks():
    """A caller that wakes sleeping workers leaves its own CPU out of their masks for a
    moment, so that the kernel wakes them on another CPU (pool.c move_sleepers_away); each
    worker puts its mask back as soon as it runs.  After many such wakes every thread of
    the process has the mask it started with: no thread stays pinned."""
    salnp.set_num_threads(2)
    mask = os.sched_getaffinity(0)                 # this thread's: the pool never changes it
    for k in range(20):
        _work(np.random.default_rng(k), n=16)      # wakes the workers (started by the first)
        time.sleep(0.002)                          # > 100 us: they fall asleep again
    def narrowed():
        return [t for t in os.listdir("/proc/self/task") if os.sched_getaffinity(int(t)) != mask]

    deadline = time.monotonic() + 10.0             # a worker woken last puts its mask back
    while narrowed() and time.monotonic() < deadline:   # once it runs: wait for that, under
        time.sleep(0.01)                                 # load too
    assert not narrowed(), f"threads {narrowed()} kept a narrowed CPU mask"


_POLLING_CHILD = r"""
import os, sys, threading, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import test_threads as tt
import salnp
salnp.set_num_threads(2)
mask = os.sched_getaffinity(0)
me = threading.get_native_id()
cpus = sorted(mask)[:2]
tt._work(np.random.default_rng(0), n=4)        # the workers exist, with the full mask
for k in range(30):
    # the caller moves to the other CPU (as when the kernel woke it onto its worker's), and
    # the workers, polling for 50 ms after a call (SAL_SPIN_US), are put there too, their
    # masks left whole, so that the next call finds one polling on the caller's new CPU
    cpu = cpus[k % 2]
    os.sched_setaffinity(0, {cpu})              # this thread only (Linux: per thread)
    for t in os.listdir("/proc/self/task"):
        if int(t) != me:
            os.sched_setaffinity(int(t), {cpu})
            os.sched_setaffinity(int(t), mask)
    tt._work(np.random.default_rng(k), n=4)
os.sched_setaffinity(0, mask)
deadline = time.monotonic() + 10.0
def narrowed():
    return [t for t in os.listdir("/proc/self/task")
            if int(t) != me and os.sched_getaffinity(int(t)) != mask]
while narrowed() and time.monotonic() < deadline:
    time.sleep(0.01)
print("narrowed", narrowed())
"""


def test_polling_workers_moved_off_the_callers_cpu_get_their_masks_back():
    """A caller finding a polling worker on its own CPU takes that CPU out of the worker's
    mask (pool.c move_workers_away; the kernel had woken the caller onto its worker's CPU
    and the next call ran both on one CPU), and the worker puts its mask back when it takes
    the call.  A child process (workers polling 50 ms, SAL_SPIN_US) moves its caller to the
    other CPU and puts its workers there before each call; afterwards every other thread has
    the mask it started with (this fails with the put-back of the polling case left out)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    env = dict(os.environ, SAL_SPIN_US="50000")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(salnp.__file__)), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", _POLLING_CHILD, os.path.dirname(__file__)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "narrowed []", p.stdout


def test_one_and_two_threads_agree():
    salnp.set_num_threads(1)
    r1 = _work(np.random.default_rng(11), n=12)
    salnp.set_num_threads(2)
    r2 = _work(np.random.default_rng(11), n=12)
    for k in r1:
        # the 3x3 / stride 1 / padding 1 convolution runs Winograd F(4x4, 3x3): its blocks of
        # tiles depend on the thread count and its error reaches ~1e-5 of the largest value
        atol = max(1e-4, 3e-5 * float(np.abs(r1[k]).max()))
        np.testing.assert_allclose(r2[k], r1[k], rtol=1e-5, atol=atol, err_msg=k)


def test_network_step_one_and_two_threads_agree():
    x = np.random.default_rng(4).standard_normal((16, 3, 16, 16)).astype(np.float32)
    y = (np.arange(16) % 4).astype(np.int32)
    grads = []
    for t in (1, 2):
        salnp.set_num_threads(t)
        net = salnp.models.resnet(8, 4, "sal", seed=3)
        net.train()
        net.zero_grad()
        logits = net.forward(x)
        net.backward(ops.cross_entropy_backward(logits, y))
        grads.append((np.array(logits), np.array(net.arena.grads)))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-3, atol=1e-4)


def test_set_num_threads_none_restores_default():
    from salnp import _threads
    default = _threads.default_num_threads()
    salnp.set_num_threads(1)
    assert salnp.get_num_threads() == 1
    salnp.set_num_threads(None)
    assert salnp.get_num_threads() == default


@pytest.mark.parametrize("bad", [0, -1, 10**6, 257])
def test_set_num_threads_cap(bad):
    with pytest.raises(ValueError, match=f"n={bad}"):
        salnp.set_num_threads(bad)


@pytest.mark.parametrize("bad", [True, 1.5, "2"])
def test_set_num_threads_type(bad):
    with pytest.raises(ValueError, match="n="):
        salnp.set_num_threads(bad)


def test_set_num_threads_cap_allows_oversubscription():
    from salnp import _threads
    cap = _threads.max_num_threads()
    assert cap == min(256, 4 * len(os.sched_getaffinity(0)))
    salnp.set_num_threads(cap)
    assert salnp.get_num_threads() == cap
    r = _work(np.random.default_rng(5), n=4)   # more threads than CPUs: still correct
    salnp.set_num_threads(1)
    r1 = _work(np.random.default_rng(5), n=4)
    np.testing.assert_allclose(r["conv3"], r1["conv3"], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=f"n={cap + 1}"):
        salnp.set_num_threads(cap + 1)


def test_fit_restores_threads():
    salnp.set_num_threads(2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 3, 8, 8), dtype=np.uint8)
    labels = (np.arange(32) % 4).astype(np.int64)
    train = salnp.data.Dataset(images, labels)
    net = salnp.models.resnet(8, 4, "cl", seed=0, num_classes=4)
    salnp.fit(net, train, epochs=1, batch_size=16, progress=False, threads=1)
    assert salnp.get_num_threads() == 2


def test_threadpoolctl_reports_and_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    salnp.set_num_threads(2)
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "salnp"]
    assert len(info) == 1, threadpoolctl.threadpool_info()
    assert info[0]["num_threads"] == 2
    with threadpoolctl.threadpool_limits(limits=1, user_api="salnp"):
        assert salnp.get_num_threads() == 1
    assert salnp.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(limits=1):   # every library
        assert salnp.get_num_threads() == 1
    assert salnp.get_num_threads() == 2


def test_fork_after_exported_inference_does_not_hang():
    salnp.set_num_threads(2)
    net = salnp.models.resnet(8, 8, "sal", seed=0)
    net.beta = 70.0
    inf = salnp.export(net)
    x = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    inf.forward(x)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child(q):
        inf.forward(x)
        q.put("ok")

    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(15)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("a child forked after 2-thread exported inference hung (15 s)")
    assert p.exitcode == 0
