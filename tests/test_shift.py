"""shift / active_shift (forward and backward) against PyTorch autograd, adjoint and
float64 finite-difference checks, thread agreement, bad input and the bad-input matrix (every
argument of shift, active_shift and their helpers replaced by a bad or unusual value)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
from hostile import GY9, OFF_F, OFF_I, X9, Spec, _matrix_ops, check_ops_row

ops = salnp.ops

# (N, C, H, W, stride): batch 1, odd and prime sizes, non-square, stride 2 and 3,
# channels 1 and not divisible by 9
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 1, 5, 7, 1),
    (2, 9, 7, 5, 1),
    (3, 11, 13, 6, 2),
    (2, 5, 8, 8, 2),
    (1, 20, 17, 3, 1),
    (2, 4, 9, 11, 3),
    (4, 13, 6, 7, 2),
]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def offset_table(C, H, W, rng):
    """(C, 2) int32 cycling through 0, +-1, +-2 and offsets beyond the image, then random."""
    fixed = [(0, 0), (1, -1), (-1, 1), (2, 0), (0, -2), (-2, 2), (H + 3, 0), (0, -(W + 5)),
             (-(H + 1), W), (H, -W)]
    off = np.array([fixed[c] if c < len(fixed) else tuple(rng.integers(-3, 4, 2))
                    for c in range(C)], dtype=np.int32)
    return rng.permutation(off)


def torch_shift(x, off, gy, stride):
    """y[n,c,Y,X] = x[n, c, s*Y + dy, s*X + dx] by slicing a zero-padded copy; autograd for dx."""
    xt = torch.tensor(x, requires_grad=True)
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    P = int(np.abs(off).max()) + 1
    xp = F.pad(xt, (P, P, P, P))
    planes = []
    for c in range(C):
        dy, dx = int(off[c, 0]), int(off[c, 1])
        planes.append(xp[:, c, P + dy:P + dy + stride * (Ho - 1) + 1:stride,
                         P + dx:P + dx + stride * (Wo - 1) + 1:stride])
    y = torch.stack(planes, 1)
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), xt.grad.numpy()


def torch_active_shift(x, off, gy, stride):
    """Explicit bilinear formula in float64 torch, autograd to x and to the offsets.
    floor() has zero derivative, so d(frac)/d(offset) = 1: the same (right) derivative."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ot = torch.tensor(off, dtype=torch.float64, requires_grad=True)
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    P = int(np.abs(np.floor(off)).max()) + 3
    xp = F.pad(xt, (P, P, P, P))
    planes = []
    for c in range(C):
        fy, fx = torch.floor(ot[c, 0]).detach(), torch.floor(ot[c, 1]).detach()
        ty, tx = ot[c, 0] - fy, ot[c, 1] - fx
        iy, ix = int(fy) + P, int(fx) + P

        def tap(ky, kx):
            return xp[:, c, iy + ky:iy + ky + stride * (Ho - 1) + 1:stride,
                      ix + kx:ix + kx + stride * (Wo - 1) + 1:stride]

        planes.append((1 - ty) * (1 - tx) * tap(0, 0) + (1 - ty) * tx * tap(0, 1)
                      + ty * (1 - tx) * tap(1, 0) + ty * tx * tap(1, 1))
    y = torch.stack(planes, 1)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), ot.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_shift_matches_torch(shape, rng):
    N, C, H, W, s = shape
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    off = offset_table(C, H, W, rng)
    y = ops.shift(x, off, stride=s)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx = ops.shift_backward(gy, off, x.shape, stride=s)
    ry, rgx = torch_shift(x, off, gy, s)
    # pure data movement: exact
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(gx, rgx)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_shift_adjoint_f64(stride, rng):
    """<shift(x), g> = <x, shift_backward(g)>, sums in float64; catches sign/direction bugs."""
    for trial in range(20):
        N, C, H, W = rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 14), rng.integers(1, 14)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        off = rng.integers(-H - 2, H + 3, (C, 2)).astype(np.int32)
        y = ops.shift(x, off, stride)
        g = rng.standard_normal(y.shape).astype(np.float32)
        lhs = np.sum(y.astype(np.float64) * g)
        rhs = np.sum(x.astype(np.float64) * ops.shift_backward(g, off, x.shape, stride))
        assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (trial, N, C, H, W, off, lhs, rhs)
        # a non-trivial pairing: the test could fail (some offsets keep pixels inside)
    zero = np.zeros((1, 1, 4, 4), np.float32)
    assert ops.shift(zero + 1, np.array([[1, 0]]), stride).sum() > 0


def test_shift_backward_accumulates_nothing_stale(rng):
    """Each call returns a fresh zero-based gradient (no state kept between calls)."""
    x = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    off = np.array([[1, 0], [0, -1], [2, 2]], np.int32)
    g = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    a = ops.shift_backward(g, off, x.shape)
    b = ops.shift_backward(g, off, x.shape)
    np.testing.assert_array_equal(a, b)


def test_default_shift_offsets():
    for C in [1, 8, 9, 10, 17, 18, 27, 40]:
        off = ops.default_shift_offsets(C)
        assert off.dtype == np.int32 and off.shape == (C, 2)
        for c in range(C):
            if c < 9 * (C // 9):
                assert tuple(off[c]) == ((c // 3) % 3 - 1, c % 3 - 1), (C, c, off[c])
            else:
                assert tuple(off[c]) == (0, 0), (C, c, off[c])
    with pytest.raises(ValueError, match="default_shift_offsets: C=0"):
        ops.default_shift_offsets(0)


def test_shift_offset_dtypes(rng):
    x = rng.standard_normal((1, 2, 4, 4), dtype=np.float32)
    ref = ops.shift(x, np.array([[1, -1], [0, 2]], np.int32))
    for dt in [np.int8, np.int16, np.int64, np.uint8, np.uint64]:
        off = np.array([[1, 3], [0, 2]], dt)
        off32 = off.astype(np.int32)
        np.testing.assert_array_equal(ops.shift(x, off), ops.shift(x, off32))
    np.testing.assert_array_equal(ops.shift(x, [[1, -1], [0, 2]]), ref)   # nested lists
    np.testing.assert_array_equal(ops.shift(x, np.array([[1, -1], [0, 2]], np.int64).T.copy().T),
                                  ref)                                      # non-contiguous


def test_shift_bad_input(rng):
    x = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    good = np.zeros((3, 2), np.int32)
    with pytest.raises(TypeError, match="shift: offsets must be an integer array.*float32"):
        ops.shift(x, good.astype(np.float32))
    with pytest.raises(TypeError, match="shift: offsets must be an integer array.*bool"):
        ops.shift(x, good.astype(bool))
    with pytest.raises(ValueError, match=r"shift: offsets must have shape \(C, 2\) = \(3, 2\), got \(2, 2\)"):
        ops.shift(x, good[:2])
    with pytest.raises(ValueError, match=r"offsets must have shape .* got \(3, 3\)"):
        ops.shift(x, np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match=r"offsets must have shape .* got \(6,\)"):
        ops.shift(x, np.zeros(6, np.int32))
    with pytest.raises(ValueError, match=r"offsets\[1, 0\]=4294967296: must fit int32"):
        ops.shift(x, np.array([[0, 0], [2**32, 0], [0, 0]]))
    with pytest.raises(ValueError, match="shift: stride=0: must be >= 1"):
        ops.shift(x, good, stride=0)
    with pytest.raises(ValueError, match=r"shift: x must be a 4-D array"):
        ops.shift(x[0], good)
    with pytest.raises(TypeError, match="shift: x must be a real floating-point array"):
        ops.shift(x.astype(np.int32), good)
    with pytest.raises(ValueError, match=r"shift_backward: grad_y must have shape"):
        ops.shift_backward(x, good, (2, 3, 5, 5), stride=2)
    with pytest.raises(TypeError, match="shift_backward: input_shape must be a sequence of 4"):
        ops.shift_backward(x, good, (2, 3, 5))
    with pytest.raises(ValueError, match=r"shift_backward: input_shape\[2\]=0"):
        ops.shift_backward(x, good, (2, 3, 0, 5))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_active_shift_matches_torch(shape, rng):
    N, C, H, W, s = shape
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    # real offsets around 0, +-1, +-2 and beyond the image, plus integer ones
    base = offset_table(C, H, W, rng).astype(np.float32)
    frac = rng.uniform(-1, 1, (C, 2)).astype(np.float32)
    off = base + np.where(rng.random((C, 2)) < 0.25, 0, frac).astype(np.float32)
    y = ops.active_shift(x, off, stride=s)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, goff = ops.active_shift_backward(x, off, gy, stride=s)
    ry, rgx, rgoff = torch_active_shift(x, off, gy, s)
    assert_close(y, ry, what="y")
    assert_close(gx, rgx, what="grad_x")
    # grad_offsets sums 4*N*Ho*Wo float32 products: scale atol with sqrt of the count
    scale = np.sqrt(N * y.shape[2] * y.shape[3])
    assert_close(goff, rgoff, atol=1e-4 * scale, rtol=1e-4, what="grad_offsets")


def test_active_shift_matches_grid_sample(rng):
    """A second, independent reference: grid_sample(align_corners=True), stride 1."""
    N, C, H, W = 2, 3, 7, 9
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    off = rng.uniform(-2.5, 2.5, (C, 2)).astype(np.float32)
    ref = []
    for c in range(C):
        ys = np.arange(H) + off[c, 0]
        xs = np.arange(W) + off[c, 1]
        gy_, gx_ = np.meshgrid(2 * ys / (H - 1) - 1, 2 * xs / (W - 1) - 1, indexing="ij")
        grid = torch.tensor(np.stack([gx_, gy_], -1)[None].repeat(N, 0), dtype=torch.float64)
        ref.append(F.grid_sample(torch.tensor(x[:, c:c + 1], dtype=torch.float64), grid,
                                 mode="bilinear", padding_mode="zeros", align_corners=True))
    ref = torch.cat(ref, 1).numpy()
    assert_close(ops.active_shift(x, off), ref, what="y")


@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_integer_offsets_bitwise_equal_shift(stride, rng):
    x = rng.standard_normal((3, 12, 9, 8), dtype=np.float32)
    x[0, 0, 4, 4] = -0.0
    x[1, 3, 2, 5] = np.inf
    x[2, 5, 0, 0] = -np.inf
    off = offset_table(12, 9, 8, rng)
    a = ops.active_shift(x, off.astype(np.float32), stride)
    b = ops.shift(x, off, stride)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    gy = rng.standard_normal(a.shape, dtype=np.float32)
    gx, _ = ops.active_shift_backward(np.nan_to_num(x), off.astype(np.float32), gy, stride)
    np.testing.assert_array_equal(gx, ops.shift_backward(gy, off, x.shape, stride))


@pytest.mark.parametrize("stride", [1, 2])
def test_active_shift_finite_differences_f64(stride, rng):
    """The float64 reference against central differences in the offsets and in x (at
    non-integer offsets, where the bilinear map is smooth); the float32 kernel against it."""
    N, C, H, W = 2, 4, 7, 6
    x = rng.standard_normal((N, C, H, W))
    off = rng.uniform(-2.5, 2.5, (C, 2))
    off = np.where(np.abs(off - np.round(off)) < 0.05, off + 0.1, off)   # away from integers
    off[3] = (H + 0.5, -0.3)                                              # beyond the image
    y = salnp._core.ref_active_shift_f64(x, off, stride)
    gy = rng.standard_normal(y.shape)
    gx, goff = salnp._core.ref_active_shift_backward_f64(x, off, gy, stride)
    eps = 1e-6

    def loss(xx, oo):
        return float(np.sum(salnp._core.ref_active_shift_f64(xx, oo, stride) * gy))

    for c in range(C):
        for k in range(2):
            old = off[c, k]
            off[c, k] = old + eps
            lp = loss(x, off)
            off[c, k] = old - eps
            lm = loss(x, off)
            off[c, k] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - goff[c, k]) <= 1e-6 + 1e-6 * abs(fd), (c, k, fd, goff[c, k])
    assert np.any(goff != 0)
    for idx in [tuple(rng.integers(0, d) for d in x.shape) for _ in range(10)]:
        old = x[idx]
        x[idx] = old + eps
        lp = loss(x, off)
        x[idx] = old - eps
        lm = loss(x, off)
        x[idx] = old
        fd = (lp - lm) / (2 * eps)
        assert abs(fd - gx[idx]) <= 1e-6 + 1e-6 * abs(fd), (idx, fd, gx[idx])
    x32, off32 = x.astype(np.float32), off.astype(np.float32)
    y32 = ops.active_shift(x32, off32, stride)
    gx32, goff32 = ops.active_shift_backward(x32, off32, gy.astype(np.float32), stride)
    ry = salnp._core.ref_active_shift_f64(x32.astype(np.float64), off32.astype(np.float64), stride)
    rgx, rgoff = salnp._core.ref_active_shift_backward_f64(
        x32.astype(np.float64), off32.astype(np.float64), gy.astype(np.float32).astype(np.float64),
        stride)
    assert_close(y32, ry, what="y")
    assert_close(gx32, rgx, what="grad_x")
    assert_close(goff32, rgoff, atol=1e-3, rtol=1e-4, what="grad_offsets")


def test_normalize_shift_grad():
    g = np.array([[3, 4], [0, 0], [-1e-30, 0], [1e30, 1e30]], np.float32)
    n = ops.normalize_shift_grad(g)
    assert_close(n, [[0.6, 0.8], [0, 0], [-1, 0], [np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
    assert g[0, 0] == 3   # input unchanged
    with pytest.raises(ValueError, match=r"normalize_shift_grad: grad_offsets must have shape \(C, 2\)"):
        ops.normalize_shift_grad(np.zeros((3, 3), np.float32))


def test_active_shift_bad_input(rng):
    x = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    good = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"active_shift: offsets must have shape \(C, 2\) = \(3, 2\)"):
        ops.active_shift(x, good[:1])
    with pytest.raises(TypeError, match="active_shift: offsets must be a real floating-point"):
        ops.active_shift(x, good.astype(np.int32))
    with pytest.raises(ValueError, match=r"active_shift: offsets\[1, 1\]=nan: must be finite"):
        bad = good.copy()
        bad[1, 1] = np.nan
        ops.active_shift(x, bad)
    with pytest.raises(ValueError, match=r"active_shift_backward: offsets\[0, 0\]=inf"):
        bad = good.copy()
        bad[0, 0] = np.inf
        ops.active_shift_backward(x, bad, x)
    with pytest.raises(ValueError, match="active_shift_backward: grad_y must have shape"):
        ops.active_shift_backward(x, good, x[:, :, :3])
    with pytest.raises(ValueError, match="active_shift: stride=-1"):
        ops.active_shift(x, good, stride=-1)


def test_huge_offsets_are_zero(rng):
    x = rng.standard_normal((1, 4, 6, 5), dtype=np.float32)
    off = np.array([[1e30, 0], [-1e30, 0], [0, 3e9], [2**31 - 1, -2**31]], np.float32)
    assert np.all(ops.active_shift(x, off, 2) == 0)
    gx, goff = ops.active_shift_backward(x, off, np.ones((1, 4, 3, 3), np.float32), 2)
    assert np.all(gx == 0) and np.all(goff == 0)
    ioff = np.array([[2**31 - 1, 0], [-2**31, 0], [0, 2**31 - 1], [7, -6]], np.int32)
    assert np.all(ops.shift(x, ioff, 2) == 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_agree(threads, rng):
    x = rng.standard_normal((3, 7, 12, 9), dtype=np.float32)
    ioff = offset_table(7, 12, 9, rng)
    off = rng.uniform(-2, 2, (7, 2)).astype(np.float32)
    gy = rng.standard_normal((3, 7, 6, 5), dtype=np.float32)

    def run():
        return (ops.shift(x, ioff, 2), ops.shift_backward(gy, ioff, x.shape, 2),
                ops.active_shift(x, off, 2)) + ops.active_shift_backward(x, off, gy, 2)

    salnp.set_num_threads(1)
    ref = run()
    salnp.set_num_threads(threads)
    got = run()
    for g, r, name in zip(got, ref, ["shift", "shift_backward", "active_shift", "grad_x",
                                     "grad_offsets"]):
        np.testing.assert_array_equal(g, r, err_msg=name)   # no reduction crosses threads


def test_inputs_unchanged(rng):
    x = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    ioff = np.array([[1, 0], [0, -1], [2, 2]], np.int32)
    off = rng.uniform(-2, 2, (3, 2)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 5, 5), dtype=np.float32)
    copies = [a.copy() for a in (x, ioff, off, gy)]
    ops.shift(x, ioff)
    ops.shift_backward(gy, ioff, x.shape)
    ops.active_shift(x, off)
    ops.active_shift_backward(x, off, gy)
    for a, c in zip((x, ioff, off, gy), copies):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------- the bad-input matrix
# Every argument replaced by a bad or unusual value; the variant families and their
# expected outcomes are in tests/hostile.py.

OPS_SPECS = [
    Spec("shift", ops.shift, dict(x=X9, offsets=OFF_I, stride=1),
         dict(x="F", offsets="I", stride="int"),
         mismatch={"offsets": [(8, 2), (9, 3)]}, int_min={"stride": 1},
         huge_axis={"x": 0}),
    Spec("shift_backward", ops.shift_backward,
         dict(grad_y=GY9, offsets=OFF_I, input_shape=(2, 9, 5, 5), stride=1),
         dict(grad_y="F", offsets="I", input_shape="shape4", stride="int"),
         mismatch={"offsets": [(8, 2)], "grad_y": [(2, 9, 5, 4)]},
         int_min={"stride": 1}),
    Spec("default_shift_offsets", lambda C: ops.default_shift_offsets(C), dict(C=9),
         dict(C="int"), int_min={"C": 1}),
    Spec("active_shift", ops.active_shift, dict(x=X9, offsets=OFF_F, stride=1),
         dict(x="F", offsets="F", stride="int"),
         mismatch={"offsets": [(8, 2), (9, 1)]}, int_min={"stride": 1},
         huge_axis={"x": 0}),
    Spec("active_shift_backward", ops.active_shift_backward,
         dict(x=X9, offsets=OFF_F, grad_y=GY9, stride=1),
         dict(x="F", offsets="F", grad_y="F", stride="int"),
         mismatch={"offsets": [(8, 2)], "grad_y": [(2, 9, 4, 5)]},
         int_min={"stride": 1}),
    Spec("normalize_shift_grad", lambda grad_offsets: ops.normalize_shift_grad(grad_offsets),
         dict(grad_offsets=OFF_F), dict(grad_offsets="F"),
         mismatch={"grad_offsets": [(9, 3)]}, huge_axis={"grad_offsets": 0}),
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)
