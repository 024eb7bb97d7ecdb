"""Whole networks against PyTorch twins: one training step, every gradient, the update; the
bad-input matrix of resnet, forward (soft, hard, exported), backward and load_state_dict;
hostile state (a refused state dict or NaN input leaves the network as it was)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import salnp
from conftest import assert_close
import torch_ref
from torch_ref import from_salnp
from hostile import (FLOAT_EQUIV, FLOAT_TYPEERR, XN, _check_error, _contig_equivalent, _f, _net,
                     _noncontig, _outcome, _same, _same_state, _small, _snap, _state_of, _with,
                     as_strided)

CASES = [
    dict(layer="cl", width=4),
    dict(layer="sal", width=4),
    dict(layer="sal", width=4, shared=True),
    dict(layer="sl", width=4, expansion=3),
    dict(layer="asl", width=4, expansion=2),
    dict(layer="asl-post", width=4, expansion=2),
]


def _batch(rng, n=3, c=3, h=32):
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_one_training_step_matches_torch(cfg, rng):
    beta = 3.0
    net = salnp.models.resnet(depth=20, seed=int(rng.integers(1 << 30)), **cfg)
    net.beta = beta
    if cfg["layer"] in ("asl", "asl-post"):   # move offsets off the integer grid, away from kinks
        for name, p in net.named_parameters():
            if name.endswith("shift.shift"):
                p[...] = rng.uniform(-1.4, 1.4, p.shape).round(1) + 0.05
    # The twin runs in float64.  A pre-ReLU value within float32 noise of 0 is a kink: the
    # gradient jumps there (seen: 2 % on the stem weights), so draw the batch until every
    # ReLU input is at least 1e-5 away from 0 in the reference.  The chance that a batch has
    # no such value falls with the number of ReLU inputs: at 32x32 it was ~10 % for SL e=3
    # and ~3 % for ASL e=2, so 20 draws often all failed and the last (kinked) batch was
    # used silently.  At 16x16 it is ~50 %; the test fails loudly if no batch qualifies.
    tnet = from_salnp(net, beta).double()
    margin = 0.0
    for _ in range(40):
        x, y = _batch(rng, h=16)
        torch_ref.RELU_MARGIN[0] = float("inf")
        with torch.no_grad():   # a copy: train-mode forwards move running statistics
            copy.deepcopy(tnet).train()(torch.tensor(x, dtype=torch.float64))
        margin = torch_ref.RELU_MARGIN[0]
        if margin > 1e-5:
            break
    assert margin > 1e-5, f"no batch in 40 keeps every ReLU input 1e-5 from 0 (last: {margin:.3g})"

    # ours: forward, loss, backward, SGD step
    logits = net.forward(x, train=True)
    loss = salnp.ops.cross_entropy(logits, y)
    net.zero_grad()
    net.backward(salnp.ops.cross_entropy_backward(logits, y))
    grads = {k: g.copy() for k, g in net.named_grads()}
    salnp.ops.sgd_step(net.arena.params, net.arena.grads, net.arena.momentum, 0.1, momentum=0.9,
                       weight_decay=5e-4, first_step=True)

    # torch
    tnet.train()
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tlogits = tnet(torch.tensor(x, dtype=torch.float64))
    tloss = F.cross_entropy(tlogits, torch.tensor(y, dtype=torch.long))
    opt.zero_grad()
    tloss.backward()
    tgrads = {k: p.grad.numpy().copy() for k, p in tnet.named_parameters()}
    opt.step()

    assert_close(logits, tlogits.detach().numpy(), atol=2e-4, rtol=2e-4, what="logits")
    assert abs(loss - tloss.item()) <= 1e-4 * (1 + abs(tloss.item()))
    assert set(grads) == set(tgrads)
    for k in grads:
        # gradients sum over N*H*W positions through 20 layers: float32 accumulation order
        # differs from torch's, so the tolerance scales with the gradient's own magnitude
        scale = float(np.abs(tgrads[k]).max()) + 1e-12
        assert_close(grads[k], tgrads[k], atol=2e-3 * scale + 1e-6, rtol=2e-3, what=f"grad {k}")
    tstate = tnet.state_dict()
    for k, v in net.state_dict().items():
        assert_close(v, tstate[k].numpy(), atol=1e-5, rtol=1e-4, what=f"updated {k}")


def test_eval_mode_and_hard_forward(rng):
    net = salnp.models.resnet(20, 8, "sal", seed=3)
    x, _ = _batch(rng, 3)
    for _ in range(2):
        net.forward(x, train=True)      # move the running statistics
    tnet = from_salnp(net, net.beta)
    tnet.eval()
    ref = tnet(torch.tensor(x)).detach().numpy()
    assert_close(net.forward(x, train=False), ref, atol=2e-4, rtol=2e-4, what="eval logits")
    # hard attention: binarised probabilities (p > 0.5) into the weights
    net.beta = 50.0
    hard = net.forward(x, train=False, hard=True)
    with torch.no_grad():
        for name, m in tnet.named_modules():
            if hasattr(m, "logits"):
                p = salnp.ops.sal_probs(m.logits.numpy(), 50.0, hard=True)
                m.weight.mul_(torch.tensor(p.reshape(p.shape[0], p.shape[1], 3, 3)))
                m.logits.zero_()
                m.logits[..., 0] = 1.0   # any logits: replaced by an identity attention below
        for name, m in tnet.named_modules():
            if hasattr(m, "logits"):
                m.forward = (lambda mm: lambda x: F.conv2d(x, mm.weight, stride=mm.stride, padding=1))(m)
        ref_hard = tnet(torch.tensor(x)).numpy()
    assert_close(hard, ref_hard, atol=2e-4, rtol=2e-4, what="hard logits")


def test_state_dict_names_and_roundtrip(tmp_path, rng):
    net = salnp.models.resnet(20, 4, "sal", seed=1)
    names = list(net.state_dict())
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer2.0.shortcut.0.weight" in names and "layer1.0.conv1.logits" in names
    assert "layer3.2.bn2.running_var" in names and names[-2:] == ["linear.weight", "linear.bias"] or \
        "linear.bias" in names
    x, _ = _batch(rng, 2)
    net.forward(x, train=True)
    salnp.save(net, tmp_path / "n.npz")
    net2 = salnp.load(tmp_path / "n.npz")
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(net.forward(x, train=False), net2.forward(x, train=False))


def test_parameter_counts():
    assert salnp.models.resnet(20, 16, "cl").num_parameters() == 272474
    assert salnp.models.resnet(20, 16, "sl", expansion=1).num_parameters() == 34906


def test_seed_reproducible_and_views_share_memory():
    a = salnp.models.resnet(20, 4, "sal", seed=7)
    b = salnp.models.resnet(20, 4, "sal", seed=7)
    c = salnp.models.resnet(20, 4, "sal", seed=8)
    np.testing.assert_array_equal(a.arena.params, b.arena.params)
    assert not np.array_equal(a.arena.params, c.arena.params)
    w = dict(a.named_parameters())["conv1.weight"]
    assert np.shares_memory(w, a.arena.params)


@pytest.mark.parametrize("kw,exc,frag", [
    (dict(layer="xyz"), ValueError, "layer='xyz'"),
    (dict(depth=21), ValueError, "depth=21"),
    (dict(width=0), ValueError, "width=0"),
    (dict(layer="cl", shared=True), ValueError, "shared=True"),
])
def test_resnet_bad_config(kw, exc, frag):
    with pytest.raises(exc, match=None) as info:
        salnp.models.resnet(**kw)
    assert frag in str(info.value)


def test_forward_bad_input():
    net = salnp.models.resnet(20, 4, "cl")
    with pytest.raises(ValueError, match=r"x must have shape \(N, C=3, H, W\)"):
        net.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="real floating-point"):
        net.forward(np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(RuntimeError, match="forward"):
        salnp.models.resnet(20, 4, "cl").backward(np.zeros((2, 10), np.float32))
    net.forward(np.zeros((2, 3, 8, 8), np.float32), train=True)
    with pytest.raises(ValueError, match="grad_logits"):
        net.backward(np.zeros((3, 10), np.float32))


# ---------------------------------------------------------------- the bad-input matrix
# resnet's arguments, forward (soft, hard, and the exported network's), backward and
# load_state_dict, each with one argument replaced by a bad or unusual value; the variant
# families and their expected outcomes are in tests/hostile.py.

def _resnet_rows():
    base = dict(depth=8, width=2, layer="cl", shared=False, expansion=1, num_classes=4,
                in_channels=3, seed=0)
    bad = {
        "depth": [(0, "ValueError"), (7, "ValueError"), (-4, "ValueError"), (9.0, "ValueError"),
                  ("20", "ValueError"), (None, "ValueError"), (2**70, "huge"),
                  (np.int64(8), "ok")],
        "width": [(0, "ValueError"), (-1, "ValueError"), (1.5, "ValueError"), (None, "ValueError"),
                  ("2", "ValueError"), (2**40, "huge"), (2**70, "huge"), (np.int32(2), "ok")],
        "layer": [("conv", "ValueError"), (None, "ValueError"), (1, "ValueError"),
                  ("SAL", "ValueError")],
        "num_classes": [(0, "ValueError"), (-3, "ValueError"), (2.0, "ValueError"),
                        (2**62, "huge")],
        "in_channels": [(0, "ValueError"), (None, "ValueError"), (2**62, "huge")],
        "expansion": [(0, "ValueError"), (-1, "ValueError"), (float("nan"), "ValueError"),
                      (float("inf"), "ValueError"), ("1", "ValueError"), (None, "ValueError"),
                      (1e30, "huge")],
        "shared": [(True, "ValueError")],            # shared needs layer="sal"
        "seed": [(-1, "ValueError"), (1.5, "error"), ("a", "error"), (None, "ValueError"),
                 (2**64, "ok")],
    }
    rows = []
    for arg, vals in bad.items():
        for i, (v, exp) in enumerate(vals):
            layer = "sl" if arg == "expansion" else base["layer"]
            rows.append((arg, i, v, exp, layer))
    return rows


RESNET_ROWS = _resnet_rows()


@pytest.mark.parametrize("row", RESNET_ROWS, ids=[f"resnet-{r[0]}-{r[1]}" for r in RESNET_ROWS])
def test_resnet_args_matrix(row):
    arg, _, v, exp, layer = row
    kw = dict(depth=8, width=2, layer=layer, num_classes=4, in_channels=3, seed=0)
    kw[arg] = v
    status, got = _outcome(lambda: salnp.models.resnet(**kw))
    if exp == "ok":
        assert status == "ok", got
        return
    assert status != "ok", f"resnet accepted {arg}={v!r}"
    _check_error(got, exp, (arg, "resnet"))


def _forward_rows():
    rows = [(k, "equivalent") for k in FLOAT_EQUIV] + [(k, "TypeError") for k in FLOAT_TYPEERR]
    rows += [("extra_dim", "ValueError"), ("flattened", "ValueError"), ("zero_size", "ValueError"),
             ("zero_hw", "ValueError"), ("wrong_channels", "ValueError"), ("scalar", "ValueError"),
             ("tiny_1x1", "ok"), ("huge_view", "huge"), ("huge_view_hw", "huge"),
             ("odd_7x9", "ok")]
    return rows


def _forward_value(name, x):
    special = {
        "extra_dim": lambda: x[None], "flattened": lambda: x.reshape(-1),
        "zero_size": lambda: x[:0], "zero_hw": lambda: x[:, :, :0],
        "wrong_channels": lambda: x[:, :2], "scalar": lambda: 1.5,
        "tiny_1x1": lambda: x[:, :, :1, :1], "odd_7x9": lambda: np.ones((1, 3, 7, 9), np.float32),
        "huge_view": lambda: as_strided(x, (2**40,) + x.shape[1:], (0,) + x.strides[1:]),
        "huge_view_hw": lambda: as_strided(x, (1, 3, 2**20, 2**20), (0, x.strides[1], 0, 0)),
    }
    if name in special:
        return special[name]()
    return {**FLOAT_EQUIV, **FLOAT_TYPEERR}[name](x)


FORWARD_ROWS = [(target, n, e) for target in ("ResNet.forward", "ResNet.forward_hard",
                                               "InferenceNet.forward")
                for n, e in _forward_rows()]


@pytest.mark.parametrize("row", FORWARD_ROWS, ids=[f"{r[0]}-{r[1]}" for r in FORWARD_ROWS])
def test_forward_matrix(row):
    target, name, exp = row
    net = _net("sal")
    if target == "InferenceNet.forward":
        f = salnp.export(net).forward
    else:
        hard = target.endswith("hard")
        f = lambda x: net.forward(x, train=False, hard=hard)  # noqa: E731
    x = _forward_value(name, XN)
    snap = _snap(x)
    status, got = _outcome(lambda: f(x))
    if snap is not None:
        np.testing.assert_array_equal(x, snap)
    if exp == "equivalent":
        ref_status, ref = _outcome(lambda: f(_contig_equivalent(x, "F")))
        assert status == ref_status, (got, ref)
        if status == "ok":
            _same(got, ref)
        return
    if exp == "ok":
        assert status == "ok", got
        assert got.shape == (np.shape(x)[0], 4)
        return
    assert status != "ok", f"forward accepted {name}"
    _check_error(got, exp, ("x", "forward"))


BACKWARD_ROWS = [(k, "equivalent") for k in FLOAT_EQUIV if k != "broadcast0"] + \
    [(k, "TypeError") for k in FLOAT_TYPEERR] + \
    [("extra_dim", "ValueError"), ("transposed", "ValueError"), ("zero_size", "ValueError"),
     ("wrong_batch", "ValueError"), ("scalar", "ValueError")]


@pytest.mark.parametrize("row", BACKWARD_ROWS, ids=[f"ResNet.backward-{r[0]}" for r in BACKWARD_ROWS])
def test_backward_matrix(row):
    name, exp = row
    net = salnp.models.resnet(8, 2, "sal", num_classes=4, seed=3)
    net.forward(XN, train=True)
    g = _f((2, 4), seed=31)
    special = {"extra_dim": lambda: g[None], "transposed": lambda: g.T.copy(),
               "zero_size": lambda: g[:0], "wrong_batch": lambda: g[:1], "scalar": lambda: 1.0}
    v = special[name]() if name in special else {**FLOAT_EQUIV, **FLOAT_TYPEERR}[name](g)

    def grads_of(value):
        net.zero_grad()
        net.backward(value)
        return net.arena.grads.copy()
    status, got = _outcome(lambda: grads_of(v))
    if exp == "equivalent":
        ref_status, ref = _outcome(lambda: grads_of(_contig_equivalent(v, "F")))
        assert status == ref_status == "ok", (got, ref)
        _same(got, ref)
        return
    assert status != "ok", f"backward accepted {name}"
    _check_error(got, exp, ("grad_logits", "backward"))


def _state_rows():
    return [("int_values", "ok"), ("float64", "ok"), ("list", "ok"), ("bigendian", "ok"),
            ("noncontig", "ok"), ("complex", "TypeError"), ("object", "TypeError"),
            ("str", "TypeError"), ("None_value", "ValueError"), ("wrong_shape", "ValueError"),
            ("transposed", "ValueError"), ("nan", "ValueError"), ("inf", "ValueError"),
            ("missing_key", "KeyError"), ("extra_key", "KeyError"), ("not_a_dict", "TypeError"),
            ("None_state", "TypeError"), ("huge_view", "ValueError")]


STATE_ROWS = _state_rows()


@pytest.mark.parametrize("row", STATE_ROWS, ids=[f"load_state_dict-{r[0]}" for r in STATE_ROWS])
def test_load_state_dict_matrix(row):
    name, exp = row
    net = salnp.models.resnet(8, 2, "cl", num_classes=4, seed=3)
    before = net.arena.params.copy()
    sd = net.state_dict()
    key = "layer1.0.conv1.weight"
    w = sd[key]
    mk = {"int_values": lambda: np.round(w * 4).astype(np.int16), "float64": lambda: w.astype(float),
          "list": lambda: w.tolist(), "bigendian": lambda: w.astype(">f4"),
          "noncontig": lambda: _noncontig(w), "complex": lambda: w.astype(complex),
          "object": lambda: w.astype(object), "str": lambda: w.astype(str),
          "None_value": lambda: None, "wrong_shape": lambda: w.reshape(-1),
          "transposed": lambda: w.T, "nan": lambda: _with(w, np.nan),
          "inf": lambda: _with(w, np.inf),
          "huge_view": lambda: as_strided(w, (2**40,) + w.shape[1:], (0,) + w.strides[1:])}
    state = dict(sd)
    if name in mk:
        state[key] = mk[name]()
    elif name == "missing_key":
        del state[key]
    elif name == "extra_key":
        state["bogus"] = w
    elif name == "not_a_dict":
        state = [1, 2, 3]
    elif name == "None_state":
        state = None
    status, got = _outcome(lambda: net.load_state_dict(state))
    if exp == "ok":
        assert status == "ok", got
        np.testing.assert_array_equal(dict(net.named_parameters())[key],
                                      np.asarray(state[key], np.float32))
        return
    assert status != "ok", f"load_state_dict accepted {name}"
    if exp == "KeyError":
        assert isinstance(got, KeyError) and ("bogus" in str(got) or key in str(got))
    else:
        _check_error(got, exp, (key, "load_state_dict", "state"))
    if name not in ("missing_key", "extra_key"):
        # a refused state leaves the network unchanged only when refused before copying;
        # all refusals of one entry happen before that entry is written
        assert np.all(np.isfinite(net.arena.params))
    del before


# ---------------------------------------------------------------- hostile state (issue 14)
# One row of test_hostile_matrix each: the call and everything that must not change.

def _h_load_state_dict_all_or_nothing(tmp_path):
    for layer in ("cl", "sal", "sl"):
        net = _small(layer)
        ref = _state_of(net)
        keys = list(ref)
        last = keys[-1]
        bn_var = [k for k in keys if k.endswith("running_var")][-1]
        good = {k: v + 1 if v.dtype.kind == "f" and not k.endswith(("mask", "running_var"))
                else v for k, v in ref.items()}
        bads = {
            "shape": {**good, last: np.zeros(ref[last].size + 1)},
            "nan_late": {**good, keys[-2]: np.full(ref[keys[-2]].shape, np.nan)},
            "f64_overflow": {**good, keys[-2]: np.full(ref[keys[-2]].shape, 1e300)},
            "negative_var": {**good, bn_var: -np.ones(ref[bn_var].shape)},
            "complex": {**good, last: ref[last].astype(np.complex64)},
            "nbt_negative": {**good, **{k: np.array(-1) for k in keys
                                        if k.endswith("num_batches_tracked")}},
        }
        if layer == "sal":
            mk = [k for k in keys if k.endswith("mask")][-1]
            bads["mask_2"] = {**good, mk: np.full(ref[mk].shape, 2.0)}
            bads["mask_row_empty"] = {**good, mk: np.zeros(ref[mk].shape)}
        if layer == "sl":
            ok = [k for k in keys if k.endswith("offsets")][-1]
            bads["offsets_fraction"] = {**good, ok: ref[ok] + 0.5}
            bads["offsets_int64_huge"] = {**good, ok: ref[ok].astype(np.int64) + 2**40}
        for name, st in bads.items():
            with pytest.raises((ValueError, TypeError)) as e:
                net.load_state_dict(st)
            assert "load_state_dict" in str(e.value), (layer, name, e.value)
            _same_state(net, ref)
        net.load_state_dict(good)        # and a good one is taken whole
        assert np.array_equal(net.arena.params, np.concatenate(
            [good[k].reshape(-1) for k, _ in net.named_parameters()]))


def _h_sl_offsets_after_forward(tmp_path):
    net = _small("sl")
    x = _f((2, 3, 8, 8), seed=41)
    y0 = net.forward(x, train=False)
    st = net.state_dict()
    rng = np.random.default_rng(7)
    for k in st:
        if k.endswith("offsets"):
            st[k] = rng.integers(-1, 2, st[k].shape).astype(np.int32)
    net.load_state_dict(st)
    fresh = _small("sl")
    fresh.load_state_dict(st)
    y1 = net.forward(x, train=False)
    assert not np.array_equal(y0, y1)
    np.testing.assert_array_equal(y1, fresh.forward(x, train=False))
    # an in-place edit of the offsets takes effect as well
    m = net.layer1[0].shift
    m.offsets[...] = 0
    fresh.layer1[0].shift.offsets[...] = 0
    np.testing.assert_array_equal(net.forward(x, train=False), fresh.forward(x, train=False))


def _h_forward_nan_keeps_bn(tmp_path):
    for layer in ("cl", "sal", "sl", "asl"):
        net = _small(layer)
        x = _f((2, 3, 8, 8), seed=42)
        net.forward(x, train=True)
        ref = _state_of(net)
        bad = x.copy()
        bad[1, 2, 3, 4] = np.nan
        with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(1, 2, 3, 4\)\)"):
            net.forward(bad, train=True)
        _same_state(net, ref)
        with pytest.raises(RuntimeError):
            net.backward(np.zeros((2, 4), np.float32))       # no forward to follow
        net.forward(bad, train=False)                           # eval: NaN out, no state
        _same_state(net, ref)
        # parameters that make the batch statistics NaN: refused, statistics restored
        net.conv1.weight[...] = np.inf
        ref = _state_of(net)
        with pytest.raises((FloatingPointError, ValueError)):
            net.forward(x, train=True)
        _same_state(net, ref)


HOSTILE = {k[3:]: v for k, v in sorted(globals().items()) if k.startswith("_h_")}
HOSTILE_ROWS = list(HOSTILE)


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_matrix(name, tmp_path):
    HOSTILE[name](tmp_path)
