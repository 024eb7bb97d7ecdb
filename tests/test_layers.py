"""The ordinary layers (batch norm, fused BN+ReLU(+residual), ReLU, add, global average pooling,
Linear, softmax cross-entropy, SGD) against PyTorch autograd / torch.optim.SGD, float64 finite
differences for batch norm, thread agreement, bad input, the bad-input matrix (every argument
replaced by a bad or unusual value) and the ops' NaN/inf decisions (test_nan_policy)."""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
from hostile import (BETA_BN, GAMMA, LAB, LB, LGY, LOGITS, LW, LX, OFF_F, OFF_I, RES, W, X3,
                     X9, Z, Spec, _f, _matrix_ops, _with, check_ops_row)

ops = salnp.ops

# (N, C, H, W): batch 1, channels 1 and not divisible by 9, odd/prime and non-square sizes,
# spatial 1x1 (N*H*W >= 2 in training), runs shorter and longer than the 16-float lanes
BN_SHAPES = [
    (2, 1, 1, 1),
    (1, 3, 7, 5),
    (2, 1, 11, 13),
    (4, 10, 6, 7),
    (3, 17, 5, 3),
    (1, 23, 2, 1),
    (5, 16, 8, 8),
    (8, 16, 32, 32),
]
ids = lambda s: "x".join(map(str, s))  # noqa: E731


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def sum_tol(m):
    """atol for a sum of m float32 terms of size ~1: the rounding grows like sqrt(m) and the
    two libraries add in different orders (torch: vectorised/pairwise, ours: lanes + double)."""
    return 1e-4 * max(1.0, np.sqrt(m) / 8)


# ---- batch norm ----------------------------------------------------------------------------

def bn_inputs(rng, shape, offset=0.0):
    N, C, H, W = shape
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    g = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, C).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    return x, g, b, rm, rv, gy


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=ids)
def test_batch_norm_matches_torch(shape, training, rng, isa):
    x, g, b, rm, rv, gy = bn_inputs(rng, shape, offset=3.0)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y, smean, sinv = ops.batch_norm(x, g, b, rm, rv, training=training)
    xt, gt, bt = _t(x, True), _t(g, True), _t(b, True)
    yt = F.batch_norm(xt, trm, trv, gt, bt, training=training, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(gy))
    assert_close(y, yt.detach().numpy(), what="y")
    # running stats: updated in place in training (unbiased variance), untouched in eval
    assert_close(rm, trm.numpy(), atol=1e-5, rtol=1e-5, what="running_mean")
    assert_close(rv, trv.numpy(), atol=1e-5, rtol=1e-5, what="running_var")
    # the saved pair: what normalised x
    xd = x.astype(np.float64)
    if training:
        mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    else:
        mean, var = trm.numpy().astype(np.float64), trv.numpy().astype(np.float64)
    assert_close(smean, mean, atol=1e-5, rtol=1e-5, what="save_mean")
    assert_close(sinv, 1 / np.sqrt(var + 1e-5), atol=1e-5, rtol=1e-4, what="save_invstd")
    gx, gg, gb = ops.batch_norm_backward(x, g, gy, smean, sinv, training=training)
    M = shape[0] * shape[2] * shape[3]
    assert_close(gx, xt.grad.numpy(), what="grad_x")
    assert_close(gg, gt.grad.numpy(), atol=sum_tol(M), what="grad_gamma")
    assert_close(gb, bt.grad.numpy(), atol=sum_tol(M), what="grad_beta")


def test_batch_norm_running_stats_over_steps(rng):
    """Five training steps and then eval, as nn.BatchNorm2d does them."""
    bn = torch.nn.BatchNorm2d(6)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    g, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    for _ in range(5):
        x = (rng.standard_normal((3, 6, 5, 4)) * 3 + 1).astype(np.float32)
        y, _, _ = ops.batch_norm(x, g, b, rm, rv)
        assert_close(y, bn(torch.tensor(x)).detach().numpy(), what="train y")
    assert_close(rm, bn.running_mean.numpy(), atol=1e-5, rtol=1e-5, what="running_mean")
    assert_close(rv, bn.running_var.numpy(), atol=1e-5, rtol=1e-5, what="running_var")
    bn.eval()
    x = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    y, _, _ = ops.batch_norm(x, g, b, rm, rv, training=False)
    assert_close(y, bn(torch.tensor(x)).detach().numpy(), what="eval y")


def test_batch_norm_without_running_stats_or_affine(rng):
    x, g, b, rm, rv, gy = bn_inputs(rng, (3, 5, 4, 6))
    y, m, s = ops.batch_norm(x, None, None)   # training, no running stats, gamma 1, beta 0
    yt = F.batch_norm(torch.tensor(x), None, None, training=True)
    assert_close(y, yt.numpy(), what="y")
    # momentum is honoured (0: running stats stay, 1: they become the batch statistics)
    rm0, rv0 = rm.copy(), rv.copy()
    ops.batch_norm(x, g, b, rm, rv, momentum=0.0)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    ops.batch_norm(x, g, b, rm, rv, momentum=1.0)
    assert_close(rm, x.astype(np.float64).mean(axis=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert_close(rv, x.astype(np.float64).var(axis=(0, 2, 3), ddof=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True], ids=["bn_relu", "bn_add_relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 1, 11, 13), (4, 10, 6, 7), (8, 16, 16, 16)],
                         ids=ids)
def test_batch_norm_relu_matches_torch(shape, training, residual, rng, isa):
    x, g, b, rm, rv, gy = bn_inputs(rng, shape)
    r = rng.standard_normal(shape).astype(np.float32) if residual else None
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y, sm, si = ops.batch_norm_relu(x, g, b, rm, rv, residual=r, training=training)
    xt, gt, bt = _t(x, True), _t(g, True), _t(b, True)
    z = F.batch_norm(xt, trm, trv, gt, bt, training=training)
    rt = _t(r, True) if residual else None
    yt = F.relu(z + rt) if residual else F.relu(z)
    yt.backward(torch.tensor(gy))
    assert_close(y, yt.detach().numpy(), what="y")
    assert_close(rm, trm.numpy(), atol=1e-5, rtol=1e-5, what="running_mean")
    assert_close(rv, trv.numpy(), atol=1e-5, rtol=1e-5, what="running_var")
    gx, gg, gb, gr = ops.batch_norm_relu_backward(x, g, y, gy, sm, si, training=training)
    M = shape[0] * shape[2] * shape[3]
    assert_close(gx, xt.grad.numpy(), what="grad_x")
    assert_close(gg, gt.grad.numpy(), atol=sum_tol(M), what="grad_gamma")
    assert_close(gb, bt.grad.numpy(), atol=sum_tol(M), what="grad_beta")
    if residual:
        assert_close(gr, rt.grad.numpy(), what="grad_residual")
    # the fused op equals the unfused chain
    y2, _, _ = ops.batch_norm(x, g, b, rm.copy(), rv.copy(), training=training)
    y2 = ops.relu(ops.add(y2, r) if residual else y2)
    assert_close(y, y2, atol=1e-6, rtol=1e-6, what="fused vs chain")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (1, 2, 5, 3), (4, 1, 1, 1)], ids=ids)
def test_batch_norm_finite_differences_f64(shape, training, rng):
    """The float64 reference's gradients against central differences of its forward (the
    loss <y, gy> with batch statistics recomputed at every probe); then float32 against it."""
    N, C, H, W = shape
    x = rng.standard_normal(shape) * 1.5 + 0.5
    g, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    gy = rng.standard_normal(shape)

    def fwd(xx, gg, bb):
        return salnp._core.ref_batch_norm_f64(xx, gg, bb, rm.copy(), rv.copy(), training=training)

    y, sm, si = fwd(x, g, b)
    gx, gg, gb = salnp._core.ref_batch_norm_backward_f64(x, g, gy, sm, si, training=training)
    eps = 1e-6

    def loss():
        return float(np.sum(fwd(x, g, b)[0] * gy))

    for arr, grad, name in ((x, gx, "x"), (g, gg, "gamma"), (b, gb, "beta")):
        idxs = {tuple(int(rng.integers(0, d)) for d in arr.shape) for _ in range(10)}
        for idx in idxs:
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss()
            arr[idx] = old - eps
            lm = loss()
            arr[idx] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 + 1e-6 * abs(fd), (name, idx, fd, grad[idx])
    # a training-mode gradient sums to zero over each channel (mean subtraction)
    if training:
        assert np.all(np.abs(gx.sum(axis=(0, 2, 3))) < 1e-9)
    # float32 fast kernels against the float64 reference
    x32, g32, b32 = x.astype(np.float32), g.astype(np.float32), b.astype(np.float32)
    y32, sm32, si32 = ops.batch_norm(x32, g32, b32, rm.astype(np.float32),
                                     rv.astype(np.float32), training=training)
    assert_close(y32, y, what="float32 y vs f64")
    gx32, gg32, gb32 = ops.batch_norm_backward(x32, g32, gy.astype(np.float32), sm32, si32,
                                               training=training)
    assert_close(gx32, gx, what="float32 grad_x vs f64")
    assert_close(gg32, gg, what="float32 grad_gamma vs f64")
    assert_close(gb32, gb, what="float32 grad_beta vs f64")


def test_batch_norm_large_mean_keeps_variance(rng, isa):
    """x = 1000 + small noise: a naive E[x^2] - E[x]^2 in float32 would lose the variance."""
    x = (1000 + 0.01 * rng.standard_normal((4, 3, 9, 9))).astype(np.float32)
    y, _, _ = ops.batch_norm(x, None, None)
    yt = F.batch_norm(torch.tensor(x, dtype=torch.float64), None, None, training=True).numpy()
    # same float32 input on both sides; a float32 mean (spacing 6e-5 at 1000) subtracted
    # directly would cost ~3e-3 here, the shifted centring keeps it at rounding level
    assert_close(y, yt, atol=1e-4, rtol=1e-4, what="y")


# ---- ReLU, add, pooling, linear ---------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 5, 7), (1, 1, 1, 1), (3, 17, 4, 9)],
                         ids=ids)
def test_relu_and_add_match_torch(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    a = rng.standard_normal(shape).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    xt = _t(x, True)
    yt = F.relu(xt)
    yt.backward(torch.tensor(gy))
    y = ops.relu(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(ops.relu_backward(y, gy), xt.grad.numpy())
    np.testing.assert_array_equal(ops.relu_backward(x, gy), xt.grad.numpy())  # input mask
    np.testing.assert_array_equal(ops.add(x, a), x + a)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (1, 10, 8, 8), (4, 13, 11, 3)],
                         ids=ids)
def test_global_avg_pool_matches_torch(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    gy = rng.standard_normal(shape[:2]).astype(np.float32)
    xt = _t(x, True)
    yt = xt.mean(dim=(2, 3))
    yt.backward(torch.tensor(gy))
    y = ops.global_avg_pool(x)
    assert y.shape == shape[:2]
    assert_close(y, yt.detach().numpy(), what="y")
    assert_close(ops.global_avg_pool_backward(gy, shape), xt.grad.numpy(), what="grad_x")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nio", [(1, 1, 1), (1, 64, 10), (5, 7, 3), (128, 64, 10), (13, 83, 100),
                                 (3, 200, 97)],   # O*I > 2**14: the GEMM path (linear.c)
                         ids=ids)
def test_linear_matches_torch(nio, bias, rng):
    N, I, O = nio
    x = rng.standard_normal((N, I)).astype(np.float32)
    w = (rng.standard_normal((O, I)) / np.sqrt(I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32) if bias else None
    gy = rng.standard_normal((N, O)).astype(np.float32)
    xt, wt = _t(x, True), _t(w, True)
    bt = _t(b, True) if bias else None
    yt = F.linear(xt, wt, bt)
    yt.backward(torch.tensor(gy))
    y = ops.linear(x, w, b)
    assert_close(y, yt.detach().numpy(), what="y")
    gx, gw, gb = ops.linear_backward(x, w, gy)
    assert_close(gx, xt.grad.numpy(), what="grad_x")
    assert_close(gw, wt.grad.numpy(), atol=sum_tol(N), what="grad_w")   # sums over N
    assert_close(gb, gy.astype(np.float64).sum(axis=0), atol=sum_tol(N), what="grad_b")
    if bias:
        assert_close(gb, bt.grad.numpy(), atol=sum_tol(N), what="grad_b vs torch")


# ---- cross-entropy -------------------------------------------------------------------------

@pytest.mark.parametrize("nk,spread", [((1, 1), 1.0), ((1, 10), 1.0), ((7, 10), 3.0),
                                        ((128, 10), 5.0), ((13, 100), 1.0), ((6, 10), 300.0)],
                         ids=lambda v: str(v))
def test_cross_entropy_matches_torch(nk, spread, rng):
    N, K = nk
    z = (rng.standard_normal((N, K)) * spread).astype(np.float32)   # 300: exp overflows naively
    lab = rng.integers(0, K, N)
    zt = _t(z, True)
    lt = F.cross_entropy(zt, torch.tensor(lab))
    lt.backward(torch.tensor(0.7))
    loss = ops.cross_entropy(z, lab)
    assert isinstance(loss, float)
    assert abs(loss - lt.item()) <= 1e-4 + 1e-5 * abs(lt.item()), (loss, lt.item())
    g = ops.cross_entropy_backward(z, lab, grad=0.7)
    assert_close(g, zt.grad.numpy(), atol=1e-6, rtol=1e-4, what="grad_logits")
    assert_close(ops.cross_entropy_backward(z, lab), g / 0.7, atol=1e-6, rtol=1e-5,
                 what="default grad=1")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint64])
def test_cross_entropy_label_dtypes(dtype, rng):
    z = rng.standard_normal((5, 4)).astype(np.float32)
    lab = np.array([0, 3, 1, 2, 3], dtype=dtype)
    ref = F.cross_entropy(torch.tensor(z), torch.tensor(lab.astype(np.int64))).item()
    assert abs(ops.cross_entropy(z, lab) - ref) <= 1e-5


# ---- SGD -------------------------------------------------------------------------------------

SGD_CONFIGS = [
    dict(momentum=0.9, weight_decay=0.0, nesterov=False, dampening=0.0),
    dict(momentum=0.9, weight_decay=5e-4, nesterov=False, dampening=0.0),
    dict(momentum=0.9, weight_decay=5e-4, nesterov=True, dampening=0.0),
    dict(momentum=0.5, weight_decay=1e-2, nesterov=False, dampening=0.3),
    dict(momentum=0.0, weight_decay=1e-3, nesterov=False, dampening=0.0),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch(cfg, rng):
    n, lr = 1001, 0.1
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.zeros(n, np.float32) if cfg["momentum"] else None
    pt = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.SGD([pt], lr=lr, **cfg)
    for step in range(6):
        g = rng.standard_normal(n).astype(np.float32)
        pt.grad = torch.tensor(g)
        opt.step()
        ops.sgd_step(p, g, buf, lr, first_step=step == 0, **cfg)
        assert_close(p, pt.detach().numpy(), atol=1e-6, rtol=1e-5, what=f"params step {step}")
    if cfg["momentum"]:
        assert_close(buf, opt.state[pt]["momentum_buffer"].numpy(), atol=1e-6, rtol=1e-5,
                     what="momentum_buffer")


def test_sgd_segments_match_param_groups(rng):
    """A flat arena in three runs: normal, no decay with lr*0.01 (ASL shifts), normal."""
    sizes, lr, wd = [300, 17, 50], 0.1, 5e-4
    mults = [(1.0, 1.0), (0.01, 0.0), (1.0, 1.0)]
    arena = rng.standard_normal(sum(sizes)).astype(np.float32)
    buf = np.zeros_like(arena)
    views = np.split(arena.copy(), np.cumsum(sizes)[:-1])
    tps = [torch.tensor(v, requires_grad=True) for v in views]
    groups = [dict(params=[t], lr=lr * lm, weight_decay=wd * wm) for t, (lm, wm) in zip(tps, mults)]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    segs = [(s, lm, wm) for s, (lm, wm) in zip(sizes, mults)]
    for step in range(4):
        g = rng.standard_normal(arena.size).astype(np.float32)
        for t, gv in zip(tps, np.split(g, np.cumsum(sizes)[:-1])):
            t.grad = torch.tensor(gv)
        opt.step()
        ops.sgd_step(arena, g, buf, lr, momentum=0.9, weight_decay=wd, nesterov=True,
                     first_step=step == 0, segments=segs)
    ref = np.concatenate([t.detach().numpy() for t in tps])
    assert_close(arena, ref, atol=1e-6, rtol=1e-5, what="params")


def test_sgd_updates_views_of_an_arena(rng):
    """In place on a 2-D C-contiguous arena; a view of it sees the update (no copy)."""
    arena = rng.standard_normal((4, 25)).astype(np.float32)
    view = arena[1]
    before = view.copy()
    g = np.ones_like(arena)
    ops.sgd_step(arena, g, np.zeros_like(arena), 0.5, momentum=0.9, first_step=True)
    assert_close(view, before - 0.5, atol=1e-6, rtol=1e-6)


# ---- threads, side effects ------------------------------------------------------------------

def run_all(rng_seed):
    r = np.random.default_rng(rng_seed)
    x = r.standard_normal((6, 11, 9, 7)).astype(np.float32)
    g, b = r.standard_normal(11).astype(np.float32), r.standard_normal(11).astype(np.float32)
    gy = r.standard_normal(x.shape).astype(np.float32)
    rm, rv = np.zeros(11, np.float32), np.ones(11, np.float32)
    out = {}
    y, sm, si = ops.batch_norm(x, g, b, rm, rv)
    out.update(bn_y=y, bn_rm=rm, bn_rv=rv)
    out.update(zip(["bn_gx", "bn_gg", "bn_gb"], ops.batch_norm_backward(x, g, gy, sm, si)))
    y2, sm2, si2 = ops.batch_norm_relu(x, g, b, residual=gy)
    out["bnr_y"] = y2
    out.update(zip(["bnr_gx", "bnr_gg", "bnr_gb", "bnr_gr"],
                   ops.batch_norm_relu_backward(x, g, y2, gy, sm2, si2)))
    out["relu"] = ops.relu(x)
    out["gap"] = ops.global_avg_pool(x)
    xf = x.reshape(6, -1)
    w = r.standard_normal((10, xf.shape[1])).astype(np.float32)
    out["lin"] = ops.linear(xf, w, b[:10])
    gyl = r.standard_normal((6, 10)).astype(np.float32)
    out.update(zip(["lin_gx", "lin_gw", "lin_gb"], ops.linear_backward(xf, w, gyl)))
    lab = r.integers(0, 10, 6)
    out["ce"] = np.array(ops.cross_entropy(out["lin"], lab))
    out["ce_g"] = ops.cross_entropy_backward(out["lin"], lab)
    p, buf = x.ravel().copy(), np.zeros(x.size, np.float32)
    ops.sgd_step(p, gy.ravel(), buf, 0.1, weight_decay=1e-3, first_step=True)
    out["sgd"] = p
    return out


def test_threads_agree():
    salnp.set_num_threads(1)
    ref = run_all(7)
    salnp.set_num_threads(2)
    got = run_all(7)
    for k in ref:
        assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, what=k)


def test_inputs_unchanged(rng):
    x, g, b, rm, rv, gy = bn_inputs(rng, (2, 3, 5, 5))
    arrays = [x, g, b, gy]
    copies = [a.copy() for a in arrays]
    y, sm, si = ops.batch_norm(x, g, b, rm, rv)
    ops.batch_norm_backward(x, g, gy, sm, si)
    y2, sm2, si2 = ops.batch_norm_relu(x, g, b, residual=gy)
    ops.batch_norm_relu_backward(x, g, y2, gy, sm2, si2)
    ops.relu(x); ops.relu_backward(x, gy); ops.add(x, gy)
    ops.global_avg_pool(x)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


def test_float64_and_strided_inputs_are_converted(rng):
    x = rng.standard_normal((3, 4, 10, 6))             # float64
    xs = x[:, :, ::2, ::-1]                             # strided, negative stride
    y, _, _ = ops.batch_norm(xs, None, None)
    yt = F.batch_norm(torch.tensor(np.ascontiguousarray(xs), dtype=torch.float32), None, None,
                      training=True).numpy()
    assert y.dtype == np.float32
    assert_close(y, yt)


def test_reference_counts_stable(rng):
    x, g, b, rm, rv, gy = bn_inputs(rng, (2, 3, 4, 4))
    lab = np.array([0, 1])
    objs = [x, g, b, rm, rv, gy, lab]
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(50):
        y, sm, si = ops.batch_norm(x, g, b, rm, rv)
        ops.batch_norm_backward(x, g, gy, sm, si)
        ops.cross_entropy(x.reshape(2, -1), lab)
        ops.sgd_step(rm, g, rv, 0.0, first_step=True)
        try:
            ops.batch_norm(x, g, b, rm.astype(np.float64), rv)
        except ValueError:
            pass
    assert [sys.getrefcount(o) for o in objs] == before


# ---- bad input ------------------------------------------------------------------------------

X = np.zeros((2, 3, 4, 4), np.float32)
C3 = np.ones(3, np.float32)


def ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


BAD = [
    # batch norm
    (lambda: ops.batch_norm(X[0], C3, C3), ValueError, "batch_norm: x must be a 4-D array"),
    (lambda: ops.batch_norm(None, C3, C3), TypeError, "batch_norm: x must be an array, got None"),
    (lambda: ops.batch_norm(X.astype(np.int32), C3, C3), TypeError, "real floating-point"),
    (lambda: ops.batch_norm(X.astype(np.complex64), C3, C3), TypeError, "real floating-point"),
    (lambda: ops.batch_norm(np.array([[[["a"]]]], dtype=object), C3, C3), TypeError,
     "real floating-point"),
    (lambda: ops.batch_norm(X, np.ones(4, np.float32), C3), ValueError,
     "gamma must have shape (C,) = (3,), got (4,)"),
    (lambda: ops.batch_norm(X, C3, np.ones((3, 1), np.float32)), ValueError, "beta must be a 1-D"),
    (lambda: ops.batch_norm(np.zeros((1, 3, 1, 1), np.float32), C3, C3), ValueError,
     "N*H*W=1: must be >= 2 in training mode"),
    (lambda: ops.batch_norm(X, C3, C3, eps=0.0), ValueError, "eps=0"),
    (lambda: ops.batch_norm(X, C3, C3, momentum=-0.5), ValueError, "momentum=-0.5"),
    (lambda: ops.batch_norm(X, C3, C3, C3.copy(), None), ValueError, "give both or neither"),
    (lambda: ops.batch_norm(X, C3, C3, ro(C3), C3.copy()), ValueError,
     "running_mean must be writeable"),
    (lambda: ops.batch_norm(X, C3, C3, C3.copy(), C3.astype(np.float64)), ValueError,
     "running_var must have dtype float32"),
    (lambda: ops.batch_norm(X, C3, C3, np.ones(6, np.float32)[::2], C3.copy()), ValueError,
     "running_mean must be C-contiguous"),
    (lambda: ops.batch_norm(X, C3, C3, [0.0, 0.0, 0.0], C3.copy()), TypeError,
     "running_mean must be a numpy.ndarray"),
    (lambda: ops.batch_norm(X, C3, C3, np.ones(4, np.float32), C3.copy()), ValueError,
     "running_mean must have shape (C,) = (3,)"),
    (lambda: ops.batch_norm(X, C3, C3, None, None, training=False), TypeError,
     "running_mean must be an array in eval mode"),
    (lambda: ops.batch_norm_backward(X, C3, X[:, :2], C3, C3), ValueError,
     "grad_y must have shape (N, C, H, W) = (2, 3, 4, 4), got (2, 2, 4, 4)"),
    (lambda: ops.batch_norm_backward(X, C3, X, None, C3), TypeError, "save_mean must be an array"),
    (lambda: ops.batch_norm_relu(X, C3, C3, residual=X[:1]), ValueError,
     "residual must have shape"),
    (lambda: ops.batch_norm_relu_backward(X, C3, X[0], X, C3, C3), ValueError,
     "batch_norm_relu_backward: y must be a 4-D"),
    # relu, add, pooling
    (lambda: ops.relu(None), TypeError, "relu: x must be an array, got None"),
    (lambda: ops.relu(np.arange(3)), TypeError, "real floating-point"),
    (lambda: ops.relu_backward(X, X[0]), ValueError,
     "relu_backward: grad_y must have shape (2, 3, 4, 4) (the shape of y)"),
    (lambda: ops.add(X, X[:, :1]), ValueError, "add: b must have shape (2, 3, 4, 4)"),
    (lambda: ops.global_avg_pool(X[0]), ValueError, "global_avg_pool: x must be a 4-D"),
    (lambda: ops.global_avg_pool_backward(np.zeros((2, 3)), (2, 4, 4, 4)), ValueError,
     "grad_y must have shape (N, C) = (2, 4)"),
    (lambda: ops.global_avg_pool_backward(np.zeros((2, 3)), (2, 3, 0, 4)), ValueError,
     "input_shape[2]=0: must be >= 1"),
    # linear
    (lambda: ops.linear(np.zeros((2, 5)), np.zeros((3, 4))), ValueError,
     "linear: w must have shape (O, I=5)"),
    (lambda: ops.linear(np.zeros((2, 5)), np.zeros((3, 5)), np.zeros(4)), ValueError,
     "linear: b must have shape (O,) = (3,)"),
    (lambda: ops.linear(np.zeros(5), np.zeros((3, 5))), ValueError, "x must be a 2-D"),
    (lambda: ops.linear_backward(np.zeros((2, 5)), np.zeros((3, 5)), np.zeros((2, 4))),
     ValueError, "grad_y must have shape (N, O) = (2, 3)"),
    (lambda: ops.linear(np.zeros((0, 5)), np.zeros((3, 5))), ValueError,
     "every dimension of (N, I) must be >= 1"),
    # cross-entropy
    (lambda: ops.cross_entropy(np.zeros((3, 4)), np.array([0, 4, 1])), ValueError,
     "cross_entropy: labels[1]=4: must be in [0, K=4)"),
    (lambda: ops.cross_entropy(np.zeros((3, 4)), np.array([0, -1, 1])), ValueError,
     "labels[1]=-1"),
    (lambda: ops.cross_entropy_backward(np.zeros((3, 4)), np.array([0, 2**40, 1])), ValueError,
     "labels[1]=1099511627776"),
    (lambda: ops.cross_entropy(np.zeros((3, 4)), np.array([0.0, 1.0, 1.0])), TypeError,
     "labels must be an integer array"),
    (lambda: ops.cross_entropy(np.zeros((3, 4)), None), TypeError, "labels must be an integer"),
    (lambda: ops.cross_entropy(np.zeros((3, 4)), np.array([0, 1])), ValueError,
     "labels must have shape (N,) = (3,)"),
    (lambda: ops.cross_entropy(np.zeros(4), np.array([0])), ValueError, "logits must be a 2-D"),
    (lambda: ops.cross_entropy_backward(np.zeros((3, 4)), np.zeros(3, int), grad=np.inf),
     ValueError, "grad=inf: must be finite"),
    # sgd
    (lambda: ops.sgd_step(ro(C3), C3, C3.copy(), 0.1), ValueError, "sgd_step: params must be writeable"),
    (lambda: ops.sgd_step(C3.astype(np.float64), C3, C3.copy(), 0.1), ValueError,
     "params must have dtype float32"),
    (lambda: ops.sgd_step(np.ones(6, np.float32)[::2], C3, C3.copy(), 0.1), ValueError,
     "params must be C-contiguous"),
    (lambda: ops.sgd_step([1.0, 2.0, 3.0], C3, C3.copy(), 0.1), TypeError,
     "params must be a numpy.ndarray"),
    (lambda: ops.sgd_step(C3.copy(), C3, None, 0.1), TypeError,
     "momentum_buffer must be a writeable float32 array"),
    (lambda: ops.sgd_step(C3.copy(), C3, ro(C3), 0.1), ValueError,
     "momentum_buffer must be writeable"),
    (lambda: ops.sgd_step(C3.copy(), np.ones(4), C3.copy(), 0.1), ValueError,
     "grads must have shape (3,) (the shape of params)"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), -0.1), ValueError, "lr=-0.1"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), 0.1, nesterov=True, dampening=0.1), ValueError,
     "nesterov"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), 0.1, weight_decay=-1.0), ValueError,
     "weight_decay=-1"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), 0.1, segments=[(2, 1.0, 1.0)]), ValueError,
     "must cover n=3"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), 0.1, segments=[(3, 1.0)]), TypeError,
     "segments[0] must be a tuple"),
    (lambda: ops.sgd_step(C3.copy(), C3, C3.copy(), 0.1, segments=5), TypeError,
     "segments must be None or a sequence"),
    (lambda: ops.sgd_step(C3.copy(), C3.astype(np.complex64), C3.copy(), 0.1), TypeError,
     "grads must be a real floating-point"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case):
    fn, exc, frag = BAD[case]
    with pytest.raises(exc) as e:
        fn()
    assert frag in str(e.value), str(e.value)


def test_failed_update_leaves_state_unchanged():
    """A rejected call writes nothing: params and running stats keep their values."""
    p, buf = np.ones(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        ops.sgd_step(p, np.ones(3), buf, 0.1, segments=[(2, 1.0, 1.0)])
    np.testing.assert_array_equal(p, np.ones(3))
    rm = np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        ops.batch_norm(X, C3, C3, rm, C3.astype(np.float64))
    np.testing.assert_array_equal(rm, np.zeros(3))


def test_relu_and_fused_bn_relu_propagate_nan(isa):
    """PyTorch's relu keeps NaN; hiding it would mask a diverged run."""
    x = np.array([[[[np.nan, -1.0], [2.0, 0.5]]]], np.float32)
    assert np.isnan(salnp.ops.relu(x)[0, 0, 0, 0])
    y, _, _ = salnp.ops.batch_norm_relu(np.full((2, 1, 2, 2), np.nan, np.float32), None, None)
    assert np.isnan(y).all()


# ---------------------------------------------------------------- the bad-input matrix
# Every argument replaced by a bad or unusual value; the variant families and their
# expected outcomes are in tests/hostile.py.

def _bn_saved(relu=False):
    if relu:
        y, m, s = ops.batch_norm_relu(X3, GAMMA, BETA_BN)
        return y, m, s
    y, m, s = ops.batch_norm(X3, GAMMA, BETA_BN)
    return y, m, s


Y_BNR, SM, SI = _bn_saved(True)
GY_BN = _f((2, 3, 5, 5), seed=16)


OPS_SPECS = [
    Spec("batch_norm", ops.batch_norm,
         dict(x=X3, gamma=GAMMA, beta=BETA_BN, running_mean=np.zeros(3, np.float32),
              running_var=np.ones(3, np.float32), training=True, momentum=0.1, eps=1e-5),
         dict(x="F", gamma="F", beta="F", running_mean="W", running_var="W",
              momentum="real", eps="real"),
         opt={"gamma", "beta"}, mismatch={"gamma": [(4,)], "beta": [(2,)],
                                          "running_mean": [(4,)]},
         finite={"momentum", "eps"}, nonneg={"momentum", "eps"},
         fresh={"running_mean", "running_var"}, huge_axis={"x": 0}),
    Spec("batch_norm_eval", ops.batch_norm,
         dict(x=X3, gamma=GAMMA, beta=BETA_BN, running_mean=_f((3,), seed=20),
              running_var=_f((3,), 0.5, 2.0, seed=21), training=False),
         dict(x="F", gamma="F", beta="F", running_mean="F", running_var="F"),
         opt={"gamma", "beta"}, mismatch={"running_var": [(4,)]}),
    Spec("batch_norm_backward", ops.batch_norm_backward,
         dict(x=X3, gamma=GAMMA, grad_y=GY_BN, save_mean=SM, save_invstd=SI),
         dict(x="F", gamma="F", grad_y="F", save_mean="F", save_invstd="F"),
         opt={"gamma"}, mismatch={"grad_y": [(2, 3, 5, 4)], "save_mean": [(2,)]}),
    Spec("batch_norm_relu", ops.batch_norm_relu,
         dict(x=X3, gamma=GAMMA, beta=BETA_BN, running_mean=np.zeros(3, np.float32),
              running_var=np.ones(3, np.float32), residual=RES, training=True),
         dict(x="F", gamma="F", beta="F", running_mean="W", running_var="W",
              residual="F"),
         opt={"gamma", "beta", "residual"}, mismatch={"residual": [(2, 3, 5, 4)]},
         fresh={"running_mean", "running_var"}),
    Spec("batch_norm_relu_backward", ops.batch_norm_relu_backward,
         dict(x=X3, gamma=GAMMA, y=Y_BNR, grad_y=GY_BN, save_mean=SM, save_invstd=SI),
         dict(x="F", gamma="F", y="F", grad_y="F", save_mean="F", save_invstd="F"),
         opt={"gamma"}, mismatch={"y": [(2, 3, 4, 5)], "save_invstd": [(4,)]}),
    Spec("relu", ops.relu, dict(x=X3), dict(x="F"), anyshape={"x"},
         huge_axis={"x": 0}),
    Spec("relu_backward", ops.relu_backward, dict(y=X3, grad_y=GY_BN),
         dict(y="F", grad_y="F"), mismatch={"grad_y": [(2, 3, 5, 4), (150,)]},
         anyshape={"y", "grad_y"}),
    Spec("add", ops.add, dict(a=X3, b=RES), dict(a="F", b="F"),
         mismatch={"b": [(2, 3, 5, 4)]}, anyshape={"a", "b"}),
    Spec("global_avg_pool", ops.global_avg_pool, dict(x=X3), dict(x="F"),
         huge_axis={"x": 0}),
    Spec("global_avg_pool_backward", ops.global_avg_pool_backward,
         dict(grad_y=_f((2, 3), seed=17), input_shape=(2, 3, 5, 5)),
         dict(grad_y="F", input_shape="shape4"), mismatch={"grad_y": [(2, 4), (3, 3)]}),
    Spec("linear", ops.linear, dict(x=LX, w=LW, b=LB), dict(x="F", w="F", b="F"),
         opt={"b"}, mismatch={"w": [(5, 7)], "b": [(4,)]}, huge_axis={"x": 0}),
    Spec("linear_backward", ops.linear_backward, dict(x=LX, w=LW, grad_y=LGY),
         dict(x="F", w="F", grad_y="F"), mismatch={"w": [(5, 5)], "grad_y": [(4, 4)]}),
    Spec("cross_entropy", ops.cross_entropy, dict(logits=Z, labels=LAB),
         dict(logits="F", labels="I"), mismatch={"labels": [(3,), (4, 1)]},
         huge_axis={"logits": 1}),
    Spec("cross_entropy_backward", ops.cross_entropy_backward,
         dict(logits=Z, labels=LAB, grad=0.5),
         dict(logits="F", labels="I", grad="real"), mismatch={"labels": [(5,)]},
         finite={"grad"}),
    Spec("sgd_step",
         lambda params, grads, momentum_buffer, lr, momentum, weight_decay:
         (ops.sgd_step(params, grads, momentum_buffer, lr, momentum=momentum,
                       weight_decay=weight_decay), params.copy(), momentum_buffer.copy())[1:]
         if isinstance(params, np.ndarray) and isinstance(momentum_buffer, np.ndarray)
         else ops.sgd_step(params, grads, momentum_buffer, lr, momentum=momentum,
                           weight_decay=weight_decay),
         dict(params=_f((7,), seed=18), grads=_f((7,), seed=19),
              momentum_buffer=_f((7,), seed=22), lr=0.1, momentum=0.9, weight_decay=1e-4),
         dict(params="W", grads="F", momentum_buffer="W", lr="real", momentum="real",
              weight_decay="real"),
         mismatch={"grads": [(6,), (7, 1)], "momentum_buffer": [(8,)]},
         finite={"lr", "momentum", "weight_decay"}, nonneg={"lr", "momentum",
                                                           "weight_decay"},
         fresh={"params", "momentum_buffer"}, anyshape={"grads"}),
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)


# ---------------------------------------------------------------- NaN / inf decisions of the ops

def test_nan_policy():
    """Decisions: ops propagate NaN/inf in array data like PyTorch (no check, no crash);
    scalars that parameterise an op (beta, eps, momentum, lr, grad, shift offsets of
    active_shift, SAL logits) must be finite: ValueError naming them."""
    xn = _with(X3, np.nan)
    assert np.isnan(ops.conv2d(xn, W, 1, 1)).any()
    assert np.isnan(ops.relu(xn)).any()                         # relu(NaN) = NaN (PyTorch)
    assert np.isnan(ops.add(xn, RES)).any()
    assert np.isnan(ops.global_avg_pool(xn)[0]).any()
    assert np.isnan(ops.batch_norm(xn, GAMMA, BETA_BN)[0][:, 0]).all()   # whole channel 0
    assert np.isnan(ops.shift(_with(X9, np.nan, 12), OFF_I)).any()
    assert math.isnan(ops.cross_entropy(_with(Z, np.nan), LAB))
    assert np.isinf(ops.linear(_with(LX, np.inf), LW)).any()
    p = _f((5,), seed=1)
    ops.sgd_step(p, _with(_f((5,), seed=2), np.nan), np.zeros(5, np.float32), 0.1)
    assert np.isnan(p[0]) and np.all(np.isfinite(p[1:]))
    for f, what in [(lambda: ops.active_shift(X9, _with(OFF_F, np.nan)), "offsets"),
                    (lambda: ops.sal_probs(_with(LOGITS, np.inf), 1.0), "logits"),
                    (lambda: ops.sal_conv2d(X3, W, _with(LOGITS, np.nan), 1.0), "logits"),
                    (lambda: ops.sal_conv2d(X3, W, LOGITS, float("nan")), "beta"),
                    (lambda: ops.batch_norm(X3, None, None, eps=float("inf")), "eps"),
                    (lambda: ops.batch_norm(X3, None, None, momentum=float("nan")), "momentum"),
                    (lambda: ops.cross_entropy_backward(Z, LAB, grad=float("nan")), "grad"),
                    (lambda: ops.sgd_step(p, p.copy(), None, float("inf"), momentum=0.0), "lr")]:
        with pytest.raises(ValueError, match=what):
            f()
