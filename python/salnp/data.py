"""Datasets: CIFAR-10/100 binary and Fashion-MNIST IDX, batched, normalised and augmented in C.

    train = salnp.data.cifar10("/work/shared/data/cifar10-subset", train=True)
    for x, y in train.batches(128, shuffle=True, augment=True, seed=0, epoch=e):
        ...   # x float32 (128, 3, 32, 32), y int64 (128,)

Files are read whole, decompressed here with the standard library (``.xz``, ``.gz``, or
plain), and parsed by libsal's bounds-checked C parsers.  A missing file raises
FileNotFoundError; a truncated, corrupted or foreign file raises DataFormatError (a
ValueError and a salnp.SalError) whose message starts with the file's path.

Randomness is counter-based: the shuffle of an epoch is a pure function of
(seed, epoch), and the augmentation of an image a pure function of
(seed, epoch, index of the image in its dataset), so batches do not depend on the thread
count, the batch size or the order in which batches are made.

CIFAR comes in two layouts and both are read: the binary version
("cifar-10-batches-bin", "cifar-100-binary") and the python version that torchvision
downloads ("cifar-10-batches-py", "cifar-100-python": pickled dicts).  A pickle can
execute code when it is loaded, so the python version goes through a restricted
unpickler (``safe_unpickle``) that builds only plain containers, strings, numbers and
plain numeric NumPy arrays: any other class a file names is refused before anything runs,
and numpy's own unpickling never sees the file's state (each array is made from its
explicit shape, dtype and exactly that many bytes; no array holds more than the file).
``check_md5=True`` compares the python version's files with the checksums published
with the data set (``CIFAR_PY_MD5``).
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import lzma
import math
import pickle
import pickletools
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import _core
from ._core import SalError
from .io import open_regular

__all__ = ["Dataset", "DataFormatError", "cifar10", "cifar100", "fashion_mnist", "load",
           "CIFAR_MEAN", "CIFAR_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
           "FASHION_MNIST_DEFAULT_ROOT", "CIFAR_PY_MD5", "safe_unpickle"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


MAX_DEFAULT_CLASSES = 1 << 20   # Dataset(classes=None) names 0..max(label): bounded


def _check_int(fn, name, v, lo):
    """v as an int >= lo; TypeError for non-integers (1.9, True, "3"), ValueError below lo."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{fn}: {name}={v!r}: must be an integer")
    if v < lo:
        raise ValueError(f"{fn}: {name}={v}: must be >= {lo}")
    return int(v)


class DataFormatError(ValueError, SalError):
    """A data file is truncated, corrupted or not in the expected format (message names it)."""


# ---- files ---------------------------------------------------------------------------

# The most decompressed bytes one data file may give (the largest file of the supported
# datasets, CIFAR-100's train.bin, is 154 MB): a small .gz/.xz of zeros ("decompression
# bomb") or an IDX header announcing more stops here instead of filling memory.  Raise it
# for larger datasets.
MAX_FILE_BYTES = 1 << 30
_CHUNK = 1 << 20
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def _open_data(path: Path):
    """A binary stream of the file's decompressed contents (.xz, .gz, or plain); the file
    must be a regular file (a FIFO or device is refused, never read)."""
    try:
        f = open_regular(path, "data")
    except ValueError as e:
        raise DataFormatError(str(e)) from None
    name = path.name
    if name.endswith(".xz"):
        return lzma.open(f)
    if name.endswith(".gz"):
        return gzip.open(f)
    return f


def _read_upto(f, n: int) -> bytes:
    """At most n bytes, in chunks (memory grows with the data actually there)."""
    parts, got = [], 0
    while got < n:
        b = f.read(min(_CHUNK, n - got))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read_bytes(path: Path, limit: int | None = None, idx: bool = False) -> bytes:
    """The file's contents, decompressed when its name ends in .xz or .gz, never more than
    limit (default MAX_FILE_BYTES) bytes: DataFormatError beyond.  idx: stop at the size
    the IDX header announces (plus one byte, so the parser sees trailing data)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    name = path.name
    try:
        with _open_data(path) as f:
            if idx:
                head = _read_upto(f, 4)
                if len(head) == 4 and head[:2] == b"\0\0" and 1 <= head[3] <= 16:
                    head += _read_upto(f, 4 * head[3])
                    if len(head) == 4 + 4 * head[3]:
                        count = 1
                        for k in range(head[3]):
                            count *= int.from_bytes(head[4 + 4 * k: 8 + 4 * k], "big")
                        size = count * _IDX_ITEMSIZE.get(head[2], 1)
                        if size > limit:
                            raise DataFormatError(
                                f"{path}: the IDX header announces {size} data bytes, more than "
                                f"salnp.data.MAX_FILE_BYTES ({limit}); not read")
                        return head + _read_upto(f, size + 1)
                return head + _read_upto(f, 64)    # a bad header: the parser says why
            data = _read_upto(f, limit + 1)
    except (lzma.LZMAError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        kind = "xz" if name.endswith(".xz") else "gzip"
        raise DataFormatError(f"{path}: corrupt or truncated {kind} stream: {e}") from e
    if len(data) > limit:
        raise DataFormatError(f"{path}: more than {limit} bytes (decompressed); larger than any "
                              "file of the supported datasets (salnp.data.MAX_FILE_BYTES)")
    return data


def _find(dirs: Sequence[Path], stem: str) -> Path | None:
    """First of stem, stem.xz, stem.gz that exists in dirs."""
    for d in dirs:
        for suffix in ("", ".xz", ".gz"):
            p = d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _not_found(dirs: Sequence[Path], stems: Sequence[str], what: str) -> FileNotFoundError:
    tried = ", ".join(str(d / s) + "[.xz|.gz]" for d in dirs for s in stems)
    return FileNotFoundError(f"{what}: no file found; tried {tried}")


def _parse_cifar(path: Path, num_classes: tuple[int, ...]):
    data = _read_bytes(path)
    try:
        return _core._parse_cifar(data, num_classes)
    except SalError as e:
        raise DataFormatError(f"{path}: {e}") from None


def _parse_idx(path: Path, ndim: int) -> np.ndarray:
    data = _read_bytes(path, idx=True)
    try:
        a = _core._parse_idx(data)
    except SalError as e:
        raise DataFormatError(f"{path}: {e}") from None
    if a.ndim != ndim:
        raise DataFormatError(f"{path}: IDX data has {a.ndim} dimension(s) {a.shape}, "
                              f"expected {ndim}")
    return a


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"{path}: label {i} = {int(labels[i])}: must be < {num_classes} "
                              f"({bad.size} bad label(s))")


def _read_names(path: Path | None, count: int, default: Sequence[str] | None) -> tuple[str, ...]:
    """Class names, one a line; default (or "0", "1", ...) when there is no file."""
    if path is None:
        return tuple(default) if default else tuple(str(i) for i in range(count))
    try:
        text = _read_bytes(path, limit=1 << 20).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: class names are not UTF-8 text: {e}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != count:
        raise DataFormatError(f"{path}: {len(names)} class names, expected {count}")
    return names


# ---- the dataset ---------------------------------------------------------------------

class Dataset:
    """Images uint8 (N, C, H, W), labels int64 (N,), class names, name, normalisation.

    mean, std: per-channel, applied to pixel / 255 (default: the images' own statistics).
    pad, flip: the augmentation that ``batches(..., augment=True)`` applies: random crop
    with zero padding ``pad`` (torchvision ``RandomCrop(H, padding=pad)`` on the raw image)
    and a horizontal flip with p = 0.5 when ``flip``.
    """

    def __init__(self, images, labels, classes: Sequence[str] | None = None, name: str = "dataset",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad: int = 4, flip: bool = True):
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape:
            raise ValueError(f"Dataset: images must be a non-empty uint8 array (N, C, H, W), got "
                             f"dtype {images.dtype} shape {images.shape}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != (images.shape[0],):
            raise ValueError(f"Dataset: labels must be integers of shape ({images.shape[0]},), "
                             f"got dtype {labels.dtype} shape {labels.shape}")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise ValueError(f"Dataset: labels must be >= 0, got {int(labels.min())}")
        if classes is None:
            top = int(labels.max())
            if top >= MAX_DEFAULT_CLASSES:
                raise ValueError(f"Dataset: labels: largest label {top} would make {top + 1} "
                                 f"classes; without classes= at most {MAX_DEFAULT_CLASSES} are "
                                 "named (pass classes= for more)")
            classes = [str(i) for i in range(top + 1)]
        if int(labels.max()) >= len(classes):
            raise ValueError(f"Dataset: label {int(labels.max())} but only {len(classes)} classes")
        C = images.shape[1]
        if mean is None or std is None:
            x = images.reshape(images.shape[0], C, -1).astype(np.float64) / 255.0
            mean = x.mean(axis=(0, 2)) if mean is None else mean
            std = x.std(axis=(0, 2)) if std is None else std
        try:
            mean = np.array(mean, dtype=np.float32).reshape(-1)
            std = np.array(std, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"Dataset: mean and std must be sequences of numbers, got mean "
                             f"{mean!r} std {std!r}") from None
        if mean.shape != (C,) or std.shape != (C,) or not np.all(std > 0) \
                or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)):
            raise ValueError(f"Dataset: mean and std must be finite, with C={C} values each and "
                             f"std > 0, got mean {mean.tolist()} std {std.tolist()}")
        if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or not 0 <= pad <= 1024:
            raise ValueError(f"Dataset: pad={pad!r}: must be an integer in [0, 1024] (libsal's limit)")
        self.images = images
        self.labels = labels
        self.classes = tuple(classes)
        self.name = name
        self.mean = mean
        self.std = std
        self.pad = int(pad)
        self.flip = bool(flip)

    # -- basics
    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """(image uint8 (C, H, W), label)"""
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, n={len(self)}, shape={self.shape}, "
                f"classes={self.num_classes}, mean={[round(float(v), 4) for v in self.mean]}, "
                f"std={[round(float(v), 4) for v in self.std]}, "
                f"pad={self.pad}, flip={self.flip})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image"""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def _derive(self, images, labels, name) -> "Dataset":
        return Dataset(images, labels, self.classes, name, self.mean, self.std, self.pad,
                       self.flip)

    def subset(self, n: int, seed: int = 0, balanced: bool = True) -> "Dataset":
        """n images chosen by seed, in their original order.

        balanced: each class gets n // K images (the first n % K classes one more); a class
        with too few images gives all it has and the rest is filled from the others.
        The normalisation is kept (not recomputed on the subset)."""
        n = _check_int("subset", "n", n, 1)
        if not 1 <= n <= len(self):
            raise ValueError(f"subset: n={n}: must be in [1, {len(self)}]")
        perm = _core._permutation(len(self), seed, 0)
        if balanced:
            K = self.num_classes
            quota = np.full(K, n // K, dtype=np.int64)
            quota[: n % K] += 1
            lab = self.labels[perm]
            # rank of each image within its class, in permutation order
            order = np.argsort(lab, kind="stable")
            starts = np.searchsorted(lab[order], np.arange(K))
            rank = np.empty(len(perm), dtype=np.int64)
            rank[order] = np.arange(len(perm)) - starts[lab[order]]
            take = rank < quota[lab]
            chosen = perm[take]
            if chosen.size < n:   # some class ran short: fill from the rest in perm order
                chosen = np.concatenate([chosen, perm[~take][: n - chosen.size]])
        else:
            chosen = perm[:n]
        chosen = np.sort(chosen)
        return self._derive(self.images[chosen], self.labels[chosen],
                            f"{self.name}[subset {n}, seed {seed}]")

    # -- batches
    def batch(self, index, augment: bool = False, seed: int = 0, epoch: int = 0,
              layout: str = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
        """float32 batch of the images at index: (B, C, H, W), or (C, B, H, W) for layout
        "CNHW"; normalised, and augmented (self.pad, self.flip) when augment.  Written into
        out (float32, C-contiguous, that shape) when given."""
        return _core._make_batch(self.images, index, self.mean, self.std,
                                 pad=self.pad if augment else 0,
                                 flip=self.flip if augment else False,
                                 seed=seed, epoch=epoch, layout=layout, out=out)

    def augmentation(self, index, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """int32 (B, 3): the (dy, dx, flip) that batch(index, augment=True, seed, epoch) uses;
        dy, dx are the crop's top-left corner in the zero-padded image, in [0, 2*pad]."""
        return _core._batch_augment(index, self.pad, self.flip, seed, epoch)

    def permutation(self, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """The order in which batches(shuffle=True, seed, epoch) visits the images."""
        return _core._permutation(len(self), seed, epoch)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        batch_size = _check_int("num_batches", "batch_size", batch_size, 1)
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0, epoch: int = 0, layout: str = "NCHW", drop_last: bool = False,
                reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (x, y): x float32 (B, C, H, W) (layout "CNHW": (C, B, H, W)), y int64 (B,).

        shuffle: visit the images in permutation(seed, epoch) order, else in order.
        augment: random crop with zero padding self.pad and flip (when self.flip).
        drop_last: skip a last batch smaller than batch_size.
        reuse: write every full batch into ONE preallocated array (and a last smaller batch
        into a second one): x is then overwritten by the next step, so copy it to keep it.
        Without reuse each x is a new array.  y is always a new array."""
        batch_size = _check_int("batches", "batch_size", batch_size, 1)
        if layout not in ("NCHW", "CNHW"):
            raise ValueError(f"batches: layout={layout!r}: must be 'NCHW' or 'CNHW'")
        # checked here, at the call; the generator below runs at the first next()
        return self._batches(batch_size, shuffle, augment, seed, epoch, layout, drop_last, reuse)

    def _batches(self, batch_size, shuffle, augment, seed, epoch, layout, drop_last, reuse):
        N = len(self)
        order = self.permutation(seed, epoch) if shuffle else np.arange(N, dtype=np.int64)
        bufs: dict[int, np.ndarray] = {}
        C, H, W = self.shape
        for start in range(0, N, batch_size):
            idx = order[start:start + batch_size]
            B = idx.size
            if B < batch_size and drop_last:
                return
            out = None
            if reuse:
                if B not in bufs:
                    shape = (B, C, H, W) if layout == "NCHW" else (C, B, H, W)
                    bufs[B] = np.empty(shape, dtype=np.float32)
                out = bufs[B]
            x = self.batch(idx, augment=augment, seed=seed, epoch=epoch, layout=layout, out=out)
            yield x, self.labels[idx]


# ---- the python (pickle) version of CIFAR -------------------------------------------

# md5 of each file of the python version, as published with the data set (and listed by
# torchvision.datasets.CIFAR10 / CIFAR100)
CIFAR_PY_MD5 = {
    "cifar-10-batches-py": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar-100-python": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}


class _Refused(DataFormatError):
    pass


# What a CIFAR pickle may hold.  numpy's own unpickling trusts the file (a dtype state may
# declare fields at any offset or the object flag, an array may be reconstructed and never
# filled), so the reader never lets numpy see a state: numpy.dtype and
# numpy.core.multiarray._reconstruct give the placeholders below, whose BUILD (setstate)
# checks numpy's standard state of a plain numeric array; every array is then made from
# its explicit shape, dtype and bytes, the byte count checked against the shape.
_PLAIN_KINDS = "biufc"                # bool, integers, floats, complex: nothing else
_MAX_NDIM = 32
_MAX_NESTING = 64                     # containers in containers (a CIFAR file has 2 levels)
# opcodes a CIFAR file (numpy arrays in dicts and lists, protocols 0-5) never uses: the
# ones that build objects by calling classes, read the copyreg extension registry or
# persistent ids, or take out-of-band buffers
_REFUSED_OPCODES = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4",
                              "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER"})


def _plain_dtype(d: np.dtype, what) -> np.dtype:
    if d.kind not in _PLAIN_KINDS or d.fields is not None or d.subdtype is not None \
            or d.hasobject or d.flags != 0:
        raise _Refused(f"dtype {what}: only plain numeric dtypes (bool, integers, floats, "
                       "complex; no fields, subarrays, objects or flags)")
    return d


class _NdarrayType:
    """What a pickle gets for numpy.ndarray: a name for _reconstruct, never callable."""

    def __call__(self, *args, **kwargs):
        raise _Refused("refusing to call numpy.ndarray from a pickle")


_NDARRAY = _NdarrayType()


class _PendingDtype:
    """numpy.dtype(name, align, copy) of a pickle: a plain numeric dtype named by a string;
    a BUILD may only give numpy's standard state of such a dtype (its byte order)."""

    __slots__ = ("dtype", "built")

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise _Refused(f"dtype {spec!r:.80}: must be named by a string ('u1', '<i8', ...)")
        if not all(isinstance(v, (bool, int)) and v in (0, 1) for v in (align, copy)):
            raise _Refused(f"dtype {spec!r}: align={align!r:.40}, copy={copy!r:.40}: must be 0 or 1")
        try:
            d = np.dtype(spec)
        except (TypeError, ValueError):
            raise _Refused(f"dtype {spec!r:.80}: not a numpy dtype name") from None
        self.dtype = _plain_dtype(d, repr(spec))
        self.built = False

    def __setstate__(self, state):
        if self.built:
            raise _Refused(f"dtype {self.dtype}: state set twice")
        self.built = True
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise _Refused(f"dtype {self.dtype}: state {state!r:.100}: not numpy's state of a "
                           "plain dtype (3, byteorder, None, None, None, -1, -1, 0)")
        _, order, sub, names, fields, elsize, align, flags = state[:8]
        bad = [what for what, ok in (
            ("byte order", order in ("<", ">", "|", "=")), ("subarray", sub is None),
            ("fields", names is None and fields is None),
            ("elsize", type(elsize) is int and elsize in (-1, self.dtype.itemsize)),
            ("alignment", type(align) is int and align in (-1, self.dtype.alignment)),
            ("flags", type(flags) is int and flags == 0),
            ("metadata", len(state) == 8 or state[8] is None)) if not ok]
        if bad:
            raise _Refused(f"dtype {self.dtype}: state {state!r:.100}: {', '.join(bad)} not "
                           "those of a plain numeric dtype")
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)


def _array_of(shape, dtype, raw, order):
    """An array from its explicit shape, dtype (a _PendingDtype) and bytes, which must be
    exactly the shape's size."""
    if not isinstance(dtype, _PendingDtype):
        raise _Refused(f"array dtype {type(dtype).__name__}: must be a numpy.dtype of the file")
    d = dtype.dtype
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
            and all(type(v) is int and v >= 0 for v in shape)):
        raise _Refused(f"array shape {shape!r:.100}: must be a tuple of at most {_MAX_NDIM} "
                       "dimensions, integers >= 0")
    if isinstance(raw, str):            # Python 2's byte strings (encoding="latin1")
        try:
            raw = raw.encode("latin1")
        except UnicodeEncodeError:
            raise _Refused("array data: a string that is not latin1 bytes") from None
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"array data is {type(raw).__name__} {raw!r:.40}: must be the array's "
                       "bytes")
    need = math.prod(shape) * d.itemsize
    if len(raw) != need:
        raise _Refused(f"array data of {len(raw)} bytes for shape {shape} of {d}: must be "
                       f"{need} bytes")
    return np.frombuffer(raw, d).reshape(shape, order=order).copy(order="K")


class _PendingArray:
    """numpy.core.multiarray._reconstruct(ndarray, ...) of a pickle: filled by its BUILD
    (numpy's state (1, shape, dtype, fortran, bytes)) only; never filled is refused."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None:
            raise _Refused("array filled twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5) \
                or (len(state) == 5 and state[0] != 1):
            raise _Refused(f"array state {state!r:.100}: not numpy's (1, shape, dtype, "
                           "fortran, bytes)")
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(fortran, (bool, int)) and fortran in (0, 1)):
            raise _Refused(f"array state: fortran={fortran!r:.40}: must be True or False")
        self.array = _array_of(shape, dtype, raw, "F" if fortran else "C")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise _Refused(f"array subtype {subtype!r:.80}: only numpy.ndarray")
    return _PendingArray()


def _np_frombuffer(buf, dtype, shape, order):
    """numpy.core.numeric._frombuffer (protocol 5): exactly the bytes of the shape."""
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused(f"_frombuffer: buffer {type(buf).__name__} {buf!r:.40}: must be bytes")
    if order not in ("C", "F"):
        raise _Refused(f"_frombuffer: order={order!r:.40}: must be 'C' or 'F'")
    return _array_of(shape, dtype, buf, order)


def _latin1_encode(text, encoding="latin1"):
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or not isinstance(encoding, str) \
            or encoding.lower().replace("-", "") not in ("latin1",):
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r:.40}): only latin1 "
                       "strings")
    try:
        return codecs.encode(text, "latin1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode: a string that is not latin1") from None


# (module, name) -> the only callables a CIFAR pickle may name (numpy arrays and the
# bytes of protocol 2): everything else is refused before it is looked up
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PendingDtype,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, bytes, numbers and plain numeric NumPy
    arrays; refuses every other global (and persistent ids) before resolving it."""

    def find_class(self, module, name):
        f = _PICKLE_ALLOWED.get((module, name))
        if f is None:
            raise _Refused(f"refusing to unpickle {module}.{name}: a CIFAR python-version file "
                           "holds only dicts, lists, strings and numpy arrays (this file is "
                           "something else; nothing in it was executed)")
        return f

    def persistent_load(self, pid):
        raise _Refused("refusing a pickle with persistent ids (not a CIFAR file)")


def _scan_pickle(data: bytes) -> None:
    """One pass over the opcodes before anything is built: every declared size within
    the file (a length field cannot make the unpickler allocate what the file does not
    hold), no opcode that a CIFAR file does not use, nothing after STOP."""
    end = None
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in _REFUSED_OPCODES:
                raise _Refused(f"opcode {op.name} at byte {pos}: not used by a CIFAR file "
                               "(dicts, lists, strings, numpy arrays)")
            if op.name == "FRAME" and arg > len(data) - pos - 9:
                raise _Refused(f"FRAME at byte {pos} declares {arg} bytes; only "
                               f"{len(data) - pos - 9} remain")
            if op.name == "STOP":
                end = pos + 1
    except ValueError as e:          # truncated, unknown opcode, a size beyond the end
        raise _Refused(f"not a valid pickle ({e}; bytes that remain are fewer than declared "
                       "or the stream is cut)") from None
    if end != len(data):
        raise _Refused(f"{len(data) - end} bytes after the end of the pickle (byte {end})")


def _resolve(root, limit: int):
    """The loaded object with every pending array replaced by its array.  Refused: an
    array never filled, a container that refers to itself or appears twice (shared
    containers multiply what a small file decodes to), more than _MAX_NESTING levels, more
    array bytes than the file holds (limit), any type a CIFAR file does not hold."""
    seen, active, total = set(), set(), [0]

    def array(a, key):
        if key in seen:
            raise _Refused("an array that appears more than once")
        seen.add(key)
        total[0] += a.nbytes
        if total[0] > limit:
            raise _Refused(f"more array data than the file holds ({total[0]} bytes of arrays "
                           f"from a file of {limit} bytes: shared data)")
        return a

    def walk(o, depth):
        t = type(o)
        if t in (str, bytes, int, float, bool, type(None)):
            return o
        if t is _PendingArray:
            if o.array is None:
                raise _Refused("an array that is never filled (reconstructed without its data)")
            return array(o.array, id(o))
        if t is np.ndarray:                  # from _frombuffer
            return array(o, id(o))
        if t not in (list, tuple, dict):
            what = "numpy dtype" if t is _PendingDtype else f"{t.__name__} object"
            raise _Refused(f"a bare {what}: a CIFAR file holds only dicts, lists, tuples, "
                           "strings, numbers and numpy arrays")
        if id(o) in active:
            raise _Refused(f"a {t.__name__} that refers to itself")
        if id(o) in seen:
            raise _Refused(f"a {t.__name__} that appears more than once (shared containers)")
        if depth >= _MAX_NESTING:
            raise _Refused(f"containers nested more than {_MAX_NESTING} levels deep")
        seen.add(id(o))
        active.add(id(o))
        if t is dict:
            out = {}
            for k, v in o.items():
                if type(k) not in (str, bytes, int):
                    raise _Refused(f"a dict key of type {type(k).__name__}: only strings and "
                                   "integers")
                out[k] = walk(v, depth + 1)
        else:
            out = t(walk(v, depth + 1) for v in o)
        active.discard(id(o))
        return out

    return walk(root, 0)


def safe_unpickle(data: bytes, what="data"):
    """Unpickle data (bytes) with the restricted unpickler (see the module docstring);
    DataFormatError naming `what` for anything else, a truncated or corrupted pickle."""
    try:
        _scan_pickle(data)
        return _resolve(_SafeUnpickler(io.BytesIO(data), encoding="latin1").load(), len(data))
    except _Refused as e:
        raise DataFormatError(f"{what}: {e}") from None
    except RecursionError:
        raise DataFormatError(f"{what}: pickle nested too deeply") from None
    except MemoryError:
        raise
    except Exception as e:   # any malformed stream: UnpicklingError, EOFError, ValueError...
        raise DataFormatError(f"{what}: not a valid pickle ({type(e).__name__}: {e})") from None


def _str_keys(obj, path):
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin1")
        out[k] = v
    return out


def _read_pickle(path: Path, check_md5: bool, md5s: dict):
    data = _read_bytes(path)
    if check_md5:
        stem = path.name.split(".xz")[0].split(".gz")[0] if path.name.endswith((".xz", ".gz")) \
            else path.name
        want = md5s.get(stem)
        if want is None:
            raise DataFormatError(f"{path}: no published md5 for a file named {stem!r}")
        got = hashlib.md5(data).hexdigest()
        if got != want:
            raise DataFormatError(f"{path}: md5 {got} differs from the published {want} "
                                  "(corrupted, truncated or a different file)")
    return _str_keys(safe_unpickle(data, str(path)), path)


def _pickle_labels(path: Path, d: dict, key: str, n: int, num_classes: int) -> np.ndarray:
    if key not in d:
        raise DataFormatError(f"{path}: no {key!r} entry (keys {sorted(map(str, d))})")
    v = d[key]
    # a flat list of Python ints (what the data set's files hold) or an integer array;
    # nothing else reaches np.asarray (a list of one shared long string became a huge array)
    if isinstance(v, np.ndarray):
        lab = v if v.dtype.kind in "iu" and v.shape == (n,) else None
        got = f"an array {v.dtype} {v.shape}"
    elif isinstance(v, (list, tuple)):
        ok = len(v) == n and all(type(x) is int and -2**63 <= x < 2**63 for x in v)
        lab = np.array(v, dtype=np.int64) if ok else None
        bad = next((x for x in v if type(x) is not int), None) if len(v) == n else None
        got = f"a {type(v).__name__} of {len(v)}" + (
            f" holding a {type(bad).__name__}" if bad is not None else "")
    else:
        lab, got = None, type(v).__name__
    if lab is None:
        raise DataFormatError(f"{path}: {key!r} must be a list of {n} integers, got {got}")
    lab = lab.astype(np.int64)
    bad = np.flatnonzero((lab < 0) | (lab >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"{path}: {key}[{i}] = {int(lab[i])}: must be in [0, {num_classes})"
                              f" ({bad.size} bad label(s))")
    return lab


def _pickle_images(path: Path, d: dict) -> np.ndarray:
    a = d.get("data")
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != 3072 \
            or a.shape[0] < 1:
        desc = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise DataFormatError(f"{path}: 'data' must be a uint8 array (N >= 1, 3072), got {desc}")
    return np.ascontiguousarray(a).reshape(-1, 3, 32, 32)


def _pickle_names(path: Path | None, key: str, count: int, default, check_md5, md5s):
    if path is None:
        return tuple(default) if default else tuple(str(i) for i in range(count))
    d = _read_pickle(path, check_md5, md5s)
    names = d.get(key)
    if not isinstance(names, list) or len(names) != count or \
            not all(isinstance(x, (str, bytes)) for x in names):
        raise DataFormatError(f"{path}: {key!r} must be a list of {count} names")
    return tuple(x.decode("latin1") if isinstance(x, bytes) else x for x in names)


# ---- loaders -------------------------------------------------------------------------

def cifar10(root, train: bool = True, check_md5: bool = False) -> Dataset:
    """CIFAR-10 from root, root/cifar-10-batches-bin or root/cifar-10-batches-py.

    Binary version: data_batch_1..5.bin (the official layout) or one train.bin; test:
    test_batch.bin or test.bin; each may be .xz or .gz compressed; class names from
    batches.meta.txt.  Python version (torchvision's download): data_batch_1..5 and
    test_batch, pickles read by the restricted unpickler, class names from batches.meta.
    check_md5: verify the python version's files against the published md5 (CIFAR_PY_MD5)."""
    root = Path(root)
    dirs = [root, root / "cifar-10-batches-bin"]
    split = "train" if train else "test"
    if train:
        first = _find(dirs, "data_batch_1.bin")
        if first is not None:
            files = [first] + [_find([first.parent], f"data_batch_{k}.bin") for k in range(2, 6)]
            if None in files:
                k = files.index(None) + 1
                raise FileNotFoundError(f"cifar10: {first.parent}/data_batch_{k}.bin[.xz|.gz] "
                                        f"missing (data_batch_1 is there)")
        else:
            files = [_find(dirs, "train.bin")]
    else:
        files = [_find(dirs, "test_batch.bin") or _find(dirs, "test.bin")]
    if files[0] is None:
        return _cifar10_python(root, train, check_md5, dirs)
    if check_md5:
        raise ValueError(f"cifar10: check_md5=True: the published checksums are those of the "
                         f"python version; {files[0]} is the binary version")
    parts = [_parse_cifar(f, (10,)) for f in files]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][:, 0] for p in parts])
    classes = _read_names(_find([files[0].parent], "batches.meta.txt"), 10, CIFAR10_CLASSES)
    return Dataset(images, labels, classes, f"cifar10-{split}", CIFAR_MEAN, CIFAR_STD, pad=4,
                   flip=True)


def _cifar10_python(root: Path, train: bool, check_md5: bool, bin_dirs) -> Dataset:
    dirs = [root, root / "cifar-10-batches-py"]
    split = "train" if train else "test"
    md5s = CIFAR_PY_MD5["cifar-10-batches-py"]
    stems = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
    first = _find(dirs, stems[0])
    if first is None:
        tried = (["data_batch_1.bin", "train.bin"] if train else ["test_batch.bin", "test.bin"])
        e = _not_found(bin_dirs, tried, f"cifar10 {split}")
        raise FileNotFoundError(f"{e}; and no {stems[0]} (python version) in "
                                f"{', '.join(map(str, dirs))}")
    files = [first] + [_find([first.parent], s) for s in stems[1:]]
    if None in files:
        k = files.index(None)
        raise FileNotFoundError(f"cifar10: {first.parent}/{stems[k]} missing ({stems[0]} is "
                                f"there: the python-pickle layout needs all of {stems})")
    images, labels = [], []
    for f in files:
        d = _read_pickle(f, check_md5, md5s)
        im = _pickle_images(f, d)
        images.append(im)
        labels.append(_pickle_labels(f, d, "labels", len(im), 10))
    classes = _pickle_names(_find([first.parent], "batches.meta"), "label_names", 10,
                            CIFAR10_CLASSES, check_md5, md5s)
    return Dataset(np.concatenate(images) if len(images) > 1 else images[0],
                   np.concatenate(labels), classes, f"cifar10-{split}", CIFAR_MEAN, CIFAR_STD,
                   pad=4, flip=True)


def cifar100(root, train: bool = True, labels: str = "fine", check_md5: bool = False) -> Dataset:
    """CIFAR-100 from root, root/cifar-100-binary or root/cifar-100-python.
    Binary version: train.bin / test.bin (optionally .xz / .gz), class names from
    fine_label_names.txt / coarse_label_names.txt when present.  Python version
    (torchvision's download): the pickles train / test (restricted unpickler), names from
    meta.  labels: "fine" (100 classes) or "coarse" (20 superclasses).  check_md5: verify
    the python version's files against the published md5 (CIFAR_PY_MD5).
    Normalisation: the CIFAR values of DESIGN.md §5 (pass your own to Dataset to change)."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100: labels={labels!r}: must be 'fine' or 'coarse'")
    root = Path(root)
    dirs = [root, root / "cifar-100-binary"]
    split = "train" if train else "test"
    k, count = (1, 100) if labels == "fine" else (0, 20)
    path = _find(dirs, f"{split}.bin")
    if path is None:
        pdirs = [root, root / "cifar-100-python"]
        ppath = _find(pdirs, split)
        if ppath is None:
            e = _not_found(dirs, [f"{split}.bin"], f"cifar100 {split}")
            raise FileNotFoundError(f"{e}; and no {split} (python version) in "
                                    f"{', '.join(map(str, pdirs))}")
        md5s = CIFAR_PY_MD5["cifar-100-python"]
        d = _read_pickle(ppath, check_md5, md5s)
        images = _pickle_images(ppath, d)
        lab = _pickle_labels(ppath, d, f"{labels}_labels", len(images), count)
        classes = _pickle_names(_find([ppath.parent], "meta"), f"{labels}_label_names", count,
                                None, check_md5, md5s)
        return Dataset(images, lab, classes, f"cifar100-{split}-{labels}", CIFAR_MEAN,
                       CIFAR_STD, pad=4, flip=True)
    if check_md5:
        raise ValueError(f"cifar100: check_md5=True: the published checksums are those of the "
                         f"python version; {path} is the binary version")
    images, lab = _parse_cifar(path, (20, 100))
    classes = _read_names(_find([path.parent], f"{labels}_label_names.txt"), count, None)
    return Dataset(images, lab[:, k], classes, f"cifar100-{split}-{labels}", CIFAR_MEAN,
                   CIFAR_STD, pad=4, flip=True)


def fashion_mnist(root=FASHION_MNIST_DEFAULT_ROOT, train: bool = True) -> Dataset:
    """Fashion-MNIST from IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]),
    by default from the Debian package dataset-fashion-mnist.  Images (N, 1, 28, 28);
    normalisation mean 0.2860, std 0.3530; augmentation pad 2 + flip."""
    root = Path(root)
    prefix = "train" if train else "t10k"
    split = "train" if train else "test"
    ipath = _find([root], f"{prefix}-images-idx3-ubyte")
    lpath = _find([root], f"{prefix}-labels-idx1-ubyte")
    if ipath is None or lpath is None:
        e = _not_found([root], [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"],
                       f"fashion_mnist {split}")
        raise FileNotFoundError(f"{e} (Debian: apt-get install dataset-fashion-mnist)")
    images = _parse_idx(ipath, 3)
    labels = _parse_idx(lpath, 1)
    if labels.shape[0] != images.shape[0]:
        raise DataFormatError(f"{lpath}: {labels.shape[0]} labels but {ipath} has "
                              f"{images.shape[0]} images")
    _check_labels(lpath, labels, 10)
    return Dataset(images[:, None], labels, FASHION_MNIST_CLASSES, f"fashion-mnist-{split}",
                   FASHION_MNIST_MEAN, FASHION_MNIST_STD, pad=2, flip=True)


_LOADERS = {"cifar10": cifar10, "cifar100": cifar100, "fashion-mnist": fashion_mnist}
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}


def load(name: str, root=None, train: bool = True, **kwargs) -> Dataset:
    """load("cifar10" | "cifar100" | "fashion-mnist", root, train): dispatch to the loaders.
    root may be None only for fashion-mnist (the Debian package's location)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _LOADERS:
        raise ValueError(f"load: name={name!r}: must be one of {sorted(_LOADERS)}")
    if root is None:
        if key != "fashion-mnist":
            raise ValueError(f"load: {name} needs root= (the directory holding its files)")
        return fashion_mnist(train=train, **kwargs)
    return _LOADERS[key](root, train=train, **kwargs)
