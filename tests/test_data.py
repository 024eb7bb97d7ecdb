"""salnp.data: readers on the real files and on malformed ones, and the C batch kernel
against NumPy reimplementations (normalisation, pad-4 crop + flip, layouts, threads); the
bad-input matrix of Dataset, Dataset.batch and the readers; hostile data files (gzip/xz and
IDX bombs, FIFOs)."""
import gzip
import lzma
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import salnp
from salnp.data import DataFormatError, Dataset
from conftest import assert_close
from hostile import _Alarm, _check_error, _noncontig, _outcome, _readonly, _tiny_data

CIFAR_SUBSET = Path("/work/shared/data/cifar10-subset")
FMNIST = Path(salnp.data.FASHION_MNIST_DEFAULT_ROOT)
needs_cifar = pytest.mark.skipif(not (CIFAR_SUBSET / "train.bin.xz").is_file(),
                                 reason=f"CIFAR-10 subset not found at {CIFAR_SUBSET}")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {FMNIST} (apt-get install dataset-fashion-mnist)")

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


@pytest.fixture(scope="module")
def cifar_train():
    if not (CIFAR_SUBSET / "train.bin.xz").is_file():
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR_SUBSET}")
    return salnp.data.cifar10(CIFAR_SUBSET, train=True)


@pytest.fixture(scope="module")
def cifar_test():
    if not (CIFAR_SUBSET / "test.bin.xz").is_file():
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR_SUBSET}")
    return salnp.data.cifar10(CIFAR_SUBSET, train=False)


def cifar_records(labels, rng, label_bytes=1):
    """Synthetic CIFAR binary: one record per label tuple, random pixels."""
    labels = np.asarray(labels, dtype=np.uint8).reshape(len(labels), label_bytes)
    pix = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return np.concatenate([labels, pix], axis=1).tobytes(), pix.reshape(-1, 3, 32, 32)


def idx_bytes(arr, type_byte=0x08):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, type_byte, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def numpy_normalise(img_u8, mean, std):
    """(pixel / 255 - mean) / std in float32, as torchvision's ToTensor + Normalize"""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (img_u8.astype(np.float32) / np.float32(255) - m) / s


def numpy_augment(img_u8, dy, dx, flip, pad):
    """RandomCrop(H, padding=pad) with zero fill at offsets (dy, dx), then a flip"""
    C, H, W = img_u8.shape
    p = np.pad(img_u8, ((0, 0), (pad, pad), (pad, pad)))
    crop = p[:, dy:dy + H, dx:dx + W]
    return crop[:, :, ::-1] if flip else crop


# ---- real files -------------------------------------------------------------------------

def test_cifar10_subset_train(cifar_train):
    ds = cifar_train
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (10000,) and ds.labels.dtype == np.int64
    assert ds.class_counts().tolist() == [1000] * 10
    names = (CIFAR_SUBSET / "batches.meta.txt").read_text().split()
    assert list(ds.classes) == names == CIFAR10_NAMES
    # the README: the first ten are frog, truck, truck, deer, automobile, automobile, bird,
    # horse, ship, cat
    assert [ds.classes[k] for k in ds.labels[:10]] == [
        "frog", "truck", "truck", "deer", "automobile", "automobile", "bird", "horse", "ship",
        "cat"]
    img = ds.images[0].astype(np.float64)
    assert 20 < img.mean() < 235 and img.std() > 10, (img.mean(), img.std())
    assert ds.shape == (3, 32, 32) and ds.num_classes == 10 and ds.pad == 4 and ds.flip


def test_cifar10_subset_matches_numpy_reader(cifar_train):
    """The C parser gives what the README's NumPy reader gives, byte for byte."""
    raw = np.frombuffer(lzma.open(CIFAR_SUBSET / "train.bin.xz").read(), np.uint8)
    raw = raw.reshape(-1, 3073)
    np.testing.assert_array_equal(cifar_train.labels, raw[:, 0])
    np.testing.assert_array_equal(cifar_train.images, raw[:, 1:].reshape(-1, 3, 32, 32))


def test_cifar10_subset_test(cifar_test):
    ds = cifar_test
    assert ds.images.shape == (10000, 3, 32, 32)
    assert ds.class_counts().tolist() == [1000] * 10
    np.testing.assert_array_equal(ds.labels, np.arange(10000) % 10)  # README: class r mod 10
    assert ds.name == "cifar10-test"


def test_cifar10_normalised_statistics(cifar_train):
    """After the CIFAR normalisation the subset is roughly zero-mean.  Its std is ~1.22-1.30,
    not 1: the customary std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, the
    pixel std over the dataset is ~(0.247, 0.243, 0.261); we keep the customary values."""
    x = cifar_train.batch(np.arange(len(cifar_train)))
    m = x.mean(axis=(0, 2, 3))
    s = x.std(axis=(0, 2, 3))
    assert np.all(np.abs(m) < 0.1), m
    assert np.all((s > 1.1) & (s < 1.4)), s


@needs_fmnist
def test_fashion_mnist_shapes():
    tr = salnp.data.fashion_mnist(train=True)
    te = salnp.data.fashion_mnist(train=False)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.class_counts().tolist() == [6000] * 10
    assert te.class_counts().tolist() == [1000] * 10
    assert tr.classes[0] == "T-shirt/top" and tr.classes[9] == "Ankle boot"
    assert abs(tr.images.mean() / 255 - 0.2860) < 2e-3
    assert abs(tr.images.std() / 255 - 0.3530) < 2e-3
    np.testing.assert_allclose(tr.mean, [0.2860]) and np.testing.assert_allclose(tr.std, [0.3530])
    assert te.pad == 2 and te.name == "fashion-mnist-test"


@needs_fmnist
def test_load_dispatch():
    a = salnp.data.load("fashion-mnist", train=False)
    b = salnp.data.load("Fashion_MNIST", str(FMNIST), train=False)
    np.testing.assert_array_equal(a.images, b.images)
    with pytest.raises(ValueError, match="must be one of"):
        salnp.data.load("imagenet")
    with pytest.raises(ValueError, match="needs root"):
        salnp.data.load("cifar10")


# ---- layouts and formats on synthetic files ---------------------------------------------

def test_cifar10_official_layout(tmp_path, rng):
    """data_batch_1..5.bin (some compressed) + test_batch.bin in cifar-10-batches-bin/"""
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    parts = []
    for k in range(1, 6):
        data, pix = cifar_records([(k + i) % 10 for i in range(3)], rng)
        parts.append(pix)
        name = d / f"data_batch_{k}.bin"
        if k == 2:
            (d / (name.name + ".gz")).write_bytes(gzip.compress(data))
        elif k == 3:
            (d / (name.name + ".xz")).write_bytes(lzma.compress(data))
        else:
            name.write_bytes(data)
    tdata, tpix = cifar_records([9, 8], rng)
    (d / "test_batch.bin").write_bytes(tdata)
    (d / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    tr = salnp.data.cifar10(tmp_path, train=True)
    assert len(tr) == 15
    np.testing.assert_array_equal(tr.images, np.concatenate(parts))
    assert tr.labels.tolist() == [(k + i) % 10 for k in range(1, 6) for i in range(3)]
    assert tr.classes[3] == "c3"
    te = salnp.data.cifar10(d, train=False)
    np.testing.assert_array_equal(te.images, tpix)
    assert te.labels.tolist() == [9, 8]
    (d / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        salnp.data.cifar10(tmp_path)


def test_cifar10_missing_and_pickle_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.bin"):
        salnp.data.cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="python-pickle"):
        salnp.data.cifar10(tmp_path)


def test_cifar100(tmp_path, rng):
    labels = [(19, 99), (0, 0), (7, 42)]
    data, pix = cifar_records(labels, rng, label_bytes=2)
    (tmp_path / "train.bin.gz").write_bytes(gzip.compress(data))
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    fine = salnp.data.cifar100(tmp_path)
    coarse = salnp.data.cifar100(tmp_path, labels="coarse")
    assert fine.labels.tolist() == [99, 0, 42] and fine.num_classes == 100
    assert fine.classes[42] == "f42"
    assert coarse.labels.tolist() == [19, 0, 7] and coarse.num_classes == 20
    np.testing.assert_array_equal(fine.images, pix)
    bad = bytearray(data)
    bad[3074] = 20   # coarse label of record 1
    path = tmp_path / "test.bin"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match="record 1") as ei:
        salnp.data.cifar100(tmp_path, train=False)
    assert str(path) in str(ei.value)


# ---- malformed files: a clear error that names the file ---------------------------------

def _cifar_bad_files(rng):
    good, _ = cifar_records([1, 2, 3], rng)
    bad_label = bytearray(good)
    bad_label[3073] = 10                      # record 1's label
    corrupt_xz = bytearray(lzma.compress(good))
    corrupt_xz[len(corrupt_xz) // 2] ^= 0xFF
    corrupt_gz = bytearray(gzip.compress(good, mtime=0))
    corrupt_gz[len(corrupt_gz) // 2] ^= 0xFF
    return {
        "truncated": ("train.bin", good[:-100], "not a multiple"),
        "wrong-size": ("train.bin", good + b"\0" * 7, "not a multiple"),
        "empty": ("train.bin", b"", "empty"),
        "bad-label": ("train.bin", bytes(bad_label), "record 1"),
        "corrupt-xz": ("train.bin.xz", bytes(corrupt_xz), "xz"),
        "truncated-xz": ("train.bin.xz", lzma.compress(good)[:-40], "xz"),
        "not-xz": ("train.bin.xz", good, "xz"),
        "corrupt-gz": ("train.bin.gz", bytes(corrupt_gz), "gzip"),
        "truncated-gz": ("train.bin.gz", gzip.compress(good)[:-30], "gzip"),
        "not-gz": ("train.bin.gz", good, "gzip"),
    }


@pytest.mark.parametrize("case", list(_cifar_bad_files(np.random.default_rng(0))))
def test_cifar_malformed_file(tmp_path, case):
    name, content, words = _cifar_bad_files(np.random.default_rng(0))[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as ei:
        salnp.data.cifar10(tmp_path)
    msg = str(ei.value)
    assert msg.startswith(str(path)), msg
    assert words in msg, msg
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, salnp.SalError)


def _idx_bad_files():
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    good_i, good_l = idx_bytes(imgs), idx_bytes([1, 2, 3])
    return {
        # case: (images file content, labels file content, file that is wrong, words)
        "bad-magic": (b"\x12\x34" + good_i[2:], good_l, "images", "magic"),
        "float-type": (idx_bytes(imgs, 0x0D), good_l, "images", "float32"),
        "truncated-data": (good_i[:-1], good_l, "images", "truncated"),
        "truncated-header": (good_i[:10], good_l, "images", "truncated header"),
        "trailing": (good_i + b"\0", good_l, "images", "trailing"),
        "labels-2d": (good_i, idx_bytes([[1, 2, 3]]), "labels", "dimension"),
        "label-range": (good_i, idx_bytes([1, 10, 3]), "labels", "label 1 = 10"),
        "count-mismatch": (good_i, idx_bytes([1, 2]), "labels", "2 labels"),
        "corrupt-gz": (gzip.compress(good_i)[:-5], good_l, "images", "gzip"),
    }


@pytest.mark.parametrize("case", list(_idx_bad_files()))
def test_idx_malformed_file(tmp_path, case):
    img, lab, which, words = _idx_bad_files()[case]
    ipath = tmp_path / "t10k-images-idx3-ubyte.gz"
    lpath = tmp_path / "t10k-labels-idx1-ubyte.gz"
    ipath.write_bytes(img if case == "corrupt-gz" else gzip.compress(img))
    lpath.write_bytes(gzip.compress(lab))
    with pytest.raises(DataFormatError) as ei:
        salnp.data.fashion_mnist(tmp_path, train=False)
    msg = str(ei.value)
    assert msg.startswith(str(ipath if which == "images" else lpath)), msg
    assert words in msg, msg


def test_idx_uncompressed_and_missing(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(imgs))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        salnp.data.fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes([3, 9]))
    ds = salnp.data.fashion_mnist(tmp_path)
    np.testing.assert_array_equal(ds.images[:, 0], imgs)
    assert ds.labels.tolist() == [3, 9]


def test_meta_file_wrong_count(tmp_path, rng):
    data, _ = cifar_records([1], rng)
    (tmp_path / "test.bin").write_bytes(data)
    meta = tmp_path / "batches.meta.txt"
    meta.write_text("a\nb\n")
    with pytest.raises(DataFormatError, match="2 class names") as ei:
        salnp.data.cifar10(tmp_path, train=False)
    assert str(meta) in str(ei.value)


def test_parsers_on_random_bytes(rng):
    """Random and mutated buffers: a SalError or a result, never a crash."""
    good = idx_bytes(np.zeros((2, 3), np.uint8))
    for t in range(500):
        n = int(rng.integers(0, 40))
        buf = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if t % 2:
            buf = good[:n] + buf
        for f in (salnp._core._parse_idx, lambda b: salnp._core._parse_cifar(b, (10,))):
            try:
                f(buf)
            except salnp.SalError:
                pass


# ---- the batch kernel -------------------------------------------------------------------

def test_normalisation_matches_numpy(cifar_train):
    idx = np.array([0, 17, 9999, 5000, 17])
    x = cifar_train.batch(idx)
    ref = numpy_normalise(cifar_train.images[idx], salnp.data.CIFAR_MEAN, salnp.data.CIFAR_STD)
    assert x.dtype == np.float32 and x.shape == (5, 3, 32, 32)
    assert_close(x, ref, atol=1e-6, rtol=0, what="normalised batch")


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_augmentation_matches_numpy(cifar_train, layout):
    idx = cifar_train.permutation(seed=5, epoch=1)[:64]
    x = cifar_train.batch(idx, augment=True, seed=5, epoch=1, layout=layout)
    aug = cifar_train.augmentation(idx, seed=5, epoch=1)
    assert aug.shape == (64, 3) and aug.dtype == np.int32
    ref = np.stack([numpy_normalise(numpy_augment(cifar_train.images[i], dy, dx, f, 4),
                                    cifar_train.mean, cifar_train.std)
                    for i, (dy, dx, f) in zip(idx, aug)])
    if layout == "CNHW":
        ref = ref.transpose(1, 0, 2, 3)
    assert_close(x, ref, atol=1e-6, rtol=0, what=f"augmented batch ({layout})")
    # padded pixels are the normalised zero, as in torchvision (pad raw, then normalise)
    k = int(np.flatnonzero(aug[:, 0] == 0)[0]) if np.any(aug[:, 0] == 0) else None
    if k is not None and layout == "NCHW":
        pad_val = (0 - cifar_train.mean) / cifar_train.std
        assert_close(x[k, :, :4, :].mean(axis=(1, 2)), pad_val, atol=1e-6, rtol=0)


def test_augmentation_draws(cifar_train):
    aug = cifar_train.augmentation(np.arange(10000), seed=3, epoch=0)
    assert aug[:, :2].min() == 0 and aug[:, :2].max() == 8
    for col in (0, 1):
        counts = np.bincount(aug[:, col], minlength=9)
        assert np.all(np.abs(counts - 10000 / 9) < 150), counts   # ~4.5 sigma
    assert abs(aug[:, 2].mean() - 0.5) < 0.03
    assert not np.any(np.all(aug == 0, axis=0))
    none = Dataset(cifar_train.images[:10], cifar_train.labels[:10], cifar_train.classes,
                   pad=0, flip=False)
    assert np.all(none.augmentation(np.arange(10)) == 0)


def test_batches_reproducible_and_epoch_dependent(cifar_train):
    ds = cifar_train.subset(300, seed=1)

    def run(seed, epoch):
        return [(x.copy(), y) for x, y in ds.batches(128, shuffle=True, augment=True, seed=seed,
                                                     epoch=epoch)]
    a, b, c, d = run(7, 0), run(7, 0), run(7, 1), run(8, 0)
    assert [x.shape[0] for x, _ in a] == [128, 128, 44]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1]), "epochs 0 and 1 shuffle alike"
    assert not np.array_equal(a[0][1], d[0][1]), "seeds 7 and 8 shuffle alike"
    # the same image gets a different augmentation in another epoch
    assert not np.array_equal(ds.augmentation(np.arange(50), 7, 0), ds.augmentation(np.arange(50), 7, 1))


def test_batches_cover_every_image(cifar_train):
    ds = cifar_train.subset(250, seed=2)
    ys, n = [], 0
    perm = ds.permutation(seed=4, epoch=3)
    assert sorted(perm.tolist()) == list(range(250))
    for x, y in ds.batches(64, shuffle=True, seed=4, epoch=3):
        ys.append(y)
        n += x.shape[0]
    np.testing.assert_array_equal(np.concatenate(ys), ds.labels[perm])
    assert n == 250 and ds.num_batches(64) == 4 and ds.num_batches(64, drop_last=True) == 3
    assert [x.shape[0] for x, _ in ds.batches(64, drop_last=True)] == [64, 64, 64]
    x0, y0 = next(iter(ds.batches(10)))      # no shuffle: in order
    np.testing.assert_array_equal(y0, ds.labels[:10])


def test_augmentation_depends_on_image_not_position(cifar_train):
    a = cifar_train.batch([5, 7, 9], augment=True, seed=1, epoch=2)
    b = cifar_train.batch([9, 5], augment=True, seed=1, epoch=2)
    np.testing.assert_array_equal(a[0], b[1])
    np.testing.assert_array_equal(a[2], b[0])


def test_batch_threads_agree(cifar_train):
    idx = cifar_train.permutation(0, 0)[:97]
    salnp.set_num_threads(1)
    one = cifar_train.batch(idx, augment=True, seed=11, epoch=4)
    salnp.set_num_threads(2)
    two = cifar_train.batch(idx, augment=True, seed=11, epoch=4)
    np.testing.assert_array_equal(one, two)


def test_cnhw_is_nchw_transposed(cifar_train):
    idx = np.arange(30, 75)
    a = cifar_train.batch(idx, augment=True, seed=2, epoch=9)
    b = cifar_train.batch(idx, augment=True, seed=2, epoch=9, layout="CNHW")
    assert b.shape == (3, 45, 32, 32) and b.flags.c_contiguous
    np.testing.assert_array_equal(b, a.transpose(1, 0, 2, 3))
    got = [x for x, _ in cifar_train.subset(100).batches(32, layout="CNHW")]
    assert [g.shape for g in got] == [(3, 32, 32, 32)] * 3 + [(3, 4, 32, 32)]


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_batches_reuse(cifar_train, layout):
    ds = cifar_train.subset(100, seed=0)
    fresh = [x for x, _ in ds.batches(32, shuffle=True, augment=True, layout=layout)]
    ids, n = set(), 0
    for k, (x, _) in enumerate(ds.batches(32, shuffle=True, augment=True, layout=layout,
                                          reuse=True)):
        np.testing.assert_array_equal(x, fresh[k])
        ids.add(id(x))
        n += 1
    assert n == 4 and len(ids) == 2     # one buffer for full batches, one for the last


def test_batch_bad_arguments(cifar_train):
    ds = cifar_train
    with pytest.raises(ValueError, match=r"index\[1\]=10000"):
        ds.batch([0, 10000])
    with pytest.raises(ValueError, match=r"index\[0\]=-1"):
        ds.batch([-1])
    with pytest.raises(TypeError, match="index"):
        ds.batch([0.5, 1.0])
    with pytest.raises(ValueError, match="index"):
        ds.batch(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="seed"):
        ds.batch([0], seed=-1)
    with pytest.raises(ValueError, match="layout"):
        ds.batch([0], layout="NHWC")
    with pytest.raises(TypeError, match="out"):
        ds.batch([0, 1], out=np.zeros((2, 3, 32, 32)))
    with pytest.raises(TypeError, match="out"):
        ds.batch([0, 1], out=np.zeros((3, 2, 32, 32), np.float32).transpose(1, 0, 2, 3))
    with pytest.raises(ValueError, match="out must have shape"):
        ds.batch([0, 1], out=np.zeros((2, 3, 32, 31), np.float32))
    ro = np.zeros((1, 3, 32, 32), np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="out"):
        ds.batch([0], out=ro)
    out = np.full((2, 3, 32, 32), np.nan, np.float32)
    assert ds.batch([3, 4], out=out) is out and np.isfinite(out).all()
    with pytest.raises(TypeError, match="uint8"):
        salnp._core._make_batch(ds.images.astype(np.float32), [0], ds.mean, ds.std)
    with pytest.raises(ValueError, match="mean must have shape"):
        salnp._core._make_batch(ds.images, [0], [0.5], ds.std)
    with pytest.raises(ValueError, match=r"std\[1\]=0"):
        salnp._core._make_batch(ds.images, [0], ds.mean, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))
    # non-contiguous images are read correctly (through a copy)
    view = ds.images[::-1][:10]
    np.testing.assert_array_equal(salnp._core._make_batch(view, [0], ds.mean, ds.std),
                                  ds.batch([9999]))


def test_subset(cifar_train):
    s = cifar_train.subset(1000, seed=3)
    assert len(s) == 1000 and s.class_counts().tolist() == [100] * 10
    np.testing.assert_array_equal(s.images, cifar_train.subset(1000, seed=3).images)
    assert not np.array_equal(s.labels, cifar_train.subset(1000, seed=4).labels)
    odd = cifar_train.subset(13, seed=0)
    assert sorted(odd.class_counts().tolist()) == [1] * 7 + [2] * 3
    np.testing.assert_array_equal(s.mean, cifar_train.mean)
    # a class with too few images: all of it, the rest filled from the others
    lab = np.array([0] * 2 + [1] * 20)
    ds = Dataset(np.zeros((22, 1, 2, 2), np.uint8), lab, ["a", "b"], mean=[0.5], std=[0.5])
    assert ds.subset(10).class_counts().tolist() == [2, 8]
    assert ds.subset(10, balanced=False).class_counts().sum() == 10
    with pytest.raises(ValueError, match="n=23"):
        ds.subset(23)


def test_dataset_validation():
    img = np.zeros((4, 1, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        Dataset(img.astype(np.float32), [0] * 4)
    with pytest.raises(ValueError, match="labels"):
        Dataset(img, [0] * 3)
    with pytest.raises(ValueError, match="std"):
        Dataset(img, [0] * 4, mean=[0.5], std=[0.0])
    with pytest.raises(ValueError, match="classes"):
        Dataset(img, [0, 1, 2, 3], classes=["a", "b"])
    ds = Dataset(np.arange(36, dtype=np.uint8).reshape(4, 1, 3, 3), [0, 1, 0, 1])
    assert ds.num_classes == 2 and ds.std[0] > 0   # statistics from the images
    assert "n=4" in repr(ds) and ds[1][1] == 1


# ---------------------------------------------------------------- the bad-input matrix
# Dataset, the readers and Dataset.batch with one argument replaced by a bad or unusual
# value (tests/hostile.py: the outcomes).

DATASET_ROWS = [
    ("images", "float32", "ValueError"), ("images", "int64", "ValueError"),
    ("images", "3d", "ValueError"), ("images", "zero", "ValueError"), ("images", "None", "ValueError"),
    ("images", "noncontig", "ok"), ("images", "readonly", "ok"), ("images", "list", "error"),
    ("labels", "float", "ValueError"), ("labels", "negative", "ValueError"),
    ("labels", "short", "ValueError"), ("labels", "2d", "ValueError"), ("labels", "None", "ValueError"),
    ("labels", "uint64_huge", "ValueError"), ("labels", "list", "ok"), ("labels", "bool", "ValueError"),
    ("mean", "nan", "ValueError"), ("mean", "short", "ValueError"), ("mean", "str", "error"),
    ("std", "zero", "ValueError"), ("std", "negative", "ValueError"), ("std", "inf", "ValueError"),
    ("pad", "negative", "ValueError"), ("pad", "str", "error"), ("pad", "huge", "error"),
    ("pad", "1025", "ValueError"), ("pad", "float", "ValueError"),
    ("classes", "too_few", "ValueError"),
]


@pytest.mark.parametrize("row", DATASET_ROWS, ids=[f"Dataset-{r[0]}-{r[1]}" for r in DATASET_ROWS])
def test_dataset_matrix(row):
    arg, name, exp = row
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 2, 4, 4), dtype=np.uint8)
    kw = dict(images=imgs, labels=np.array([0, 1, 2, 0, 1, 2]), pad=1)
    vals = {
        ("images", "float32"): imgs.astype(np.float32), ("images", "int64"): imgs.astype(np.int64),
        ("images", "3d"): imgs[0], ("images", "zero"): imgs[:0], ("images", "None"): None,
        ("images", "noncontig"): _noncontig(imgs), ("images", "readonly"): _readonly(imgs),
        ("images", "list"): imgs.tolist(),
        ("labels", "float"): np.zeros(6), ("labels", "negative"): np.array([0, -1, 0, 0, 0, 0]),
        ("labels", "short"): np.zeros(5, int), ("labels", "2d"): np.zeros((6, 1), int),
        ("labels", "None"): None, ("labels", "uint64_huge"): np.full(6, 2**63 + 1, np.uint64),
        ("labels", "list"): [0, 1, 2, 0, 1, 2], ("labels", "bool"): np.zeros(6, bool),
        ("mean", "nan"): [np.nan, 0.5], ("mean", "short"): [0.5], ("mean", "str"): "ab",
        ("std", "zero"): [0.0, 1.0], ("std", "negative"): [-1.0, 1.0], ("std", "inf"): [np.inf, 1.0],
        ("pad", "negative"): -1, ("pad", "str"): "x", ("pad", "huge"): 2**70, ("pad", "1025"): 1025, ("pad", "float"): 1.0,
        ("classes", "too_few"): ["a"],
    }
    kw[arg] = vals[(arg, name)]
    status, got = _outcome(lambda: Dataset(**kw))
    if exp == "ok":
        assert status == "ok", got
        ref = Dataset(np.ascontiguousarray(np.asarray(kw["images"])), np.asarray(kw["labels"]), pad=1)
        np.testing.assert_array_equal(got.batch(np.arange(6)), ref.batch(np.arange(6)))
        return
    if status == "ok" and (arg, name) == ("pad", "huge"):
        # accepted as a number: the first augmented batch must refuse it
        with pytest.raises(ValueError, match="pad"):
            got.batch(np.arange(2), augment=True)
        return
    assert status != "ok", f"Dataset accepted {arg}={name}"
    _check_error(got, exp, (arg, "Dataset"))


READER_ROWS = ["cifar10_none", "cifar10_int", "cifar10_missing", "cifar10_file_not_dir",
               "cifar100_bad_labels", "fashion_missing", "load_bad_name", "load_no_root",
               "cifar10_empty_file", "cifar10_truncated", "fashion_bad_magic"]


@pytest.mark.parametrize("name", READER_ROWS)
def test_readers_matrix(name, tmp_path):
    d = salnp.data
    (tmp_path / "x.txt").write_text("hello")
    calls = {
        "cifar10_none": (lambda: d.cifar10(None), (TypeError,)),
        "cifar10_int": (lambda: d.cifar10(3), (TypeError,)),
        "cifar10_missing": (lambda: d.cifar10(tmp_path / "nope"), (FileNotFoundError,)),
        "cifar10_file_not_dir": (lambda: d.cifar10(tmp_path / "x.txt"), (FileNotFoundError,
                                                                          ValueError)),
        "cifar100_bad_labels": (lambda: d.cifar100(tmp_path, labels="medium"), (ValueError,)),
        "fashion_missing": (lambda: d.fashion_mnist(tmp_path / "nope"), (FileNotFoundError,)),
        "load_bad_name": (lambda: d.load("imagenet"), (ValueError,)),
        "load_no_root": (lambda: d.load("cifar10"), (ValueError,)),
        "cifar10_empty_file": (lambda: ((tmp_path / "test.bin").write_bytes(b""),
                                        d.cifar10(tmp_path, train=False)), (ValueError,)),
        "cifar10_truncated": (lambda: ((tmp_path / "test.bin").write_bytes(b"\x01" * 3000),
                                       d.cifar10(tmp_path, train=False)), (ValueError,)),
        "fashion_bad_magic": (lambda: ((tmp_path / "train-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x09\x03" + b"\x00" * 12), (tmp_path / "train-labels-idx1-ubyte")
            .write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00"), d.fashion_mnist(tmp_path)),
            (ValueError,)),
    }
    f, allowed = calls[name]
    with pytest.raises(allowed) as e:
        f()
    assert str(e.value)


BATCH_ROWS = [("index", "float", "TypeError"), ("index", "2d", "ValueError"),
              ("index", "empty", "ValueError"), ("index", "negative", "ValueError"),
              ("index", "too_big", "ValueError"), ("index", "None", "TypeError"),
              ("index", "list", "ok"), ("index", "noncontig", "ok"), ("index", "bigendian", "ok"),
              ("index", "uint8", "ok"), ("index", "bool", "TypeError"),
              ("seed", "negative", "ValueError"), ("seed", "float", "TypeError"),
              ("epoch", "2**64", "ValueError"), ("layout", "NHWC", "ValueError"),
              ("out", "float64", "TypeError"), ("out", "readonly", "TypeError"),
              ("out", "wrong_shape", "ValueError"), ("out", "noncontig", "TypeError")]


@pytest.mark.parametrize("row", BATCH_ROWS, ids=[f"batch-{r[0]}-{r[1]}" for r in BATCH_ROWS])
def test_batch_matrix(row):
    arg, name, exp = row
    ds = _tiny_data()
    idx = np.array([3, 0, 5], np.int64)
    vals = {("index", "float"): idx.astype(float), ("index", "2d"): idx[None],
            ("index", "empty"): idx[:0], ("index", "negative"): np.array([0, -1]),
            ("index", "too_big"): np.array([12]), ("index", "None"): None,
            ("index", "list"): idx.tolist(), ("index", "noncontig"): _noncontig(idx),
            ("index", "bigendian"): idx.astype(">i8"), ("index", "uint8"): idx.astype(np.uint8),
            ("index", "bool"): np.ones(3, bool),
            ("seed", "negative"): -1, ("seed", "float"): 1.5, ("epoch", "2**64"): 2**64,
            ("layout", "NHWC"): "NHWC", ("out", "float64"): np.empty((3, 3, 8, 8)),
            ("out", "readonly"): _readonly(np.empty((3, 3, 8, 8), np.float32)),
            ("out", "wrong_shape"): np.empty((4, 3, 8, 8), np.float32),
            ("out", "noncontig"): np.empty((8, 8, 3, 3), np.float32).T}
    kw = dict(index=idx, augment=True, seed=1, epoch=2)
    kw[arg] = vals[(arg, name)]
    status, got = _outcome(lambda: ds.batch(**kw))
    if exp == "ok":
        assert status == "ok", got
        np.testing.assert_array_equal(got, ds.batch(np.asarray(kw["index"]).astype(np.int64),
                                                     augment=True, seed=1, epoch=2))
        return
    assert status != "ok", f"batch accepted {arg}={name}"
    _check_error(got, exp, (arg,))


# ---------------------------------------------------------------- hostile files (issue 14)
# One row of test_hostile_matrix each: the call and everything that must not change.

def _h_dataset_huge_label(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 1, 2, 2), dtype=np.uint8)
    with _Alarm(10), pytest.raises(ValueError, match="labels"):
        Dataset(imgs, np.array([0, 1, 2**62]))
    assert Dataset(imgs, np.array([0, 1, 2**20 - 1])).num_classes == 2**20   # the bound
    assert Dataset(imgs, np.array([0, 1, 2]), classes=["a", "b", "c"]).num_classes == 3


def _h_lenient_numbers(tmp_path):
    ds = _tiny_data()
    for call, exc in ((lambda: ds.subset(1.9), TypeError), (lambda: ds.subset(True), TypeError),
                      (lambda: ds.subset("3"), TypeError), (lambda: ds.batches(1.9), TypeError),
                      (lambda: ds.batches(np.float64(4.0)), TypeError),
                      (lambda: ds.batches(0), ValueError), (lambda: ds.num_batches(0), ValueError),
                      (lambda: ds.num_batches(2.5), TypeError),
                      (lambda: ds.num_batches(-1, drop_last=True), ValueError)):
        with pytest.raises(exc, match="n=|batch_size="):
            call()          # raised at the call, not at the first next()
    assert ds.num_batches(np.int64(5)) == 3 and len(ds.subset(np.int32(4))) == 4


def _gz(path, data_chunks, kind="gz"):
    import gzip
    import lzma
    opener = gzip.open if kind == "gz" else lzma.open
    with opener(path, "wb") as f:
        for c in data_chunks:
            f.write(c)


def _h_data_bombs(tmp_path, monkeypatch=None):
    d = salnp.data
    old = d.MAX_FILE_BYTES
    d.MAX_FILE_BYTES = 8 << 20       # a small cap keeps the test fast; the logic is the same
    try:
        # .gz / .xz of zeros far beyond the cap: stops at the cap + 1 byte
        for kind in ("gz", "xz"):
            sub = tmp_path / kind
            sub.mkdir()
            _gz(sub / f"test.bin.{kind}", (bytes(1 << 22) for _ in range(16)), kind)
            tracemalloc.start()
            try:
                with pytest.raises(d.DataFormatError, match="more than 8388608 bytes"):
                    d.cifar10(sub, train=False)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 40 << 20, f"{kind}: peak {peak / 2**20:.0f} MiB"
        # an IDX header announcing 2**40 bytes: refused from the header
        sub = tmp_path / "idx"
        sub.mkdir()
        hdr = b"\0\0\x08\x03" + (2**16).to_bytes(4, "big") * 2 + (2**8).to_bytes(4, "big")
        _gz(sub / "train-images-idx3-ubyte.gz", [hdr, bytes(1000)])
        _gz(sub / "train-labels-idx1-ubyte.gz", [b"\0\0\x08\x01" + (4).to_bytes(4, "big"),
                                                 bytes(4)])
        with pytest.raises(d.DataFormatError, match="announces 1099511627776 data bytes"):
            d.fashion_mnist(sub)
        # an IDX announcing 4x28x28 bytes followed by 64 MB of zeros: stops after 1 byte more
        hdr = b"\0\0\x08\x03" + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        _gz(sub / "train-images-idx3-ubyte.gz", [hdr] + [bytes(1 << 22) for _ in range(16)])
        tracemalloc.start()
        try:
            with pytest.raises(d.DataFormatError, match="trailing"):
                d.fashion_mnist(sub)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20
        # a FIFO where a data file should be: never opened for reading
        sub = tmp_path / "fifo"
        sub.mkdir()
        os.mkfifo(sub / "test.bin")
        with _Alarm(20), pytest.raises((FileNotFoundError, ValueError)):
            d.cifar10(sub, train=False)
    finally:
        d.MAX_FILE_BYTES = old


HOSTILE = {k[3:]: v for k, v in sorted(globals().items()) if k.startswith("_h_")}
HOSTILE_ROWS = list(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_matrix(name, tmp_path):
    HOSTILE[name](tmp_path)
