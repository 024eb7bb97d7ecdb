"""Whole networks against PyTorch twins: one training step, every gradient, the update."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
import torch_ref
from torch_ref import from_salnp

CASES = [
    dict(layer="cl", width=4),
    dict(layer="sal", width=4),
    dict(layer="sal", width=4, shared=True),
    dict(layer="sl", width=4, expansion=3),
    dict(layer="asl", width=4, expansion=2),
]


def _batch(rng, n=3, c=3, h=32):
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_one_training_step_matches_torch(cfg, rng):
    beta = 3.0
    net = salnp.models.resnet(depth=20, seed=int(rng.integers(1 << 30)), **cfg)
    net.beta = beta
    if cfg["layer"] == "asl":   # move offsets off the integer grid, away from kinks
        for name, p in net.named_parameters():
            if name.endswith("shift.shift"):
                p[...] = rng.uniform(-1.4, 1.4, p.shape).round(1) + 0.05
    # The twin runs in float64.  A pre-ReLU value within float32 noise of 0 is a kink: the
    # gradient jumps there (seen: 2 % on the stem weights), so draw the batch until every
    # ReLU input is at least 1e-5 away from 0 in the reference.  The chance that a batch has
    # no such value falls with the number of ReLU inputs: at 32x32 it was ~10 % for SL e=3
    # and ~3 % for ASL e=2, so 20 draws often all failed and the last (kinked) batch was
    # used silently.  At 16x16 it is ~50 %; the test fails loudly if no batch qualifies.
    tnet = from_salnp(net, beta).double()
    margin = 0.0
    for _ in range(40):
        x, y = _batch(rng, h=16)
        torch_ref.RELU_MARGIN[0] = float("inf")
        with torch.no_grad():   # a copy: train-mode forwards move running statistics
            copy.deepcopy(tnet).train()(torch.tensor(x, dtype=torch.float64))
        margin = torch_ref.RELU_MARGIN[0]
        if margin > 1e-5:
            break
    assert margin > 1e-5, f"no batch in 40 keeps every ReLU input 1e-5 from 0 (last: {margin:.3g})"

    # ours: forward, loss, backward, SGD step
    logits = net.forward(x, train=True)
    loss = salnp.ops.cross_entropy(logits, y)
    net.zero_grad()
    net.backward(salnp.ops.cross_entropy_backward(logits, y))
    grads = {k: g.copy() for k, g in net.named_grads()}
    salnp.ops.sgd_step(net.arena.params, net.arena.grads, net.arena.momentum, 0.1, momentum=0.9,
                       weight_decay=5e-4, first_step=True)

    # torch
    tnet.train()
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tlogits = tnet(torch.tensor(x, dtype=torch.float64))
    tloss = F.cross_entropy(tlogits, torch.tensor(y, dtype=torch.long))
    opt.zero_grad()
    tloss.backward()
    tgrads = {k: p.grad.numpy().copy() for k, p in tnet.named_parameters()}
    opt.step()

    assert_close(logits, tlogits.detach().numpy(), atol=2e-4, rtol=2e-4, what="logits")
    assert abs(loss - tloss.item()) <= 1e-4 * (1 + abs(tloss.item()))
    assert set(grads) == set(tgrads)
    for k in grads:
        # gradients sum over N*H*W positions through 20 layers: float32 accumulation order
        # differs from torch's, so the tolerance scales with the gradient's own magnitude
        scale = float(np.abs(tgrads[k]).max()) + 1e-12
        assert_close(grads[k], tgrads[k], atol=2e-3 * scale + 1e-6, rtol=2e-3, what=f"grad {k}")
    tstate = tnet.state_dict()
    for k, v in net.state_dict().items():
        assert_close(v, tstate[k].numpy(), atol=1e-5, rtol=1e-4, what=f"updated {k}")


def test_eval_mode_and_hard_forward(rng):
    net = salnp.models.resnet(20, 8, "sal", seed=3)
    x, _ = _batch(rng, 3)
    for _ in range(2):
        net.forward(x, train=True)      # move the running statistics
    tnet = from_salnp(net, net.beta)
    tnet.eval()
    ref = tnet(torch.tensor(x)).detach().numpy()
    assert_close(net.forward(x, train=False), ref, atol=2e-4, rtol=2e-4, what="eval logits")
    # hard attention: binarised probabilities (p > 0.5) into the weights
    net.beta = 50.0
    hard = net.forward(x, train=False, hard=True)
    with torch.no_grad():
        for name, m in tnet.named_modules():
            if hasattr(m, "logits"):
                p = salnp.ops.sal_probs(m.logits.numpy(), 50.0, hard=True)
                m.weight.mul_(torch.tensor(p.reshape(p.shape[0], p.shape[1], 3, 3)))
                m.logits.zero_()
                m.logits[..., 0] = 1.0   # any logits: replaced by an identity attention below
        for name, m in tnet.named_modules():
            if hasattr(m, "logits"):
                m.forward = (lambda mm: lambda x: F.conv2d(x, mm.weight, stride=mm.stride, padding=1))(m)
        ref_hard = tnet(torch.tensor(x)).numpy()
    assert_close(hard, ref_hard, atol=2e-4, rtol=2e-4, what="hard logits")


def test_state_dict_names_and_roundtrip(tmp_path, rng):
    net = salnp.models.resnet(20, 4, "sal", seed=1)
    names = list(net.state_dict())
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer2.0.shortcut.0.weight" in names and "layer1.0.conv1.logits" in names
    assert "layer3.2.bn2.running_var" in names and names[-2:] == ["linear.weight", "linear.bias"] or \
        "linear.bias" in names
    x, _ = _batch(rng, 2)
    net.forward(x, train=True)
    salnp.save(net, tmp_path / "n.npz")
    net2 = salnp.load(tmp_path / "n.npz")
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(net.forward(x, train=False), net2.forward(x, train=False))


def test_parameter_counts():
    assert salnp.models.resnet(20, 16, "cl").num_parameters() == 272474
    assert salnp.models.resnet(20, 16, "sl", expansion=1).num_parameters() == 34906


def test_seed_reproducible_and_views_share_memory():
    a = salnp.models.resnet(20, 4, "sal", seed=7)
    b = salnp.models.resnet(20, 4, "sal", seed=7)
    c = salnp.models.resnet(20, 4, "sal", seed=8)
    np.testing.assert_array_equal(a.arena.params, b.arena.params)
    assert not np.array_equal(a.arena.params, c.arena.params)
    w = dict(a.named_parameters())["conv1.weight"]
    assert np.shares_memory(w, a.arena.params)


@pytest.mark.parametrize("kw,exc,frag", [
    (dict(layer="xyz"), ValueError, "layer='xyz'"),
    (dict(depth=21), ValueError, "depth=21"),
    (dict(width=0), ValueError, "width=0"),
    (dict(layer="cl", shared=True), ValueError, "shared=True"),
])
def test_resnet_bad_config(kw, exc, frag):
    with pytest.raises(exc, match=None) as info:
        salnp.models.resnet(**kw)
    assert frag in str(info.value)


def test_forward_bad_input():
    net = salnp.models.resnet(20, 4, "cl")
    with pytest.raises(ValueError, match=r"x must have shape \(N, C=3, H, W\)"):
        net.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="real floating-point"):
        net.forward(np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(RuntimeError, match="forward"):
        salnp.models.resnet(20, 4, "cl").backward(np.zeros((2, 10), np.float32))
    net.forward(np.zeros((2, 3, 8, 8), np.float32), train=True)
    with pytest.raises(ValueError, match="grad_logits"):
        net.backward(np.zeros((3, 10), np.float32))
