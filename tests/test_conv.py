"""conv2d / conv2d_backward against PyTorch autograd and float64 finite differences; bad input
and the bad-input matrix (every argument replaced by a bad or unusual value); Winograd
F(4x4, 3x3), the blocked direct kernels and the choice of algorithm per pass."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
from hostile import GY_CONV, W, X3, Spec, _matrix_ops, check_ops_row

ops = salnp.ops

# (N, C, H, W, O, K, stride, padding): batch 1, odd and prime sizes, non-square, stride 2,
# channels 1 and not divisible by 9, 1x1 kernels (the GEMM path) and 3x3 (im2col)
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1, 0),
    (1, 3, 7, 5, 4, 3, 1, 1),
    (2, 5, 11, 13, 7, 3, 2, 1),
    (3, 16, 8, 8, 16, 1, 1, 0),
    (2, 10, 9, 9, 20, 1, 2, 0),
    (1, 1, 17, 3, 2, 3, 1, 1),
    (4, 13, 6, 7, 11, 3, 1, 0),
    (2, 3, 10, 10, 5, 5, 2, 2),
    (5, 23, 5, 4, 29, 3, 2, 1),
    (8, 16, 32, 32, 16, 3, 1, 1),
]


def torch_conv(x, w, gy, stride, padding):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, stride=stride, padding=padding)
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_matches_torch(shape, isa, rng):
    N, C, H, W, O, K, s, p = shape
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((O, C, K, K)) / np.sqrt(C * K * K)).astype(np.float32)
    y = salnp.ops.conv2d(x, w, stride=s, padding=p)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw = salnp.ops.conv2d_backward(x, w, gy, stride=s, padding=p)
    ry, rgx, rgw = torch_conv(x, w, gy, s, p)
    assert_close(y, ry, what="y")
    assert_close(gx, rgx, what="grad_x")
    # grad_w sums N*Ho*Wo products: float32 accumulation order differs from torch's
    scale = np.sqrt(N * y.shape[2] * y.shape[3])
    assert_close(gw, rgw, atol=1e-4 * scale, rtol=1e-4, what="grad_w")


@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_threads_agree(threads, rng):
    x = rng.standard_normal((3, 7, 12, 9), dtype=np.float32)
    w = rng.standard_normal((6, 7, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((3, 6, 6, 5), dtype=np.float32)
    salnp.set_num_threads(1)
    ref = (salnp.ops.conv2d(x, w, 2, 1),) + salnp.ops.conv2d_backward(x, w, gy, 2, 1)
    salnp.set_num_threads(threads)
    got = (salnp.ops.conv2d(x, w, 2, 1),) + salnp.ops.conv2d_backward(x, w, gy, 2, 1)
    for g, r, name in zip(got, ref, ["y", "grad_x", "grad_w"]):
        assert_close(g, r, atol=1e-5, rtol=1e-5, what=name)


@pytest.mark.parametrize("stride,padding,K", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 0, 1)])
def test_conv2d_backward_one_gradient(stride, padding, K, rng):
    """grad_x=False / grad_w=False skip that gradient (None) and leave the other as it was"""
    x = rng.standard_normal((3, 9, 10, 11), dtype=np.float32)
    w = rng.standard_normal((10, 9, K, K), dtype=np.float32)
    y = salnp.ops.conv2d(x, w, stride, padding)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw = salnp.ops.conv2d_backward(x, w, gy, stride, padding)
    only_x = salnp.ops.conv2d_backward(x, w, gy, stride, padding, grad_w=False)
    only_w = salnp.ops.conv2d_backward(x, w, gy, stride, padding, grad_x=False)
    assert only_x[1] is None and only_w[0] is None
    np.testing.assert_array_equal(only_x[0], gx)
    np.testing.assert_array_equal(only_w[1], gw)
    assert salnp.ops.conv2d_backward(x, w, gy, stride, padding, grad_x=False, grad_w=False) == (
        None, None)


def test_inputs_unchanged(rng):
    x = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((2, 4, 5, 5), dtype=np.float32)
    copies = [a.copy() for a in (x, w, gy)]
    salnp.ops.conv2d(x, w, padding=1)
    salnp.ops.conv2d_backward(x, w, gy, padding=1)
    for a, c in zip((x, w, gy), copies):
        np.testing.assert_array_equal(a, c)


def test_noncontiguous_and_float64_inputs(rng):
    x = rng.standard_normal((2, 3, 10, 10))          # float64, converted
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xs = x[:, :, ::2, ::-1]                           # strided, negative stride
    y = salnp.ops.conv2d(xs, w, padding=1)
    ry = F.conv2d(torch.tensor(np.ascontiguousarray(xs), dtype=torch.float32), torch.tensor(w),
                  padding=1).numpy()
    assert_close(y, ry)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_conv2d_finite_differences_f64(stride, padding, rng):
    """The float64 reference against central differences; the float32 kernel against it."""
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    y = salnp._core.ref_conv2d_f64(x, w, stride, padding)
    gy = rng.standard_normal(y.shape)
    gx, gw = salnp._core.ref_conv2d_backward_f64(x, w, gy, stride, padding)
    eps = 1e-6

    def loss(xx, ww):
        return float(np.sum(salnp._core.ref_conv2d_f64(xx, ww, stride, padding) * gy))

    for arr, grad, name in ((x, gx, "x"), (w, gw, "w")):
        for idx in [tuple(rng.integers(0, d) for d in arr.shape) for _ in range(12)]:
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss(x, w)
            arr[idx] = old - eps
            lm = loss(x, w)
            arr[idx] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 + 1e-6 * abs(fd), (name, idx, fd, grad[idx])
    # adjoint identity <conv(x), gy> = <x, conv^T(gy)> (linear in x)
    assert abs(np.sum(y * gy) - np.sum(x * gx)) <= 1e-9 * (1 + abs(np.sum(y * gy)))
    # the float32 fast kernel against the float64 reference
    y32 = salnp.ops.conv2d(x.astype(np.float32), w.astype(np.float32), stride, padding)
    assert_close(y32, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(3, 16, 8, 8, 16, 1, 1, 0), (2, 5, 11, 13, 7, 3, 2, 1),
                                   (130, 4, 9, 9, 6, 3, 1, 1), (2, 10, 9, 9, 20, 1, 2, 0)])
def test_conv2d_channel_major_layout(shape, isa, rng):
    """layout='CNHW' (batch-wide GEMM, multi-image im2col chunks) equals NCHW / torch."""
    N, C, H, W, O, K, s, p = shape
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((O, C, K, K), dtype=np.float32)
    ry, rgx, rgw = torch_conv(x, w, rng.standard_normal(
        F.conv2d(torch.tensor(x), torch.tensor(w), stride=s, padding=p).shape, dtype=np.float32), s, p)
    gy = rng.standard_normal(ry.shape, dtype=np.float32)
    ry, rgx, rgw = torch_conv(x, w, gy, s, p)
    xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    y = salnp.ops.conv2d(xc, w, s, p, layout="CNHW")
    gx, gw = salnp.ops.conv2d_backward(xc, w, gy.transpose(1, 0, 2, 3), s, p, layout="CNHW")
    assert_close(y.transpose(1, 0, 2, 3), ry, what="y")
    assert_close(gx.transpose(1, 0, 2, 3), rgx, what="grad_x")
    scale = np.sqrt(N * ry.shape[2] * ry.shape[3])
    assert_close(gw, rgw, atol=1e-4 * scale, rtol=1e-4, what="grad_w")


X = np.zeros((2, 3, 8, 8), np.float32)
Wt = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("call,exc,fragment", [
    (lambda: salnp.ops.conv2d(X, Wt, stride=0), ValueError, "conv2d: stride=0: must be >= 1"),
    (lambda: salnp.ops.conv2d(X, Wt, padding=-1), ValueError, "padding=-1: must be >= 0"),
    (lambda: salnp.ops.conv2d(X[0], Wt), ValueError, "x must be a 4-D array (N, C, H, W), got 3-D"),
    (lambda: salnp.ops.conv2d(X, Wt[:, :2]), ValueError, "w must have shape (O, C=3, K, K)"),
    (lambda: salnp.ops.conv2d(X, Wt[:, :, :, :2]), ValueError, "square kernel"),
    (lambda: salnp.ops.conv2d(X[:0], Wt), ValueError, "every dimension"),
    (lambda: salnp.ops.conv2d(None, Wt), TypeError, "conv2d: x must be an array, got None"),
    (lambda: salnp.ops.conv2d(X.astype(np.int32), Wt), TypeError, "x must be a real floating-point"),
    (lambda: salnp.ops.conv2d(X.astype(np.complex64), Wt), TypeError, "x must be a real floating"),
    (lambda: salnp.ops.conv2d(X.astype(object), Wt), TypeError, "x must be a real floating"),
    (lambda: salnp.ops.conv2d(X, Wt.astype(bool)), TypeError, "w must be a real floating"),
    (lambda: salnp.ops.conv2d(X[:, :, :2, :2], Wt), ValueError, "K=3: must be <= padded input"),
    (lambda: salnp.ops.conv2d(X, Wt, layout="NHWC"), ValueError, "layout='NHWC'"),
    (lambda: salnp.ops.conv2d_backward(X, Wt, np.zeros((2, 4, 7, 7), np.float32), padding=1),
     ValueError, "grad_y must have shape (N, O, Ho, Wo) = (2, 4, 8, 8)"),
    (lambda: salnp.ops.conv2d_backward(X, Wt, None), TypeError, "grad_y must be an array"),
    (lambda: salnp.ops.conv2d(X, Wt, stride=2**70), ValueError, "stride=1180591620717411303424"),
])
def test_conv2d_bad_input(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_conv2d_huge_broadcast_input_fails_cleanly():
    """A broadcast view whose contiguous copy would need 4 TiB: a clean error, no crash."""
    x = np.broadcast_to(np.zeros((1, 1, 1, 1), np.float32), (1, 1, 2**20, 2**20))
    with pytest.raises((MemoryError, ValueError)):
        salnp.ops.conv2d(x, np.zeros((1, 1, 1, 1), np.float32))


# ---- Winograd F(4x4, 3x3) and the choice of algorithm --------------------------------------
# Image sizes 1x1 .. 33x31 (not multiples of the 4x4 tile), batch 1, channels 1, 3, 5, 17, 33
# (not multiples of a vector's 8 or 16 lanes), both layouts.
WINO_SHAPES = [  # (N, C, H, W, O)
    (1, 1, 1, 1, 1),
    (2, 3, 3, 3, 5),
    (1, 5, 5, 7, 17),
    (3, 17, 9, 9, 3),
    (1, 33, 33, 31, 5),
    (2, 16, 8, 8, 33),
    (1, 8, 16, 16, 16),
]


@pytest.fixture
def conv_algo():
    """Forces a convolution family for one test (salnp._core.set_conv_algo), then 'auto'."""
    yield salnp._core.set_conv_algo
    salnp._core.set_conv_algo(None)


def _to_layout(a, layout):
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)) if layout == "CNHW" else a


def _fwd_bwd(x, w, gy, layout, stride=1, padding=1):
    """conv2d and conv2d_backward in `layout`, results returned in NCHW"""
    xl, gl = _to_layout(x, layout), _to_layout(gy, layout)
    y = salnp.ops.conv2d(xl, w, stride, padding, layout=layout)
    gx, gw = salnp.ops.conv2d_backward(xl, w, gl, stride, padding, layout=layout)
    return _to_layout(y, layout), _to_layout(gx, layout), gw


def _f64_and_bounds(x, w, gy, stride=1, padding=1):
    """the float64 reference of y, grad_x, grad_w and the largest sums of |terms| of each"""
    ref = (_core_f64(x, w, stride, padding),) + salnp._core.ref_conv2d_backward_f64(
        x, w, gy, stride, padding)
    ax, aw, ag = np.abs(x), np.abs(w), np.abs(gy)
    mags = (_core_f64(ax, aw, stride, padding),) + salnp._core.ref_conv2d_backward_f64(
        ax, aw, ag, stride, padding)
    return ref, [float(np.max(m)) for m in mags]


def _core_f64(x, w, stride, padding):
    return salnp._core.ref_conv2d_f64(x, w, stride, padding)


def _data(rng, N, C, H, W, O):
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)
    gy = rng.standard_normal((N, O, H, W))
    return x, w, gy


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize("shape", WINO_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_winograd_against_float64_and_torch(shape, layout, isa, conv_algo, rng):
    """Each pass of Winograd F(4x4, 3x3) (forced) against the float64 direct convolution:
    |err| <= 3e-5 * the largest sum of |terms| (measured worst: 5e-6; the direct kernel's
    2.7e-7), and against PyTorch autograd in float32."""
    conv_algo("winograd")
    N, C, H, W, O = shape
    assert set(salnp.ops.conv2d_algo(
        _to_layout(np.empty((N, C, H, W)), layout).shape, (O, C, 3, 3), 1, 1,
        layout=layout).values()) == {"winograd4x4"}
    x, w, gy = _data(rng, N, C, H, W, O)
    got = _fwd_bwd(x.astype(np.float32), w.astype(np.float32), gy.astype(np.float32), layout)
    ref, mags = _f64_and_bounds(x, w, gy)
    for g, r, m, name in zip(got, ref, mags, ["y", "grad_x", "grad_w"]):
        assert_close(g, r, atol=3e-5 * m, rtol=0, what=name)
    ty, tgx, tgw = torch_conv(*(a.astype(np.float32) for a in (x, w, gy)), 1, 1)
    assert_close(got[0], ty, what="y vs torch")
    assert_close(got[1], tgx, what="grad_x vs torch")
    assert_close(got[2], tgw, atol=1e-4 * np.sqrt(N * H * W), rtol=1e-4, what="grad_w vs torch")


def test_winograd_error_is_bounded_not_zero(conv_algo, rng):
    """The test above can fail: Winograd's float32 error is measurable (larger than the
    direct kernel's) yet far inside its tolerance."""
    x, w, gy = _data(rng, 4, 32, 16, 16, 32)
    ref, mags = _f64_and_bounds(x, w, gy)
    errs = {}
    for algo in ("winograd", "direct"):
        conv_algo(algo)
        got = _fwd_bwd(x.astype(np.float32), w.astype(np.float32), gy.astype(np.float32), "CNHW")
        errs[algo] = [float(np.max(np.abs(g - r))) / m for g, r, m in zip(got, ref, mags)]
    for e_w, e_d in zip(errs["winograd"], errs["direct"]):
        assert 0 < e_d < e_w < 3e-5, errs


def test_winograd_twin_equals_direct_in_float64(rng):
    """The naive Winograd twin in float64 equals the direct convolution to rounding: the
    matrices B, G, A are right.  In float32 it agrees with the fast kernels."""
    for N, C, H, W, O in [(2, 3, 5, 7, 4), (1, 6, 9, 9, 2), (1, 2, 1, 1, 3)]:
        x, w, gy = _data(rng, N, C, H, W, O)
        assert_close(salnp._core.ref_wino_conv2d_f64(x, w, 1, 1),
                     salnp._core.ref_conv2d_f64(x, w, 1, 1), atol=1e-12, rtol=1e-12, what="y")
        for g, r, name in zip(salnp._core.ref_wino_conv2d_backward_f64(x, w, gy, 1, 1),
                              salnp._core.ref_conv2d_backward_f64(x, w, gy, 1, 1),
                              ["grad_x", "grad_w"]):
            assert_close(g, r, atol=1e-12, rtol=1e-12, what=name)
        x32, w32, g32 = (a.astype(np.float32) for a in (x, w, gy))
        salnp._core.set_conv_algo("winograd")
        try:
            fast = (salnp.ops.conv2d(x32, w32, 1, 1),) + salnp.ops.conv2d_backward(
                x32, w32, g32, 1, 1)
        finally:
            salnp._core.set_conv_algo(None)
        twin = (salnp._core.ref_wino_conv2d(x32, w32, 1, 1),) + (
            salnp._core.ref_wino_conv2d_backward(x32, w32, g32, 1, 1))
        _, mags = _f64_and_bounds(x, w, gy)
        for f, t, m, name in zip(fast, twin, mags, ["y", "grad_x", "grad_w"]):
            assert_close(f, t, atol=3e-5 * m, rtol=0, what=name)
    with pytest.raises(ValueError, match="Winograd F.4x4, 3x3. needs K=3, stride 1, pad 1"):
        salnp._core.ref_wino_conv2d_f64(x, w, 2, 1)


def test_winograd_finite_differences_f64(rng):
    """Central differences in float64 through the Winograd layer (its twin): the backward
    formulas dM = A dY A^T and dw = G^T dU G, and the flipped-kernel input gradient."""
    x, w, gy = _data(rng, 2, 3, 6, 5, 4)
    gx, gw = salnp._core.ref_wino_conv2d_backward_f64(x, w, gy, 1, 1)
    eps = 1e-6

    def loss(xx, ww):
        return float(np.sum(salnp._core.ref_wino_conv2d_f64(xx, ww, 1, 1) * gy))

    for arr, grad, name in ((x, gx, "x"), (w, gw, "w")):
        for idx in [tuple(rng.integers(0, d) for d in arr.shape) for _ in range(16)]:
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss(x, w)
            arr[idx] = old - eps
            lm = loss(x, w)
            arr[idx] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 + 1e-6 * abs(fd), (name, idx, fd, grad[idx])


@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_threads_deterministic(threads, conv_algo, rng):
    """Repeated calls give the same bits for a thread count; 1 and 2 threads agree within
    Winograd's error (the blocks differ; weight-gradient partial sums are added in thread
    order)."""
    conv_algo("winograd")
    x, w, gy = _data(rng, 9, 20, 11, 13, 24)
    _, mags = _f64_and_bounds(x, w, gy)
    x, w, gy = (a.astype(np.float32) for a in (x, w, gy))
    salnp.set_num_threads(1)
    one = _fwd_bwd(x, w, gy, "CNHW")
    salnp.set_num_threads(threads)
    a, b = _fwd_bwd(x, w, gy, "CNHW"), _fwd_bwd(x, w, gy, "CNHW")
    for u, v, r, m, name in zip(a, b, one, mags, ["y", "grad_x", "grad_w"]):
        np.testing.assert_array_equal(u, v)
        assert_close(u, r, atol=3e-5 * m, rtol=0, what=name)


# (N, C, H, W, O, K, stride): the blocked direct kernel, stride 2, 1x1 and 3x3
BLOCKED_SHAPES = [
    (1, 1, 1, 1, 1, 3, 2),
    (2, 3, 5, 7, 5, 3, 2),
    (1, 5, 9, 9, 17, 3, 2),
    (3, 17, 8, 6, 3, 3, 2),
    (1, 33, 33, 31, 5, 3, 2),
    (2, 16, 16, 16, 32, 3, 2),
    (2, 32, 8, 8, 64, 1, 2),
    (1, 17, 7, 5, 33, 1, 2),
]


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize("shape", BLOCKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_blocked_direct_against_float64_and_torch(shape, layout, isa, conv_algo, rng):
    """The channel-blocked direct kernel, stride 2 (forced with 'direct' for the 1x1 passes
    the rule gives to im2col): each pass against the float64 reference and PyTorch."""
    N, C, H, W, O, K, S = shape
    conv_algo("direct")
    P = K // 2
    xs = _to_layout(np.empty((N, C, H, W)), layout).shape
    assert set(salnp.ops.conv2d_algo(xs, (O, C, K, K), S, P, layout=layout).values()) == {
        "blocked-direct"}
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, K, K)) / np.sqrt(K * K * C)
    ry = salnp._core.ref_conv2d_f64(x, w, S, P)
    gy = rng.standard_normal(ry.shape)
    got = _fwd_bwd(x.astype(np.float32), w.astype(np.float32), gy.astype(np.float32), layout,
                   S, P)
    ref = (ry,) + salnp._core.ref_conv2d_backward_f64(x, w, gy, S, P)
    ax, aw, ag = np.abs(x), np.abs(w), np.abs(gy)
    mags = [np.max(m) for m in (salnp._core.ref_conv2d_f64(ax, aw, S, P),) +
            salnp._core.ref_conv2d_backward_f64(ax, aw, ag, S, P)]
    for g, r, m, name in zip(got, ref, mags, ["y", "grad_x", "grad_w"]):
        assert_close(g, r, atol=2e-6 * m, rtol=0, what=name)   # direct: measured < 3e-7
    ty, tgx, tgw = torch_conv(*(a.astype(np.float32) for a in (x, w, gy)), S, P)
    assert_close(got[0], ty, what="y vs torch")
    assert_close(got[1], tgx, what="grad_x vs torch")
    assert_close(got[2], tgw, atol=1e-4 * np.sqrt(N * H * W), rtol=1e-4, what="grad_w vs torch")


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,layout,want", [
    ((128, 16, 32, 32), (16, 16, 3, 3), 1, 1, "NCHW", "winograd4x4"),
    ((16, 128, 32, 32), (16, 16, 3, 3), 1, 1, "CNHW", "winograd4x4"),
    ((1, 64, 8, 8), (64, 64, 3, 3), 1, 1, "NCHW", "winograd4x4"),
    ((2, 16, 9, 9), (4, 16, 3, 3), 1, 1, "NCHW", "direct3x3"),          # few outputs
    ((2, 5, 9, 9), (16, 5, 3, 3), 1, 1, "NCHW", "direct3x3"),           # few inputs
    ((128, 16, 32, 32), (32, 16, 3, 3), 2, 1, "NCHW", "blocked-direct"),  # stride 2
    ((16, 128, 32, 32), (32, 16, 3, 3), 2, 1, "CNHW", "blocked-direct"),
    ((2, 16, 9, 9), (16, 16, 3, 3), 2, 0, "NCHW", "im2col-gemm"),       # stride 2, padding 0
    ((2, 16, 9, 9), (16, 16, 3, 3), 3, 1, "NCHW", "im2col-gemm"),       # stride 3
    ((2, 16, 9, 9), (16, 16, 3, 3), 1, 0, "NCHW", "im2col-gemm"),       # padding 0
    ((2, 16, 9, 9), (16, 16, 3, 3), 1, 2, "NCHW", "im2col-gemm"),       # padding 2
    ((2, 16, 9, 9), (16, 16, 5, 5), 1, 2, "NCHW", "im2col-gemm"),
    ((2, 16, 9, 9), (8, 16, 1, 1), 1, 0, "NCHW", "gemm1x1"),
])
def test_conv2d_algo_rule(x_shape, w_shape, stride, padding, layout, want):
    got = salnp.ops.conv2d_algo(x_shape, w_shape, stride, padding, layout=layout)
    assert got == {"forward": want, "input_grad": want, "weight_grad": want}


def test_conv2d_algo_per_pass():
    """A 1x1 / stride 2 shortcut: im2col + GEMM forward and input gradient, the blocked
    kernel for its weight gradient; the stem (3 inputs): the direct kernel forward, the stem
    kernel for its weight gradient (measured fastest per pass)."""
    assert salnp.ops.conv2d_algo((128, 16, 32, 32), (32, 16, 1, 1), 2, 0) == {
        "forward": "im2col-gemm", "input_grad": "im2col-gemm", "weight_grad": "blocked-direct"}
    assert salnp.ops.conv2d_algo((128, 3, 32, 32), (16, 3, 3, 3), 1, 1) == {
        "forward": "direct3x3", "input_grad": "direct3x3", "weight_grad": "blocked-direct"}


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 2, 5, 7, 5), (3, 3, 9, 8, 17),
                                   (2, 4, 16, 16, 16), (1, 3, 33, 31, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_stem_weight_gradient(shape, layout, isa, rng):
    """The weight gradient of a 3x3 convolution of 1-4 input channels (the stem kernel:
    vectors over outputs, every tap in registers) against float64 and PyTorch."""
    N, C, H, W, O = shape
    xs = _to_layout(np.empty((N, C, H, W)), layout).shape
    assert salnp.ops.conv2d_algo(xs, (O, C, 3, 3), 1, 1, layout=layout)["weight_grad"] == (
        "blocked-direct")
    x, w, gy = _data(rng, N, C, H, W, O)
    ref, mags = _f64_and_bounds(x, w, gy)
    got = _fwd_bwd(*(a.astype(np.float32) for a in (x, w, gy)), layout)
    assert_close(got[2], ref[2], atol=2e-6 * mags[2], rtol=0, what="grad_w")
    tgw = torch_conv(*(a.astype(np.float32) for a in (x, w, gy)), 1, 1)[2]
    assert_close(got[2], tgw, atol=1e-4 * np.sqrt(N * H * W), rtol=1e-4, what="grad_w vs torch")


def test_conv_algo_forcing(conv_algo, rng):
    """set_conv_algo forces a family where it applies; results agree; bad names refused."""
    shape = ((2, 16, 9, 9), (16, 16, 3, 3), 1, 1)
    x, w, gy = (a.astype(np.float32) for a in _data(rng, 2, 16, 9, 9, 16))
    outs = {}
    for force, want in [("winograd", "winograd4x4"), ("direct", "direct3x3"),
                        ("im2col", "im2col-gemm"), ("auto", "winograd4x4")]:
        conv_algo(force)
        assert salnp._core.get_conv_algo() == force
        assert salnp.ops.conv2d_algo(*shape)["forward"] == want
        outs[force] = _fwd_bwd(x, w, gy, "NCHW")
    for force in ("winograd", "direct"):
        for g, r, name in zip(outs[force], outs["im2col"], ["y", "grad_x", "grad_w"]):
            assert_close(g, r, atol=1e-4, rtol=1e-4, what=f"{force} {name}")
    conv_algo("winograd")   # where Winograd does not apply, the rule's choice
    assert salnp.ops.conv2d_algo((2, 16, 9, 9), (16, 16, 3, 3), 2, 1)["forward"] == "blocked-direct"
    conv_algo("im2col")
    assert salnp.ops.conv2d_algo((2, 16, 9, 9), (16, 16, 3, 3), 2, 1)["forward"] == "im2col-gemm"
    conv_algo("direct")     # stride 2: the direct family is the blocked kernel
    assert set(salnp.ops.conv2d_algo((2, 16, 9, 9), (16, 16, 1, 1), 2, 0).values()) == {
        "blocked-direct"}
    with pytest.raises(ValueError, match="name=\"fast\": must be \"auto\", \"winograd\""):
        conv_algo("fast")
    with pytest.raises(TypeError, match="set_conv_algo: name must be a str or None"):
        conv_algo(3)
    with pytest.raises(ValueError, match="conv2d_algo: w_shape must be .O, C=16, K, K."):
        salnp.ops.conv2d_algo((2, 16, 9, 9), (16, 15, 3, 3))
    with pytest.raises(ValueError, match="conv2d_algo: stride=0: must be >= 1"):
        salnp.ops.conv2d_algo((2, 16, 9, 9), (16, 16, 3, 3), 0, 1)


CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-subset")


def _losses(algo, batches, lr, eps=0.0, seed=0):
    """losses of SGD steps on CL ResNet-20 (width 8), parameters optionally multiplied by
    (1 + eps N(0, 1)) first (a float-noise-sized perturbation)"""
    salnp._core.set_conv_algo(algo)
    net = salnp.models.resnet(20, width=8, layer="cl", seed=0)
    r = np.random.default_rng(seed)
    for _, p in net.named_parameters():
        p *= (1 + eps * r.standard_normal(p.shape)).astype(np.float32)
    opt = salnp.train.SGD(net, lr=lr)
    out = []
    for x, y in batches:
        logits = net.forward(x, train=True)
        out.append(float(salnp.ops.cross_entropy(logits, y)))
        net.zero_grad()
        net.backward(salnp.ops.cross_entropy_backward(logits, y))
        opt.step(lr)
    return np.array(out)


def test_winograd_training_matches_direct(conv_algo):
    """CL ResNet-20 (width 8), 8 SGD steps on real CIFAR-10 batches of 64: the loss curve
    with Winograd stays within float noise of the direct kernels'.  The network's gradient
    is ill-conditioned (a 1e-7 relative change of the parameters moves the first layers'
    gradients by ~3e-3), so "float noise" is measured: the envelope of the deviations that
    perturbing every parameter by 1e-5 relative (Winograd's own error size) causes, over
    two seeds.  A wrong gradient deviates by ~0.1 at the first step."""
    if not os.path.isdir(CIFAR):
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR}")
    data = salnp.data.cifar10(CIFAR, train=True).subset(8 * 64, seed=0)
    batches = list(data.batches(64, shuffle=False, augment=False))
    salnp.set_num_threads(2)
    # the 8-channel layers of the first stage (batch 64, CNHW) run Winograd under 'auto'
    assert salnp.ops.conv2d_algo((8, 64, 32, 32), (8, 8, 3, 3), 1, 1,
                                 layout="CNHW")["forward"] == "winograd4x4"
    direct = _losses("direct", batches, 0.02)
    wino = _losses("auto", batches, 0.02)
    noise = [np.abs(_losses("direct", batches, 0.02, 1e-5, seed) - direct) for seed in (1, 2)]
    envelope = np.maximum.accumulate(np.max(noise, axis=0))
    dev = np.abs(wino - direct)
    assert direct[-1] < direct[0] - 0.1, direct          # it trains
    assert dev[0] <= 1e-5 * direct[0], (wino, direct)   # the same forward, to rounding
    assert np.all(dev <= 2 * envelope + 1e-5), (dev, envelope)
    assert np.any(dev > 0)                               # the two runs took different paths
# ---------------------------------------------------------------- the weights cache
# Evaluation forwards keep each Winograd / blocked layer's prepared weights (sal/conv.h,
# "The weights cache"), keyed by address and checked against a digest of the weights.
# The tests change the weights in place -- the address stays the cached one -- and compare
# with a network that never saw the old weights: bit for bit, since the same kernels run
# on the same values.  A cache that missed a change would return the old weights' result.

def _fresh_eval(net, x):
    other = salnp.models.resnet(8, 16, layer="cl", seed=99)
    other.load_state_dict(net.state_dict())
    return other.forward(x, train=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_weights_cache_sees_every_change(isa, threads, rng):
    salnp.set_num_threads(threads)
    net = salnp.models.resnet(8, 16, layer="cl", seed=1)
    x = rng.standard_normal((3, 3, 32, 32), dtype=np.float32)
    # the layers it caches: Winograd (16 channels, 32x32; 32, 16x16) and blocked (stride 2)
    assert ops.conv2d_algo((16, 3, 32, 32), (16, 16, 3, 3), 1, 1, layout="CNHW")["forward"] \
        == "winograd4x4"
    assert ops.conv2d_algo((16, 3, 32, 32), (32, 16, 3, 3), 2, 1, layout="CNHW")["forward"] \
        == "blocked-direct"
    y0 = net.forward(x, train=False)
    np.testing.assert_array_equal(net.forward(x, train=False), y0)   # from the cache
    np.testing.assert_array_equal(y0, _fresh_eval(net, x))
    # a training step (the optimiser writes the arena in place)
    opt = salnp.train.SGD(net, lr=0.05)
    xb = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    net.zero_grad()
    logits = net.forward(xb, train=True)
    net.backward(rng.standard_normal(logits.shape, dtype=np.float32) / 4)
    opt.step()
    y1 = net.forward(x, train=False)
    assert np.any(y1 != y0)
    np.testing.assert_array_equal(y1, _fresh_eval(net, x))
    # one weight of a Winograd layer and one of a blocked one, through NumPy views; a
    # 1-ulp change too (the digest sees any one changed float)
    params = dict(net.named_parameters())
    for name, idx in (("layer1.0.conv2.weight", (5, 7, 2, 1)),
                      ("layer2.0.conv1.weight", (31, 15, 2, 2)),
                      ("layer2.0.conv2.weight", (0, 0, 0, 0))):
        for change in ("big", "ulp"):
            p = params[name]
            y_before = net.forward(x, train=False)
            p[idx] = p[idx] + 0.5 if change == "big" else np.nextafter(p[idx], np.float32(1))
            y = net.forward(x, train=False)
            if change == "big":
                assert np.any(y != y_before), name
            np.testing.assert_array_equal(y, _fresh_eval(net, x), err_msg=f"{name} {change}")
    # load_state_dict into the same arena
    state = salnp.models.resnet(8, 16, layer="cl", seed=7).state_dict()
    net.load_state_dict(state)
    np.testing.assert_array_equal(net.forward(x, train=False), _fresh_eval(net, x))


def test_weights_cache_exported_network(isa, rng):
    """An exported network's weights written in place (InferenceNet.weights), in each
    cached layer (Winograd, blocked stride 2): the next forward equals a copy's that never
    ran the old weights (the copies are kept, so that no copy reuses a freed address)."""
    import copy
    net = salnp.models.resnet(8, 16, layer="cl", seed=3)
    for _ in range(2):
        net.forward(rng.standard_normal((8, 3, 32, 32), dtype=np.float32), train=True)
    inf = salnp.export(net)
    x = rng.standard_normal((1, 3, 32, 32), dtype=np.float32)
    y = inf.forward(x)
    np.testing.assert_array_equal(inf.forward(x), y)
    f = {k: i for i, k in enumerate(salnp.program.FIELDS)}
    convs = [r for r in inf.ops if r[f["kind"]] == salnp.program.KINDS.index("conv")
             and r[f["k"]] == 3 and (r[f["stride"]] == 2 or r[f["o"]] >= 16)]
    assert len(convs) >= 4
    copies = []
    for r in convs:
        cin = inf.channels[r[f["inp"]]]
        at = int(r[f["p0"]]) + int(rng.integers(0, r[f["o"]] * cin * 9 - 1))
        y_before = y
        inf.weights[at] += np.float32(0.5)
        y = inf.forward(x)
        copies.append(copy.deepcopy(inf))
        assert np.any(y != y_before), at
        np.testing.assert_array_equal(y, copies[-1].forward(x), err_msg=f"weight {at}")


# ---------------------------------------------------------------- the bad-input matrix
# Every argument replaced by a bad or unusual value; the variant families and their
# expected outcomes are in tests/hostile.py.

OPS_SPECS = [
    Spec("conv2d", ops.conv2d, dict(x=X3, w=W, stride=1, padding=1),
         dict(x="F", w="F", stride="int", padding="int"),
         mismatch={"w": [(4, 2, 3, 3), (4, 3, 3, 2)]},
         int_min={"stride": 1, "padding": 0}, huge_axis={"x": 0, "w": 0}),
    Spec("conv2d_backward", ops.conv2d_backward,
         dict(x=X3, w=W, grad_y=GY_CONV, stride=1, padding=1),
         dict(x="F", w="F", grad_y="F", stride="int", padding="int"),
         mismatch={"w": [(4, 2, 3, 3)], "grad_y": [(2, 4, 5, 4), (2, 5, 5, 5)]},
         int_min={"stride": 1, "padding": 0}, huge_axis={"x": 0}),
    Spec("conv2d_algo", ops.conv2d_algo,
         dict(x_shape=(2, 3, 5, 5), w_shape=(4, 3, 3, 3), stride=1, padding=1),
         dict(x_shape="shape4", w_shape="shape4", stride="int", padding="int"),
         int_min={"stride": 1, "padding": 0},
         legal={"overflow32"}),   # shapes only: a 2^16 x 2^16 image is a valid query
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)


def test_conv_cache_binding(rng):
    """salnp._core.conv_cache: an evaluation forward fills the weights cache, clear empties
    it, limit 0 turns it off with the same outputs; a bad limit names the rule."""
    from salnp import _core
    old = _core.conv_cache()["limit"]
    try:
        net = salnp.models.resnet(8, 8, "cl", seed=1)
        x = rng.standard_normal((2, 3, 16, 16), dtype=np.float32)
        _core.conv_cache(clear=True)
        y0 = net.forward(x, train=False)
        info = _core.conv_cache()
        assert info["entries"] >= 1 and 0 < info["bytes"] <= info["limit"]
        assert _core.conv_cache(clear=True)["entries"] == 0
        assert _core.conv_cache(limit=0) == {"limit": 0, "bytes": 0, "entries": 0}
        np.testing.assert_array_equal(net.forward(x, train=False), y0)
        assert _core.conv_cache()["entries"] == 0
        with pytest.raises(ValueError, match=r"bytes=-1: must be in \[0, 2\^50\]"):
            _core.conv_cache(limit=-1)
        with pytest.raises(TypeError, match="limit must be an integer"):
            _core.conv_cache(limit="1")
    finally:
        _core.conv_cache(limit=old)
