"""shift_conv1x1 (the shifted-row GEMM of sal/shiftconv.h) against PyTorch (the shift as
slicing of a zero-padded copy, F.conv2d 1x1, the epilogue; autograd for the backward), its
float64 reference and a dense 3x3 convolution; adjoint checks, every ISA, both layouts and
read modes, thread agreement, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from salnp import _core
from conftest import assert_close

ops = salnp.ops

# (N, C, H, W, stride): batch 1 and odd batches, odd and prime sizes, non-square, 1x1
# images, strides 1-3
SHAPES = [
    (1, 5, 7, 9, 1),
    (3, 4, 13, 6, 2),
    (1, 9, 8, 8, 1),
    (2, 7, 11, 5, 3),
    (5, 3, 1, 1, 1),
    (1, 16, 9, 9, 2),
    (2, 3, 5, 37, 2),    # stride-2 rows of 19 outputs: whole vectors and a tail (phase planes)
]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
# R and O around the kernels' tiles (8 and 6 channels, 16 and 32 positions)
SIZES = [(1, 1), (3, 17), (17, 3), (95, 95), (17, 1), (1, 95)]
# (bias, res, relu, res_post)
EPILOGUES = [(False, False, False, False), (True, False, False, False),
             (True, False, True, False), (False, True, False, False),
             (True, True, True, False), (True, True, True, True), (False, True, False, True)]


def random_rows(R, C, H, W, rng, span=None):
    """(R, 3) int32: sources with repeats, offsets within +-2, a few beyond the image."""
    span = 2 if span is None else span
    rows = np.stack([rng.integers(0, C, R), rng.integers(-span, span + 1, R),
                     rng.integers(-span, span + 1, R)], 1).astype(np.int32)
    far = [(H + 2, 0), (0, -(W + 3)), (-(H + 1), W), (H, 1 - W)]
    for i, (dy, dx) in enumerate(far[:R // 4]):
        rows[4 * i + 1, 1:] = dy, dx
    return rows


def torch_shifted(xt, rows, stride):
    """X~ (N, R, Ho, Wo): X~[:, r] = xt[:, src_r] shifted by (dy_r, dx_r), stride, 0 outside."""
    N, C, H, W = xt.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    # offsets beyond the image read only zeros: clamp them to just outside it
    dy = np.clip(rows[:, 1].astype(np.int64), -stride * (Ho - 1) - 1, H)
    dx = np.clip(rows[:, 2].astype(np.int64), -stride * (Wo - 1) - 1, W)
    P = int(max(np.abs(dy).max(), np.abs(dx).max())) + 1
    xp = F.pad(xt, (P, P, P, P))
    planes = [xp[:, int(s), P + a:P + a + stride * (Ho - 1) + 1:stride,
                 P + b:P + b + stride * (Wo - 1) + 1:stride]
              for s, a, b in zip(rows[:, 0], dy, dx)]
    return torch.stack(planes, 1)


def torch_shiftconv(x, rows, w, bias=None, res=None, relu=False, res_post=False, stride=1):
    """The definition in float64 torch: shift by slicing, 1x1 convolution, epilogue."""
    xt = torch.tensor(x, dtype=torch.float64)
    y = F.conv2d(torch_shifted(xt, rows, stride), torch.tensor(w, dtype=torch.float64)[:, :, None, None])
    if bias is not None:
        y = y + torch.tensor(bias, dtype=torch.float64)[None, :, None, None]
    r = torch.tensor(res, dtype=torch.float64) if res is not None else None
    if r is not None and not res_post:
        y = y + r
    if relu:
        y = torch.relu(y)
    if r is not None and res_post:
        y = y + r
    return y.numpy()


def case(shape, sizes, rng):
    N, C, H, W, S = shape
    R, O = sizes
    Ho, Wo = (H - 1) // S + 1, (W - 1) // S + 1
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    rows = random_rows(R, C, H, W, rng)
    w = (rng.standard_normal((O, R)) / np.sqrt(R)).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    res = rng.standard_normal((N, O, Ho, Wo)).astype(np.float32)
    return x, rows, w, bias, res, S


def cnhw(a):
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3))


@pytest.mark.parametrize("sizes", SIZES, ids=[f"R{r}-O{o}" for r, o in SIZES])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_matches_torch(isa, shape, sizes, rng):
    x, rows, w, bias, res, S = case(shape, sizes, rng)
    for b, r, relu, post in EPILOGUES:
        kw = dict(bias=bias if b else None, res=res if r else None, relu=relu, res_post=post)
        ref = torch_shiftconv(x, rows, w, stride=S, **kw)
        what = f"isa={isa} shape={shape} R,O={sizes} epilogue={(b, r, relu, post)}"
        for mode in ("auto", "direct", "panel"):
            got = ops.shift_conv1x1(x, rows, w, stride=S, mode=mode, **kw)
            assert_close(got, ref, 1e-5, 1e-5, what=f"{what} mode={mode}")
        ck = dict(kw, res=cnhw(res) if r else None)
        got = ops.shift_conv1x1(cnhw(x), rows, w, stride=S, layout="CNHW", mode="panel", **ck)
        assert_close(got.transpose(1, 0, 2, 3), ref, 1e-5, 1e-5, what=f"{what} CNHW panel")
        got = ops.shift_conv1x1(cnhw(x), rows, w, stride=S, layout="CNHW", mode="direct", **ck)
        assert_close(got.transpose(1, 0, 2, 3), ref, 1e-5, 1e-5, what=f"{what} CNHW direct")


# The kernels' lane coordinates (AVX-512: computed in vector registers, from a float
# quotient corrected by one step): tiles that span many tiny images (CNHW), single rows and
# columns, tails, sizes that give the wide 48-position tile (>= 512 positions per segment),
# widths and heights whose float reciprocal rounds down far enough that q * (1/41) truncates
# to one less at q = 41 (the quotient's upward correction runs), and a plane past the
# vector path's limit (2^21 positions: the scalar walk).
COORD_SHAPES = [(7, 2, 1, 1, 1), (5, 2, 1, 3, 1), (9, 2, 2, 2, 1), (3, 2, 5, 7, 2),
                (1, 2, 64, 1, 1), (1, 2, 1, 100, 1), (1, 2, 3, 41, 1), (2, 2, 41, 3, 1),
                (2, 2, 31, 33, 1), (3, 2, 13, 17, 1), (1, 1, 1, (1 << 21) + 5, 1)]


@pytest.mark.parametrize("shape", COORD_SHAPES, ids=["x".join(map(str, s)) for s in COORD_SHAPES])
def test_tile_coordinates_across_images(isa, shape, rng):
    N, C, H, W, S = shape
    R, O = (3, 2) if H * W > 1 << 20 else (9, 17)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    rows = random_rows(R, C, H, W, rng)
    w = (rng.standard_normal((O, R)) / np.sqrt(R)).astype(np.float32)
    ref = torch_shiftconv(x, rows, w, stride=S, relu=True)
    for mode in ("direct", "panel"):
        got = ops.shift_conv1x1(x, rows, w, stride=S, mode=mode, relu=True)
        assert_close(got, ref, 1e-5, 1e-5, what=f"isa={isa} shape={shape} NCHW {mode}")
        got = ops.shift_conv1x1(cnhw(x), rows, w, stride=S, layout="CNHW", mode=mode, relu=True)
        assert_close(got.transpose(1, 0, 2, 3), ref, 1e-5, 1e-5,
                     what=f"isa={isa} shape={shape} CNHW {mode}")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_reference_matches_torch(shape, rng):
    x, rows, w, bias, res, S = case(shape, (17, 3), rng)
    kw = dict(bias=bias.astype(np.float64), res=res.astype(np.float64), relu=True)
    got = _core.ref_shift_conv1x1_f64(x.astype(np.float64), rows, w.astype(np.float64), stride=S,
                                      **kw)
    assert_close(got, torch_shiftconv(x, rows, w, stride=S, **kw), 1e-12, 1e-12,
                 what="float64 reference")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_backward_matches_torch_autograd(shape, rng):
    x, rows, w, _, _, S = case(shape, (17, 5), rng)
    N, C, H, W, _ = shape
    gy = rng.standard_normal((N, 5, (H - 1) // S + 1, (W - 1) // S + 1)).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    F.conv2d(torch_shifted(xt, rows, S), wt[:, :, None, None]).backward(
        torch.tensor(gy, dtype=torch.float64))
    gx, gw = ops.shift_conv1x1_backward(x, rows, w, gy, stride=S)
    assert_close(gx, xt.grad.numpy(), 1e-5, 1e-5, what="grad_x")
    assert_close(gw, wt.grad.numpy(), 1e-4, 1e-5, what="grad_w")
    gxc, gwc = ops.shift_conv1x1_backward(cnhw(x), rows, w, cnhw(gy), stride=S, layout="CNHW")
    assert_close(gxc.transpose(1, 0, 2, 3), xt.grad.numpy(), 1e-5, 1e-5, what="grad_x CNHW")
    assert_close(gwc, wt.grad.numpy(), 1e-4, 1e-5, what="grad_w CNHW")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_adjoint_float64(shape, rng):
    """<y(x), g> = <x, grad_x(g)> and <y(w), g> = <w, grad_w(g)> (the op is bilinear)."""
    N, C, H, W, S = shape
    x = rng.standard_normal((N, C, H, W))
    rows = random_rows(11, C, H, W, rng, span=3)
    w = rng.standard_normal((4, 11))
    y = _core.ref_shift_conv1x1_f64(x, rows, w, stride=S)
    g = rng.standard_normal(y.shape)
    gx, gw = _core.ref_shift_conv1x1_backward_f64(x, rows, w, g, stride=S)
    lhs = float(np.vdot(y, g))
    assert abs(lhs - float(np.vdot(x, gx))) <= 1e-10 * (1 + abs(lhs))
    assert abs(lhs - float(np.vdot(w, gw))) <= 1e-10 * (1 + abs(lhs))


def test_dense_3x3_is_nine_taps_per_channel(isa, rng):
    """Every tap of every channel as a row: the op is a dense 3x3 convolution, padding 1
    (the sparse SAL training case with nothing pruned)."""
    N, C, H, W, O = 2, 6, 9, 7, 11
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    rows = np.array([(c, q // 3 - 1, q % 3 - 1) for c in range(C) for q in range(9)], np.int32)
    for S in (1, 2):
        ref = F.conv2d(torch.tensor(x), torch.tensor(w), stride=S, padding=1).numpy()
        got = ops.shift_conv1x1(x, rows, w.reshape(O, C * 9), stride=S)
        assert_close(got, ref, 1e-4, 1e-4, what=f"9 taps as a 3x3 conv, stride {S}")


def test_network_shapes_auto_mode(isa, rng):
    """ShiftResNet-20 e=6 reduce layers at batch 4, channel-major, BN bias and the residual
    after the ReLU: big enough that 'auto' reads through panels."""
    for C, H, O, S in ((96, 32, 16, 1), (192, 32, 32, 2), (384, 8, 64, 1)):
        N = 4
        x = rng.standard_normal((C, N, H, H)).astype(np.float32)
        off = salnp.ops.default_shift_offsets(C)
        rows = np.concatenate([np.arange(C)[:, None], off], 1).astype(np.int32)
        w = (rng.standard_normal((O, C)) / np.sqrt(C)).astype(np.float32)
        bias = rng.standard_normal(O).astype(np.float32)
        Ho = (H - 1) // S + 1
        res = rng.standard_normal((O, N, Ho, Ho)).astype(np.float32)
        kw = dict(bias=bias, res=res, relu=True, res_post=True, stride=S, layout="CNHW")
        ref = _core.ref_shift_conv1x1_f64(x.astype(np.float64), rows, w.astype(np.float64),
                                          **dict(kw, bias=bias.astype(np.float64),
                                                 res=res.astype(np.float64)))
        for mode in ("auto", "direct", "panel"):
            assert_close(ops.shift_conv1x1(x, rows, w, mode=mode, **kw), ref, 1e-4, 1e-4,
                         what=f"C={C} H={H} S={S} mode={mode}")


def test_threads_agree(rng):
    x, rows, w, bias, res, S = case((3, 9, 17, 11, 1), (40, 24), rng)
    x2, _, _, _, _, _ = case((3, 9, 17, 11, 1), (40, 24), rng)
    gy = rng.standard_normal((3, 24, 17, 11)).astype(np.float32)
    out = {}
    for nt in (1, 2, 3):
        salnp.set_num_threads(nt)
        out[nt] = (ops.shift_conv1x1(x, rows, w, bias, res, True),
                   ops.shift_conv1x1(x2, rows, w, stride=2, mode="panel"),
                   *ops.shift_conv1x1_backward(x, rows, w, gy))
    for nt in (2, 3):
        for i in range(3):   # forward and grad_x: one thread sums each output, in row order
            assert np.array_equal(out[nt][i], out[1][i]), (nt, i)
        assert_close(out[nt][3], out[1][3], 1e-5, 1e-5, what=f"grad_w, {nt} threads")


def test_inputs_unchanged(rng):
    x, rows, w, bias, res, S = case((2, 5, 9, 9, 2), (7, 3), rng)
    saved = [a.copy() for a in (x, rows, w, bias, res)]
    ops.shift_conv1x1(x, rows, w, bias, res, True, True, stride=S)
    ops.shift_conv1x1_backward(x, rows, w, np.ones((2, 3, 5, 5), np.float32), stride=S)
    for a, b in zip((x, rows, w, bias, res), saved):
        assert np.array_equal(a, b)


def test_bad_input():
    x = np.zeros((1, 4, 5, 5), np.float32)
    rows = np.array([[0, 1, 0], [3, 0, -1]], np.int32)
    w = np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match="rows must be an integer array"):
        ops.shift_conv1x1(x, rows.astype(np.float32), w)
    with pytest.raises(ValueError, match=r"rows must have shape \(R, 3\)"):
        ops.shift_conv1x1(x, rows[:, :2], w)
    with pytest.raises(ValueError, match=r"rows\[1\] = \(4, 0, -1\): src must be in \[0, C=4\)"):
        ops.shift_conv1x1(x, np.array([[0, 1, 0], [4, 0, -1]]), w)
    with pytest.raises(ValueError, match="must fit int32"):
        ops.shift_conv1x1(x, np.array([[0, 2**31, 0], [1, 0, 0]], np.int64), w)
    with pytest.raises(ValueError, match=r"w must have shape \(O, R=2\)"):
        ops.shift_conv1x1(x, rows, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(2,\)"):
        ops.shift_conv1x1(x, rows, w, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"res must have shape y's \(N, O, Ho, Wo\) = \(1, 2, 5, 5\)"):
        ops.shift_conv1x1(x, rows, w, res=np.zeros((1, 2, 4, 5), np.float32))
    with pytest.raises(ValueError, match="res_post=True: needs res"):
        ops.shift_conv1x1(x, rows, w, res_post=True)
    with pytest.raises(ValueError, match="stride=0: must be >= 1"):
        ops.shift_conv1x1(x, rows, w, stride=0)
    with pytest.raises(ValueError, match="mode='fast'"):
        ops.shift_conv1x1(x, rows, w, mode="fast")
    with pytest.raises(ValueError, match="layout"):
        ops.shift_conv1x1(x, rows, w, layout="NHWC")
    with pytest.raises(TypeError, match="x must be a real floating-point array"):
        ops.shift_conv1x1(x.astype(np.int32), rows, w)
    with pytest.raises(ValueError, match="grad_y"):
        ops.shift_conv1x1_backward(x, rows, w, np.zeros((1, 2, 5, 4), np.float32))


# ---------------------------------------------------------------- the bad-input matrix
# Every argument replaced by a bad or unusual value; the variant families and their
# expected outcomes are in tests/hostile.py.
from hostile import X3, Spec, _f, _matrix_ops, check_ops_row  # noqa: E402

SC_ROWS = np.array([[0, 1, 0], [2, -1, 1], [1, 0, -2]], np.int32)
SC_W = _f((4, 3), seed=30)
SC_B = _f((4,), seed=31)
SC_RES = _f((2, 4, 5, 5), seed=32)

OPS_SPECS = [
    Spec("shift_conv1x1", ops.shift_conv1x1,
         dict(x=X3, rows=SC_ROWS, w=SC_W, bias=SC_B, res=SC_RES, stride=1),
         dict(x="F", rows="I", w="F", bias="F", res="F", stride="int"),
         opt={"bias", "res"},
         mismatch={"rows": [(3, 2), (2, 3)], "w": [(4, 2)], "bias": [(3,)],
                   "res": [(2, 4, 5, 4), (2, 3, 5, 5)]},
         int_min={"stride": 1}, huge_axis={"x": 0, "w": 0}),
    Spec("shift_conv1x1_backward", ops.shift_conv1x1_backward,
         dict(x=X3, rows=SC_ROWS, w=SC_W, grad_y=SC_RES, stride=1),
         dict(x="F", rows="I", w="F", grad_y="F", stride="int"),
         mismatch={"rows": [(3, 2)], "w": [(4, 2)], "grad_y": [(2, 4, 5, 4)]},
         int_min={"stride": 1}, huge_axis={"x": 0}),
]
OPS_ROWS = _matrix_ops(OPS_SPECS)


@pytest.mark.parametrize("row", OPS_ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in OPS_ROWS])
def test_ops_matrix(row):
    check_ops_row(row)


@pytest.mark.parametrize("cfg", [dict(layer="sl", expansion=6), dict(layer="asl", expansion=6),
                                 dict(layer="sal", shared=True)],
                         ids=["sl-e6", "asl-e6", "sal-shared"])
def test_exported_network_fused(cfg, isa, rng):
    """Evaluation forwards run every 1x1 convolution, with the shift before it folded in, as
    shift_conv1x1 (libsal/src/net.c): full width (16), ASL offsets up to +-2, a large batch
    (panel mode) then smaller ones in the same buffers (direct mode), against PyTorch running
    the same exported program (salnp.torch.to_torch: shifts by slicing, F.conv2d)."""
    import salnp.torch as st

    net = salnp.models.resnet(20, 16, seed=int(rng.integers(1 << 30)), **cfg)
    for name, p in net.named_parameters():
        if name.endswith("shift.shift"):
            p[...] = rng.integers(-2, 3, p.shape)
        elif ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    net.beta = 70.0
    for _ in range(2):
        net.forward(rng.standard_normal((8, 3, 32, 32), dtype=np.float32), train=True)
    inf = salnp.export(net)
    t = st.to_torch(inf)
    x = rng.standard_normal((24, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    scale = float(np.abs(ref).max())
    for n in (24, 5, 1):
        assert_close(inf.forward(x[:n]), ref[:n], 1e-4 * scale, 1e-4, what=f"{cfg} batch {n}")
    # the training network's evaluation forward takes the same fused path; its backward after
    # it first writes the folded shifts' outputs
    y = net.forward(x[:5], train=False, hard=True)
    net.zero_grad()
    net.backward(np.ones_like(y) / y.size)
    g_eval = net.arena.grads.copy()
    net.forward(x[:5], train=True)         # the same network, shifts written by their ops
    net.forward(x[:5], train=False, hard=True)
    assert np.isfinite(g_eval).all() and np.abs(g_eval).sum() > 0
