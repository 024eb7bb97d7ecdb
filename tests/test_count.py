"""salnp.count: the DESIGN section 3 numbers, every layer type against hand formulas,
thop on the PyTorch twins, binarised SAL counts from the logits, bad input and the bad-input
matrix."""
import json

import numpy as np
import pytest
import torch

import salnp
from torch_ref import from_salnp
from hostile import _check_error, _net, _outcome

CONFIGS = [
    dict(layer="cl", width=8),
    dict(layer="sal", width=8),
    dict(layer="sal", width=8, shared=True),
    dict(layer="sl", width=8, expansion=3),
    dict(layer="asl", width=8, expansion=2),
    dict(layer="asl-post", width=8, expansion=2),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def _modules(net):
    return dict(net.named_modules())


def test_cl_resnet20_design_numbers():
    net = salnp.models.resnet(20, 16, "cl")
    r = salnp.count(net, input_shape=(3, 32, 32))
    assert r.params == 272_474 and isinstance(r.params, int)
    assert r.macs == 40_813_184
    assert r.flops == 2 * 40_813_184
    assert r.shift_moves == 0 and r.train_only_params == 0
    stem = 3 * 16 * 9 * 32 * 32
    assert r.bwd_macs == 2 * r.macs - stem          # the stem has no input gradient
    assert r.train_macs == r.macs + r.bwd_macs
    # folded inference: one value per BN channel less (gamma disappears into the weights)
    bn_channels = sum(m.c for m in _modules(net).values()
                      if isinstance(m, salnp.models.BatchNorm2d))
    ri = salnp.count(net, mode="inference")
    assert ri.macs == r.macs and ri.params == 272_474 - bn_channels == 271_690
    assert ri.bwd_macs == 0 and ri.train_macs is None


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
@pytest.mark.parametrize("hw", [(32, 32), (28, 28), (13, 9)])
def test_train_rows_against_hand_formulas(cfg, hw):
    net = salnp.models.resnet(20, seed=2, **cfg)
    mods = _modules(net)
    r = salnp.count(net, input_shape=(3, *hw))
    assert len(r.rows) == len(net.program.ops)
    seen = set()
    for row in r.rows:
        (c, h, w), (co, ho, wo) = row["in_shape"], row["out_shape"]
        t, m = row["type"], mods.get(row["name"])
        seen.add(t)
        if t.startswith("conv"):
            k, s, p = m.k, m.stride, m.padding
            assert (ho, wo) == ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
            assert row["params"] == m.cout * m.cin * k * k
            assert row["macs"] == m.cout * m.cin * k * k * ho * wo
            assert row["bwd_macs"] == (1 if row["name"] == "conv1" else 2) * row["macs"]
        elif t in ("sal", "sal_shared"):
            assert row["params"] == m.cout * m.cin * 9
            assert row["macs"] == m.cout * m.cin * 9 * ho * wo
            assert row["train_only_params"] == (1 if m.shared else m.cout) * m.cin * 9
            assert row["bwd_macs"] == 2 * row["macs"]
        elif t == "bn":
            assert row["params"] == 2 * c and row["macs"] == 0
        elif t == "shift":
            assert row["params"] == 0 and row["macs"] == 0 and row["shift_moves"] == c * ho * wo
        elif t == "active_shift":
            assert row["params"] == 2 * c and row["macs"] == 0 and row["shift_moves"] == c * ho * wo
        elif t == "linear":
            assert row["params"] == m.fout * m.fin + m.fout and row["macs"] == m.fout * m.fin
        else:
            assert t in ("add", "avgpool")
            assert row["params"] == row["macs"] == row["shift_moves"] == 0
    # every trainable value is either a counted parameter or a training-only one
    assert r.params + r.train_only_params == net.num_parameters()
    assert {"bn", "linear", "avgpool"} <= seen


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c["layer"] != "sal"], ids=ids)
def test_against_thop_on_the_torch_twin(cfg):
    thop = pytest.importorskip("thop")
    net = salnp.models.resnet(20, seed=3, **cfg)
    tnet = from_salnp(net).eval()
    zero = lambda m, x, y: None   # thop counts BN "ops"; DESIGN 3 counts conv/linear only
    ops, params, layers = thop.profile(tnet, inputs=(torch.zeros(1, 3, 32, 32),),
                                       custom_ops={torch.nn.BatchNorm2d: zero}, verbose=False,
                                       ret_layer_info=True)
    r = salnp.count(net, input_shape=(3, 32, 32))
    assert r.macs == int(ops)
    # thop counts the parameters of the modules it has rules for (conv, BN gamma/beta,
    # linear), not those of our ActiveShift twin: compare without the ASL shifts
    asl = sum(row["params"] for row in r.rows if row["type"] == "active_shift")
    assert r.params - asl == int(params)

    def leaf(path):
        d = layers
        for i, part in enumerate(path):
            v = d[part]
            if i == len(path) - 1:
                return v
            d = v[2]

    for row in r.rows:
        if row["type"].startswith("conv") or row["type"] == "linear":
            tops, tparams, _ = leaf(row["name"].split("."))
            assert row["macs"] == int(tops), row["name"]
            assert row["params"] == int(tparams), row["name"]


def test_sal_soft_counts_as_the_dense_conv_thop_sees():
    thop = pytest.importorskip("thop")
    sal = salnp.models.resnet(20, 8, "sal", seed=4)
    cl = salnp.models.resnet(20, 8, "cl", seed=4)
    rs, rc = salnp.count(sal), salnp.count(cl)
    assert rs.macs == rc.macs and rs.params == rc.params
    ops, params = thop.profile(from_salnp(cl).eval(), inputs=(torch.zeros(1, 3, 32, 32),),
                               custom_ops={torch.nn.BatchNorm2d: lambda m, x, y: None},
                               verbose=False)
    assert rs.macs == int(ops)
    logits = sum(p.size for n, p in sal.named_parameters() if n.endswith("logits"))
    assert rs.train_only_params == logits > 0


def _hand_sal(net, beta):
    """(kept per layer name, O, C) from the logits, independently of the C count."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, salnp.models.SALConv2d):
            a = m.logits.astype(np.float64)
            s = a.std(-1, ddof=1, keepdims=True)
            z = np.where(s > 0, beta * a / np.where(s > 0, s, 1), 0.0)
            e = np.exp(z - z.max(-1, keepdims=True))
            p = e / e.sum(-1, keepdims=True)          # std 0: uniform 1/9, pruned
            kept = int((p.max(-1) > 0.5).sum())
            out[name] = (kept, m.cout, m.cin)
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_sal_inference_counts_from_the_logits(shared, rng):
    net = salnp.models.resnet(20, 8, "sal", shared=shared, seed=5)
    net.beta = 6.0          # moderate: some slices have no p > 0.5 and are pruned
    for name, p in net.named_parameters():    # and some are forced uniform (std 0)
        if name.endswith("logits"):
            flat = p.reshape(-1, 9)
            flat[rng.random(len(flat)) < 0.2] = 0.25
    hand = _hand_sal(net, net.beta)
    total_slices = sum((1 if shared else o) * c for _, o, c in hand.values())
    assert 0 < sum(k for k, _, _ in hand.values()) < total_slices   # some pruned, some kept
    r = salnp.count(net, mode="inference")
    assert r.beta == 6.0
    for name, rows in _sal_rows(r, hand).items():
        kept, o, c = hand[name]
        ho, wo = rows[-1]["out_shape"][1:]
        params, macs, moves = (sum(x[k] for x in rows) for k in ("params", "macs", "shift_moves"))
        assert rows[0]["kept"] == kept
        if shared and kept:         # a shift of the kept channels, then a 1x1 conv
            assert [x["type"] for x in rows] == ["sal_shift", "conv1x1"]
            assert params == kept * o + kept * 4 / 32 + o         # + folded BN bias
            assert macs == kept * o * ho * wo and moves == kept * ho * wo
        else:                       # the kept pairs (none: the bias alone)
            assert [x["type"] for x in rows] == ["sal_gather"]
            assert params == kept * 36 / 32 + o
            assert macs == kept * ho * wo and moves == 0
    # the exported network counts the same totals, op by op of its own program
    e = salnp.export(net).count()
    assert (e.params, e.macs, e.shift_moves) == (r.params, r.macs, r.shift_moves)
    # unpruned binarised SAL costs one 1x1 convolution's MACs
    full = salnp.models.resnet(20, 8, "sal", shared=shared, seed=5)
    full.beta = 1e4
    hand = _hand_sal(full, full.beta)
    for name, rows in _sal_rows(salnp.count(full, mode="inference"), hand).items():
        _, o, c = hand[name]
        ho, wo = rows[-1]["out_shape"][1:]
        assert sum(x["macs"] for x in rows) == c * o * ho * wo


def _sal_rows(report, hand):
    """{SAL layer name: the rows its exported ops make}"""
    out = {}
    for row in report.rows:
        if row["name"] in hand:
            out.setdefault(row["name"], []).append(row)
    assert set(out) == set(hand)
    return out


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_inference_count_equals_exported_count(cfg):
    net = salnp.models.resnet(20, seed=6, **cfg)
    net.beta = 40.0
    r = salnp.count(net, input_shape=(3, 24, 24), mode="inference")
    inf = salnp.export(net)
    e = inf.count((3, 24, 24))
    assert salnp.count(inf, input_shape=(3, 24, 24)).macs == e.macs
    assert (e.params, e.macs, e.shift_moves) == (r.params, r.macs, r.shift_moves)
    assert e.params == pytest.approx(sum(row["params"] for row in e.rows))
    if cfg["layer"] in ("cl", "sl", "asl", "asl-post"):
        t = salnp.count(net, input_shape=(3, 24, 24))
        assert e.macs == t.macs and e.shift_moves == t.shift_moves
        # a folded BN keeps C of its 2 C values (the bias); a standalone BN (pre-activation,
        # layer "asl") keeps all 2 C
        bn = sum(row["in_shape"][0] for row in t.rows if row["type"] == "bn") \
            - sum(row["params"] for row in e.rows if row["type"] == "bn") // 2
        asl = sum(row["params"] for row in t.rows if row["type"] == "active_shift")
        assert e.params == t.params - bn - asl


def test_table_and_dict():
    net = salnp.models.resnet(20, 4, "sal")
    r = salnp.count(net)
    text = r.table()
    assert "MACs = multiply-adds per image" in text and "FLOPs = 2 x MACs" in text
    assert "layer1.0.conv1" in text and "training per image" in text
    assert f"{r.macs:,}" in text
    d = json.loads(json.dumps(r.to_dict()))
    assert d["mode"] == "train" and d["totals"]["macs"] == r.macs
    assert len(d["rows"]) == len(r.rows) and d["rows"][0]["name"] == r.rows[0]["name"]
    ri = salnp.count(net, mode="inference")
    assert "kept" in ri.table() and "inference network" in ri.table()
    assert len(r.table(skip_zero=True).splitlines()) < len(text.splitlines())


def test_bad_input():
    net = salnp.models.resnet(20, 4, "cl")
    with pytest.raises(ValueError, match=r"input_shape=\(1, 32, 32\).*C=3"):
        salnp.count(net, input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        salnp.count(net, input_shape=(3, 32))
    with pytest.raises(ValueError, match="input_shape"):
        salnp.count(net, input_shape=(3, 0, 32))
    with pytest.raises(ValueError, match="input_shape"):
        salnp.count(net, input_shape=(3, 2.5, 32))
    with pytest.raises(ValueError, match="mode='eval'"):
        salnp.count(net, mode="eval")
    with pytest.raises(TypeError, match="salnp network"):
        salnp.count(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode='train'"):
        salnp.count(salnp.export(net), mode="train")


def _params_cells(text):
    """The params cells of a table's rows (and total), cut at the dashed rule's columns."""
    lines = text.splitlines()
    rule = next(i for i, l in enumerate(lines) if l.startswith("---"))
    spans, pos = [], 0
    for part in lines[rule].split("  "):
        spans.append((pos, pos + len(part)))
        pos += len(part) + 2
    a, b = spans[4]
    assert lines[rule - 1][a:b].strip() == "params"
    ends = ("---", "forward", "training", "elements")
    return [l[a:b] for l in lines[rule + 1:] if l and not l.startswith(ends)]


def test_table_params_are_integers_or_say_why_not():
    """Integral counts print as integers; a convention that counts a kept SAL weight as
    36/32 of a word says so in the header, and its eighths line up on the decimal point."""
    net = salnp.models.resnet(8, 4, "sal")
    for r in (salnp.count(net, mode="train"), salnp.count(salnp.models.resnet(8, 4, "cl"),
                                                           mode="inference")):
        text = r.table()
        assert "36/32" not in text
        assert all("." not in c for c in _params_cells(text)), text
    m = dict(net.named_modules())["layer3.0.conv2"]
    net.beta = 1000.0                                     # every slice one-hot ...
    m.logits[0, 0] = [0, 0, 0, 0, 1, 0, 0, 0, 1]       # ... but this one: two maxima, pruned
    inf = salnp.count(net, mode="inference")
    kept = next(r for r in inf.rows if r["name"] == "layer3.0.conv2")
    assert kept["kept"] == 16 * 16 - 1 and kept["params"] == 255 * 36 / 32 + 16
    shared = salnp.models.resnet(8, 4, "sal", shared=True)
    for r, eighths in ((inf, True), (salnp.count(net, convention="paper"), False),
                       (salnp.count(shared, convention="paper"), True)):
        text = r.table()
        head = text.splitlines()[1]
        assert "36/32" in head and "4-bit shift index" in head and "4/32" in head
        cells = _params_cells(text)
        assert any("." in c for c in cells) == eighths    # 302.875, 16.5 (C_in = 4: 4/8)
        ends = {c.index(".") if "." in c else len(c.rstrip()) for c in cells}
        assert len(ends) == 1, cells                      # decimal points in one column
        assert f"{r.params:,.3f}".rstrip("0").rstrip(".") in text.splitlines()[-2]
    assert "302.875" in salnp.count(net, mode="inference").table()


# ---------------------------------------------------------------- the bad-input matrix
# count with one argument replaced by a bad or unusual value, for a training and an
# exported network (tests/hostile.py: the outcomes).

COUNT_ROWS = [
    ("input_shape", (3,), "ValueError"), ("input_shape", (3, 0, 8), "ValueError"),
    ("input_shape", (3, -8, 8), "ValueError"), ("input_shape", (2, 8, 8), "ValueError"),
    ("input_shape", (3, 8.5, 8), "ValueError"), ("input_shape", None, "ok"),
    ("input_shape", "abc", "ValueError"), ("input_shape", (3, 2**31, 2**31), "huge"),
    ("input_shape", (3, 2**40, 2**40), "huge"), ("input_shape", (3, 2**62, 1), "huge"),
    ("input_shape", (3, 2**70, 1), "huge"), ("input_shape", (3, 1, 1), "ok"),
    ("input_shape", np.array([3, 9, 7]), "ok"), ("input_shape", (3, 2**16, 2**16), "huge_or_ok"),
    ("mode", "bogus", "ValueError"), ("mode", None, "ok"), ("mode", 1, "ValueError"),
    ("net", None, "TypeError"), ("net", "resnet20", "TypeError"), ("net", 3, "TypeError"),
]


@pytest.mark.parametrize("target", ["ResNet", "InferenceNet"])
@pytest.mark.parametrize("row", COUNT_ROWS, ids=[f"count-{r[0]}-{i}" for i, r in enumerate(COUNT_ROWS)])
def test_count_matrix(row, target):
    arg, v, exp = row
    net = _net("sal") if target == "ResNet" else salnp.export(_net("sal"))
    kw = dict(net=net, input_shape=(3, 8, 8))
    if target == "InferenceNet" and arg == "mode" and v not in (None, "inference"):
        exp = "ValueError"
    kw[arg] = v
    status, got = _outcome(lambda: salnp.count(**kw))
    if status == "ok":
        assert exp in ("ok", "huge_or_ok"), f"count accepted {arg}={v!r}"
        assert got.macs >= 0 and got.params > 0
        return
    _check_error(got, "huge" if exp == "huge_or_ok" else exp, (arg, "count", "input"))
