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


# ---- an opcode-level writer, for hostile files (tests/test_data_pickle.py, the fuzzer) ----
# Each function returns the bytes that push one object; `pickle_of(body)` frames them.
import pickletools  # noqa: E402

RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n"
NDARRAY = b"cnumpy\nndarray\n"
DTYPE = b"cnumpy\ndtype\n"
FROMBUFFER = b"cnumpy.core.numeric\n_frombuffer\n"
LATIN1 = b"c_codecs\nencode\n"


def pickle_of(body: bytes, protocol: int = 2) -> bytes:
    return b"\x80" + bytes([protocol]) + body + b"."


def p_int(v: int) -> bytes:
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def p_str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def p_bytes(b: bytes, how: str = "bytes") -> bytes:
    """bytes as protocol 3 BINBYTES, or "py2": a BINSTRING (a latin1 str when loaded with
    encoding="latin1", as Python 2 wrote the CIFAR arrays), or "codecs": the protocol-2
    form Python 3 writes (_codecs.encode(str, "latin1"))."""
    if how == "py2":
        return b"T" + struct.pack("<i", len(b)) + b
    if how == "codecs":
        return LATIN1 + b"(" + p_str(b.decode("latin1")) + p_str("latin1") + b"tR"
    return b"B" + struct.pack("<I", len(b)) + b


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def p_dict(pairs) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def p_none() -> bytes:
    return b"N"


class Raw(bytes):
    """Opcodes already written: p_obj passes them through."""


def p_obj(v) -> bytes:
    """A plain Python value (None, bool, int, str, bytes, tuple, list, dict; Raw as is)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"N"
    if v is True or v is False:
        return b"\x88" if v else b"\x89"
    if isinstance(v, int):
        return p_int(v)
    if isinstance(v, str):
        return p_str(v)
    if isinstance(v, bytes):
        return p_bytes(v)
    if isinstance(v, tuple):
        return p_tuple(*map(p_obj, v))
    if isinstance(v, list):
        return p_list(*map(p_obj, v))
    if isinstance(v, dict):
        return p_dict((p_obj(k), p_obj(x)) for k, x in v.items())
    raise TypeError(type(v))


def p_dtype(spec: bytes, state: bytes | None = None) -> bytes:
    """numpy.dtype(spec, 0, 1) and, when given, BUILD with the state tuple (bytes)."""
    d = DTYPE + p_tuple(spec, p_int(0), p_int(1)) + b"R"
    return d + state + b"b" if state is not None else d


def dtype_state(byteorder="|", subarray=None, names=None, fields=None, elsize=-1, align=-1,
                flags=0) -> bytes:
    return p_tuple(p_int(3), p_str(byteorder), p_obj(subarray), p_obj(names), p_obj(fields),
                   p_int(elsize), p_int(align), p_int(flags))


def p_array(shape, dtype: bytes, raw: bytes | None, fortran=False, how="bytes") -> bytes:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b"b") and, unless raw is None,
    BUILD with (1, shape, dtype, fortran, raw) (raw: the data, or Raw opcodes)."""
    a = RECONSTRUCT + p_tuple(NDARRAY, p_tuple(p_int(0)), p_bytes(b"b")) + b"R"
    if raw is None:
        return a
    state = p_tuple(p_int(1), p_tuple(*map(p_int, shape)), dtype, b"\x88" if fortran else b"\x89",
                    bytes(raw) if isinstance(raw, Raw) else p_bytes(raw, how))
    return a + state + b"b"


def p_frombuffer(buf: bytes, dtype: bytes, shape, order="C") -> bytes:
    """numpy.core.numeric._frombuffer(buf, dtype, shape, order): the protocol-5 form
    (buf: the bytes of an object, e.g. p_bytes(...) or p_int(n))."""
    return FROMBUFFER + p_tuple(buf, dtype, p_tuple(*map(p_int, shape)), p_str(order)) + b"R"


def u1() -> bytes:
    return p_dtype(p_str("u1"), dtype_state())


def check_pickle(data: bytes) -> None:
    """The payload is a well-formed opcode stream (pickletools parses it)."""
    for _ in pickletools.genops(data):
        pass
