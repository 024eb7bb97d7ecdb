"""Fuzzing (hypothesis) of the CIFAR python-version reader, like the other data fuzzers
in test_fuzz_ops.py: mutated, truncated and spliced pickles (valid files, files naming
forbidden globals, random opcode soup) either load as a valid Dataset or raise
DataFormatError / FileNotFoundError / MemoryError; no forbidden callable ever runs."""
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
