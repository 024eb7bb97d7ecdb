"""salnp.export.to_onnx: onnxruntime runs the ONNX graph of every exported layer type and
its logits equal InferenceNet.forward (<= 1e-5 relative to the largest logit) at batch 1
and 7, 28x28 (1 channel) and 32x32 (3 channels), in every graph form; the graph passes
onnx.checker; bad arguments name themselves.  Skipped only when onnx / onnxruntime (the
`onnx` extra, part of `test`) are absent."""
import zlib

import numpy as np
import pytest

import salnp
from conftest import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CASES = [
    dict(layer="cl"),
    dict(layer="sal"),
    dict(layer="sal", shared=True),
    dict(layer="sl", expansion=3),
    dict(layer="asl", expansion=2),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def _net(cfg, in_channels, seed, beta=30.0, width=6):
    """A small trained-looking network: random BN, running stats moved, integer ASL offsets
    (|offset| up to 2), SAL logits sharp enough that most slices survive binarisation and
    some do not."""
    rng = np.random.default_rng(seed)
    net = salnp.models.resnet(8, width, in_channels=in_channels, seed=seed % 2**30, **cfg)
    for name, p in net.named_parameters():
        if name.endswith("shift.shift"):
            p[...] = rng.integers(-2, 3, p.shape)
        elif ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    x = rng.standard_normal((8, in_channels, 20, 20), dtype=np.float32)
    for _ in range(3):
        net.forward(x, train=True)
    net.beta = beta
    if cfg["layer"] == "sal":   # one slice with a uniform attention (std 0): always dropped
        net.layer1[0].conv1.logits[0, 0] = 0.5
    return net


def _session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _close(got, ref, what):
    assert_close(got, ref, atol=1e-5 * float(np.abs(ref).max()), rtol=1e-5, what=what)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("cfg", CASES, ids=ids)
def test_onnxruntime_equals_forward(cfg, size, tmp_path):
    cin = 1 if size == 28 else 3
    seed = _seed(ids(cfg), size)
    inf = salnp.export(_net(cfg, cin, seed))
    path = tmp_path / "net.onnx"
    model = salnp.export.to_onnx(inf, path, (cin, size, size))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert {n.domain for n in model.graph.node} <= {""}          # standard ops only
    assert model.opset_import[0].version == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for n in (1, 7):
        x = rng.standard_normal((n, cin, size, size), dtype=np.float32)
        got = sess.run(None, {"input": x})[0]
        _close(got, inf.forward(x), f"{cfg} {size}x{size} batch {n}")
    if cfg["layer"] == "sal":   # the case exercises pruning: some slices were dropped
        lay = inf.info["sal_layers"]
        assert 0 < sum(d["kept"] for d in lay) < sum(d["slices"] for d in lay)


@pytest.mark.parametrize("shift_form", ["conv", "slice"])
@pytest.mark.parametrize("gather_form", ["conv", "slice", "sum"])
@pytest.mark.parametrize("cfg", [dict(layer="sal"), dict(layer="sal", shared=True),
                                 dict(layer="asl", expansion=2)], ids=ids)
def test_every_graph_form_is_exact(cfg, shift_form, gather_form):
    seed = _seed(ids(cfg), shift_form, gather_form)
    inf = salnp.export(_net(cfg, 3, seed, beta=12.0))   # many dropped slices
    model = salnp.export.to_onnx(inf, None, (3, 32, 32), shift_form=shift_form,
                                 gather_form=gather_form)
    x = np.random.default_rng(seed).standard_normal((7, 3, 32, 32), dtype=np.float32)
    _close(_session(model).run(None, {"input": x})[0], inf.forward(x),
           f"{cfg} {shift_form}/{gather_form}")
    ops = {n.op_type for n in model.graph.node}
    if cfg["layer"] == "sal" and not cfg.get("shared") and gather_form == "conv":
        assert "Slice" not in ops and "Pad" not in ops
    if cfg.get("shared") or cfg["layer"] == "asl":
        assert ("Slice" in ops) == (shift_form == "slice")


def test_odd_sizes_fixed_batch_and_a_training_net():
    net = _net(dict(layer="sl", expansion=2), 2, _seed("odd"))
    inf = salnp.export(net)
    x = np.random.default_rng(1).standard_normal((3, 2, 19, 23), dtype=np.float32)
    for form in ("conv", "slice"):
        model = salnp.export.to_onnx(inf, None, (3, 2, 19, 23), shift_form=form)
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [3, 2, 19, 23]
        _close(_session(model).run(None, {"input": x})[0], inf.forward(x), f"19x23 {form}")
    # a training network is exported first (with its beta); the method form is the same
    model = salnp.export.to_onnx(net, None, (2, 19, 23))
    _close(_session(model).run(None, {"input": x})[0], inf.forward(x), "from the training net")
    m2 = inf.to_onnx(None, (2, 19, 23))
    assert m2.graph == model.graph


@pytest.mark.parametrize("opset", [13, 21])
def test_other_opsets(opset):
    inf = salnp.export(_net(dict(layer="sal", shared=True), 3, _seed("opset", opset)))
    for form in ("conv", "slice"):
        model = inf.to_onnx(None, (3, 16, 16), opset=opset, shift_form=form)
        assert model.opset_import[0].version == opset
        x = np.random.default_rng(opset).standard_normal((3, 3, 16, 16), dtype=np.float32)
        _close(_session(model).run(None, {"input": x})[0], inf.forward(x), f"opset {opset} {form}")


def test_every_slice_pruned_layer():
    """A shared SAL layer whose slices are all dropped becomes its bias (a zero conv)."""
    net = _net(dict(layer="sal", shared=True), 3, _seed("pruned"))
    net.layer2[0].conv2.logits[...] = 0.0       # std 0: uniform p = 1/9 < 0.5 everywhere
    inf = salnp.export(net)
    assert any(d["kept"] == 0 for d in inf.info["sal_layers"])
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    _close(_session(inf.to_onnx()).run(None, {"input": x})[0], inf.forward(x), "pruned layer")


def test_bad_arguments(tmp_path):
    inf = salnp.export(_net(dict(layer="cl"), 3, 5))
    with pytest.raises(TypeError, match="inf must be"):
        salnp.export.to_onnx("net", tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="input_shape"):
        salnp.export.to_onnx(inf, None, (1, 32, 32))
    with pytest.raises(ValueError, match="batch"):
        salnp.export.to_onnx(inf, None, (0, 3, 32, 32))
    with pytest.raises(ValueError, match="shift_form"):
        salnp.export.to_onnx(inf, None, shift_form="roll")
    with pytest.raises(ValueError, match="gather_form"):
        salnp.export.to_onnx(inf, None, gather_form="x")
    with pytest.raises(ValueError, match="opset"):
        salnp.export.to_onnx(inf, None, opset=7)
    assert not (tmp_path / "a.onnx").exists()


# ---- offsets beyond the input, and values int32 cannot hold (issue 23) ----------------
def _far_asl(seed):
    """An ASNet whose first ASL layer has integer offsets far beyond any input: 3000 px,
    2**32 (wrapped to 0 by an int32 cast before) and 1e30 (float32 holds them all)."""
    net = _net(dict(layer="asl", expansion=2), 3, seed)
    sh = net.layer1[0].shift.shift
    for c, off in enumerate([(3000, 0), (-3000, 2), (2.0**32, 0), (0, -1e30), (1e30, 1e30),
                             (-2.0**31, 1)]):
        sh[c] = off
    return net


def test_far_active_shifts_export_exactly():
    net = _far_asl(_seed("far"))
    inf = salnp.export(net)
    assert inf.info["asl_max_rounding"] == 0.0
    first = inf.shifts[:6]
    assert np.all(np.abs(first[:, 1:]).max(1) >= 3000), first       # none wrapped to 0
    for shape in ((3, 8, 8), (3, 32, 32), (3, 5, 41)):
        x = np.random.default_rng(shape[1]).standard_normal((2, *shape), dtype=np.float32)
        ref = net.forward(x, train=False)
        _close(inf.forward(x), ref, f"export {shape}")


@pytest.mark.parametrize("shift_form", ["conv", "slice"])
def test_far_shifts_make_small_exact_onnx_graphs(shift_form):
    """A 3000-px offset on an 8x8 input built a 6001x6001 one-hot kernel per channel
    (a 1.7 GB graph that crashed onnx); beyond the input a shift is all zeros: the graph
    clamps it exactly and stays small."""
    inf = salnp.export(_far_asl(_seed("far onnx")))
    for shape in ((3, 8, 8), (3, 13, 9)):
        model = salnp.export.to_onnx(inf, None, shape, shift_form=shift_form)
        size = sum(np.prod(t.dims) for t in model.graph.initializer)
        assert size < 200_000, size
        x = np.random.default_rng(3).standard_normal((2, *shape), dtype=np.float32)
        _close(_session(model).run(None, {"input": x})[0], inf.forward(x), f"{shape}")


def test_far_shifts_in_torch():
    torch = pytest.importorskip("torch")
    import salnp.torch as st

    net = _far_asl(_seed("far torch"))
    inf = salnp.export(net)
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 9), dtype=np.float32)
    with torch.no_grad():
        got = st.to_torch(inf)(torch.from_numpy(x)).numpy()
        got_train = st.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    _close(got, inf.forward(x), "pruned form")
    _close(got_train, net.forward(x, train=False), "training form")


def test_values_int32_cannot_hold_are_refused():
    """A program's shift and pair rows are int32: a value beyond it (2**32) was wrapped
    (to 0) by the cast; it is refused, naming the table and the entry."""
    from salnp.program import Program

    inf = salnp.export(_net(dict(layer="sl", expansion=2), 3, _seed("int32")))
    for table in ("shifts", "pairs"):
        kw = dict(shifts=inf.shifts.astype(np.int64), pairs=inf.pairs.astype(np.int64))
        rows = kw[table] if len(kw[table]) else np.zeros((1, 4), np.int64)
        rows[0, -1] = 2**32
        kw[table] = rows
        with pytest.raises(ValueError, match=rf"Program: {table}\[0, {rows.shape[1] - 1}\] = "
                                             r"4294967296: must fit int32"):
            Program.from_tables(inf.ops, inf.channels, kw["shifts"], kw["pairs"], inf.names)


def test_a_program_libsal_refuses_never_reaches_onnx():
    """A pair offset of 5 (outside 3x3) made to_onnx fail with an IndexError, and -4 made
    a silently wrong graph: such a program is refused when the network is made."""
    from salnp.program import Program

    inf = salnp.export(_net(dict(layer="sal"), 3, _seed("program")))
    for bad in (5, -4):
        pairs = inf.pairs.copy()
        pairs[0, 2] = bad
        prog = Program.from_tables(inf.ops, inf.channels, inf.shifts, pairs, inf.names)
        with pytest.raises(ValueError, match=r"pair 0 = \(.*\): needs"):
            salnp.export.to_onnx(salnp.export.InferenceNet(prog, inf.weights, inf.config), None)
