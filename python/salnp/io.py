"""Files as .npz (never pickle): the bounded, validating reader and the atomic writer that
networks (salnp.models.save/load), training checkpoints (salnp.train) and exported networks
(salnp.infer) are stored with.  It knows no model: each caller checks its own contents.

A file holds the arrays under their state-dict names plus three small entries:
``__format__`` (the format version), ``__kind__`` ("network" or "training") and
``__config__`` (JSON text of the model config, the SAL inverse temperature ``beta`` and,
for training state, everything needed to resume).  Files are written to a temporary name
in the same folder, fsynced and renamed, so a process killed during ``save`` leaves the
previous file intact.

Paths.  ``load`` reads regular files only: a FIFO, a device node, a socket or a
directory raises ValueError at once (it is never opened for reading, so a FIFO cannot
block).  ``save`` writes through a symbolic link: the link stays and the regular file it
points to is replaced atomically (a dangling link creates its target).  A path that is
(or links to) anything but a regular file or nothing (a device node such as /dev/null, a
FIFO, a directory) is refused with ValueError: it is never replaced by a regular file.

Reading is bounded.  The zip directory, the three metadata entries and every array's
.npy header are read first; names, kind, config and the declared shapes are validated
before any array data is decompressed, and each member is then read to exactly the size
its (validated) shape gives, never further.  A truncated, corrupted, foreign or hostile
file (duplicate member names, a shape that disagrees with the config, a member whose
declared size disagrees with its header, an unsupported compression, a config nested
too deeply...) raises ValueError naming the file.

"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = 1
__all__ = ["save_npz_atomic", "read_npz", "NpzReader", "FORMAT", "open_regular",
           "check_finite_state"]

MAX_CONFIG_CHARS = 16 << 20     # the JSON config (history included) is far smaller
MAX_MEMBERS = 1 << 16
# deflate cannot expand more than 1032:1; a member declaring more is lying
_DEFLATE_MAX_RATIO = 1032


def _fspath(path, fn):
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}") from None


def _kind_of(mode) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, fn="load"):
    """A binary file object for path, which must be a regular file (after symlinks).

    Stats before opening (a device or FIFO is never opened), opens non-blocking and
    checks again on the descriptor (a swap in between is caught).  FileNotFoundError
    when missing; ValueError naming the path and what it is otherwise."""
    path = _fspath(path, fn)
    st = os.stat(path)              # FileNotFoundError / PermissionError propagate
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{fn}: {path}: is {_kind_of(st.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{fn}: {path}: is {_kind_of(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_finite_state(arrays: dict, fn: str) -> None:
    """ValueError naming the first entry that is not finite or, for BN running variances,
    negative (such a state would load nowhere and export to a constant network)."""
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"{fn}: {k} contains NaN or inf")
        if k.endswith("running_var") and v.size and float(v.min()) < 0:
            raise ValueError(f"{fn}: {k} has a negative value ({float(v.min())}): a running "
                             "variance must be >= 0")


def _target_for_save(path):
    """The regular file that save replaces: path itself, or the file its symlinks lead to.
    ValueError if that exists and is not a regular file (device, FIFO, directory...)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real, None
    if not stat.S_ISREG(st.st_mode):
        via = f" (via the symbolic link {path})" if real != os.path.abspath(path) else ""
        raise ValueError(f"save: {real}{via}: is {_kind_of(st.st_mode)}; save writes regular "
                         "files only and never replaces anything else")
    return real, st


def save_npz_atomic(path, arrays: dict, kind: str, config: dict) -> None:
    """Write arrays + metadata to path atomically (tmp file, fsync, rename, fsync dir).

    A symbolic link is written through (the link stays, its target is replaced); a path
    that exists and is not a regular file is refused (ValueError)."""
    path = _fspath(path, "save")
    if path == "" or path.endswith(os.sep):
        raise ValueError(f"save: path={path!r}: must name a file")
    target, st = _target_for_save(path)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    payload = {k: np.array(v, order="C") for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype.kind not in "fiub":
            raise TypeError(f"save: {k} has dtype {v.dtype}; only numeric arrays are stored")
    payload["__format__"] = np.array(FORMAT, np.int64)
    payload["__kind__"] = np.array(kind)
    payload["__config__"] = np.array(json.dumps(config, sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        if st is not None:          # keep the replaced file's permission bits
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- bounded reading
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError, OSError, EOFError,
                KeyError, IndexError, TypeError, AttributeError, OverflowError, RecursionError,
                NotImplementedError, RuntimeError, UnicodeError, SyntaxError)


class _Header:
    __slots__ = ("shape", "dtype", "fortran", "nbytes", "info")

    def __init__(self, shape, dtype, fortran, nbytes, info):
        self.shape, self.dtype, self.fortran, self.nbytes, self.info = shape, dtype, fortran, nbytes, info


class NpzReader:
    """A salnp .npz opened for bounded reading (a context manager).

    On opening: the zip directory (duplicate or non-.npy member names refused), the
    metadata (format, kind, config: ``self.kind``, ``self.config``) and every array's
    .npy header (``self.headers[name] = (shape, dtype)``) are read and checked; no array
    data is decompressed.  ``read(name, shape=None, dtype_kinds="fiub")`` then reads one
    array of exactly the size of its header (which must equal shape when given).  Every
    failure is ValueError naming the file (FileNotFoundError when it does not exist)."""

    def __init__(self, path, kind=None):
        self.path = _fspath(path, "load")
        self._f = open_regular(self.path, "load")
        try:
            self._open(kind)
        except BaseException:
            self.close()
            raise

    def _fail(self, msg):
        return ValueError(f"{self.path}: {msg}")

    def _open(self, kind):
        try:
            self._zip = zipfile.ZipFile(self._f)
            infos = self._zip.infolist()
        except _READ_ERRORS as e:
            raise self._fail(f"not a readable salnp .npz file ({type(e).__name__}: {e})") from None
        if len(infos) > MAX_MEMBERS:
            raise self._fail(f"{len(infos)} members: more than a salnp file holds ({MAX_MEMBERS})")
        seen, self.headers = set(), {}
        for info in infos:
            name = info.filename
            if name in seen:
                raise self._fail(f"duplicate member {name!r}: refused (which copy is meant?)")
            seen.add(name)
            if not name.endswith(".npy"):
                raise self._fail(f"member {name!r} is not an .npy array: not a salnp file")
            if info.flag_bits & 0x1:
                raise self._fail(f"member {name!r} is encrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                ok = info.file_size == info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                ok = info.file_size <= _DEFLATE_MAX_RATIO * info.compress_size + 1024
            else:
                raise self._fail(f"member {name!r}: compression method {info.compress_type} "
                                 "(salnp files are stored or deflated)")
            if not ok:
                raise self._fail(f"member {name!r} declares {info.file_size} bytes from "
                                 f"{info.compress_size} compressed: impossible, refused")
            self.headers[name[:-4]] = self._header(info)
        for k in ("__format__", "__kind__", "__config__"):
            if k not in self.headers:
                raise self._fail("not a salnp file (no __format__/__kind__/__config__ entries)")
        fmt = self._read_meta("__format__", "iu", 1)
        if fmt.shape != () or int(fmt) != FORMAT:
            raise self._fail(f"format version {fmt.tolist()}, this salnp reads version {FORMAT}")
        found = self._read_meta("__kind__", "U", 64)
        if found.shape != ():
            raise self._fail("__kind__ is not a string")
        self.kind = str(found[()])
        if kind is not None and self.kind != kind:
            raise self._fail(f"holds a {self.kind!r}, expected a {kind!r}")
        text = self._read_meta("__config__", "U", MAX_CONFIG_CHARS)
        if text.shape != ():
            raise self._fail("__config__ is not a string")
        try:
            config = json.loads(str(text[()]))
        except (ValueError, RecursionError) as e:
            raise self._fail(f"corrupted config ({type(e).__name__}: {e})") from None
        if not isinstance(config, dict):
            raise self._fail(f"config is a {type(config).__name__}, not a JSON object")
        self.config = config
        self.arrays = [k for k in self.headers if not k.startswith("__")]
        self.headers_shapes = {k: self.headers[k].shape for k in self.arrays}

    def _header(self, info):
        name = info.filename
        try:
            with self._zip.open(info) as m:
                version = np.lib.format.read_magic(m)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
                else:
                    raise ValueError(f"npy version {version}")
                hlen = m.tell()
        except _READ_ERRORS as e:
            raise self._fail(f"member {name!r}: bad .npy header ({type(e).__name__}: {e})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
                or dtype.kind not in "fiubU":
            raise self._fail(f"member {name!r}: dtype {dtype} is not stored by salnp")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if hlen + nbytes != info.file_size:
            raise self._fail(f"member {name!r}: shape {shape} of {dtype} needs {nbytes} bytes "
                             f"after its header, the member declares {info.file_size - hlen}")
        return _Header(tuple(shape), dtype, fortran, nbytes, info)

    def _read_meta(self, name, kinds, max_count):
        h = self.headers[name]
        if h.dtype.kind not in kinds or math.prod(h.shape) > max_count:
            raise self._fail(f"{name}: dtype {h.dtype} shape {h.shape}: not salnp metadata")
        return self._data(name, h)

    def _data(self, name, h):
        count = math.prod(h.shape)
        try:
            with self._zip.open(h.info) as m:
                version = np.lib.format.read_magic(m)
                (np.lib.format.read_array_header_1_0 if version == (1, 0)
                 else np.lib.format.read_array_header_2_0)(m)
                out = np.empty(count, h.dtype)
                view = memoryview(out).cast("B")
                got = 0
                while got < h.nbytes:
                    n = m.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got != h.nbytes:
                    raise EOFError(f"{got} of {h.nbytes} bytes")
                if m.read(1):
                    raise ValueError("trailing bytes after the array")
        except _READ_ERRORS as e:
            raise self._fail(f"member {name!r}: not readable ({type(e).__name__}: {e})") from None
        if h.fortran:
            out = out.reshape(h.shape[::-1]).T
        else:
            out = out.reshape(h.shape)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out if out.flags.c_contiguous else out.copy(order="C")

    def shape(self, name):
        return self.headers[name].shape

    def dtype(self, name):
        return self.headers[name].dtype

    def read(self, name, shape=None, kinds="fiub"):
        """The array `name`, after checking its header's shape (== shape when given) and
        dtype kind; reads exactly the bytes that shape needs."""
        if name not in self.headers or name.startswith("__"):
            raise self._fail(f"missing array {name!r}")
        h = self.headers[name]
        if shape is not None and h.shape != tuple(shape):
            raise self._fail(f"{name} has shape {h.shape}, expected {tuple(shape)}")
        if h.dtype.kind not in kinds:
            raise self._fail(f"{name} has dtype {h.dtype}, expected a real numeric array")
        return self._data(name, h)

    def close(self):
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_npz(path, kind: str | None = None, shapes: dict | None = None):
    """(arrays, config, kind) from a salnp .npz; ValueError naming the file otherwise.

    shapes: {name: expected shape} checked against the headers before any data is read
    (names not in it are read with their own header's size)."""
    with NpzReader(path, kind) as z:
        arrays = {}
        for k in z.arrays:
            arrays[k] = z.read(k, (shapes or {}).get(k))
        return arrays, z.config, z.kind
