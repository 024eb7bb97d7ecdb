"""Stepwise hard pruning: SAL masks in the kernels (against PyTorch with the same masking),
in the network engine (against the torch twin), in export and counts, the prune step, and
an end-to-end fit after which every slice has one position and hard == soft."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
from torch_ref import from_salnp, sal_probs as torch_probs

ops = salnp.ops
CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-subset")


def random_mask(rng, shape, allowed=None):
    """0/1 float32 mask; rows keep `allowed` positions (None: 1..9 at random)."""
    m = np.zeros((int(np.prod(shape[:-1])), 9), np.float32)
    for r in m:
        k = allowed if allowed is not None else int(rng.integers(1, 10))
        r[rng.permutation(9)[:k]] = 1.0
    return m.reshape(shape)


def torch_sal_masked(x, w, a, mask, beta, gy, stride, hard=False):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    p = torch_probs(at, beta, torch.tensor(mask, dtype=torch.float64))
    if hard:
        p = (p > 0.5).to(torch.float64)
    y = F.conv2d(xt, p.reshape(a.shape[0], a.shape[1], 3, 3) * wt, stride=stride, padding=1)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    ga = at.grad.numpy() if at.grad is not None else np.zeros(a.shape)
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), ga


@pytest.mark.parametrize("beta", [0.15, 1.0, 20.0, 70.0])
@pytest.mark.parametrize("allowed", [None, 1, 2, 5])
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("shape", [(1, 3, 7, 5, 4, 1), (2, 5, 11, 13, 7, 2), (2, 16, 8, 8, 9, 1)],
                         ids=["3x7x5", "5x11x13s2", "16x8x8"])
def test_masked_sal_matches_torch(shape, shared, allowed, beta, rng):
    N, C, H, W, O, s = shape
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    a = rng.random((1 if shared else O, C, 9), dtype=np.float32)
    mask = random_mask(rng, a.shape, allowed)
    y = ops.sal_conv2d(x, w, a, beta, stride=s, mask=mask)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw, ga = ops.sal_conv2d_backward(x, w, a, beta, gy, stride=s, mask=mask)
    ry, rgx, rgw, rga = torch_sal_masked(x, w, a, mask, beta, gy, s)
    big = np.sqrt(N * y.shape[2] * y.shape[3]) * (np.sqrt(O) if shared else 1)
    assert_close(y, ry, 1e-4, 1e-4, "y")
    assert_close(gx, rgx, 1e-4, 1e-4, "grad_x")
    assert_close(gw, rgw, 1e-4 * big, 1e-4, "grad_w")
    # dL/da carries a factor beta/s, s the std of the slice's 9 logits
    ar = a.reshape(-1, 9).astype(np.float64)
    sd = np.std(ar, axis=1, ddof=1)
    cond = max(float((beta / np.maximum(sd, 1e-12)).max()), max(beta, 1.0))
    assert_close(ga, rga, 1e-4 * big * cond, 1e-3, "grad_logits")
    assert np.all(gw.reshape(-1, C, 9)[np.broadcast_to(mask, (O, C, 9)) == 0] == 0)
    # one allowed position: p = 1 whatever a is, dL/da = 0 exactly; two allowed positions
    # keep learning (s is the std of all 9 logits: p depends on (a1 - a2) / s)
    one, two = mask.sum(-1) == 1, mask.sum(-1) == 2
    assert np.all(ga[one] == 0)
    # the float64 naive reference agrees too (full softmax and std Jacobians)
    fy = salnp._core.ref_sal_conv2d_f64(x, w, a, beta, stride=s, mask=mask)
    fgx, fgw, fga = salnp._core.ref_sal_conv2d_backward_f64(x, w, a, beta, gy, stride=s, mask=mask)
    if two.any():   # in float64: at beta 70 a float32 softmax of two positions saturates
        assert np.abs(fga[two]).max() > 0
    assert_close(fy, ry, 1e-9, 1e-9, "ref y")
    assert_close(fga, rga, 1e-9 * big * cond, 1e-7, "ref grad_logits")  # rounding x beta/s
    # hard mode under the mask
    yh = ops.sal_conv2d(x, w, a, beta, stride=s, hard=True, mask=mask)
    assert_close(yh, torch_sal_masked(x, w, a, mask, beta, gy, s, hard=True)[0], 1e-4, 1e-4, "hard y")


@pytest.mark.parametrize("beta", [0.0, 1.0, 20.0, 1000.0])
def test_masked_probs(beta, rng):
    a = rng.standard_normal((6, 5, 9)).astype(np.float32)
    mask = random_mask(rng, a.shape)
    p = ops.sal_probs(a, beta, mask=mask)
    ref = torch_probs(torch.tensor(a, dtype=torch.float64), beta,
                      torch.tensor(mask, dtype=torch.float64)).numpy()
    if beta == 0.0:      # uniform over the allowed positions
        ref = mask / mask.sum(-1, keepdims=True)
    assert_close(p, ref, 1e-6, 1e-5, "p")
    assert np.all(p[mask == 0] == 0)
    assert_close(p.sum(-1), np.ones(p.shape[:-1]), 1e-6, 0, "sum p")
    one = mask.sum(-1) == 1
    assert np.all(p[one].max(-1) == 1.0)             # one position: p = 1 exactly
    pf = salnp._core.ref_sal_probs_f64(a, beta, mask=mask)
    assert_close(pf, p, 1e-6, 1e-5, "f64 ref p")


def test_all_ones_mask_is_bit_identical(rng):
    x = rng.standard_normal((2, 6, 9, 7), dtype=np.float32)
    w = rng.standard_normal((5, 6, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((2, 5, 9, 7), dtype=np.float32)
    for shared in (False, True):
        a = rng.random((1 if shared else 5, 6, 9), dtype=np.float32)
        a[0, 0] = 0.5                                 # a std-0 slice
        ones = np.ones_like(a)
        for beta in (0.0, 1.0, 70.0):
            np.testing.assert_array_equal(ops.sal_probs(a, beta, mask=ones), ops.sal_probs(a, beta))
            np.testing.assert_array_equal(ops.sal_conv2d(x, w, a, beta, mask=ones),
                                          ops.sal_conv2d(x, w, a, beta))
            for g1, g2 in zip(ops.sal_conv2d_backward(x, w, a, beta, gy, mask=ones),
                              ops.sal_conv2d_backward(x, w, a, beta, gy)):
                np.testing.assert_array_equal(g1, g2)


def test_mask_validation(rng):
    x = rng.standard_normal((1, 2, 4, 4), dtype=np.float32)
    w = rng.standard_normal((3, 2, 3, 3), dtype=np.float32)
    a = rng.random((3, 2, 9), dtype=np.float32)
    m = np.ones_like(a)
    m[1, 1, 4] = 0.5
    with pytest.raises(ValueError, match=r"mask\[3, 4\]=0.5: must be 0 or 1"):
        ops.sal_conv2d(x, w, a, 1.0, mask=m)
    m = np.ones_like(a)
    m[2, 0] = 0
    with pytest.raises(ValueError, match=r"mask\[4\]: no allowed position"):
        ops.sal_conv2d(x, w, a, 1.0, mask=m)
    with pytest.raises(ValueError, match=r"no allowed position"):
        ops.sal_probs(a, 1.0, mask=m)
    with pytest.raises(ValueError, match="mask must have the logits' shape"):
        ops.sal_conv2d(x, w, a, 1.0, mask=np.ones((3, 2, 8)))
    # bool masks convert
    mb = np.ones(a.shape, bool)
    mb[..., 0] = False
    assert np.all(ops.sal_probs(a, 1.0, mask=mb)[..., 0] == 0)


def test_default_keep_and_prune_step():
    assert salnp.prune.default_keep(4) == [5, 3, 2, 1]
    assert salnp.prune.default_keep(1) == [1]
    assert salnp.prune.default_keep(2) == [3, 1]
    assert salnp.prune.default_keep(8) == [8, 7, 6, 5, 4, 3, 2, 1]
    for k in range(1, 9):
        keep = salnp.prune.default_keep(k)
        assert len(keep) == k and keep[0] <= 8 and keep[-1] == 1
        assert all(b < a for a, b in zip(keep, keep[1:]))
    with pytest.raises(ValueError, match="steps"):
        salnp.prune.default_keep(9)
    net = salnp.models.resnet(20, 4, "sal", seed=0)
    net.beta = 5.0
    m = salnp.prune.sal_modules(net)[0][1]
    p0 = m.probs(net.beta).reshape(-1, 9)
    salnp.prune.prune_step(net, 3)
    allowed = m.mask.reshape(-1, 9) != 0
    assert np.all(allowed.sum(1) == 3)
    top3 = np.argsort(-p0, 1, kind="stable")[:, :3]
    assert np.all(np.take_along_axis(allowed, top3, 1))
    salnp.prune.prune_step(net, 5)                   # cannot grow back
    assert np.all(m.mask.reshape(-1, 9).sum(1) == 3)
    salnp.prune.prune_step(net, 1)
    assert all(np.all(c.sum() == (n_m.mask.size // 9)) for c, (_, n_m) in
               zip(salnp.prune.mask_counts(net).values(), salnp.prune.sal_modules(net)))
    salnp.prune.reset_masks(net)
    assert np.all(m.mask == 1)
    with pytest.raises(ValueError, match="keep"):
        salnp.prune.prune_step(net, 0)


def test_masked_network_matches_torch_twin(rng):
    """Forward and parameter gradients of a masked SAL-ResNet-8 vs its torch twin."""
    net = salnp.models.resnet(8, 4, "sal", seed=2)
    net.beta = 3.0
    for _, m in salnp.prune.sal_modules(net):
        m.mask[...] = random_mask(rng, m.mask.shape)
    x = rng.standard_normal((3, 3, 10, 10), dtype=np.float32)
    y = rng.integers(0, 10, 3).astype(np.int32)
    logits = net.forward(x, train=True)
    net.zero_grad()
    net.backward(ops.cross_entropy_backward(logits, y))
    grads = {k: g.copy() for k, g in net.named_grads()}
    tnet = from_salnp(salnp.models.resnet(8, 4, "sal", seed=2), 3.0).double()
    tnet.load_state_dict({k: torch.tensor(np.array(v), dtype=torch.float64)
                          for k, v in net.state_dict().items() if "running" not in k
                          and "num_batches" not in k}, strict=False)
    tnet.train()
    tl = tnet(torch.tensor(x, dtype=torch.float64))
    F.cross_entropy(tl, torch.tensor(y, dtype=torch.long)).backward()
    assert_close(logits, tl.detach().numpy(), 2e-4, 2e-4, "logits")
    for k, p in tnet.named_parameters():
        scale = float(p.grad.abs().max()) + 1e-12
        assert_close(grads[k], p.grad.numpy(), 2e-3 * scale + 1e-6, 2e-3, f"grad {k}")
        if k.endswith("logits"):     # pruned positions: no weight gradient (p = 0 there)
            mask = dict(net.named_buffers())[k.replace("logits", "mask")]
            gw = grads[k.replace("logits", "weight")].reshape(-1, mask.shape[1], 9)
            assert np.all(gw[np.broadcast_to(mask, gw.shape) == 0] == 0)


def test_old_checkpoint_without_masks_loads(tmp_path):
    net = salnp.models.resnet(8, 4, "sal", seed=1)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith(".mask")}
    net2 = salnp.models.resnet(8, 4, "sal", seed=5)
    salnp.prune.prune_step(net2, 2)
    net2.load_state_dict(state)                      # strict: masks are optional
    assert all(np.all(m.mask == 1) for _, m in salnp.prune.sal_modules(net2))
    with pytest.raises(KeyError, match="missing"):
        net2.load_state_dict({k: v for k, v in state.items() if "logits" not in k})


def _cifar(train, n):
    if not os.path.isdir(CIFAR):
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR}")
    return salnp.data.cifar10(CIFAR, train=train).subset(n, seed=0)


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
def test_stepwise_fit_end_to_end(shared, tmp_path):
    """After the last prune step every slice has exactly one position: the soft forward
    IS the hard forward (p = 1 exactly), export keeps every slice and equals both."""
    train, test = _cifar(True, 64), _cifar(False, 40)
    net = salnp.models.resnet(8, 4, "sal", shared=shared, seed=3)
    hist = salnp.fit(net, train, test, epochs=4, batch_size=32, lr=0.05, beta=(5.0, 5.0),
                     prune_epochs=[1, 2, 3, 4], progress=False, threads=1)
    assert [round(h["attn_allowed"], 6) for h in hist] == [5, 3, 2, 1]
    assert hist[-1]["attn_maxp"] == 1.0 and hist[-1]["attn_onehot"] == 1.0
    assert hist[-1]["test_acc"] == hist[-1]["test_acc_hard"]
    for name, m in salnp.prune.sal_modules(net):
        assert np.all(m.mask.reshape(-1, 9).sum(1) == 1), name
        p = m.probs(net.beta)
        np.testing.assert_array_equal(p, m.mask)     # p = 1 at the allowed position
    x = test.batch(np.arange(16))
    soft = net.forward(x, train=False)
    hard = net.forward(x, train=False, hard=True)
    np.testing.assert_array_equal(soft, hard)
    inf = salnp.export(net)
    assert all(l["kept"] == l["slices"] for l in inf.info["sal_layers"])
    assert_close(inf.forward(x), hard, 1e-4, 1e-4, "exported vs hard")
    rep = salnp.count(net, (3, 32, 32), mode="inference")
    for r in rep.rows:
        if r["type"].startswith("sal"):
            L = (1 if shared else r["out_shape"][0]) * r["in_shape"][0]
            assert r["kept"] == (r["in_shape"][0] if shared else L)
    assert rep.macs == inf.count((3, 32, 32)).macs
    # masks are checkpointed with the network
    salnp.save(net, tmp_path / "n.npz")
    net2 = salnp.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(net2.forward(x, train=False), soft)


def test_export_never_chooses_masked(rng):
    net = salnp.models.resnet(8, 4, "sal", seed=4)
    net.beta = 60.0
    for _, m in salnp.prune.sal_modules(net):
        m.logits[..., 4] = 50.0          # the centre would win everywhere ...
        m.mask[..., 4] = 0.0             # ... but it is pruned
    x = rng.standard_normal((2, 3, 12, 12), dtype=np.float32)
    hard = net.forward(x, train=False, hard=True)
    inf = salnp.export(net)
    assert_close(inf.forward(x), hard, 1e-4, 1e-4, "exported vs hard")
    for _, m in salnp.prune.sal_modules(net):
        assert np.all(m.probs(net.beta, hard=True)[..., 4] == 0)


def test_fit_prune_arguments():
    img = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    train = salnp.data.Dataset(img, np.zeros(4, np.int64))
    net = salnp.models.resnet(8, 4, "sal")
    for kw, msg in [(dict(prune_epochs=[0]), "prune_epochs"), (dict(prune_epochs=[3, 2]), "prune_epochs"),
                    (dict(prune_epochs=[1, 2], prune_keep=[2, 3]), "prune_keep"),
                    (dict(prune_keep=[1]), "prune_keep needs")]:
        with pytest.raises(ValueError, match=msg):
            salnp.fit(net, train, epochs=3, progress=False, **kw)
    with pytest.raises(ValueError, match="SAL"):
        salnp.fit(salnp.models.resnet(8, 4, "cl"), train, epochs=3, prune_epochs=[1], progress=False)


def test_cli_prune_epochs(tmp_path, capsys):
    if not os.path.isdir(CIFAR):
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR}")
    from salnp.__main__ import main
    assert main(["train", "--data", "cifar10", "--root", CIFAR, "--depth", "8", "--width", "4",
                 "--epochs", "2", "--subset", "64", "--test-subset", "32", "--beta0", "10",
                 "--beta1", "10", "--prune-epochs", "1,2", "--prune-keep", "3,1", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    import json
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["attn_allowed"] for h in hist] == [3.0, 1.0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_acc"] == summary["test_acc_hard"]
