"""Python-level fuzzing (hypothesis) of the public entry points: salnp.ops.conv2d,
salnp.ops.conv2d_backward, the salnp.data loaders on arbitrary bytes in files, and
Dataset / Dataset.batch on arbitrary arguments.

Contract checked: every call either returns a result of the right shape and dtype (equal
to a reference where one is cheap, finite where the inputs are finite) or raises
TypeError / ValueError / MemoryError (FileNotFoundError for missing files) -- never a
crash, a hang, another exception type, or a write into an input.  Bounded: a few hundred
examples in all, deadline=None, well under a minute.

Deterministic by default (derandomize: the examples follow from the test's name, so a
failure reproduces and CI cannot flip).  Run longer and explore locally with e.g.
HYPOTHESIS_FUZZ_EXAMPLES=5000 HYPOTHESIS_FUZZ_RANDOM=1.
"""
import gzip
import lzma
import os
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import salnp  # noqa: E402
from salnp import _core  # noqa: E402
from salnp.data import DataFormatError, Dataset  # noqa: E402

EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("HYPOTHESIS_FUZZ_RANDOM", "0") == "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
ALLOWED = (TypeError, ValueError, MemoryError)

# ---- strategies --------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, ">f4", ">f8", np.int8, np.int32, np.int64,
          np.uint8, np.uint64, np.complex64, np.complex128, np.bool_, object, "U3"]
# integer arguments: ordinary, edge, negative, huge, beyond int64, and non-integers
INTS = st.one_of(st.integers(0, 4), st.integers(-3, 40),
                 st.sampled_from([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64,
                                  -2**63, -2**63 - 1, 2**100, -2**100]))
INT_ARGS = st.one_of(INTS, INTS, INTS, st.sampled_from([1.5, None, "2", True, np.int64(2),
                                                        np.uint8(1), np.float32(1)]))
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38, -3e38]


@st.composite
def arrays(draw, ndim=4, max_side=5, zero_ok=True):
    """An array-like of any dtype / layout: mostly 4-D float, sometimes not; views that
    are non-contiguous, negatively strided, transposed, byte-swapped, read-only or
    misaligned; values with NaN / inf sprinkled in."""
    nd = draw(st.sampled_from([ndim] * 6 + [0, 1, 2, 3, 5]))
    lo = 0 if zero_ok else 1
    shape = tuple(draw(st.lists(st.integers(lo, max_side), min_size=nd, max_size=nd)))
    if draw(st.integers(0, 3)) and 0 in shape:      # zero-size dims: sometimes only
        shape = tuple(s or 1 for s in shape)
    dtype = np.dtype(draw(st.sampled_from(DTYPES[:5] * 4 + DTYPES)))
    n = int(np.prod(shape)) if shape else 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3, 3, size=n)
    if draw(st.integers(0, 4)) == 0 and n:
        k = draw(st.integers(1, max(1, n // 3 + 1)))
        base[rng.integers(0, n, k)] = rng.choice(SPECIAL, k)
    if dtype.kind == "U":
        a = base.astype(str).astype(dtype)
    elif dtype.kind == "O":
        a = base.astype(object)
    else:
        with np.errstate(all="ignore"):
            a = base.astype(dtype)
    a = a.reshape(shape)
    view = draw(st.sampled_from(["plain"] * 4 + ["noncontig", "negstride", "transpose",
                                                 "readonly", "misaligned", "fortran", "list"]))
    if view == "noncontig" and nd:
        big = np.repeat(a, 2, axis=-1)
        a = big[..., ::2]
    elif view == "negstride" and nd:
        a = a[..., ::-1].copy()[..., ::-1]           # same values, negative last stride
    elif view == "transpose" and nd >= 2:
        a = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    elif view == "readonly":
        a = a.copy()
        a.flags.writeable = False
    elif view == "misaligned" and dtype.kind in "fiuc" and dtype.itemsize > 1:
        raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
        m = raw[1:].view(dtype).reshape(shape) if a.size else a
        m[...] = a
        a = m
    elif view == "fortran":
        a = np.asfortranarray(a)
    elif view == "list" and dtype.kind == "f" and a.size < 200:
        a = a.tolist()
    return a


def _as_float(a):
    """The float64 values the op should see (None when a is not a real float array)."""
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        return None
    return arr.astype(np.float64)


def _snapshot(*objs):
    return [np.array(o, copy=True) if isinstance(o, np.ndarray) else None for o in objs]


def _unchanged(objs, snaps):
    for o, s in zip(objs, snaps):
        if s is not None:
            same = np.array_equal(o, s, equal_nan=s.dtype.kind in "fc") if s.dtype.kind != "O" \
                else all(a is b or a == b or (a != a and b != b) for a, b in zip(o.flat, s.flat))
            assert same, "an input array was modified"


def _conv_geometry(x, w, stride, padding, layout):
    """Expected output shape, or None when the call must fail."""
    if not all(isinstance(v, (int, np.integer)) for v in (stride, padding)):
        return None
    stride, padding = int(stride), int(padding)     # no NumPy fixed-width wrap-around
    xs, ws = np.shape(x), np.shape(w)
    if len(xs) != 4 or len(ws) != 4 or 0 in xs or 0 in ws:
        return None
    n, c = (xs[0], xs[1]) if layout == "NCHW" else (xs[1], xs[0])
    h, wd = xs[2], xs[3]
    o, wc, k, k2 = ws
    if wc != c or k != k2 or stride < 1 or padding < 0:
        return None
    hp, wp = h + 2 * padding, wd + 2 * padding
    if hp < k or wp < k:
        return None
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    return (n, o, ho, wo) if layout == "NCHW" else (o, n, ho, wo)


def _finite_bounded(v):
    return v is not None and np.all(np.isfinite(v)) and np.all(np.abs(v) < 1e15)


# ---- ops.conv2d / conv2d_backward --------------------------------------------------

@FUZZ
@given(x=arrays(), w=arrays(max_side=4), stride=INT_ARGS, padding=INT_ARGS,
       layout=st.sampled_from(["NCHW", "NCHW", "CNHW", "nchw", 3]), data=st.data())
def test_fuzz_conv2d(x, w, stride, padding, layout, data):
    if data.draw(st.booleans()):   # steer half of the examples towards valid geometry
        x = np.asarray(x)
        if x.ndim == 4 and np.asarray(w).ndim == 4:
            ww = np.asarray(w)
            c = x.shape[1] if layout != "CNHW" else x.shape[0]
            k = data.draw(st.integers(1, 3))
            w = np.resize(ww, (max(ww.shape[0], 1), c, k, k)).astype(ww.dtype) if ww.size \
                else np.ones((1, c, k, k), ww.dtype)
    snaps = _snapshot(x, w)
    try:
        y = salnp.ops.conv2d(x, w, stride=stride, padding=padding, layout=layout)
    except ALLOWED:
        _unchanged((x, w), snaps)
        return
    _unchanged((x, w), snaps)
    assert layout in ("NCHW", "CNHW")
    want = _conv_geometry(x, w, stride, padding, layout)
    assert want is not None, f"accepted x {np.shape(x)} w {np.shape(w)} S={stride} P={padding}"
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == want
    xf, wf = _as_float(x), _as_float(w)
    assert xf is not None and wf is not None, "a non-float array was accepted"
    if _finite_bounded(xf) and _finite_bounded(wf) and y.size < 5000:
        ref = _core.ref_conv2d_f64(xf, wf, stride, padding, layout=layout)
        assert np.all(np.isfinite(y))
        err = np.abs(y - ref) / (1e-4 + 1e-4 * np.abs(ref))
        assert err.max(initial=0) <= 1, f"worst {np.unravel_index(err.argmax(), err.shape)}"


@FUZZ
@given(x=arrays(), w=arrays(max_side=4), gy=arrays(), stride=INT_ARGS, padding=INT_ARGS,
       data=st.data())
def test_fuzz_conv2d_backward(x, w, gy, stride, padding, data):
    if data.draw(st.booleans()):   # valid geometry, keep the fuzzed dtype / layout of gy
        x = np.asarray(x)
        if x.ndim == 4 and 0 not in x.shape:
            k = data.draw(st.integers(1, 3))
            w = np.ones((2, x.shape[1], k, k), np.float32)
            s, p = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2))
            stride, padding = s, p
            shp = _conv_geometry(x, w, s, p, "NCHW")
            if shp is not None:
                g = np.asarray(gy)
                gy = np.resize(g, shp).astype(g.dtype) if g.size and g.dtype.kind != "U" \
                    else np.zeros(shp, np.float32)
    snaps = _snapshot(x, w, gy)
    try:
        gx, gw = salnp.ops.conv2d_backward(x, w, gy, stride=stride, padding=padding)
    except ALLOWED:
        _unchanged((x, w, gy), snaps)
        return
    _unchanged((x, w, gy), snaps)
    want = _conv_geometry(x, w, stride, padding, "NCHW")
    assert want is not None and np.shape(gy) == want
    assert gx.shape == np.shape(x) and gw.shape == np.shape(w)
    assert gx.dtype == gw.dtype == np.float32
    xf, wf, gf = _as_float(x), _as_float(w), _as_float(gy)
    assert xf is not None and wf is not None and gf is not None, "a non-float array was accepted"
    if all(_finite_bounded(v) for v in (xf, wf, gf)) and gx.size + gw.size < 5000:
        rx, rw = _core.ref_conv2d_backward_f64(xf, wf, gf, stride, padding)
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
        for got, ref in ((gx, rx), (gw, rw)):
            err = np.abs(got - ref) / (1e-4 + 1e-4 * np.abs(ref))
            assert err.max(initial=0) <= 1


def test_conv2d_huge_virtual_shapes():
    """Zero-stride views that claim terabytes: a clear error, not a crash."""
    z = np.zeros(1, np.float32)
    huge = np.lib.stride_tricks.as_strided(z, shape=(1, 1, 2**20, 2**20), strides=(0,) * 4)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ALLOWED):
        salnp.ops.conv2d(huge, w, stride=1, padding=2**40)
    wide = np.lib.stride_tricks.as_strided(z, shape=(2**20, 2**20, 1, 1), strides=(0,) * 4)
    with pytest.raises(ALLOWED):   # 4 TiB to copy: MemoryError
        salnp.ops.conv2d(wide, np.ones((1, 2**20, 1, 1), np.float32))


@pytest.mark.parametrize("kw", [dict(stride=2**64), dict(padding=2**63), dict(padding=-2**70),
                                dict(stride=-2**63 - 1), dict(padding=2**63 - 1),
                                dict(stride=1.5), dict(padding=None)])
def test_conv2d_out_of_range_ints_regression(kw):
    """Found by this fuzz: ints beyond int64 raised OverflowError ("int too big to convert",
    no argument named); padding=2**63-1 was accepted and gave zeros (signed overflow)."""
    x = np.ones((1, 1, 10, 10), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    for f in (lambda: salnp.ops.conv2d(x, w, **kw),
              lambda: salnp.ops.conv2d_backward(x, w, np.ones((1, 1, 10, 10), np.float32), **kw)):
        with pytest.raises((TypeError, ValueError)) as e:
            f()
        if not isinstance(e.value, TypeError):   # names the argument (libsal says "pad")
            assert next(iter(kw)).replace("padding", "pad") in str(e.value), str(e.value)


# ---- data: loaders on arbitrary bytes ---------------------------------------------

def _compress(data, how):
    return {"": data, ".gz": gzip.compress(data), ".xz": lzma.compress(data),
            ".gz-broken": gzip.compress(data)[:-3], ".xz-broken": lzma.compress(data)[:7]}[how]


@st.composite
def cifar_bytes(draw, label_bytes):
    """Mostly CIFAR-like: whole records with labels in or out of range, then a cut or
    extra bytes; sometimes arbitrary bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    n = draw(st.integers(0, 3))
    out = b""
    for _ in range(n):
        labels = bytes(draw(st.integers(0, 255 if draw(st.integers(0, 3)) == 0 else 9))
                       for _ in range(label_bytes))
        out += labels + bytes([draw(st.integers(0, 255))]) * 3072
    cut = draw(st.sampled_from([0, 0, 0, 1, 5, 3072, -1, -2]))
    return out[:len(out) - cut] if cut > 0 else out + b"\x07" * (-cut)


@st.composite
def idx_bytes(draw, ndim):
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    nd = draw(st.sampled_from([ndim] * 4 + [0, 1, 2, 3, 4, 5, 255]))
    dims = [draw(st.sampled_from([0, 1, 2, 3, 4, 28, 2**31, 2**32 - 1])) for _ in range(min(nd, 6))]
    head = bytes([0, 0, draw(st.sampled_from([8] * 6 + [9, 13, 0])), nd])
    head += b"".join(struct.pack(">I", d) for d in dims)
    count = int(np.prod(dims)) if dims else 0
    body = bytes(draw(st.integers(0, 12)) for _ in range(min(count, 64))) if count <= 64 else b""
    return head + body + b"\x01" * draw(st.sampled_from([0, 0, 0, 1, 3]))


LOADER_OK = (DataFormatError, ValueError, FileNotFoundError, MemoryError)


def _check_dataset(ds, n_classes):
    assert isinstance(ds, Dataset)
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4 and len(ds) >= 1
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)
    assert ds.labels.min() >= 0 and ds.labels.max() < n_classes
    x = ds.batch(np.arange(min(len(ds), 3)))
    assert x.dtype == np.float32 and np.all(np.isfinite(x))


@FUZZ
@given(data=st.data(), which=st.sampled_from(["cifar10", "cifar100"]),
       how=st.sampled_from(["", "", ".gz", ".xz", ".gz-broken", ".xz-broken"]))
def test_fuzz_cifar_loaders(tmp_path_factory, data, which, how):
    root = tmp_path_factory.mktemp("cifar")
    lb = 1 if which == "cifar10" else 2
    train = data.draw(st.booleans())
    name = ("train.bin" if train else "test.bin")
    (root / (name + how.split("-")[0])).write_bytes(_compress(data.draw(cifar_bytes(lb)), how))
    if data.draw(st.booleans()):      # class names: valid, wrong count, or not UTF-8
        names = data.draw(st.sampled_from([b"\n".join(b"c%d" % i for i in range(10)),
                                           b"a\nb\n", b"\xff\xfe\x00x"]))
        (root / ("batches.meta.txt" if lb == 1 else "fine_label_names.txt")).write_bytes(names)
    try:
        ds = getattr(salnp.data, which)(root, train=train)
    except LOADER_OK:
        return
    _check_dataset(ds, 10 if lb == 1 else 100)


@FUZZ
@given(data=st.data(), how=st.sampled_from(["", "", ".gz", ".xz-broken"]))
def test_fuzz_fashion_mnist_loader(tmp_path_factory, data, how):
    root = tmp_path_factory.mktemp("fmnist")
    img = data.draw(idx_bytes(3))
    lab = data.draw(idx_bytes(1))
    if data.draw(st.integers(0, 2)):
        (root / ("train-images-idx3-ubyte" + how.split("-")[0])).write_bytes(_compress(img, how))
    if data.draw(st.integers(0, 3)):
        (root / "train-labels-idx1-ubyte").write_bytes(lab)
    try:
        ds = salnp.data.fashion_mnist(root, train=True)
    except LOADER_OK:
        return
    _check_dataset(ds, 10)


@FUZZ
@given(payload=st.binary(max_size=400), label_bytes=st.integers(-2, 6),
       nc=st.lists(st.integers(-1, 300), min_size=0, max_size=6))
def test_fuzz_core_parsers_raw(payload, label_bytes, nc):
    """The private parsers straight on bytes (what the loaders call)."""
    try:
        a = _core._parse_idx(payload)
        assert a.dtype == np.uint8 and a.size == len(payload) - 4 - 4 * a.ndim
    except (salnp.SalError, ValueError, TypeError, MemoryError):
        pass
    try:
        img, lab = _core._parse_cifar(payload, nc)
        assert img.shape[1:] == (3, 32, 32) and lab.shape == (img.shape[0], len(nc))
    except (salnp.SalError, ValueError, TypeError, MemoryError):
        pass


# ---- data: Dataset and Dataset.batch -----------------------------------------------

def _ref_batch(ds, index, augment, seed, epoch, layout):
    """NumPy version of the batch formula in sal/data.h."""
    idx = np.asarray(index).astype(np.int64)
    C, H, W = ds.shape
    pad = ds.pad if augment else 0
    aug = ds.augmentation(idx, seed, epoch) if augment else np.zeros((len(idx), 3), np.int32)
    if augment and not ds.flip:
        assert np.all(aug[:, 2] == 0)
    out = np.empty((len(idx), C, H, W), np.float32)
    m = ds.mean[:, None, None]
    s = ds.std[:, None, None]
    for b, i in enumerate(idx):
        dy, dx, fl = int(aug[b, 0]), int(aug[b, 1]), int(aug[b, 2])
        big = np.zeros((C, H + 2 * pad, W + 2 * pad), np.uint8)
        big[:, pad:pad + H, pad:pad + W] = ds.images[i]
        crop = big[:, dy:dy + H, dx:dx + W]
        if fl:
            crop = crop[:, :, ::-1]
        out[b] = (crop.astype(np.float32) / np.float32(255) - m) / s
    return out if layout == "NCHW" else out.transpose(1, 0, 2, 3)


INDEX_DTYPES = [np.int64, np.int64, np.int32, np.int8, np.uint8, np.uint64, np.float64, np.bool_,
                object]


@FUZZ
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       pad=st.one_of(st.integers(0, 12), st.sampled_from([-1, 1024, 1025, 2**40, 2**63, 2**70])),
       flip=st.booleans(), data=st.data())
def test_fuzz_dataset_batch(n, c, h, w, pad, flip, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    images.flat[0] = 0
    images.flat[-1] = 255                      # std > 0 for the default normalisation
    labels = rng.integers(0, 3, n)
    mean = data.draw(st.one_of(st.none(), st.lists(st.sampled_from([0.5, -1.0, np.nan, np.inf,
                                                                    3e38]),
                                                    min_size=c - 1, max_size=c + 1)))
    std = data.draw(st.one_of(st.none(), st.lists(st.sampled_from([0.25, 1.0, 0.0, -1.0, np.nan,
                                                                   1e-30]),
                                                  min_size=c - 1, max_size=c + 1)))
    try:
        ds = Dataset(images, labels, mean=mean, std=std, pad=pad, flip=flip)
    except ALLOWED:
        return
    bsize = data.draw(st.integers(0, 6))
    dt = data.draw(st.sampled_from(INDEX_DTYPES))
    vals = data.draw(st.lists(st.one_of(st.integers(0, n - 1), st.integers(0, n - 1),
                                        st.sampled_from([-1, n, 2**31, 2**63 - 1])),
                              min_size=bsize, max_size=bsize))
    with np.errstate(all="ignore"):
        try:
            index = np.array(vals, dtype=dt)
        except OverflowError:
            index = np.array(vals, dtype=object)
    if data.draw(st.integers(0, 5)) == 0:
        index = index.reshape(1, -1)
    augment = data.draw(st.booleans())
    seed = data.draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([-1, 2**64, 1.5])))
    epoch = data.draw(st.one_of(st.integers(0, 9), st.sampled_from([-5, 2**64, None])))
    layout = data.draw(st.sampled_from(["NCHW", "CNHW", "NHWC"]))
    out_kind = data.draw(st.sampled_from([None, None, "ok", "f64", "readonly", "noncontig",
                                          "wrongshape", "list"]))
    B = index.size
    shape = (B, c, h, w) if layout == "NCHW" else (c, B, h, w)
    out = {None: None, "ok": np.empty(shape, np.float32), "f64": np.empty(shape),
           "readonly": np.empty(shape, np.float32), "noncontig": np.empty(shape[::-1],
                                                                          np.float32).T,
           "wrongshape": np.empty((B + 1, c, h, w), np.float32), "list": []}[out_kind]
    if out_kind == "readonly":
        out.flags.writeable = False
    snap = np.array(index, copy=True)
    try:
        x = ds.batch(index, augment=augment, seed=seed, epoch=epoch, layout=layout, out=out)
    except ALLOWED:
        assert np.array_equal(np.asarray(index), snap)
        return
    assert layout in ("NCHW", "CNHW") and out_kind in (None, "ok")
    idx = np.asarray(index)
    assert idx.ndim == 1 and idx.dtype.kind in "iu" and B >= 1
    assert np.all((idx >= 0) & (idx < n)), "an out-of-range index was accepted"
    assert x.dtype == np.float32 and x.shape == shape
    if out is not None:
        assert x is out
    ref = _ref_batch(ds, idx, augment, seed, epoch, layout)
    np.testing.assert_array_equal(x, ref)


@pytest.mark.parametrize("pad", [3, 4, 8, 13])
@pytest.mark.parametrize("flip", [False, True])
def test_batch_pad_wider_than_image_regression(pad, flip):
    """Found by fuzz_batch (C): pad > W wrote past the end of the output (heap corruption)."""
    rng = np.random.default_rng(pad)
    images = rng.integers(0, 256, (3, 2, 3, 3), dtype=np.uint8)
    ds = Dataset(images, [0, 1, 2], mean=[0.5, 0.25], std=[0.25, 0.5], pad=pad, flip=flip)
    for epoch in range(10):
        for layout in ("NCHW", "CNHW"):
            idx = np.array([2, 0, 1, 1])
            x = ds.batch(idx, augment=True, seed=3, epoch=epoch, layout=layout)
            np.testing.assert_array_equal(x, _ref_batch(ds, idx, True, 3, epoch, layout))
