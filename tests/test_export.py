"""salnp.export: the exported network equals the training network in eval + hard mode,
for every layer type, strides 1 and 2, pruned slices, ASL rounding; save/load; bad input, the
bad-input matrix of export, and hostile exported files (export.load) and networks (NaN
weights refused)."""
import json

import numpy as np
import pytest

import salnp
from conftest import assert_close
from hostile import XN, _check_error, _expect_load_error, _members, _outcome, _small

CASES = [
    dict(layer="cl", width=8),
    dict(layer="sal", width=8),
    dict(layer="sal", width=8, shared=True),
    dict(layer="sl", width=8, expansion=3),
    dict(layer="asl", width=8, expansion=2),
    dict(layer="asl-post", width=8, expansion=2),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def _prepare(net, rng, x, beta=30.0):
    """Non-trivial BN (random gamma/beta, running stats from training-mode forwards),
    integer ASL offsets set by hand (export rounds them: exact only for integers)."""
    for name, p in net.named_parameters():
        if name.endswith("shift.shift"):
            p[...] = rng.integers(-2, 3, p.shape)
        elif ".bn" in name or name.startswith("bn") or name.endswith("shortcut.1.weight") \
                or name.endswith("shortcut.1.bias"):
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    net.beta = beta
    for _ in range(3):
        net.forward(x, train=True)
    rv = [b for n, b in net.named_buffers() if n.endswith("running_var")]
    assert all(np.abs(v - 1).max() > 1e-3 for v in rv)   # the statistics moved


def _close(got, ref, what):
    scale = float(np.abs(ref).max())
    assert_close(got, ref, atol=1e-4 * scale, rtol=1e-4, what=what)


@pytest.mark.parametrize("cfg", CASES, ids=ids)
def test_export_equals_hard_eval(cfg, isa, rng):
    net = salnp.models.resnet(20, seed=int(rng.integers(1 << 30)), **cfg)
    x = rng.standard_normal((6, 3, 32, 32), dtype=np.float32)
    _prepare(net, rng, x)
    inf = salnp.export(net)
    ref = net.forward(x, train=False, hard=True)
    _close(inf.forward(x), ref, f"{cfg} exported logits")
    _close(inf.forward(x[:1]), ref[:1], f"{cfg} batch 1")    # buffers reused at a smaller batch
    # odd sizes: stride 2 on odd extents, different engines per input size
    x2 = rng.standard_normal((3, 3, 19, 23), dtype=np.float32)
    _close(inf.forward(x2), net.forward(x2, train=False, hard=True), f"{cfg} 19x23")
    # the inference program has no BN and the export did not touch the network
    assert net.training and np.isfinite(inf.weights).all()
    if cfg["layer"] == "sal" and not cfg.get("shared"):
        assert len(inf.pairs) > 0 and "sal_gather" in {r["type"] for r in inf.count().rows}
    if cfg.get("shared"):
        assert "sal_shift" in {r["type"] for r in inf.count().rows}


def test_soft_mode_differs_so_the_comparison_is_meaningful(rng):
    net = salnp.models.resnet(20, 8, "sal", seed=1)
    x = rng.standard_normal((2, 3, 16, 16), dtype=np.float32)
    _prepare(net, rng, x, beta=2.0)
    soft = net.forward(x, train=False, hard=False)
    assert np.abs(salnp.export(net).forward(x) - soft).max() > 1e-3


@pytest.mark.parametrize("trial", range(3))
def test_random_small_configs(trial, rng):
    layer = ["sal", "sal", "cl", "sl", "asl"][int(rng.integers(5))]
    cfg = dict(depth=int(rng.choice([8, 14])), width=int(rng.integers(3, 12)), layer=layer,
               shared=bool(layer == "sal" and rng.integers(2)), in_channels=int(rng.integers(1, 4)),
               num_classes=int(rng.integers(2, 12)), expansion=int(rng.integers(1, 4)))
    if layer in ("cl", "sal"):
        cfg["expansion"] = 1
    print("config", cfg)
    net = salnp.models.resnet(**cfg, seed=int(rng.integers(1 << 30)))
    h, w = int(rng.integers(5, 30)), int(rng.integers(5, 30))
    x = rng.standard_normal((int(rng.integers(1, 6)), cfg["in_channels"], h, w), dtype=np.float32)
    _prepare(net, rng, x, beta=float(rng.uniform(3, 60)))
    inf = salnp.export(net)
    _close(inf.forward(x), net.forward(x, train=False, hard=True), f"{cfg} {h}x{w}")


@pytest.mark.parametrize("shared", [False, True])
def test_pruned_slices_are_dropped(shared, rng):
    net = salnp.models.resnet(20, 8, "sal", shared=shared, seed=3)
    x = rng.standard_normal((4, 3, 16, 16), dtype=np.float32)
    _prepare(net, rng, x, beta=30.0)
    logits = [(n, p) for n, p in net.named_parameters() if n.endswith("logits")]
    for n, p in logits:                     # std 0: uniform attention, no p > 0.5: pruned
        flat = p.reshape(-1, 9)
        flat[rng.random(len(flat)) < 0.3] = 0.5
    n0, p0 = logits[0]
    p0[...] = 0.5                           # a layer with every slice pruned: output = bias
    inf = salnp.export(net)
    _close(inf.forward(x), net.forward(x, train=False, hard=True), "pruned")
    layers = {d["name"]: d for d in inf.info["sal_layers"]}
    first = layers[n0.rsplit(".", 1)[0]]
    assert first["kept"] == 0
    kept = sum(d["kept"] for d in layers.values())
    assert 0 < kept < sum(d["slices"] for d in layers.values())
    if not shared:
        assert len(inf.pairs) == kept       # one pair per kept slice, nothing else
    else:
        shifts = [r for r in inf.count().rows if r["type"] == "sal_shift"]
        assert sum(r["out_shape"][0] for r in shifts) == kept


def test_asl_rounding_reported(rng):
    net = salnp.models.resnet(20, 8, "asl", expansion=2, seed=4)
    x = rng.standard_normal((8, 3, 16, 16), dtype=np.float32)
    _prepare(net, rng, x)
    shifts = [p for n, p in net.named_parameters() if n.endswith("shift.shift")]
    for p in shifts:
        p[...] = rng.uniform(-1.5, 1.5, p.shape).astype(np.float32)
    inf = salnp.export(net)
    real = net.forward(x, train=False, hard=True)
    got = inf.forward(x)
    worst = max(float(np.abs(p - np.rint(p)).max()) for p in shifts)
    assert inf.info["asl_max_rounding"] == pytest.approx(worst, abs=1e-6)
    assert 0.3 < worst <= 0.5
    change = float(np.abs(got - real).max() / np.abs(real).max())
    agree = float((got.argmax(1) == real.argmax(1)).mean())
    print(f"ASL rounding: max |offset - round| {worst:.3f}, max logit change {change:.3g} "
          f"(relative), prediction agreement {agree:.2f}")
    assert change > 1e-4                    # rounding is visible ...
    for p in shifts:                        # ... and is exactly what the export did
        p[...] = np.rint(p)
    _close(got, net.forward(x, train=False, hard=True), "rounded ASL")


def test_save_load_roundtrip(tmp_path, rng):
    net = salnp.models.resnet(20, 8, "sal", seed=5)
    x = rng.standard_normal((3, 3, 32, 32), dtype=np.float32)
    _prepare(net, rng, x)
    inf = salnp.export(net)
    inf.save(tmp_path / "inf.npz")
    inf2 = salnp.export.load(tmp_path / "inf.npz")
    np.testing.assert_array_equal(inf.forward(x), inf2.forward(x))
    assert inf2.names == inf.names and inf2.config == inf.config
    assert inf2.info["beta"] == inf.info["beta"]
    assert inf2.count().to_dict() == inf.count().to_dict()
    with np.load(tmp_path / "inf.npz", allow_pickle=False) as z:
        assert int(z["__format__"]) == salnp.io.FORMAT and str(z["__kind__"]) == "inference"


def test_load_bad_files(tmp_path):
    net = salnp.models.resnet(20, 4, "cl")
    salnp.save(net, tmp_path / "train.npz")
    with pytest.raises(ValueError, match="expected a 'inference'"):
        salnp.export.load(tmp_path / "train.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        salnp.export.load(tmp_path / "junk.npz")
    inf = salnp.export(net)
    bad = salnp.export.InferenceNet(inf.program, inf.weights[:-5], inf.config, inf.info)
    bad.save(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="short.npz.*arena"):
        salnp.export.load(tmp_path / "short.npz")


def test_threads_agree(rng):
    net = salnp.models.resnet(20, 8, "sal", seed=6)
    x = rng.standard_normal((5, 3, 32, 32), dtype=np.float32)
    _prepare(net, rng, x)
    inf = salnp.export(net)
    salnp.set_num_threads(1)
    a = inf.forward(x)
    salnp.set_num_threads(2)
    b = inf.forward(x)
    _close(a, b, "1 vs 2 threads")
    x0 = x.copy()
    inf.forward(x)
    np.testing.assert_array_equal(x, x0)           # the input is not written


def test_bad_input():
    net = salnp.models.resnet(20, 4, "sal")
    with pytest.raises(TypeError, match="salnp network"):
        salnp.export("not a network")
    with pytest.raises(TypeError, match="salnp network"):
        salnp.export(net.state_dict())
    with pytest.raises(ValueError, match="beta"):
        salnp.export(net, beta=float("nan"))
    inf = salnp.export(net)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C=3, H, W\)"):
        inf.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="real floating-point"):
        inf.forward(np.zeros((2, 3, 8, 8), np.int32))
    with pytest.raises(ValueError, match="N, H, W >= 1"):
        inf.forward(np.zeros((1, 3, 0, 8), np.float32))


# ---------------------------------------------------------------- the bad-input matrix
# export with one argument replaced by a bad or unusual value (tests/hostile.py: the
# outcomes); InferenceNet.forward's rows are in test_models.py::test_forward_matrix.

EXPORT_ROWS = [("beta", float("nan"), "ValueError"), ("beta", float("inf"), "ValueError"),
               ("beta", -1.0, "ValueError"), ("beta", "a", "error"), ("beta", 1j, "error"),
               ("beta", 1e300, "ok"), ("beta", np.float32(3.0), "ok"), ("beta", 0, "ValueError"),
               ("net", None, "TypeError"), ("net", "x", "TypeError"), ("net", {}, "TypeError"),
               ("net_beta", float("nan"), "ValueError")]


@pytest.mark.parametrize("row", EXPORT_ROWS, ids=[f"export-{r[0]}-{i}" for i, r in enumerate(EXPORT_ROWS)])
def test_export_matrix(row):
    arg, v, exp = row
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=3)
    kw = dict(net=net)
    if arg == "net_beta":       # refused where it is set, before anything uses it
        with pytest.raises(ValueError, match="net.beta=nan: must be finite and > 0"):
            net.beta = v
        return
    kw[arg] = v
    status, got = _outcome(lambda: salnp.export(**kw))
    if status == "ok":
        assert exp == "ok", f"export accepted {arg}={v!r}"
        assert np.all(np.isfinite(got.forward(XN)))
        return
    _check_error(got, exp, (arg, "export"))


# ---------------------------------------------------------------- hostile files (issue 14)
# One row of test_hostile_matrix each: the call and everything that must not change.

def _h_load_dir_export(tmp_path):
    _expect_load_error(tmp_path, "directory", fn=salnp.export.load)


IFIELDS_IOFF = salnp.program.FIELDS.index("ioff")


IFIELDS_P0 = salnp.program.FIELDS.index("p0")


def _h_export_load_hostile(tmp_path):
    inf = salnp.export(_small("sl").eval())
    shift_op = int(np.flatnonzero(inf.ops[:, 0] == salnp.program.SHIFT)[0])
    good = tmp_path / "inf.npz"
    inf.save(good)
    d0 = _members(good)
    cfg0 = json.loads(str(d0["__config__"]))
    cases = {
        "names_not_list": lambda d, c: c.__setitem__("names", "abc"),
        "names_short": lambda d, c: c.__setitem__("names", c["names"][:-1]),
        "model_missing": lambda d, c: c.pop("model"),
        "info_list": lambda d, c: c.__setitem__("info", [1]),
        "ops_float": lambda d, c: d.__setitem__("ops", d["ops"].astype(np.float64)),
        "weights_f64": lambda d, c: d.__setitem__("weights", d["weights"].astype(np.float64)),
        "weights_nan": lambda d, c: d["weights"].__setitem__(0, np.nan),
        "pairs_3col": lambda d, c: d.__setitem__("pairs", np.zeros((2, 3), np.int32)),
        "extra_array": lambda d, c: d.__setitem__("evil", np.zeros(3)),
        "ops_missing": lambda d, c: d.pop("ops"),
        "ioff_huge": lambda d, c: d["ops"].__setitem__((shift_op, IFIELDS_IOFF), 2**63 - 1),
        "p0_overflow": lambda d, c: d["ops"].__setitem__((0, IFIELDS_P0), 2**63 - 5),
        "inp_negative": lambda d, c: d["ops"].__setitem__((0, 1), -3),
        "channels_huge": lambda d, c: d["channels"].__setitem__(1, 2**40),
    }
    for name, edit in cases.items():
        d = {k: v.copy() for k, v in d0.items()}
        c = json.loads(json.dumps(cfg0))
        edit(d, c)
        d["__config__"] = np.array(json.dumps(c))
        p = tmp_path / f"{name}.npz"
        np.savez(p, **d)
        try:
            _expect_load_error(p, fn=salnp.export.load)
        except BaseException as e:
            raise AssertionError(f"export.load case {name}: {e}") from e


def _h_export_nonfinite_refused(tmp_path):
    for layer in ("cl", "sal", "sl"):
        for what in ("weight_nan", "mean_inf", "var_negative"):
            net = _small(layer)
            if what == "weight_nan":
                net.conv1.weight[0, 0, 0, 0] = np.nan
                key = "conv1.weight"
            elif what == "mean_inf":
                net.layer2[0].bn1.running_mean[0] = np.inf
                key = "layer2.0.bn1.running_mean"
            else:
                net.bn1.running_var[1] = -0.5
                key = "bn1.running_var"
            with pytest.raises(ValueError, match=key.replace(".", r"\.")):
                salnp.export(net.eval())
            with pytest.raises(ValueError, match=key.replace(".", r"\.")):
                salnp.save(net, tmp_path / "nan.npz")
            assert not (tmp_path / "nan.npz").exists()


HOSTILE = {k[3:]: v for k, v in sorted(globals().items()) if k.startswith("_h_")}
HOSTILE_ROWS = list(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_matrix(name, tmp_path):
    HOSTILE[name](tmp_path)
