"""CIFAR's python version (torchvision's cifar-10-batches-py / cifar-100-python) through
the restricted unpickler: files written here the way the data set's authors wrote them
(Python 2 protocol 2) and by this Python (protocols 2-5) load with the right images,
labels and class names; pickles that name anything else are refused and never run;
check_md5 compares with the published checksums."""
import hashlib
import os
import pickle

import numpy as np
import pytest

import salnp
from salnp.data import CIFAR_PY_MD5, DataFormatError, safe_unpickle
from cifar_pickle import batch, cifar100_batch, dump

NAMES10 = [f"class{i}" for i in range(10)]


def _images(rng, n):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _write_cifar10(d, rng, protocol="py2", key_bytes=False):
    d.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(1, 6):
        im, lab = _images(rng, 3 + k), rng.integers(0, 10, 3 + k)
        b = batch(im, lab, name=f"training batch {k} of 5")
        if key_bytes:   # what pickle.load(encoding="bytes") users re-saved
            b = {kk.encode(): v for kk, v in b.items()}
        (d / f"data_batch_{k}").write_bytes(dump(b, protocol))
        parts.append((im, lab))
    tim, tlab = _images(rng, 4), rng.integers(0, 10, 4)
    (d / "test_batch").write_bytes(dump(batch(tim, tlab, name="testing batch 1 of 1"), protocol))
    (d / "batches.meta").write_bytes(dump({"num_cases_per_batch": 10000,
                                           "label_names": NAMES10, "num_vis": 3072}, protocol))
    return parts, (tim, tlab)


@pytest.mark.parametrize("protocol", ["py2", 2, 3, 4, 5])
def test_cifar10_python_version(tmp_path, protocol):
    rng = np.random.default_rng(10)
    parts, (tim, tlab) = _write_cifar10(tmp_path / "cifar-10-batches-py", rng, protocol,
                                        key_bytes=protocol == 4)
    tr = salnp.data.cifar10(tmp_path, train=True)
    np.testing.assert_array_equal(tr.images, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(tr.labels, np.concatenate([p[1] for p in parts]))
    assert tr.classes == tuple(NAMES10) and tr.name == "cifar10-train"
    te = salnp.data.cifar10(tmp_path / "cifar-10-batches-py", train=False)
    np.testing.assert_array_equal(te.images, tim)
    np.testing.assert_array_equal(te.labels, tlab)
    x = te.batch(np.arange(len(te)))
    assert x.shape == (4, 3, 32, 32) and np.isfinite(x).all()


def test_binary_version_is_preferred_and_missing_batches_named(tmp_path):
    rng = np.random.default_rng(11)
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d, rng)
    os.remove(d / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3 missing.*python-pickle"):
        salnp.data.cifar10(tmp_path)
    salnp.data.cifar10(tmp_path, train=False)      # the test split is complete
    # a binary test_batch.bin next to it wins
    rec = np.concatenate([[7], rng.integers(0, 256, 3072)]).astype(np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    assert len(salnp.data.cifar10(tmp_path, train=False)) == 1
    with pytest.raises(FileNotFoundError, match="no test_batch"):
        salnp.data.cifar10(tmp_path / "empty", train=False)


@pytest.mark.parametrize("protocol", ["py2", 5])
def test_cifar100_python_version(tmp_path, protocol):
    rng = np.random.default_rng(12)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    im, fine, coarse = _images(rng, 7), rng.integers(0, 100, 7), rng.integers(0, 20, 7)
    (d / "train").write_bytes(dump(cifar100_batch(im, fine, coarse), protocol))
    (d / "test").write_bytes(dump(cifar100_batch(im[:2], fine[:2], coarse[:2]), protocol))
    (d / "meta").write_bytes(dump({"fine_label_names": [f"f{i}" for i in range(100)],
                                   "coarse_label_names": [f"c{i}" for i in range(20)]}, protocol))
    f = salnp.data.cifar100(tmp_path)
    c = salnp.data.cifar100(tmp_path, labels="coarse")
    np.testing.assert_array_equal(f.images, im)
    np.testing.assert_array_equal(f.labels, fine)
    np.testing.assert_array_equal(c.labels, coarse)
    assert f.classes[99] == "f99" and c.classes[19] == "c19" and f.num_classes == 100
    assert len(salnp.data.cifar100(tmp_path, train=False)) == 2


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Evil(marker)}
    for k in range(1, 6):
        (d / f"data_batch_{k}").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataFormatError, match=r"data_batch_1: refusing to unpickle (posix|os)\.system"):
        salnp.data.cifar10(tmp_path)
    assert not marker.exists()
    for payload, name in [(pickle.dumps(eval), "builtins.eval"),
                          (b"\x80\x02cbuiltins\nexec\nX\x04\x00\x00\x00passR.", "builtins.exec"),
                          (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
                          (pickle.dumps(np.zeros(2, dtype=object)), "only plain numeric"),
                          (pickle.dumps(np.ma.masked_array([1, 2])), "refusing"),
                          (pickle.dumps(np.zeros(2, dtype=[("a", "u1")])), "dtype")]:
        with pytest.raises(DataFormatError, match=name):
            safe_unpickle(payload, "payload")
    # numpy.ndarray itself cannot be called; arrays cannot claim huge shapes
    with pytest.raises(DataFormatError, match="refusing to call numpy.ndarray"):
        safe_unpickle(b"\x80\x02cnumpy\nndarray\n(K\x01tR.")
    with pytest.raises(DataFormatError, match="over"):
        safe_unpickle(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
                      b"(J\xff\xff\xff\x7fJ\xff\xff\xff\x7ftU\x02u1tR.")
    # not a pickle, truncated, or not a dict of the right things
    for bad, msg in [(b"hello", "not a valid pickle"), (pickle.dumps([1, 2]), "expected a pickled dict"),
                     (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "'labels'"),
                     (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}), "labels\\[1\\] = 10"),
                     (pickle.dumps({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}), "'data'"),
                     (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}), "'data'"),
                     (dump(batch(np.zeros((2, 3, 32, 32), np.uint8), [1, 2]))[:-40], "not a valid pickle")]:
        for k in range(1, 6):
            (d / f"data_batch_{k}").write_bytes(bad)
        with pytest.raises(DataFormatError, match=msg) as e:
            salnp.data.cifar10(tmp_path)
        assert "data_batch_1" in str(e.value)


def test_md5(tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d, rng)
    assert len(salnp.data.cifar10(tmp_path, check_md5=False)) == 30
    with pytest.raises(DataFormatError, match=r"data_batch_1: md5 [0-9a-f]{32} differs from the "
                                              r"published c99cafc152244af753f735de768cd75f"):
        salnp.data.cifar10(tmp_path, check_md5=True)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in d.iterdir()}
    monkeypatch.setitem(CIFAR_PY_MD5, "cifar-10-batches-py", sums)
    assert len(salnp.data.cifar10(tmp_path, check_md5=True)) == 30
    assert len(salnp.data.cifar10(tmp_path, train=False, check_md5=True)) == 4
    (d / "batches.meta").write_bytes(dump({"label_names": NAMES10[::-1]}))
    with pytest.raises(DataFormatError, match="batches.meta: md5"):
        salnp.data.cifar10(tmp_path, train=False, check_md5=True)
    rec = np.zeros(3073, np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    with pytest.raises(ValueError, match="check_md5=True: the published checksums"):
        salnp.data.cifar10(tmp_path, train=False, check_md5=True)


def test_published_md5_table():
    assert CIFAR_PY_MD5["cifar-10-batches-py"]["test_batch"] == "40351d587109b95175f43aff81a1287e"
    assert CIFAR_PY_MD5["cifar-100-python"]["train"] == "16019d7e3df5f24257cddd939b257f8d"
    assert all(len(v) == 32 for t in CIFAR_PY_MD5.values() for v in t.values())
