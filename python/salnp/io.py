"""Saving and loading networks and training state as .npz (never pickle).

A file holds the arrays under their state-dict names plus three small entries:
``__format__`` (the format version), ``__kind__`` ("network" or "training") and
``__config__`` (JSON text of the model config and, for training state, everything
needed to resume).  Files are written to a temporary name in the same folder, fsynced
and renamed, so a process killed during ``save`` leaves the previous file intact.
Loading uses ``allow_pickle=False``; a truncated, corrupted or foreign file raises
ValueError naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = 1
__all__ = ["save", "load", "save_npz_atomic", "read_npz", "FORMAT"]


def _fspath(path, fn):
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}") from None


def _check_model_config(path, cfg, arrays):
    """The config must describe the arrays in the file (so a foreign or edited file cannot
    make load build a network far larger than the file: width, depth, classes, channels
    are checked against the stored stem, head and block count)."""
    try:
        w = arrays["conv1.weight"].shape
        lin = arrays["linear.weight"].shape
        blocks = {k.split(".")[1] for k in arrays if k.startswith("layer1.")}
        depth = int(cfg["depth"])
        ok = (w == (int(cfg["width"]), int(cfg["in_channels"]), 3, 3)
              and lin == (int(cfg["num_classes"]), 4 * int(cfg["width"]))
              and len(blocks) * 6 + 2 == depth)
    except (KeyError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"{path}: model config {cfg} does not match the arrays in the file")


def save_npz_atomic(path, arrays: dict, kind: str, config: dict) -> None:
    """Write arrays + metadata to path atomically (tmp file, fsync, rename, fsync dir)."""
    path = _fspath(path, "save")
    folder = os.path.dirname(os.path.abspath(path))
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
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def read_npz(path, kind: str | None = None):
    """(arrays, config, kind) from a salnp .npz; ValueError naming the file otherwise."""
    path = _fspath(path, "load")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path}: not a readable salnp .npz file ({type(e).__name__}: {e})") from None
    if "__format__" not in arrays or "__config__" not in arrays or "__kind__" not in arrays:
        raise ValueError(f"{path}: not a salnp file (no __format__/__kind__/__config__ entries)")
    fmt = int(arrays.pop("__format__"))
    if fmt != FORMAT:
        raise ValueError(f"{path}: format version {fmt}, this salnp reads version {FORMAT}")
    found = str(arrays.pop("__kind__"))
    if kind is not None and found != kind:
        raise ValueError(f"{path}: holds a {found!r}, expected a {kind!r}")
    try:
        config = json.loads(str(arrays.pop("__config__")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupted config ({e})") from None
    return arrays, config, found


def save(net, path) -> None:
    """Save a network (parameters, buffers, config) to path (.npz)."""
    from .models import ResNet

    if not isinstance(net, ResNet):
        raise TypeError(f"save: net must be a salnp network (salnp.models.ResNet), got "
                        f"{type(net).__name__}")
    save_npz_atomic(path, net.state_dict(), "network",
                    {"model": net.config, "beta": float(net.beta)})


def load(path):
    """Load a network saved by save(); returns a new network with its weights."""
    from .models import resnet

    arrays, config, kind = read_npz(path)
    if kind not in ("network", "training"):
        raise ValueError(f"{path}: holds a {kind!r}, not a network")
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{path}: no model config")
    _check_model_config(path, model_cfg, arrays)
    try:
        net = resnet(**model_cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: model config {model_cfg} not understood ({e})") from None
    state = {k: v for k, v in arrays.items() if not k.startswith("optim.") and not k.startswith("train.")}
    try:
        net.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    beta = config.get("beta")     # the SAL inverse temperature (networks saved since 0.1.x)
    if isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta >= 0 \
            and beta == beta and beta != float("inf"):
        net.beta = float(beta)
    return net
