"""CIFAR's python version (torchvision's cifar-10-batches-py / cifar-100-python) through
the restricted unpickler: files written here the way the data set's authors wrote them
(Python 2 protocol 2) and by this Python (protocols 2-5) load with the right images,
labels and class names; pickles that name anything else are refused and never run;
check_md5 compares with the published checksums."""
import hashlib
import os
import pickle
import struct
import tracemalloc

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
    with pytest.raises(DataFormatError, match="never filled"):
        safe_unpickle(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
                      b"(J\xff\xff\xff\x7fJ\xff\xff\xff\x7ftU\x02u1tR.")
    with pytest.raises(DataFormatError, match="must be 4611686014132420609 bytes"):
        safe_unpickle(pickle_of(p_array((2**31 - 1, 2**31 - 1), u1(), b"")))
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


# ---- hostile files: numpy's own state is never trusted (issue 23) ---------------------
from cifar_pickle import (FROMBUFFER, LATIN1, NDARRAY, Raw, check_pickle, dtype_state,  # noqa: E402
                          p_array, p_bytes, p_dict, p_dtype, p_frombuffer, p_int, p_list,
                          p_obj, p_str, p_tuple, pickle_of, u1)


def _batch_file(images_expr: bytes, labels_expr: bytes, n_labels_ok=True) -> bytes:
    return pickle_of(p_dict([(p_str("data"), images_expr), (p_str("labels"), labels_expr),
                             (p_str("batch_label"), p_str("x"))]))


def _load_as_cifar(tmp_path, payload):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir(exist_ok=True)
    for k in range(1, 6):
        (d / f"data_batch_{k}").write_bytes(payload)
    return salnp.data.cifar10(tmp_path)


def _refused(tmp_path, payload, match, max_mb=64):
    """Refused with a message naming the file, having allocated at most max_mb MB on the
    way (Python and NumPy allocations, tracemalloc)."""
    check_pickle(payload)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=match) as e:
            _load_as_cifar(tmp_path, payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "data_batch_1" in str(e.value), str(e.value)
    assert peak < max_mb * 2**20 + 10 * len(payload), f"peak {peak / 2**20:.0f} MB"


def test_writer_makes_loadable_files(tmp_path):
    """The opcode writer of these tests makes real CIFAR files: every array form the
    reader must take (py2 strings, _codecs.encode, bytes, _frombuffer, Fortran order,
    big-endian) loads with the right values."""
    rng = np.random.default_rng(20)
    im = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    for form in ("py2", "codecs", "bytes"):
        payload = _batch_file(p_array((2, 3072), u1(), im.tobytes(), how=form), p_obj([3, 4]))
        ds = _load_as_cifar(tmp_path, payload)
        np.testing.assert_array_equal(ds.images[:2].reshape(2, 3072), im)
        assert ds.labels[:2].tolist() == [3, 4]
    fb = _batch_file(p_frombuffer(p_bytes(im.tobytes()), u1(), (2, 3072)), p_obj([3, 4]))
    np.testing.assert_array_equal(_load_as_cifar(tmp_path, fb).images[:2].reshape(2, 3072), im)
    fo = _batch_file(p_array((3072, 2), u1(), im.T.copy(order="F").tobytes(order="F"),
                             fortran=True), p_obj([3, 4]))
    with pytest.raises(DataFormatError, match="'data' must be a uint8 array"):
        _load_as_cifar(tmp_path, fo)            # (3072, 2): the right values, the wrong shape
    lab = np.array([7, 9], ">i8")
    be = _batch_file(p_array((2, 3072), u1(), im.tobytes()),
                     p_array((2,), p_dtype(p_str("i8"), dtype_state(">")), lab.tobytes()))
    assert _load_as_cifar(tmp_path, be).labels[:2].tolist() == [7, 9]
    assert safe_unpickle(pickle_of(p_array((3, 2), u1(), bytes(range(6)), fortran=True))
                         ).tolist() == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("state, why", [
    # fields at a huge offset: an array of it read far outside its buffer
    (dtype_state(names=("a",), fields={"a": (Raw(u1()), 2**40)}, elsize=1), "fields"),
    (dtype_state(flags=0x3f), "flags"),                # claims to hold Python objects
    (dtype_state(elsize=2**40), "elsize"),
    (dtype_state(subarray=(None, (2**20, 2**20))), "subarray"),
    (dtype_state(byteorder="?"), "byte order"),
    (p_tuple(p_int(3)), "state"),
    (p_int(7), "state"),
], ids=["fields", "flags", "elsize", "subarray", "byteorder", "short", "int"])
def test_crafted_dtype_state_is_refused(tmp_path, state, why):
    d = p_dtype(p_str("u1"), state)
    _refused(tmp_path, _batch_file(p_array((1, 3072), d, bytes(3072)), p_obj([0])),
             f"dtype.*{why}")


@pytest.mark.parametrize("spec, why", [
    (p_str("O"), "only plain numeric"), (p_str("V8"), "only plain numeric"),
    (p_str("u1,u1"), "only plain numeric"), (p_str("(2,2)u1"), "only plain numeric"),
    (p_str("M8[s]"), "only plain numeric"), (p_list(p_tuple(p_str("a"), p_str("O"))), "string"),
    (p_int(17), "string"), (p_str("no such type"), "dtype"),
], ids=["O", "V8", "record", "subarray", "datetime", "list", "int", "unknown"])
def test_only_plain_numeric_dtypes(tmp_path, spec, why):
    _refused(tmp_path, _batch_file(p_array((1, 3072), p_dtype(spec), bytes(3072)), p_obj([0])),
             why)


def test_array_never_filled_is_refused(tmp_path):
    # _reconstruct without the BUILD that fills it: uninitialised memory before
    _refused(tmp_path, _batch_file(p_array((1, 3072), u1(), None), p_obj([0])),
             "never filled")
    # a dtype without BUILD is the plain dtype of its name (numpy's own default state)
    ok = _batch_file(p_array((1, 3072), p_dtype(p_str("u1")), bytes(3072)), p_obj([0]))
    assert len(_load_as_cifar(tmp_path, ok)) == 5


@pytest.mark.parametrize("buf, why", [
    (p_int(50000 * 3072), "bytes"),         # bytes(n) before: 50,000 zero images from 200 bytes
    (p_str("abc"), "bytes"),
    (p_bytes(bytes(3071)), "3071 bytes.*3072"),
    (p_bytes(bytes(3073)), "3073 bytes.*3072"),
], ids=["int", "str", "short", "long"])
def test_frombuffer_takes_exactly_the_bytes_it_needs(tmp_path, buf, why):
    payload = _batch_file(p_frombuffer(buf, u1(), (1, 3072)), p_obj([0]))
    assert len(payload) < 4000
    _refused(tmp_path, payload, why)


def test_frombuffer_of_an_integer_is_not_50000_images(tmp_path):
    # before: bytes(153600000), i.e. a 200-byte file loaded as 50,000 zero images
    payload = _batch_file(p_frombuffer(p_int(50000 * 3072), u1(), (50000, 3072)),
                          b"](" + b"K\x00" * 50000 + b"e")
    _refused(tmp_path, payload, "_frombuffer: buffer int 153600000: must be bytes", max_mb=8)


@pytest.mark.parametrize("raw, shape, why", [
    (bytes(3071), (1, 3072), "3071 bytes.*3072"),
    (bytes(3073), (1, 3072), "3073 bytes.*3072"),
    (Raw(p_int(3072)), (1, 3072), "array data is int"),
    (Raw(p_list(p_int(0))), (1, 3072), "array data is list"),
    (bytes(0), (2**31, 2**31), "bytes"),
    (bytes(0), (-1, 3072), "shape"),
    (bytes(3072), (1, 3072, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                   1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), "dimensions"),
], ids=["short", "long", "int", "list", "huge", "negative", "35-dims"])
def test_array_bytes_checked_against_shape(tmp_path, raw, shape, why):
    _refused(tmp_path, _batch_file(p_array(shape, u1(), raw), p_obj([0])), why)


def test_array_filled_twice_or_dtype_rebuilt_is_refused():
    twice = p_array((1,), u1(), b"\x01") + p_tuple(p_int(1), p_tuple(p_int(1)), u1(), b"\x89",
                                                    p_bytes(b"\x02")) + b"b"
    with pytest.raises(DataFormatError, match="filled twice"):
        safe_unpickle(pickle_of(twice), "twice")
    rebuilt = u1() + dtype_state() + b"b"
    with pytest.raises(DataFormatError, match="dtype.*twice"):
        safe_unpickle(pickle_of(p_array((1,), rebuilt, b"\x01")), "rebuilt")


def test_self_referencing_or_shared_containers_are_refused(tmp_path):
    ok_images = p_array((1, 3072), u1(), bytes(3072))
    # labels = L with L.append(L): np.asarray grew memory without bound
    selfref = b"]q\x07h\x07a"
    _refused(tmp_path, _batch_file(ok_images, selfref), "refers to itself")
    # a dict holding itself
    _refused(tmp_path, pickle_of(b"}q\x01(X\x04\x00\x00\x00selfh\x01u"), "refers to itself")
    # "billion laughs": each list holds the previous one twice; 40 levels = 2**40 leaves
    body = b"](K\x00K\x00eq\x000"
    for k in range(1, 40):
        body += b"(h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"lq" + bytes([k]) + b"0"
    body += b"h" + bytes([39])
    _refused(tmp_path, _batch_file(ok_images, body), "more than once")
    # a bytes object shared by many arrays: more decoded data than the file holds
    many = b"B" + struct.pack("<I", 3072) + bytes(3072) + b"q\x000" + b"(" + b"".join(
        p_array((1, 3072), u1(), Raw(b"h\x00")) for _ in range(200)) + b"l"
    _refused(tmp_path, _batch_file(ok_images, many), "more array data than the file")
    # nesting deeper than any CIFAR file
    _refused(tmp_path, _batch_file(ok_images, b"]" * 200 + b"a" * 199), "nested")


def test_labels_must_be_a_flat_list_of_integers(tmp_path):
    ok_images = p_array((1, 3072), u1(), bytes(3072))
    for labels, why in [(p_obj(["1"]), "integers"), (p_obj([[0]]), "integers"),
                        (p_obj([True]), "integers"), (p_obj([2**70]), "integers"),
                        # one 1 MB string 300 times: np.asarray made a 1.2 GB array of it
                        (b"X" + struct.pack("<I", 1 << 20) + b"a" * (1 << 20) + b"q\x000(" +
                         b"h\x00" * 300 + b"l", "integers")]:
        _refused(tmp_path, _batch_file(ok_images, labels), f"'labels' must be .*{why}")


@pytest.mark.parametrize("payload, why", [
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", "only 4 remain"),  # BINBYTES8
    (b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc.", "only 4 remain"),  # BYTEARRAY8
    (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", "declares .*only 2 remain"),  # FRAME
    (b"\x80\x02" + NDARRAY + b"(K\x01t\x81.", "opcode NEWOBJ"),
    (b"\x80\x02\x82\x01.", "opcode EXT1"),
    (b"\x80\x02(cnumpy\nndarray\nK\x01o.", "opcode OBJ"),
    (b"\x80\x05\x97.", "opcode NEXT_BUFFER"),
    (b"\x80\x02N.junk", "after the end"),
], ids=["BINBYTES8", "BYTEARRAY8", "FRAME", "NEWOBJ", "EXT1", "OBJ", "NEXT_BUFFER", "junk"])
def test_declared_sizes_and_foreign_opcodes(payload, why):
    with pytest.raises(DataFormatError, match=f"f.pkl: .*{why}"):
        safe_unpickle(payload, "f.pkl")


def test_bytearray_and_other_types_left_in_the_result_are_refused():
    for body, why in [(b"\x8f(K\x01\x90", "set"), (u1(), "dtype"), (LATIN1, "function"),
                      (FROMBUFFER, "function"), (b"G@\x09!\xfbTD-\x18", None)]:
        if why is None:
            assert safe_unpickle(pickle_of(body, 4)) == 3.141592653589793
            continue
        with pytest.raises(DataFormatError, match=why):
            safe_unpickle(pickle_of(body, 4), "x")
