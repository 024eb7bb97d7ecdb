"""salnp.save / salnp.load and the .npz files behind them (salnp.io): the bad-input matrix of
save and load (bad paths, empty, truncated, garbage, foreign and edited files), and the
hostile files of issue 14: FIFOs and device nodes never opened for reading or replaced,
symlinks written through, zip members duplicated, foreign, bombs and liars, configs that
would build gigabytes, metadata of the wrong type.  Exported networks' files are in
test_export.py, training checkpoints in test_train.py, the structure-aware fuzzer of these
parsers in test_fuzz_npz.py; tests/hostile.py holds the shared helpers."""
import json
import os
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest

import salnp
from hostile import (_Alarm, _check_error, _expect_load_error, _f, _members, _outcome, _small,
                     _tiny_data)


# ---------------------------------------------------------------- the bad-input matrix

IO_ROWS = ["none_path", "int_path", "dir_path", "missing", "empty", "truncated", "garbage",
           "zip_not_npz", "foreign_npz", "pickled_object", "wrong_format", "bad_json",
           "wrong_kind", "config_not_dict", "config_huge_width", "config_bad_depth",
           "missing_array", "wrong_shape_array", "nan_array", "complex_array",
           "training_ckpt", "bitflip", "save_none_net", "save_none_path", "save_int_path"]


def _good_file(tmp_path):
    p = tmp_path / "good.npz"
    salnp.save(salnp.models.resnet(8, 2, "cl", num_classes=4), p)
    return p


def _rewrite(src, dst, edit):
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    edit(d)
    np.savez(dst, **d)
    return dst


@pytest.mark.parametrize("name", IO_ROWS)
def test_save_load_matrix(name, tmp_path):
    good = _good_file(tmp_path)
    p = tmp_path / f"{name}.npz"
    import json
    cfg = lambda d: json.loads(str(d["__config__"]))  # noqa: E731
    setcfg = lambda d, c: d.__setitem__("__config__", np.array(json.dumps(c)))  # noqa: E731
    makers = {
        "empty": lambda: p.write_bytes(b""),
        "truncated": lambda: p.write_bytes(good.read_bytes()[:300]),
        "garbage": lambda: p.write_bytes(os.urandom(2000)),
        "zip_not_npz": lambda: __import__("zipfile").ZipFile(p, "w").writestr("a.txt", "hello"),
        "foreign_npz": lambda: np.savez(p, a=np.arange(3)),
        "pickled_object": lambda: np.savez(p, a=np.array([{"x": 1}], dtype=object),
                                           __format__=1, __kind__="network", __config__="{}"),
        "wrong_format": lambda: _rewrite(good, p, lambda d: d.__setitem__("__format__",
                                                                          np.array(99))),
        "bad_json": lambda: _rewrite(good, p, lambda d: d.__setitem__("__config__",
                                                                      np.array("{not json"))),
        "wrong_kind": lambda: _rewrite(good, p, lambda d: d.__setitem__("__kind__",
                                                                        np.array("inference"))),
        "config_not_dict": lambda: _rewrite(good, p, lambda d: setcfg(d, {"model": [1, 2]})),
        "config_huge_width": lambda: _rewrite(good, p, lambda d: setcfg(
            d, {"model": dict(cfg(d)["model"], width=10**6)})),
        "config_bad_depth": lambda: _rewrite(good, p, lambda d: setcfg(
            d, {"model": dict(cfg(d)["model"], depth=7)})),
        "missing_array": lambda: _rewrite(good, p, lambda d: d.pop("linear.bias")),
        "wrong_shape_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.zeros(5, np.float32))),
        "nan_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.full(4, np.nan, np.float32))),
        "complex_array": lambda: _rewrite(good, p, lambda d: d.__setitem__(
            "linear.bias", np.zeros(4, np.complex64))),
        "bitflip": lambda: p.write_bytes(bytes(b ^ (0xFF if i == len(good.read_bytes()) // 2 else 0)
                                               for i, b in enumerate(good.read_bytes()))),
    }
    if name == "none_path":
        target, exp = None, "TypeError"
    elif name == "int_path":
        target, exp = 12345, "error"
    elif name == "dir_path":
        target, exp = tmp_path, "ValueError"
    elif name == "missing":
        with pytest.raises(FileNotFoundError):
            salnp.load(tmp_path / "nope.npz")
        return
    elif name == "training_ckpt":
        ck = tmp_path / "ck.npz"
        salnp.fit(salnp.models.resnet(8, 2, "cl", num_classes=4), _tiny_data(), epochs=1,
                  progress=False, checkpoint=ck)
        assert salnp.load(ck).config["width"] == 2      # a training checkpoint loads as a net
        return
    elif name.startswith("save_"):
        net = salnp.models.resnet(8, 2, "cl", num_classes=4)
        args = {"save_none_net": (None, tmp_path / "s.npz"), "save_none_path": (net, None),
                "save_int_path": (net, 3.5)}[name]
        status, got = _outcome(lambda: salnp.save(*args))
        assert status != "ok"
        _check_error(got, "TypeError", ("net", "path", "save"))
        return
    else:
        makers[name]()
        target, exp = p, "ValueError"
    status, got = _outcome(lambda: salnp.load(target))
    assert status != "ok", f"load accepted {name}"
    _check_error(got, exp, (str(target), "path", "load"))


def test_corrupted_checkpoint_clear_error(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        salnp.load(p)
    net = salnp.models.resnet(20, 4, "cl")
    salnp.save(net, tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        salnp.load(tmp_path / "trunc.npz")


# ---------------------------------------------------------------- hostile files (issue 14)
# One row of test_hostile_matrix each: the call and everything that must not change.

def _write_zip(path, members, method=zipfile.ZIP_STORED):
    """members: list of (name, npy bytes) (duplicates allowed, as a hostile writer does)."""
    import io as _io
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # zipfile warns on duplicate names
        with zipfile.ZipFile(path, "w", method) as z:
            for name, data in members:
                z.writestr(name, data)


def _npy(a):
    import io as _io
    b = _io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def _npy_header_only(shape, dtype="<f4"):
    """An .npy header announcing shape, with no data."""
    import io as _io
    b = _io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False,
                                             "shape": tuple(shape)})
    return b.getvalue()


def _file_members(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _h_load_fifo(tmp_path):
    p = tmp_path / "fifo.npz"
    os.mkfifo(p)
    for fn in (salnp.load, salnp.export.load):
        _expect_load_error(p, "FIFO", fn=fn)


def _h_load_device(tmp_path):
    _expect_load_error(os.devnull, "character device")


def _h_save_fifo_refused(tmp_path):
    p = tmp_path / "fifo.npz"
    os.mkfifo(p)
    with _Alarm(20), pytest.raises(ValueError, match="FIFO"):
        salnp.save(_small(), p)
    assert stat.S_ISFIFO(os.lstat(p).st_mode)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def _h_save_device_refused(tmp_path):
    p = tmp_path / "null"
    try:
        os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # a /dev/null of our own
    except PermissionError:
        p = os.devnull                                          # not root: the real one
    before = os.lstat(p)
    with pytest.raises(ValueError, match="character device"):
        salnp.save(_small(), p)
    after = os.lstat(p)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    net = _small()
    inf = salnp.export(net.eval())
    with pytest.raises(ValueError, match="character device"):
        inf.save(p)
    assert stat.S_ISCHR(os.lstat(p).st_mode)


def _h_save_symlink_writes_through(tmp_path):
    real = tmp_path / "real.npz"
    link = tmp_path / "link.npz"
    salnp.save(_small(seed=1), real)
    os.chmod(real, 0o640)
    os.symlink(real.name, link)
    net = _small(seed=2)
    salnp.save(net, link)
    assert os.path.islink(link) and os.readlink(link) == real.name
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640      # mode kept
    np.testing.assert_array_equal(salnp.load(real).arena.params, net.arena.params)
    dangling = tmp_path / "dangling.npz"
    os.symlink("target-to-be.npz", dangling)
    salnp.save(net, dangling)
    assert os.path.islink(dangling) and (tmp_path / "target-to-be.npz").is_file()
    fifo_link = tmp_path / "fifolink.npz"
    os.mkfifo(tmp_path / "f")
    os.symlink("f", fifo_link)
    with _Alarm(20), pytest.raises(ValueError, match="FIFO"):
        salnp.save(net, fifo_link)
    assert os.path.islink(fifo_link)


def _h_beta_saved(tmp_path):
    net = _small("sal")
    net.beta = 37.5
    p = tmp_path / "b.npz"
    salnp.save(net, p)
    got = salnp.load(p)
    assert got.beta == 37.5
    x = _f((2, 3, 8, 8), seed=40)
    np.testing.assert_array_equal(got.forward(x, train=False), net.forward(x, train=False))
    # a file from before beta was stored: loads with the documented default 1.0
    d = _members(p)
    c = json.loads(str(d["__config__"]))
    del c["beta"]
    d["__config__"] = np.array(json.dumps(c))
    old = tmp_path / "old.npz"
    np.savez(old, **d)
    assert salnp.load(old).beta == 1.0
    for bad in (-1.0, "x", None, True, float("nan")):
        c["beta"] = bad
        d["__config__"] = np.array(json.dumps(c))
        np.savez(old, **d)
        _expect_load_error(old, "beta")


def _h_duplicate_member(tmp_path):
    good = _good_file(tmp_path)
    m = _file_members(good)
    bias = [x for x in m if x[0] == "linear.bias.npy"][0]
    p = tmp_path / "dup.npz"
    _write_zip(p, m + [(bias[0], _npy(np.full(4, 7.0, np.float32)))])
    _expect_load_error(p, "duplicate member 'linear.bias.npy'")


def _h_foreign_member(tmp_path):
    p = tmp_path / "extra.npz"
    _write_zip(p, _file_members(_good_file(tmp_path)) + [("notes.txt", b"hi")])
    _expect_load_error(p, "notes.txt")


def _h_unsupported_compression(tmp_path):
    p = tmp_path / "bz.npz"
    _write_zip(p, _file_members(_good_file(tmp_path)), zipfile.ZIP_BZIP2)
    _expect_load_error(p, "compression method")


def _h_corrupt_deflate(tmp_path):
    good = _good_file(tmp_path)
    p = tmp_path / "deflate.npz"
    _write_zip(p, _file_members(good), zipfile.ZIP_DEFLATED)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("conv1.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2, start + min(info.compress_size, 40)):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    _expect_load_error(p, "conv1.weight")


def _h_npz_bomb_member(tmp_path):
    """A member whose header announces 2**26 floats (256 MB of zeros, deflated to ~250 kB):
    refused from its header (shape != the config's), before its data is decompressed."""
    good = _good_file(tmp_path)
    p = tmp_path / "bomb.npz"
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in m:
            z.writestr(name, data)
        with z.open("linear.bias.npy", "w", force_zip64=True) as f:
            f.write(_npy_header_only((2**26,)))
            chunk = bytes(1 << 22)
            for _ in range(64):
                f.write(chunk)
    assert p.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        _expect_load_error(p, "linear.bias has shape (67108864,), expected (4,)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MiB while refusing the bomb"


def _h_lying_member_size(tmp_path):
    """A stored member whose header announces more data than the member holds, and a
    header whose size disagrees with the zip directory: refused before reading."""
    good = _good_file(tmp_path)
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    p = tmp_path / "lie.npz"
    _write_zip(p, m + [("linear.bias.npy", _npy_header_only((4,)) + b"\0" * 8)])
    _expect_load_error(p, "linear.bias")


def _h_config_bomb_expansion(tmp_path):
    """An SL file whose config asks for expansion 1000 (a network of gigabytes) with the
    small arrays of expansion 1: refused before any network is built."""
    p = tmp_path / "sl.npz"
    salnp.save(_small("sl"), p)
    d = _members(p)
    c = json.loads(str(d["__config__"]))
    c["model"]["expansion"] = 1000
    d["__config__"] = np.array(json.dumps(c))
    np.savez(p, **d)
    tracemalloc.start()
    try:
        _expect_load_error(p, "does not match the arrays")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def _h_config_deep_nesting(tmp_path):
    d = _members(_good_file(tmp_path))
    d["__config__"] = np.array('{"model": ' + "[" * 200000 + "]" * 200000 + "}")
    p = tmp_path / "deep.npz"
    np.savez(p, **d)
    _expect_load_error(p, "config")


def _h_metadata_wrong_types(tmp_path):
    good = _good_file(tmp_path)
    edits = {"__kind__": np.array([1, 2]), "__format__": np.array("1"),
             "__config__": np.array(3.5)}
    for k, v in edits.items():
        d = _members(good)
        d[k] = v
        p = tmp_path / f"meta{k}.npz"
        np.savez(p, **d)
        _expect_load_error(p, k if k != "__format__" else "format")
    d = _members(good)
    d["__config__"] = np.array("[1, 2]")
    np.savez(p, **d)
    _expect_load_error(p, "config")


def _h_config_model_garbage(tmp_path):
    good = _good_file(tmp_path)
    for model in ({"width": "x"}, {"depth": 2**80, "width": 2, "in_channels": 3,
                                   "num_classes": 4}, {"depth": None}, {}):
        d = _members(good)
        d["__config__"] = np.array(json.dumps({"model": model}))
        p = tmp_path / "garbage.npz"
        np.savez(p, **d)
        _expect_load_error(p)


def _h_object_and_structured_members(tmp_path):
    good = _good_file(tmp_path)
    m = [x for x in _file_members(good) if x[0] != "linear.bias.npy"]
    for dt in ("|O", [("a", "<f4")], "<c8"):
        p = tmp_path / "obj.npz"
        import io as _io
        b = _io.BytesIO()
        np.lib.format.write_array_header_1_0(b, {"descr": dt if isinstance(dt, str) else dt,
                                                 "fortran_order": False, "shape": (4,)})
        _write_zip(p, m + [("linear.bias.npy", b.getvalue() + b"\0" * 64)])
        _expect_load_error(p, "linear.bias")


HOSTILE = {k[3:]: v for k, v in sorted(globals().items()) if k.startswith("_h_")}
HOSTILE_ROWS = list(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_matrix(name, tmp_path):
    HOSTILE[name](tmp_path)
