"""What training keeps between forward and backward (sal/net.h): a block's first BN + ReLU
output is replayed in backward instead of kept, and net.checkpointing = "blocks" / "stages"
recomputes the inside of each block / stage.  Both must give bit for bit the outputs,
gradients and BN statistics of keeping everything; the executor's buffers show how much
less is allocated."""
import numpy as np
import pytest

import salnp

CASES = [("cl", {}), ("sal", {}), ("sal", {"shared": True}), ("sl", {"expansion": 2}),
         ("asl", {"expansion": 2}), ("asl-post", {"expansion": 2})]


def _train(layer, kw, mode, x, hard=False):
    net = salnp.models.resnet(20, 6, layer, seed=4, **kw)
    net.checkpointing = mode
    out = []
    for _ in range(2):           # twice: the second reuses the buffers and the recomputation
        y = net.forward(x, train=True, hard=hard)
        net.zero_grad()
        net.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape) / y.size)
        out.append((y.copy(), net.arena.grads.copy(), net.arena.buffers.copy()))
    return out


@pytest.mark.parametrize("layer,kw", CASES, ids=[f"{l}{'-shared' if k.get('shared') else ''}"
                                                  for l, k in CASES])
@pytest.mark.parametrize("mode", ["blocks", "stages"])
def test_checkpointing_is_bit_exact(layer, kw, mode, rng):
    x = rng.standard_normal((5, 3, 13, 11), dtype=np.float32)     # odd sizes, stride 2 inside
    ref = _train(layer, kw, None, x)
    got = _train(layer, kw, mode, x)
    for (y0, g0, b0), (y1, g1, b1) in zip(ref, got):
        assert np.array_equal(y0, y1) and np.array_equal(g0, g1) and np.array_equal(b0, b1)


def test_checkpointing_can_be_changed_and_refuses_bad_values(rng):
    x = rng.standard_normal((3, 3, 8, 8), dtype=np.float32)
    net = salnp.models.resnet(8, 4, "sal", seed=1)
    y = net.forward(x, train=True)
    net.checkpointing = "blocks"            # leaves no forward to differentiate
    with pytest.raises(RuntimeError, match="forward"):
        net.backward(np.ones_like(y))
    y2 = net.forward(x, train=True)
    net.backward(np.ones_like(y2))
    assert np.all(np.isfinite(net.arena.grads))
    net.checkpointing = None
    for bad in ("block", 1, True):
        with pytest.raises(ValueError, match="net.checkpointing"):
            net.checkpointing = bad
    assert net.checkpointing is None
