"""Fuzzing (hypothesis) of the CIFAR python-version reader, like the other data fuzzers
in test_fuzz_ops.py: mutated, truncated and spliced pickles (valid files, files naming
forbidden globals, random opcode soup) either load as a valid Dataset or raise
DataFormatError / FileNotFoundError / MemoryError; no forbidden callable ever runs.
The structure-aware part recombines the opcodes numpy arrays use (dtype and array
states, _frombuffer, memo sharing, self-reference) into hostile files: each either
loads as plain values and plain numeric arrays holding at most the file's bytes, or
raises DataFormatError."""
import os
import pickle

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import salnp  # noqa: E402
from cifar_pickle import batch, dump  # noqa: E402
from salnp.data import DataFormatError, Dataset, safe_unpickle  # noqa: E402

EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
LOADER_OK = (DataFormatError, FileNotFoundError, MemoryError)

CALLS = []


def _spy(*args):
    CALLS.append(args)


def _base(protocol, n=2, labels=(1, 2)):
    im = np.arange(n * 3072, dtype=np.uint32).astype(np.uint8).reshape(n, 3, 32, 32)
    return dump(batch(im, list(labels)[:n]), protocol)


# globals an attacker would name; tests.test_fuzz_pickle._spy records a call if resolved
FORBIDDEN = [b"cos\nsystem\n", b"cbuiltins\neval\n", b"cposix\nsystem\n",
             b"ctest_fuzz_pickle\n_spy\n", b"cnumpy\nload\n", b"csubprocess\nPopen\n",
             b"cnumpy.core.multiarray\nscalar\n", b"ccopyreg\n_reconstructor\n"]


@st.composite
def pickles(draw):
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=300))
    base = bytearray(_base(draw(st.sampled_from(["py2", 2, 3, 4, 5])),
                           n=draw(st.integers(1, 2)),
                           labels=draw(st.lists(st.integers(-3, 300), min_size=2, max_size=2))))
    if kind == 1:                    # flip bytes
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(base) - 1))
            base[i] = draw(st.integers(0, 255))
    elif kind == 2:                  # truncate
        base = base[:draw(st.integers(0, len(base)))]
    elif kind == 3:                  # splice a forbidden global and a call into the stream
        i = draw(st.integers(2, max(2, len(base) - 2)))
        g = draw(st.sampled_from(FORBIDDEN))
        base = base[:i] + g + b"(S'x'\ntR" + base[i:]
    elif kind == 4:                  # a pickle that only calls a forbidden global
        base = bytearray(b"\x80\x02" + draw(st.sampled_from(FORBIDDEN)) + b"(K\x01tR.")
    else:                            # opcode soup
        ops = [b"(", b"t", b"}", b"]", b"u", b"e", b"R", b"b", b"N", b"K\x05", b"U\x01a",
               b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n",
               b"c_codecs\nencode\n", b"\x85", b"\x86", b"0", b"2", b"q\x00", b"h\x00", b"."]
        base = bytearray(b"\x80\x02" + b"".join(draw(st.lists(st.sampled_from(ops), max_size=30))))
    return bytes(base)


@FUZZ
@given(payload=pickles())
def test_fuzz_safe_unpickle(payload):
    CALLS.clear()
    try:
        safe_unpickle(payload, "fuzz")
    except (DataFormatError, MemoryError):
        pass
    assert CALLS == []


@FUZZ
@given(data=st.data(), which=st.sampled_from(["cifar10", "cifar100"]))
def test_fuzz_cifar_python_loaders(tmp_path_factory, data, which):
    root = tmp_path_factory.mktemp("cifarpy")
    train = data.draw(st.booleans())
    payload = data.draw(pickles())
    if which == "cifar10":
        stems = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
        for s in stems:
            (root / s).write_bytes(payload)
        if data.draw(st.booleans()):
            (root / "batches.meta").write_bytes(data.draw(st.sampled_from(
                [dump({"label_names": [f"n{i}" for i in range(10)]}), b"junk",
                 pickle.dumps({"label_names": ["a"]}), pickle.dumps(os.system)])))
    else:
        # CIFAR-100 names fine_labels: rename the key in the stream (same length)
        (root / ("train" if train else "test")).write_bytes(
            payload.replace(b"labels", b"labelz").replace(b"\x06labelz", b"\x06labels"))
    CALLS.clear()
    try:
        ds = getattr(salnp.data, which)(root, train=train)
    except LOADER_OK:
        assert CALLS == []
        return
    assert CALLS == []
    assert isinstance(ds, Dataset) and ds.images.dtype == np.uint8
    assert ds.images.shape[1:] == (3, 32, 32) and len(ds) >= 1
    assert ds.labels.min() >= 0 and ds.labels.max() < ds.num_classes


# ---- structure-aware: the opcodes numpy arrays use, recombined (issue 23) -------------
from cifar_pickle import (FROMBUFFER, LATIN1, NDARRAY, RECONSTRUCT, DTYPE, Raw,  # noqa: E402
                          dtype_state, p_array, p_bytes, p_dict, p_dtype, p_frombuffer, p_int,
                          p_list, p_obj, p_str, p_tuple, pickle_of)

DTYPE_NAMES = ["u1", "i1", "<i8", ">i4", "f4", ">f8", "c8", "?", "e", "O", "V4", "S3", "U2",
               "u1,u1", "(2,2)u1", "M8[s]", "m8", "[('a','<i4')]", "i4", "garbage"]
SIZES = st.sampled_from([0, 1, 2, 3, 7, 3072, 2**31, 2**40, 2**63, -1])


def _ints():
    return st.one_of(st.integers(-3, 300), SIZES, st.integers(-2**70, 2**70))


def _itemsize(name):
    try:
        return np.dtype(name).itemsize
    except TypeError:
        return 1


@st.composite
def _dtype_expr(draw):
    """(opcodes pushing a numpy.dtype(...) with or without a BUILD, its itemsize)."""
    name = draw(st.sampled_from(DTYPE_NAMES))
    spec = draw(_leaf()) if draw(st.integers(0, 9)) == 0 else p_str(name)
    args = [spec, p_int(draw(st.sampled_from([0, 0, 1, 2]))), p_int(draw(st.sampled_from([0, 1])))]
    d = DTYPE + p_tuple(*args[:draw(st.sampled_from([1, 3, 3, 2]))]) + b"R"
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return d, _itemsize(name)                       # no BUILD
    if kind == 1:
        return d + draw(_leaf()) + b"b", 1              # a foreign state
    if kind < 5:                                        # numpy's own state
        return d + dtype_state(byteorder=draw(st.sampled_from(["|", "<", ">", "="]))) + b"b", \
            _itemsize(name)
    fields = draw(st.sampled_from([None, {}, {"a": (Raw(d), draw(SIZES))}]))
    state = dtype_state(byteorder=draw(st.sampled_from(["|", "<", ">", "=", "?", ""])),
                        subarray=draw(st.sampled_from([None, (Raw(d), (2, 2))])),
                        names=("a",) if fields else None, fields=fields,
                        elsize=draw(st.sampled_from([-1, 1, 4, 8, 2**40])),
                        align=draw(st.sampled_from([-1, 1, 8])),
                        flags=draw(st.sampled_from([0, 0, 1, 0x3f, 2**40])))
    d = d + state + b"b"
    if kind == 7:
        d = d + state + b"b"                            # BUILD twice
    return d, _itemsize(name)


@st.composite
def _array_expr(draw):
    dtype, isz = draw(_dtype_expr()) if draw(st.booleans()) else (p_dtype(p_str("u1")), 1)
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.one_of(st.integers(0, 5), st.integers(0, 5), SIZES)) for _ in range(ndim))
    n = isz
    for v in shape:
        n *= max(v, 0)
    size = draw(st.sampled_from(["exact", "exact", "random", "expr"]))
    if size == "exact" and n <= 256:
        raw = draw(st.binary(min_size=n, max_size=n))
    elif size == "expr":
        raw = Raw(draw(_leaf()))
    else:
        raw = draw(st.binary(max_size=40))
    if draw(st.integers(0, 4)) == 0:                    # the protocol-5 form
        buf = p_bytes(raw) if not isinstance(raw, Raw) else bytes(raw)
        return p_frombuffer(buf, dtype, shape, draw(st.sampled_from(["C", "F", "C", "K"])))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return p_array(shape, dtype, None)              # never filled
    a = p_array(shape, dtype, raw, fortran=draw(st.booleans()),
                how=draw(st.sampled_from(["bytes", "py2", "codecs"])))
    if kind == 1:                                       # filled twice
        a += p_tuple(p_int(1), p_tuple(*map(p_int, shape)), dtype, b"\x89", p_bytes(b"")) + b"b"
    if kind == 2:                                       # a foreign state
        a = p_array(shape, dtype, None) + draw(_leaf()) + b"b"
    return a


def _leaf():
    return st.one_of(
        _ints().map(p_int), st.text(max_size=6).map(p_str),
        st.binary(max_size=12).map(p_bytes),
        st.sampled_from([b"N", b"\x88", b"\x89", b"G?\xf0\x00\x00\x00\x00\x00\x00", b")",
                         FROMBUFFER, LATIN1, NDARRAY, RECONSTRUCT, DTYPE, b"]", b"}"]))


@st.composite
def _wrap(draw, inner):
    """A container around inner expressions, or a memo trick (one time in eight)."""
    kind = draw(st.integers(0, 15))
    if kind == 0:        # put it aside in the memo and push it again: a shared object
        x, k = draw(inner), draw(st.integers(0, 3))
        return x + b"q" + bytes([k]) + b"h" + bytes([k]) + b"\x86"
    if kind == 1:        # a list holding itself
        return b"]q\x09" + draw(inner) + b"ah\x09a"
    if kind < 7:
        return p_list(*draw(st.lists(inner, max_size=4)))
    if kind < 11:
        return p_tuple(*draw(st.lists(inner, max_size=4)))
    return p_dict(draw(st.lists(st.tuples(_leaf(), inner), max_size=3)))


def _expr():
    return st.recursive(st.one_of(_leaf(), _array_expr(), _array_expr()), _wrap, max_leaves=6)


@st.composite
def structured_pickles(draw):
    body = draw(_expr())
    if draw(st.booleans()):      # a CIFAR batch dict around it
        body = p_dict([(p_str("data"), draw(st.one_of(_array_expr(), st.just(body)))),
                       (p_str("labels"), draw(st.one_of(st.just(body), _leaf(),
                                                        st.just(p_obj([0, 1]))))),
                       (p_str("batch_label"), p_str("x"))])
    return pickle_of(body, draw(st.sampled_from([2, 2, 4, 5])))


def _check_result(obj, payload):
    """What safe_unpickle returns: plain values and plain numeric arrays that own their
    data, never more array bytes than the file, no container twice."""
    seen, total = set(), 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            assert type(o) is np.ndarray and o.dtype.kind in "biufc" and o.dtype.fields is None
            assert not o.dtype.hasobject and o.base is None and o.flags.writeable
            total += o.nbytes
            o.sum()                          # every byte readable
        elif isinstance(o, (list, tuple, dict)):
            assert id(o) not in seen
            seen.add(id(o))
            stack.extend(o.values() if isinstance(o, dict) else o)
        else:
            assert type(o) in (str, bytes, int, float, bool, type(None)), type(o)
    assert total <= len(payload)


@FUZZ
@given(payload=structured_pickles())
def test_fuzz_structured_pickles(payload):
    try:
        obj = safe_unpickle(payload, "fuzz")
    except DataFormatError:
        return
    _check_result(obj, payload)


@FUZZ
@given(payload=structured_pickles())
def test_fuzz_structured_cifar_files(tmp_path_factory, payload):
    root = tmp_path_factory.mktemp("cifarpy")
    (root / "test_batch").write_bytes(payload)
    try:
        ds = salnp.data.cifar10(root, train=False)
    except DataFormatError as e:
        assert str(root / "test_batch") in str(e)
        return
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (3, 32, 32)
    assert 0 <= ds.labels.min() and ds.labels.max() < 10
