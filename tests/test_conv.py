"""conv2d / conv2d_backward against PyTorch autograd and float64 finite differences; bad input
and the bad-input matrix (every argument replaced by a bad or unusual value)."""
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
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)
