"""Writers of CIFAR's python-version files for the tests (never downloaded): the pickles
as the data set's authors made them (Python 2 cPickle, protocol 2: byte strings as
BINSTRING, numpy arrays through numpy.core.multiarray._reconstruct), or through this
Python's pickle at any protocol."""
import pickle
import struct

import numpy as np


def py2_pickle(obj) -> bytes:
    """Protocol-2 pickle of dicts, lists, tuples, str/bytes, small ints, None, bools and
    uint8 arrays, written opcode by opcode the way Python 2 wrote the CIFAR files."""
    return b"\x80\x02" + _w(obj) + b"."


def _w(obj):
    if isinstance(obj, dict):
        return b"}(" + b"".join(_w(k) + _w(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(_w(v) for v in obj) + b"e"
    if isinstance(obj, tuple):
        return b"(" + b"".join(_w(v) for v in obj) + b"t"
    if isinstance(obj, str):
        obj = obj.encode("latin1")
    if isinstance(obj, bytes):
        head = b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<i", len(obj))
        return head + obj
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, (int, np.integer)):
        obj = int(obj)
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8
        dtype = (b"cnumpy\ndtype\n" + _w(("u1", 0, 1)) + b"R"
                 + _w((3, "|", None, None, None, -1, -1, 0)) + b"b")
        return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + _w((0,)) + _w("b")
                + b"tR(" + _w(1) + _w(tuple(obj.shape)) + dtype + b"\x89"
                + _w(np.ascontiguousarray(obj).tobytes()) + b"tb")
    raise TypeError(type(obj))


def dump(obj, protocol="py2") -> bytes:
    return py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=protocol)


def batch(images, labels, key="labels", name="training batch"):
    """A data batch dict: images uint8 (N, 3, 32, 32), labels list."""
    n = len(images)
    return {"batch_label": name, key: [int(v) for v in labels],
            "data": np.ascontiguousarray(images).reshape(n, 3072),
            "filenames": [f"img_{i}.png" for i in range(n)]}


def cifar100_batch(images, fine, coarse):
    n = len(images)
    return {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": "training batch",
            "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) for v in coarse],
            "data": np.ascontiguousarray(images).reshape(n, 3072)}
