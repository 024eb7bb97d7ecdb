"""sal_conv2d / sal_conv2d_backward / sal_probs against PyTorch autograd, float64 finite
differences, the degenerate cases (std 0, beta 0, beta 1000), hard mode, threads, bad input and
the bad-input matrix (every argument replaced by a bad or unusual value).

The PyTorch reference is the expression of the paper's released code,
    p = softmax(beta * a / a.std(-1, keepdim=True), -1);  y = conv2d(x, p.reshape(w) * w)
evaluated in float64: at beta = 1000 float32 rounding of beta * a / std (|z| ~ 1e4, ulp
~ 1e-3) moves p by more than our tolerance, so a float32 torch run is not an exact reference
(our kernel does the attention arithmetic in double). Inputs are float32 either way."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
from hostile import GY_CONV, LOGITS, W, X3, Spec, _matrix_ops, check_ops_row

ops = salnp.ops
BETAS = [0.15, 1.0, 20.0, 70.0, 1000.0]

# (N, C_in, H, W, C_out, stride): batch 1, odd and prime sizes, non-square, stride 2,
# channels 1 and not divisible by 9, C_in != C_out
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (1, 3, 7, 5, 4, 1),
    (2, 5, 11, 13, 7, 2),
    (2, 1, 6, 9, 10, 2),
    (3, 10, 5, 4, 3, 1),
    (1, 11, 17, 3, 2, 2),
    (4, 16, 8, 8, 16, 1),
]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def torch_sal(x, w, a, beta, gy, stride, hard=False):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(beta * at / at.std(-1, keepdim=True), -1)
    if hard:
        p = (p > 0.5).to(torch.float64)
    weff = p.reshape(a.shape[0], a.shape[1], 3, 3) * wt      # (1, C, 3, 3) broadcasts
    y = F.conv2d(xt, weff, stride=stride, padding=1)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    ga = at.grad.numpy() if at.grad is not None else np.zeros(a.shape)
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), ga


def make(rng, N, C, H, W, O, shared):
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    a = rng.random((1 if shared else O, C, 9), dtype=np.float32)     # the paper's U[0, 1)
    return x, w, a


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sal_matches_torch(shape, shared, beta, rng):
    N, C, H, W, O, s = shape
    x, w, a = make(rng, N, C, H, W, O, shared)
    y = ops.sal_conv2d(x, w, a, beta, stride=s)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw, ga = ops.sal_conv2d_backward(x, w, a, beta, gy, stride=s)
    ry, rgx, rgw, rga = torch_sal(x, w, a, beta, gy, s)
    assert_close(y, ry, what="y")
    assert_close(gx, rgx, what="grad_x")
    # grad_w and grad_logits come from dW_eff, a float32 sum of N*Ho*Wo products whose
    # order differs from torch's (as in test_conv): atol scales with sqrt of that count
    scale = np.sqrt(N * y.shape[2] * y.shape[3])
    assert_close(gw, rgw, atol=1e-4 * scale, what="grad_w")
    assert_close(ga, rga, atol=1e-4 * scale, what="grad_logits")


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sal_hard_matches_torch(stride, shared, rng):
    x, w, a = make(rng, 2, 6, 9, 7, 5, shared)
    for beta in [1.0, 20.0, 1000.0]:     # beta 1: mostly all-zero slices; 1000: one-hot
        y = ops.sal_conv2d(x, w, a, beta, stride=stride, hard=True)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gx, gw, ga = ops.sal_conv2d_backward(x, w, a, beta, gy, stride=stride, hard=True)
        ry, rgx, rgw, _ = torch_sal(x, w, a, beta, gy, stride, hard=True)
        assert_close(y, ry, what=f"y beta={beta}")
        assert_close(gx, rgx, what=f"grad_x beta={beta}")
        assert_close(gw, rgw, atol=1e-3, what=f"grad_w beta={beta}")
        assert np.all(ga == 0), "hard mode: the threshold has zero derivative"
    p = ops.sal_probs(a, 1000.0, hard=True)
    assert set(np.unique(p)) <= {0.0, 1.0} and np.all(p.sum(-1) == 1)


def test_sal_shared_hard_is_shift_then_1x1(rng):
    """Shared + hard = shift (offsets from argmax p, DESIGN 1.4) then a 1x1 convolution."""
    N, C, H, W, O, s = 2, 7, 9, 8, 5, 2
    x, w, a = make(rng, N, C, H, W, O, True)
    q = ops.sal_probs(a, 1000.0, hard=True)[0].argmax(-1)
    off = np.stack([q // 3 - 1, q % 3 - 1], 1).astype(np.int32)
    w1 = w.reshape(O, C, 9)[:, np.arange(C), q][:, :, None, None]       # w[o, i, q*_i]
    ref = ops.conv2d(ops.shift(x, off, stride=s), np.ascontiguousarray(w1))
    assert_close(ops.sal_conv2d(x, w, a, 1000.0, stride=s, hard=True), ref, what="y")


@pytest.mark.parametrize("beta", [0.0] + BETAS)
def test_sal_probs_matches_torch(beta, rng):
    a = rng.random((6, 5, 9), dtype=np.float32) * 4 - 1
    p = ops.sal_probs(a, beta)
    at = torch.tensor(a, dtype=torch.float64)
    ref = torch.softmax(beta * at / at.std(-1, keepdim=True), -1).numpy()
    assert p.shape == a.shape and p.dtype == np.float32
    assert_close(p, ref, atol=1e-6, rtol=1e-5)
    assert_close(p.sum(-1), np.ones((6, 5)), atol=1e-6)
    hard = ops.sal_probs(a, beta, hard=True)
    np.testing.assert_array_equal(hard, (ref > 0.5).astype(np.float32))
    assert_close(salnp._core.ref_sal_probs_f64(a.astype(np.float64), beta), ref, atol=1e-12)


def test_sal_probs_shapes():
    a = np.linspace(0, 1, 9, dtype=np.float32)
    assert ops.sal_probs(a, 1.0).shape == (9,)
    assert ops.sal_probs(np.zeros((2, 3, 4, 9)), 1.0).shape == (2, 3, 4, 9)


def test_degenerate_equal_logits_uniform(rng):
    """All 9 logits equal: std = 0, torch's expression gives NaN; ours is the uniform 1/9
    (any beta) and the logits gradient of that slice is 0 (p is constant there)."""
    N, C, H, W, O = 2, 3, 6, 5, 4
    x, w, a = make(rng, N, C, H, W, O, False)
    a[1, 2, :] = 0.37
    a[3, 0, :] = -5.0
    a[0, 1, :] = 0.0
    at = torch.tensor(a, dtype=torch.float64)
    assert torch.isnan(torch.softmax(20.0 * at / at.std(-1, keepdim=True), -1)).any()
    for beta in [0.15, 20.0, 1000.0]:
        p = ops.sal_probs(a, beta)
        for o, c in [(1, 2), (3, 0), (0, 1)]:
            np.testing.assert_array_equal(p[o, c], np.full(9, 1 / 9, np.float32))
        y = ops.sal_conv2d(x, w, a, beta)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gx, gw, ga = ops.sal_conv2d_backward(x, w, a, beta, gy)
        for arr in (y, gx, gw, ga):
            assert np.all(np.isfinite(arr))
        for o, c in [(1, 2), (3, 0), (0, 1)]:
            assert np.all(ga[o, c] == 0)
        # against the torch expression with p of those slices set to 1/9 by hand
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        pt = torch.tensor(p, dtype=torch.float64)
        ry = F.conv2d(xt, pt.reshape(O, C, 3, 3) * wt, padding=1)
        ry.backward(torch.tensor(gy, dtype=torch.float64))
        assert_close(y, ry.detach().numpy(), what="y")
        assert_close(gx, xt.grad.numpy(), what="grad_x")
        assert_close(gw, wt.grad.numpy(), atol=1e-3, what="grad_w")


def test_beta_zero_is_uniform(rng):
    x, w, a = make(rng, 2, 4, 7, 7, 3, False)
    y = ops.sal_conv2d(x, w, a, 0.0)
    assert_close(y, ops.conv2d(x, w / 9, padding=1), what="y")
    _, _, ga = ops.sal_conv2d_backward(x, w, a, 0.0, np.ones_like(y))
    assert np.all(ga == 0)


def test_large_beta_no_overflow(rng):
    x, w, a = make(rng, 1, 3, 5, 5, 2, False)
    a *= 50                                          # z = beta * a / std up to ~1e6
    k = rng.integers(0, 9, a.shape[:2])              # a clear winner per slice (no near-ties)
    np.put_along_axis(a, k[..., None], a.max(-1, keepdims=True) + 10, -1)
    for beta in [1000.0, 1e6, 1e30]:
        p = ops.sal_probs(a, beta)
        assert np.all(np.isfinite(p))
        np.testing.assert_array_equal(p, np.eye(9, dtype=np.float32)[k])
        y = ops.sal_conv2d(x, w, a, beta)
        outs = ops.sal_conv2d_backward(x, w, a, beta, np.ones_like(y))
        assert all(np.all(np.isfinite(t)) for t in (y,) + outs)


@pytest.mark.parametrize("beta", [0.15, 1.0, 20.0])
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sal_finite_differences_f64(stride, shared, beta, rng):
    """The float64 reference against central differences in the logits, w and x; the
    float32 kernel against the float64 reference."""
    N, C, H, W, O = 2, 3, 6, 5, 4
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, 3, 3))
    a = rng.random((1 if shared else O, C, 9))
    y = salnp._core.ref_sal_conv2d_f64(x, w, a, beta, stride)
    gy = rng.standard_normal(y.shape)
    gx, gw, ga = salnp._core.ref_sal_conv2d_backward_f64(x, w, a, beta, gy, stride)
    eps = 1e-6

    def loss():
        return float(np.sum(salnp._core.ref_sal_conv2d_f64(x, w, a, beta, stride) * gy))

    def fd_at(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        lp = loss()
        arr[idx] = old - eps
        lm = loss()
        arr[idx] = old
        return (lp - lm) / (2 * eps)

    for idx in np.ndindex(*a.shape[:2]):
        for q in range(9):
            fd = fd_at(a, idx + (q,))
            assert abs(fd - ga[idx + (q,)]) <= 1e-6 + 1e-6 * abs(fd), (idx, q, fd, ga[idx + (q,)])
    for arr, grad, name in ((x, gx, "x"), (w, gw, "w")):
        for idx in [tuple(rng.integers(0, d) for d in arr.shape) for _ in range(8)]:
            fd = fd_at(arr, idx)
            assert abs(fd - grad[idx]) <= 1e-6 + 1e-6 * abs(fd), (name, idx, fd, grad[idx])
    # the float32 kernel (simplified formula of DESIGN 1.4) against the f64 reference
    # (full softmax and std Jacobians), both on the same float32-rounded inputs
    x32, w32, a32, gy32 = (t.astype(np.float32) for t in (x, w, a, gy))
    r = [salnp._core.ref_sal_conv2d_f64(*(t.astype(np.float64) for t in (x32, w32, a32)), beta,
                                        stride)]
    r += salnp._core.ref_sal_conv2d_backward_f64(
        *(t.astype(np.float64) for t in (x32, w32, a32)), beta, gy32.astype(np.float64), stride)
    got = [ops.sal_conv2d(x32, w32, a32, beta, stride)]
    got += ops.sal_conv2d_backward(x32, w32, a32, beta, gy32, stride)
    for g_, r_, name, tol in zip(got, r, ["y", "grad_x", "grad_w", "grad_logits"],
                                 [1e-4, 1e-4, 1e-3, 1e-3]):
        assert_close(g_, r_, atol=tol, rtol=1e-4, what=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_agree(threads, rng):
    x, w, a = make(rng, 3, 7, 12, 9, 6, False)
    gy = rng.standard_normal((3, 6, 6, 5), dtype=np.float32)
    salnp.set_num_threads(1)
    ref = (ops.sal_conv2d(x, w, a, 20.0, 2),) + ops.sal_conv2d_backward(x, w, a, 20.0, gy, 2)
    salnp.set_num_threads(threads)
    got = (ops.sal_conv2d(x, w, a, 20.0, 2),) + ops.sal_conv2d_backward(x, w, a, 20.0, gy, 2)
    for g, r, name in zip(got, ref, ["y", "grad_x", "grad_w", "grad_logits"]):
        assert_close(g, r, atol=1e-5, rtol=1e-5, what=name)


def test_inputs_unchanged(rng):
    x, w, a = make(rng, 2, 3, 5, 5, 4, False)
    gy = rng.standard_normal((2, 4, 5, 5), dtype=np.float32)
    copies = [t.copy() for t in (x, w, a, gy)]
    ops.sal_conv2d(x, w, a, 20.0)
    ops.sal_conv2d_backward(x, w, a, 20.0, gy)
    ops.sal_probs(a, 20.0)
    for t, c in zip((x, w, a, gy), copies):
        np.testing.assert_array_equal(t, c)


def test_sal_bad_input(rng):
    x, w, a = make(rng, 2, 3, 5, 5, 4, False)
    gy = np.zeros((2, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"sal_conv2d: logits must have shape \(C_out=4 or 1, "
                                         r"C_in=3, 9\), got \(2, 3, 9\)"):
        ops.sal_conv2d(x, w, a[:2], 1.0)
    with pytest.raises(ValueError, match=r"logits must have shape .* got \(4, 3, 8\)"):
        ops.sal_conv2d(x, w, a[:, :, :8], 1.0)
    with pytest.raises(ValueError, match=r"logits must have shape .* got \(4, 2, 9\)"):
        ops.sal_conv2d(x, w, a[:, :2], 1.0)
    with pytest.raises(ValueError, match=r"sal_conv2d: logits must be a 3-D array"):
        ops.sal_conv2d(x, w, a[0], 1.0)
    with pytest.raises(ValueError, match=r"sal_conv2d: w must have shape \(O, C=3, 3, 3\), got \(4, 3, 5, 5\)"):
        ops.sal_conv2d(x, np.zeros((4, 3, 5, 5), np.float32), a, 1.0)
    with pytest.raises(ValueError, match=r"w must have shape .* got \(4, 2, 3, 3\)"):
        ops.sal_conv2d(x, w[:, :2], a, 1.0)
    for beta in [np.nan, np.inf, -np.inf]:
        with pytest.raises(ValueError, match=r"sal_conv2d: beta=.*: must be finite and >= 0"):
            ops.sal_conv2d(x, w, a, beta)
        with pytest.raises(ValueError, match=r"sal_probs: beta=.*: must be finite"):
            ops.sal_probs(a, beta)
    with pytest.raises(ValueError, match=r"sal_conv2d_backward: beta=-1: must be finite and >= 0"):
        ops.sal_conv2d_backward(x, w, a, -1.0, gy)
    with pytest.raises(ValueError, match=r"sal_conv2d: padding=0: must be 1"):
        ops.sal_conv2d(x, w, a, 1.0, padding=0)
    with pytest.raises(ValueError, match=r"sal_conv2d_backward: padding=2: must be 1"):
        ops.sal_conv2d_backward(x, w, a, 1.0, gy, padding=2)
    with pytest.raises(ValueError, match=r"sal_conv2d: stride=0: must be >= 1"):
        ops.sal_conv2d(x, w, a, 1.0, stride=0)
    with pytest.raises(ValueError, match=r"sal_conv2d_backward: grad_y must have shape"):
        ops.sal_conv2d_backward(x, w, a, 1.0, gy[:, :3])
    with pytest.raises(TypeError, match=r"sal_conv2d: logits must be a real floating-point"):
        ops.sal_conv2d(x, w, a.astype(np.int32), 1.0)
    with pytest.raises(TypeError):
        ops.sal_conv2d(x, w, a, "hot")
    bad = a.copy()
    bad[1, 1, 4] = np.nan
    with pytest.raises(ValueError, match=r"logits must be finite"):
        ops.sal_conv2d(x, w, bad, 1.0)
    with pytest.raises(ValueError, match=r"sal_probs: logits must have shape \(\.\.\., 9\)"):
        ops.sal_probs(np.zeros((3, 8)), 1.0)
    with pytest.raises(ValueError, match=r"sal_probs: logits must have shape"):
        ops.sal_probs(np.float32(1.0), 1.0)


# ---------------------------------------------------------------- the bad-input matrix
# Every argument replaced by a bad or unusual value; the variant families and their
# expected outcomes are in tests/hostile.py.

OPS_SPECS = [
    Spec("sal_conv2d", ops.sal_conv2d, dict(x=X3, w=W, logits=LOGITS, beta=2.0, stride=1),
         dict(x="F", w="F", logits="F", beta="real", stride="int"),
         mismatch={"w": [(4, 3, 2, 2), (4, 2, 3, 3)], "logits": [(3, 3, 9), (4, 3, 8)]},
         finite={"beta"}, nonneg={"beta"}, int_min={"stride": 1}, huge_axis={"x": 0}),
    Spec("sal_conv2d_backward", ops.sal_conv2d_backward,
         dict(x=X3, w=W, logits=LOGITS, beta=2.0, grad_y=GY_CONV, stride=1),
         dict(x="F", w="F", logits="F", beta="real", grad_y="F", stride="int"),
         mismatch={"logits": [(4, 2, 9)], "grad_y": [(2, 4, 4, 5)]},
         finite={"beta"}, nonneg={"beta"}, int_min={"stride": 1}),
    Spec("sal_probs", ops.sal_probs, dict(logits=LOGITS, beta=2.0),
         dict(logits="F", beta="real"), mismatch={"logits": [(4, 3, 8)]},
         finite={"beta"}, nonneg={"beta"}, anyshape={"logits"}),
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)
