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
    Spec("sal_kept_taps", ops.sal_kept_taps, dict(logits=LOGITS, beta=2.0),
         dict(logits="F", beta="real"), mismatch={"logits": [(4, 3, 8)]},
         finite={"beta"}, nonneg={"beta"}, anyshape={"logits"}),
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)


# ---- sparse taps (tap_threshold; issue 19) -------------------------------------------------
# The sparse path is forced (set_taps_path("sparse")) so that every shape, beta and ISA runs
# its kernels, whatever the cost model would choose.  Shapes: batch 1, odd and prime sizes,
# channels not divisible by 8 or 9, rows wider than a tile (33, 35), strides 1, 2, 3.
TAP_SHAPES = [
    (1, 3, 7, 5, 4, 1),
    (2, 5, 11, 13, 7, 2),
    (3, 10, 5, 4, 3, 1),
    (1, 17, 8, 8, 19, 1),
    (2, 7, 9, 9, 6, 3),
    (1, 4, 33, 35, 5, 1),
    (2, 6, 16, 16, 11, 2),
    (2, 12, 32, 32, 9, 1),
    (2, 5, 9, 10, 65, 2),     # >= 64 outputs: shared SAL on the restricted-im2col GEMM
    # stride 1, rows 16, 32, 64 wide: the direct kernels when x and grad_y are 64-byte
    # aligned (odd heights, a partial last tile of rows, channels not divisible by 8 or 9)
    (3, 7, 16, 16, 5, 1),
    (1, 5, 9, 64, 6, 1),
    (2, 10, 17, 32, 3, 1),
]
TAP_SHAPE_IDS = ["x".join(map(str, s)) for s in TAP_SHAPES]
TAP_BETAS = [1.0, 20.0, 70.0, 200.0]
T_DEFAULT = salnp._core.TAP_THRESHOLD_DEFAULT


@pytest.fixture
def sparse_path():
    salnp._core.set_taps_path("sparse")
    yield
    salnp._core.set_taps_path("auto")


def random_mask(rng, shape):
    """0/1 of the logits' shape, 1..9 allowed positions per slice."""
    m = np.zeros(shape, np.float32)
    for idx in np.ndindex(*shape[:-1]):
        m[idx + (rng.choice(9, rng.integers(1, 10), replace=False),)] = 1.0
    return m


def f64(*arrays):
    return [np.asarray(t, np.float64) for t in arrays]


def placed(a, aligned):
    """A copy of a whose data starts on a 64-byte boundary (aligned) or 16 bytes past one:
    the sparse path of a stride-1 layer with rows 16, 32 or 64 wide runs on the direct
    kernels when x and grad_y are aligned, on the copy path otherwise (tests/c/test_taps.c
    checks which path runs)."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    off = (-buf.ctypes.data) % 64 + (0 if aligned else 16)
    v = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    assert (v.ctypes.data % 64 == 0) == aligned
    return v


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "off16"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("shape", TAP_SHAPES, ids=TAP_SHAPE_IDS)
def test_sparse_taps_equal_dense_and_f64(shape, shared, masked, aligned, isa, rng, sparse_path):
    """Outputs and every gradient of the sparse path equal the dense path's within the
    PyTorch tolerances of test_sal_matches_torch, and the float64 reference (threshold 0);
    x and grad_y on a 64-byte boundary or 16 bytes past one (the direct kernels or the copy
    path at stride 1)."""
    N, C, H, W, O, s = shape
    x, w, a = make(rng, N, C, H, W, O, shared)
    x = placed(x, aligned)
    mask = random_mask(rng, a.shape) if masked else None
    for beta in TAP_BETAS:
        kw = dict(stride=s, mask=mask)
        y = ops.sal_conv2d(x, w, a, beta, tap_threshold=T_DEFAULT, **kw)
        gy = placed(rng.standard_normal(y.shape, dtype=np.float32), aligned)
        got = [y, *ops.sal_conv2d_backward(x, w, a, beta, gy, tap_threshold=T_DEFAULT, **kw)]
        dense = [ops.sal_conv2d(x, w, a, beta, tap_threshold=0, **kw),
                 *ops.sal_conv2d_backward(x, w, a, beta, gy, tap_threshold=0, **kw)]
        ref = [salnp._core.ref_sal_conv2d_f64(*f64(x, w, a), beta, **kw),
               *salnp._core.ref_sal_conv2d_backward_f64(*f64(x, w, a), beta, *f64(gy), **kw)]
        scale = np.sqrt(N * y.shape[2] * y.shape[3])
        atols = [1e-4, 1e-4, 1e-4 * scale, 1e-4 * scale * max(1.0, beta / 20)]
        for g, d, r, name, atol in zip(got, dense, ref, ["y", "grad_x", "grad_w", "grad_logits"],
                                       atols):
            assert_close(g, d, atol=atol, what=f"{name} beta={beta} vs dense")
            assert_close(g, r, atol=atol, what=f"{name} beta={beta} vs float64 reference")
        if not masked:   # PyTorch autograd (float64) on the authors' formulation
            tr = torch_sal(x, w, a, beta, gy, s)
            for g, r, name, atol in zip(got, tr, ["y", "grad_x", "grad_w", "grad_logits"], atols):
                assert_close(g, r, atol=atol, what=f"{name} beta={beta} vs PyTorch")
        if beta >= 20:   # the path skipped something (else it would prove nothing)
            kept = salnp._core.sal_kept_taps(a, beta, mask=mask)
            assert kept.sum() < kept.size


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_hard_mode(stride, shared, rng, sparse_path):
    """Hard mode keeps exactly the taps with p > 0.5."""
    x, w, a = make(rng, 2, 6, 9, 7, 5, shared)
    for beta in [1.0, 20.0, 1000.0]:
        y = ops.sal_conv2d(x, w, a, beta, stride=stride, hard=True)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gx, gw, ga = ops.sal_conv2d_backward(x, w, a, beta, gy, stride=stride, hard=True)
        ry, rgx, rgw, _ = torch_sal(x, w, a, beta, gy, stride, hard=True)
        assert_close(y, ry, what=f"y beta={beta}")
        assert_close(gx, rgx, what=f"grad_x beta={beta}")
        assert_close(gw, rgw, atol=1e-3, what=f"grad_w beta={beta}")
        assert np.all(ga == 0)
        kept = salnp._core.sal_kept_taps(a, beta, hard=True)
        np.testing.assert_array_equal(kept, ops.sal_probs(a, beta, hard=True) > 0)


@pytest.mark.parametrize("beta", [20.0, 35.0])
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_logit_gradient_finite_differences(stride, shared, beta, isa, rng, sparse_path):
    """The sparse path's dL/dlogits against central differences of the float64 reference
    loss, at every tap, the skipped ones included.  In a slice that keeps >= 2 taps the
    skipped logits get the std term of the gradient, far from zero (a sparse path that gave
    them 0 would fail here); where one tap dominates, the whole slice's logit gradient is of
    the order of the skipped weight (sal/attention.h)."""
    N, C, H, W, O = 2, 6, 6, 5, 4
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    a = rng.random((1 if shared else O, C, 9), dtype=np.float32)
    xd, wd, ad = f64(x, w, a)
    gy = rng.standard_normal(salnp._core.ref_sal_conv2d_f64(xd, wd, ad, beta, stride).shape)
    _, _, ga = ops.sal_conv2d_backward(x, w, a, beta, gy.astype(np.float32), stride=stride)
    eps = 1e-6
    fd = np.zeros_like(ad)
    for idx in np.ndindex(*ad.shape):
        old = ad[idx]
        ad[idx] = old + eps
        lp = np.sum(salnp._core.ref_sal_conv2d_f64(xd, wd, ad, beta, stride) * gy)
        ad[idx] = old - eps
        lm = np.sum(salnp._core.ref_sal_conv2d_f64(xd, wd, ad, beta, stride) * gy)
        ad[idx] = old
        fd[idx] = (lp - lm) / (2 * eps)
    kept = salnp._core.sal_kept_taps(a, beta)
    skipped = ~kept
    multi = skipped & (kept.sum(-1, keepdims=True) >= 2)   # skipped, in a slice keeping >= 2
    assert multi.sum() >= 5, "too few skipped taps in slices keeping >= 2 to test"
    assert np.abs(fd[multi]).max() > 1e-2, "the skipped taps' gradient is below 10 x atol here"
    assert_close(ga, fd, atol=1e-3, rtol=1e-4, what="grad_logits (all taps)")
    assert_close(ga[skipped], fd[skipped], atol=1e-3, rtol=1e-4, what="grad_logits (skipped)")


def test_sparse_skips_taps():
    """A skipped tap really is skipped: p ~ 1e-10 * p_max (below 2**-27) times a weight of
    1e7 adds 1e-3 to the dense result and nothing to the sparse one; threshold 0 keeps it."""
    x = np.ones((1, 1, 4, 5), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    w[0, 0, 0, 0] = 1e7
    a = np.zeros((1, 1, 9), np.float32)
    a[0, 0, 4] = 1.0                   # std 1/3: z = 3 beta at the centre, 0 elsewhere
    beta = 10 * np.log(10) / 3         # p_other / p_max = 1e-10
    salnp._core.set_taps_path("sparse")
    try:
        ys = ops.sal_conv2d(x, w, a, beta)
    finally:
        salnp._core.set_taps_path("auto")
    yd = ops.sal_conv2d(x, w, a, beta, tap_threshold=0)
    assert abs(yd[0, 0, 1, 1] - 1.0) > 5e-4       # output (1, 1) reads tap 0
    assert ys[0, 0, 1, 1] == np.float32(1.0)
    np.testing.assert_array_equal(salnp._core.sal_kept_taps(a, beta)[0, 0], np.arange(9) == 4)


def test_tap_threshold_default(rng):
    """The default: 2**-27 = u/8, u = 2**-24 float32's unit roundoff (sal/attention.h);
    omitting tap_threshold is passing the default."""
    assert T_DEFAULT == 2.0 ** -27
    x, w, a = make(rng, 2, 5, 9, 8, 6, False)
    y0 = ops.sal_conv2d(x, w, a, 20.0)
    np.testing.assert_array_equal(y0, ops.sal_conv2d(x, w, a, 20.0, tap_threshold=T_DEFAULT))
    gy = rng.standard_normal(y0.shape, dtype=np.float32)
    for g0, g1 in zip(ops.sal_conv2d_backward(x, w, a, 20.0, gy),
                      ops.sal_conv2d_backward(x, w, a, 20.0, gy, tap_threshold=T_DEFAULT)):
        np.testing.assert_array_equal(g0, g1)


@pytest.mark.parametrize("beta", [1.0, 20.0, 70.0])
def test_kept_taps(beta, rng):
    """sal_kept_taps: p > 0 and p >= t * max(p) per slice, p from the float64 reference."""
    a = rng.random((7, 5, 9), dtype=np.float32)
    m = random_mask(rng, a.shape)
    for t in [T_DEFAULT, 1e-3, 0.5, 1.0]:
        for mask in [None, m]:
            p = salnp._core.ref_sal_probs_f64(a.astype(np.float64), beta, mask=mask)
            want = (p > 0) & (p >= t * p.max(-1, keepdims=True))
            got = salnp._core.sal_kept_taps(a, beta, tap_threshold=t, mask=mask)
            assert got.dtype == np.bool_ and got.shape == a.shape
            np.testing.assert_array_equal(got, want)
            assert np.all(got.sum(-1) >= 1)
    if beta == 1.0:
        assert salnp._core.sal_kept_taps(a, beta).all()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_threads_deterministic(threads, stride, rng, sparse_path):
    """The same thread count gives the same bits; 1 and 2 threads agree to rounding
    (stride 1 with aligned x and grad_y: the direct kernels; stride 2: the copy path)."""
    x, w, a = make(rng, 5, 9, 16, 16, 10, False)
    x = placed(x, True)
    gy = placed(rng.standard_normal((5, 10, 16 // stride, 16 // stride), dtype=np.float32), True)

    def run():
        return [ops.sal_conv2d(x, w, a, 20.0, stride=stride),
                *ops.sal_conv2d_backward(x, w, a, 20.0, gy, stride=stride)]

    salnp.set_num_threads(1)
    ref = run()
    salnp.set_num_threads(threads)
    got, again = run(), run()
    for g, g2, r, name in zip(got, again, ref, ["y", "grad_x", "grad_w", "grad_logits"]):
        np.testing.assert_array_equal(g, g2, err_msg=name)
        assert_close(g, r, atol=1e-5, rtol=1e-5, what=name)


def test_tap_threshold_bad_input(rng):
    x, w, a = make(rng, 2, 3, 5, 5, 4, False)
    gy = np.zeros((2, 4, 5, 5), np.float32)
    for bad, shown in [(-1.0, "-1"), (-1e-12, "-1e-12"), (np.nan, "nan"), (np.inf, "inf"),
                       (-np.inf, "-inf"), (1.5, "1.5"), (2, "2")]:
        with pytest.raises(ValueError, match=rf"sal_conv2d: tap_threshold={shown}: must"):
            ops.sal_conv2d(x, w, a, 20.0, tap_threshold=bad)
        with pytest.raises(ValueError, match=rf"sal_conv2d_backward: tap_threshold={shown}: must"):
            ops.sal_conv2d_backward(x, w, a, 20.0, gy, tap_threshold=bad)
    with pytest.raises(ValueError, match=r"would drop the largest tap"):
        ops.sal_conv2d(x, w, a, 20.0, tap_threshold=1.0001)
    for bad, shown in [("abc", "'abc'"), (None, "None"), (1j, r"1j"), (True, "True"),
                       ([0.1], r"\[0.1\]")]:
        with pytest.raises(ValueError, match=rf"sal_conv2d: tap_threshold={shown}: must be a real"):
            ops.sal_conv2d(x, w, a, 20.0, tap_threshold=bad)
    with pytest.raises(ValueError, match=r"sal_kept_taps: tap_threshold=0: the dense path"):
        salnp._core.sal_kept_taps(a, 20.0, tap_threshold=0)
    with pytest.raises(TypeError):
        salnp._core.ref_sal_conv2d_f64(x.astype(np.float64), w.astype(np.float64),
                                       a.astype(np.float64), 20.0, tap_threshold=0.1)
    with pytest.raises(ValueError, match=r"set_taps_path: name=\"fast\""):
        salnp._core.set_taps_path("fast")
    assert salnp._core.get_taps_path() == "auto"


@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("stride", [1, 2])
def test_tap_threshold_zero_is_the_dense_path(stride, shared, rng):
    """tap_threshold=0 runs the dense convolution on W_eff = p * w, bit for bit: conv2d of
    x with sal_probs(logits) * w, whatever the path setting."""
    x, w, a = make(rng, 3, 7, 10, 9, 5, shared)
    weff = (ops.sal_probs(a, 70.0).reshape(a.shape[0], a.shape[1], 3, 3) * w).astype(np.float32)
    ref = ops.conv2d(x, np.ascontiguousarray(np.broadcast_to(weff, w.shape)), stride=stride,
                     padding=1)
    for path in ["auto", "sparse", "dense"]:
        salnp._core.set_taps_path(path)
        try:
            y = ops.sal_conv2d(x, w, a, 70.0, stride=stride, tap_threshold=0)
        finally:
            salnp._core.set_taps_path("auto")
        np.testing.assert_array_equal(y, ref, err_msg=path)


# ---- the network's tap threshold (net.tap_threshold, SALConv2d.tap_threshold) ----------
def test_network_tap_threshold_default_dense_and_sparse_agree(rng, tmp_path):
    """A fresh network trains sparse at the default threshold; 0 is the dense path; one
    training step of each gives the same logits and gradients within float32 rounding; the
    threshold is saved and loaded, and a file from before it existed loads the default."""
    net = salnp.models.resnet(20, 8, "sal", seed=3)
    assert net.tap_threshold == salnp._core.TAP_THRESHOLD_DEFAULT
    x = rng.standard_normal((6, 3, 17, 15), dtype=np.float32)
    out = {}
    for t in (0.0, salnp._core.TAP_THRESHOLD_DEFAULT):
        n = salnp.models.resnet(20, 8, "sal", seed=3)
        n.tap_threshold = t
        y = n.forward(x, train=True)
        n.zero_grad()
        n.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape) / y.size)
        out[t] = (y, n.arena.grads.copy())
    (y0, g0), (y1, g1) = out.values()
    assert_close(y1, y0, 1e-5 * float(np.abs(y0).max()), 1e-5, what="logits")
    assert_close(g1, g0, 1e-5 * float(np.abs(g0).max()), 1e-4, what="gradients")
    net.tap_threshold = 0.25
    salnp.save(net, tmp_path / "net.npz")
    assert salnp.load(tmp_path / "net.npz").tap_threshold == 0.25
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("tap_threshold")}
    old = salnp.models.resnet(20, 8, "sal", seed=3)
    old.tap_threshold = 0.5
    old.load_state_dict(state)              # a checkpoint from before the threshold existed
    assert old.tap_threshold == salnp._core.TAP_THRESHOLD_DEFAULT


@pytest.mark.parametrize("bad", [-1e-3, 1.5, float("nan"), float("inf"), "0.1", None, True])
def test_network_tap_threshold_refused(bad):
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    err = TypeError if isinstance(bad, (str, bool)) or bad is None else ValueError
    with pytest.raises(err, match=r"net\.tap_threshold="):
        net.tap_threshold = bad
    with pytest.raises(err, match="tap_threshold="):
        net.layer1[0].conv1.tap_threshold = bad
    assert net.tap_threshold == salnp._core.TAP_THRESHOLD_DEFAULT
    state = net.state_dict()
    state["layer1.0.conv1.tap_threshold"] = np.float32(2.0)
    with pytest.raises(ValueError, match=r"tap_threshold: a tap threshold must be in \[0, 1\]"):
        net.load_state_dict(state)
