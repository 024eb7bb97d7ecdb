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

The CIFAR python-pickle format ("cifar-10-batches-py") is not read: unpickling a
downloaded file can execute code.  Use the binary version ("cifar-10-batches-bin").
"""
from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import _core
from ._core import SalError

__all__ = ["Dataset", "DataFormatError", "cifar10", "cifar100", "fashion_mnist", "load",
           "CIFAR_MEAN", "CIFAR_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
           "FASHION_MNIST_DEFAULT_ROOT"]

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
    from .io import open_regular

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
    hint = ""
    for d in dirs:
        if (d / "data_batch_1").is_file() or (d / "cifar-10-batches-py").is_dir() \
                or (d / "train").is_file():
            hint = (" (found what looks like the CIFAR python-pickle version: salnp reads only "
                    "the binary version, because unpickling a file can execute code)")
    return FileNotFoundError(f"{what}: no file found; tried {tried}{hint}")


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


# ---- loaders -------------------------------------------------------------------------

def cifar10(root, train: bool = True) -> Dataset:
    """CIFAR-10, binary version, from root or root/cifar-10-batches-bin.

    Train: data_batch_1..5.bin (the official layout) or one train.bin; test: test_batch.bin
    or test.bin; each may be .xz or .gz compressed.  Class names from batches.meta.txt."""
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
            one = _find(dirs, "train.bin")
            if one is None:
                raise _not_found(dirs, ["data_batch_1.bin", "train.bin"], "cifar10 train")
            files = [one]
    else:
        one = _find(dirs, "test_batch.bin") or _find(dirs, "test.bin")
        if one is None:
            raise _not_found(dirs, ["test_batch.bin", "test.bin"], "cifar10 test")
        files = [one]
    parts = [_parse_cifar(f, (10,)) for f in files]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][:, 0] for p in parts])
    classes = _read_names(_find([files[0].parent], "batches.meta.txt"), 10, CIFAR10_CLASSES)
    return Dataset(images, labels, classes, f"cifar10-{split}", CIFAR_MEAN, CIFAR_STD, pad=4,
                   flip=True)


def cifar100(root, train: bool = True, labels: str = "fine") -> Dataset:
    """CIFAR-100, binary version (train.bin / test.bin, optionally .xz / .gz), from root or
    root/cifar-100-binary.  labels: "fine" (100 classes) or "coarse" (20 superclasses).
    Class names from fine_label_names.txt / coarse_label_names.txt when present.
    Normalisation: the CIFAR values of DESIGN.md §5 (pass your own to Dataset to change)."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100: labels={labels!r}: must be 'fine' or 'coarse'")
    root = Path(root)
    dirs = [root, root / "cifar-100-binary"]
    split = "train" if train else "test"
    path = _find(dirs, f"{split}.bin")
    if path is None:
        raise _not_found(dirs, [f"{split}.bin"], f"cifar100 {split}")
    images, lab = _parse_cifar(path, (20, 100))
    k, count = (1, 100) if labels == "fine" else (0, 20)
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
