"""Streamed evaluation forwards (sal/net.h "Streams", libsal/src/net.c): the batch cut into
chunks that each thread runs through every op in a frame of its own.  Against the
whole-batch forward of the same engine (bit for bit: no kernel's sums depend on the batch
size), against PyTorch running the same exported program (salnp.torch.to_torch) and
against onnxruntime on the ONNX export; every family's exported network and training
networks in eval mode; odd chunk remainders; 1 and 2 threads; every ISA.  Then what a
streamed forward leaves: backward, a thread-budget change, a forked child."""
import multiprocessing as mp

import numpy as np
import pytest
import torch

import salnp
from salnp import _core
from conftest import assert_close

FAMILIES = {"sal": dict(layer="sal"), "sal-shared": dict(layer="sal", shared=True),
            "sl": dict(layer="sl", expansion=6), "asl": dict(layer="asl", expansion=6),
            "cl": dict(layer="cl")}


def _trained_like(cfg, rng, depth=20, width=16):
    """A ResNet whose BN statistics and SAL attention are not at their init: BN weights
    and biases drawn, three training-mode forwards, ASL offsets up to +-2, beta 70."""
    net = salnp.models.resnet(depth, width, seed=int(rng.integers(1 << 30)), **cfg)
    for name, p in net.named_parameters():
        if name.endswith("shift.shift"):
            p[...] = rng.uniform(-2, 2, p.shape)
        elif ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    for _ in range(3):
        net.forward(rng.standard_normal((8, 3, 16, 16), dtype=np.float32), train=True)
    net.beta = 70.0
    return net


def _engine(model, hw):
    return model.engine.get((3, hw, hw))


def _forward(model, x, chunk, **kw):
    _core.net_set_streams(_engine(model, x.shape[2]), chunk)
    return model.forward(x, **kw)


@pytest.fixture(scope="module")
def exported():
    rng = np.random.default_rng(20)
    return {k: salnp.export(_trained_like(cfg, rng)) for k, cfg in FAMILIES.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("threads", [1, 2])
def test_streams_equal_whole_batch(exported, family, threads, isa, rng):
    """Every exported family at batches 1, 2, 5, 17 (16x16 images) with chunks of 1, 3
    (remainders 2, 2, 2), 16 and auto, bit for bit against streams off."""
    inf = exported[family]
    salnp.set_num_threads(threads)
    x = rng.standard_normal((17, 3, 16, 16), dtype=np.float32)
    for n in (1, 2, 5, 17):
        ref = _forward(inf, x[:n], 0)
        for chunk in (1, 3, 16, -1):
            got = _forward(inf, x[:n], chunk)
            np.testing.assert_array_equal(got, ref, err_msg=f"{family} n={n} chunk={chunk}")
    _core.net_set_streams(_engine(inf, 16), -1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_smaller_than_threads_same_logits_every_call(exported, family, rng):
    """Batch 1 on 2 threads runs one stream whose ops use both threads or one, chosen by
    timing every forward (the first 4 alternate, every 16th after tries the other way:
    net.c WIDE_TRIALS, WIDE_EXPLORE): 300 forwards in a row, so both ways many times,
    every one bit for bit the whole-batch forward's."""
    inf = exported[family]
    salnp.set_num_threads(2)
    x = rng.standard_normal((1, 3, 16, 16), dtype=np.float32)
    ref = _forward(inf, x, 0)
    _core.net_set_streams(_engine(inf, 16), -1)
    for k in range(300):
        np.testing.assert_array_equal(inf.forward(x), ref, err_msg=f"{family} call {k}")


@pytest.mark.parametrize("family", ["sal", "sal-shared", "sl", "asl"])
def test_streams_batch_128_against_torch_and_onnxruntime(exported, family, rng):
    """Batch 128 at 32x32 (the automatic chunk of the benchmarks) at 2 threads: the
    streamed logits against PyTorch running the same exported program and against
    onnxruntime on the ONNX export, within 1e-4 of the largest logit, and equal to the
    whole-batch forward."""
    ort = pytest.importorskip("onnxruntime")
    import salnp.torch as st

    inf = exported[family]
    salnp.set_num_threads(2)
    x = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)
    got = _forward(inf, x, -1)
    with torch.no_grad():
        ref = st.to_torch(inf)(torch.from_numpy(x)).numpy()
    scale = float(np.abs(ref).max())
    assert_close(got, ref, 1e-4 * scale, 0, what=f"{family}: streams vs PyTorch")
    sess = ort.InferenceSession(salnp.export.to_onnx(inf, None, (3, 32, 32)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert_close(got, sess.run(None, {"input": x})[0], 1e-4 * scale, 0,
                 what=f"{family}: streams vs onnxruntime")
    np.testing.assert_array_equal(got, _forward(inf, x, 0))


@pytest.mark.parametrize("cfg", [dict(layer="sal"), dict(layer="sl", expansion=3),
                                 dict(layer="asl", expansion=3), dict(layer="cl")],
                         ids=["sal", "sl", "asl", "cl"])
@pytest.mark.parametrize("threads", [1, 2])
def test_training_network_eval_streams(cfg, threads, isa, rng):
    """A training network's evaluation forward (BN with running statistics, soft and hard
    SAL attention, ASL's bilinear shifts) streamed equals its whole-batch one; training
    forwards never stream (a forced chunk leaves them as they were)."""
    net = _trained_like(cfg, rng, depth=8, width=8)
    salnp.set_num_threads(threads)
    x = rng.standard_normal((5, 3, 16, 16), dtype=np.float32)
    for hard in (False, True):
        ref = _forward(net, x, 0, train=False, hard=hard)
        for chunk in (1, 2, -1):
            np.testing.assert_array_equal(_forward(net, x, chunk, train=False, hard=hard), ref,
                                          err_msg=f"{cfg} hard={hard} chunk={chunk}")
    bufs = net.arena.buffers.copy()
    a = _forward(net, x, 0, train=True)
    net.arena.buffers[...] = bufs
    b = _forward(net, x, 2, train=True)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg", [dict(layer="sal"), dict(layer="sl", expansion=3),
                                 dict(layer="cl")], ids=["sal", "sl", "cl"])
def test_backward_after_streamed_forward(cfg, rng):
    """A backward after a streamed evaluation forward sees the whole-batch activations of
    that forward: the same gradients, bit for bit, as after a whole-batch one (at 2
    threads, chunks of 2 over 5 images)."""
    net = _trained_like(cfg, rng, depth=8, width=8)
    salnp.set_num_threads(2)
    x = rng.standard_normal((5, 3, 16, 16), dtype=np.float32)
    grads = []
    for chunk in (0, 2):
        y = _forward(net, x, chunk, train=False, hard=True)
        net.zero_grad()
        net.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape) / y.size)
        grads.append(net.arena.grads.copy())
    assert np.abs(grads[0]).sum() > 0
    np.testing.assert_array_equal(grads[1], grads[0])
    # a later smaller streamed forward, then backward: its own batch
    y = _forward(net, x[:3], 1, train=False)
    net.zero_grad()
    net.backward(np.ones_like(y) / y.size)
    g3 = net.arena.grads.copy()
    _forward(net, x[:3], 0, train=False)
    net.zero_grad()
    net.backward(np.ones_like(y) / y.size)
    np.testing.assert_array_equal(g3, net.arena.grads)


def test_thread_budget_change_between_forwards(exported, rng):
    """2, 1, 2 threads in turn on one engine: every result equal to the whole-batch one
    (the frames are made again for the new thread count), and repeatable."""
    inf = exported["sl"]
    x = rng.standard_normal((9, 3, 16, 16), dtype=np.float32)
    ref = _forward(inf, x, 0)
    outs = []
    for nt in (2, 1, 2, 1):
        salnp.set_num_threads(nt)
        outs.append(_forward(inf, x, 2))
    for o in outs:
        np.testing.assert_array_equal(o, ref)


def test_streams_in_forked_child(exported, rng):
    """A child forked after 2-thread streamed forwards runs a streamed forward (the pool
    starts new workers there) and gets the parent's logits."""
    inf = exported["sal-shared"]
    salnp.set_num_threads(2)
    x = rng.standard_normal((12, 3, 16, 16), dtype=np.float32)
    ref = _forward(inf, x, 3)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child(q):
        q.put(inf.forward(x).tobytes())

    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("a child forked after streamed forwards hung (60 s)")
    assert p.exitcode == 0
    np.testing.assert_array_equal(np.frombuffer(q.get(), np.float32).reshape(ref.shape), ref)


def test_set_streams_refuses_bad_chunk(exported):
    eng = _engine(exported["sal"], 16)
    with pytest.raises(ValueError, match="chunk=-2"):
        _core.net_set_streams(eng, -2)
    with pytest.raises(TypeError, match="engine"):
        _core.net_set_streams("net", 1)


@pytest.mark.parametrize("n, chunk", [(12, 3), (1, -1)])
def test_weights_changed_between_streamed_forwards(exported, rng, n, chunk):
    """The stream frames keep each GATHER's plan (its pairs sorted) from forward to forward
    and take the weights afresh each call: weights changed in place between two forwards
    are those the second one uses (against streams off with the same weights).  12 images
    in chunks of 3 on 2 frames; 1 image on 2 threads: one stream whose ops use both."""
    inf = exported["sal"]
    salnp.set_num_threads(2)
    x = rng.standard_normal((n, 3, 16, 16), dtype=np.float32)   # whole chunks: no remainder
    saved = inf.weights.copy()
    try:
        first = _forward(inf, x, chunk)
        np.testing.assert_array_equal(_forward(inf, x, chunk), first)   # the kept plans
        inf.weights[...] *= np.float32(0.5)
        second = _forward(inf, x, chunk)
        np.testing.assert_array_equal(second, _forward(inf, x, 0))
        assert not np.array_equal(first, second)
        inf.weights[...] = saved
        np.testing.assert_array_equal(_forward(inf, x, chunk), first)
    finally:
        inf.weights[...] = saved
