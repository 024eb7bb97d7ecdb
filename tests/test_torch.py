"""salnp.torch: salnp -> torch -> salnp keeps the state bit for bit (module and state-dict
paths, the authors' checkpoint naming); the torch training form's forward and gradients
agree with salnp's; the pruned form of an exported network equals inf.forward and comes
back with fine-tuned weights; mismatched checkpoints are refused with the keys named."""
import copy
import subprocess
import sys
import zlib

import numpy as np
import pytest

import salnp
from conftest import assert_close

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import salnp.torch as st  # noqa: E402

CASES = [
    dict(layer="cl"),
    dict(layer="sal"),
    dict(layer="sal", shared=True),
    dict(layer="sl", expansion=3),
    dict(layer="asl", expansion=2),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def _rng(*parts):
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def _net(cfg, rng, width=4, integer_asl=False):
    net = salnp.models.resnet(8, width, seed=int(rng.integers(1 << 30)), **cfg)
    for name, p in net.named_parameters():
        if name.endswith("shift.shift"):
            p[...] = rng.integers(-2, 3, p.shape) if integer_asl else \
                rng.uniform(-1.4, 1.4, p.shape).round(1) + 0.05
        elif ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    for _ in range(2):
        net.forward(rng.standard_normal((4, 3, 12, 12), dtype=np.float32), train=True)
    net.beta = 7.5
    return net


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k


@pytest.mark.parametrize("cfg", CASES, ids=ids)
def test_round_trip_is_bit_identical(cfg):
    rng = _rng("round", ids(cfg))
    net = _net(cfg, rng)
    t = st.to_torch(net)
    assert isinstance(t, torch.nn.Module) and type(t) is st.ResNet
    # same names: parameters are parameters, buffers are buffers (+ one beta per SAL layer)
    assert [k for k, _ in t.named_parameters()] == [k for k, _ in net.named_parameters()]
    extra = {k for k in t.state_dict()} - set(net.state_dict())
    assert all(k.endswith(".beta") for k in extra) and (len(extra) > 0) == (cfg["layer"] == "sal")
    back = st.from_torch(t)
    _same_state(net, back)
    assert back.config == net.config and back.beta == net.beta and back.training == net.training
    # from a plain state dict: the config comes from the shapes
    back2 = st.from_torch(t.state_dict(), seed=net.config["seed"])
    _same_state(net, back2)
    assert back2.config == net.config
    assert back2.beta == (net.beta if cfg["layer"] == "sal" else 1.0)   # no SAL: no beta kept
    # the network still runs the same
    x = rng.standard_normal((2, 3, 12, 12), dtype=np.float32)
    assert np.array_equal(back.forward(x, train=False), net.forward(x, train=False))


def test_authors_checkpoint_layout():
    """The released code's names: attentionWeights, no mask, DataParallel's module. prefix,
    the state under "net" of a checkpoint dict with the accuracy and epoch."""
    rng = _rng("authors")
    net = _net(dict(layer="sal"), rng)
    sd = {}
    for k, v in st.to_torch(net).state_dict().items():
        if k.endswith(".mask"):
            continue
        sd["module." + k.replace(".logits", ".attentionWeights")] = v
    ckpt = {"net": sd, "acc": 91.2, "epoch": 299}
    back = st.from_torch(ckpt, seed=net.config["seed"])
    _same_state(net, back)
    assert back.beta == 7.5


def _pick_batch(tnet, rng, n=3, shape=(3, 12, 12)):
    """A batch whose every ReLU input stays >= 1e-5 from the kink (float64 reference)."""
    margin = [np.inf]
    st.relu_hook = lambda v: margin.__setitem__(0, min(margin[0], float(v.detach().abs().min())))
    try:
        for _ in range(20):
            x = rng.standard_normal((n, *shape), dtype=np.float32)
            margin[0] = np.inf
            with torch.no_grad():
                copy.deepcopy(tnet).train()(torch.tensor(x, dtype=torch.float64))
            if margin[0] > 1e-5:
                break
    finally:
        st.relu_hook = None
    return x


@pytest.mark.parametrize("cfg", CASES, ids=ids)
def test_forward_and_gradients_agree(cfg):
    rng = _rng("grad", ids(cfg))
    net = _net(cfg, rng)
    tnet = st.to_torch(net).double()
    x = _pick_batch(tnet, rng)
    y = rng.integers(0, 10, len(x)).astype(np.int32)
    logits = net.forward(x, train=True)
    net.zero_grad()
    net.backward(salnp.ops.cross_entropy_backward(logits, y))
    grads = {k: g.copy() for k, g in net.named_grads()}
    tl = tnet(torch.tensor(x, dtype=torch.float64))
    F.cross_entropy(tl, torch.tensor(y, dtype=torch.long)).backward()
    assert_close(logits, tl.detach().numpy(), 2e-4, 2e-4, f"{cfg} logits")
    for k, p in tnet.named_parameters():
        scale = float(p.grad.abs().max()) + 1e-12
        assert_close(grads[k], p.grad.numpy(), 2e-3 * scale + 1e-6, 2e-3, f"{cfg} grad {k}")
    # eval mode, and binarised attention
    tnet.eval()
    xe = rng.standard_normal((2, 3, 12, 12), dtype=np.float32)
    with torch.no_grad():
        ref = tnet(torch.tensor(xe, dtype=torch.float64)).numpy()
        assert_close(net.forward(xe, train=False), ref, 2e-4, 2e-4, "eval logits")
        if cfg["layer"] == "sal":
            tnet.set_beta(40.0)
            net.beta = 40.0
            ref = tnet.set_hard(True)(torch.tensor(xe, dtype=torch.float64)).numpy()
            assert_close(net.forward(xe, train=False, hard=True), ref, 2e-4, 2e-4, "hard")


def test_beta_buffer_and_annealing():
    net = _net(dict(layer="sal"), _rng("beta"))
    t = st.to_torch(net, beta=20.0)
    assert t.beta == 20.0 and all(float(m.beta) == 20.0 for m in t.sal_layers())
    assert "layer1.0.conv1.beta" in dict(t.named_buffers())
    t.set_beta(33.0)
    assert st.from_torch(t).beta == 33.0
    assert st.from_torch(t, beta=5.0).beta == 5.0
    sd = t.state_dict()
    sd["layer1.0.conv2.beta"] = torch.tensor(1.0)
    with pytest.raises(ValueError, match="different beta"):
        st.from_torch(sd)


@pytest.mark.parametrize("cfg", CASES, ids=ids)
def test_pruned_form(cfg):
    rng = _rng("pruned", ids(cfg))
    net = _net(cfg, rng, width=6, integer_asl=True)
    net.beta = 25.0
    inf = salnp.export(net)
    t = st.to_torch(inf)
    assert type(t) is st.PrunedResNet and not t.training
    names = set(t.state_dict())
    # BN folded; a pre-activation ASNet's BNs (their input is also the shortcut's) stay
    # BNs in eval mode (export.py)
    if cfg.get("layer") != "asl":
        assert not any(".bn" in k or k.startswith("bn") for k in names)
    if cfg["layer"] == "sal" and not cfg.get("shared"):
        w = t.state_dict()["layer1.0.conv1.weight"]
        assert w.ndim == 1 and w.numel() == len(t.state_dict()["layer1.0.conv1.pairs"])
    if cfg.get("shared"):
        assert "layer1.0.conv1.shift.shifts" in names
    for shape in ((3, 32, 32), (3, 19, 23)):
        x = rng.standard_normal((5, *shape), dtype=np.float32)
        with torch.no_grad():
            got = t(torch.from_numpy(x)).numpy()
        ref = inf.forward(x)
        assert_close(got, ref, 1e-5 * float(np.abs(ref).max()), 1e-5, f"{cfg} {shape}")
    # back: the same program and weights (also from a deep copy, as torch users make)
    inf2 = st.from_torch(copy.deepcopy(t))
    for a in ("ops", "shifts", "pairs", "weights"):
        assert np.array_equal(getattr(inf2, a), getattr(inf, a)), a
    # fine-tune in torch: gradients reach the kept weights only; the change comes back
    t.train()
    out = t(torch.from_numpy(x))
    F.cross_entropy(out, torch.zeros(len(x), dtype=torch.long)).backward()
    opt = torch.optim.SGD(t.parameters(), lr=0.05)
    opt.step()
    t.eval()
    inf3 = st.from_torch(t)
    assert not np.array_equal(inf3.weights, inf.weights)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    assert_close(inf3.forward(x), ref, 1e-5 * float(np.abs(ref).max()), 1e-5, "fine-tuned")


def test_clear_errors():
    net = _net(dict(layer="sal"), _rng("errors"))
    sd = st.to_torch(net).state_dict()
    with pytest.raises(TypeError, match="salnp network"):
        st.to_torch("net")
    with pytest.raises(TypeError, match="state dict"):
        st.from_torch([1, 2])
    bad = dict(sd)
    del bad["layer2.0.bn1.running_var"]
    bad["layer2.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys \['layer2.0.bn1.running_var'\].*"
                                         r"unexpected keys \['layer2.0.extra.weight'\]"):
        st.from_torch(bad)
    bad = dict(sd)
    bad["layer1.0.conv2.logits"] = torch.zeros(4, 4, 8)
    with pytest.raises(ValueError, match=r"layer1.0.conv2.logits: \(4, 4, 8\), expected \(4, 4, 9\)"):
        st.from_torch(bad)
    with pytest.raises(KeyError, match="linear.weight"):
        st.from_torch({"conv1.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(ValueError, match="does not make a salnp network"):
        st.from_torch(sd, depth=7)


def test_salnp_does_not_import_torch():
    code = "import sys, salnp; salnp.count; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


# ---- hostile modules and state dicts (issue 23) ---------------------------------------
def _convs(t, with_bias=True):
    """(path, module) of the pruned form's Conv2d modules with (or without) a bias."""
    return [(n, m) for n, m in t.named_modules() if type(m) is torch.nn.Conv2d
            and (m.bias is not None) == with_bias]


def _edits():
    """name -> (layer config, edit(t) returning the key the error must name)."""
    def drop_bias(t):
        n, m = _convs(t)[0]
        m.bias = None
        return rf"missing keys \['{n}\.bias'\]"

    def add_bias(t):
        n, m = _convs(t, with_bias=False)[0]
        m.bias = torch.nn.Parameter(torch.zeros(m.out_channels))
        return rf"unexpected keys \['{n}\.bias'\]"

    def reshape_conv(t):
        n, m = _convs(t)[0]
        new = torch.nn.Conv2d(m.in_channels, m.out_channels, 5, m.stride, 2)
        t.get_submodule(n.rsplit(".", 1)[0] if "." in n else "").add_module(n.rsplit(".", 1)[-1], new)
        return rf"{n}\.weight.*\(.*5, 5\).*expected"

    def restride_conv(t):
        n, m = _convs(t)[0]
        m.stride = (2, 2)
        return rf"{n}: stride \(2, 2\).*expected"

    def regroup_conv(t):
        n, m = _convs(t)[0]
        m.padding_mode = "circular"
        return rf"{n}: padding_mode"

    def widen_linear(t):
        t.linear = torch.nn.Linear(t.linear.in_features, t.linear.out_features + 1)
        return r"linear\.weight.*expected"

    def grow_pairs(t):
        n, m = next((n, m) for n, m in t.named_modules() if isinstance(m, st.PrunedSAL))
        m.weight = torch.nn.Parameter(torch.zeros(len(m.weight) + 1))
        return rf"{n}\.weight"

    def sal_as_conv(t):
        n, m = next((n, m) for n, m in t.named_modules() if isinstance(m, st.PrunedSAL))
        new = torch.nn.Conv2d(m.in_channels, m.out_channels, 3, m.stride, 1)
        parent, _, leaf = n.rpartition(".")
        t.get_submodule(parent).add_module(leaf, new)
        return rf"missing keys \['{n}\.pairs'\]; shape mismatch: {n}\.weight"

    def linear_subclass(t):
        class Tweaked(torch.nn.Linear):
            def forward(self, x):
                return super().forward(2 * x)

        new = Tweaked(t.linear.in_features, t.linear.out_features)
        new.load_state_dict(t.linear.state_dict())
        t.linear = new
        return r"linear: a Tweaked, expected the exported program's Linear"

    def dilate_conv(t):
        n, m = _convs(t)[0]
        m.dilation = (2, 2)
        return rf"{n}: dilation \(2, 2\), expected \(1, 1\)"

    def inexact_double(t):
        t.double()
        with torch.no_grad():
            t.linear.weight.add_(1e-12)
        return r"linear\.weight.*float64.*not exactly"

    return {"drop_bias": (dict(layer="cl"), drop_bias),
            "add_bias": (dict(layer="asl", expansion=2), add_bias),
            "reshape_conv": (dict(layer="cl"), reshape_conv),
            "restride_conv": (dict(layer="sl", expansion=3), restride_conv),
            "padding_mode": (dict(layer="cl"), regroup_conv),
            "widen_linear": (dict(layer="sal"), widen_linear),
            "grow_pairs": (dict(layer="sal"), grow_pairs),
            "sal_as_conv": (dict(layer="sal"), sal_as_conv),
            "linear_subclass": (dict(layer="cl"), linear_subclass),
            "dilate_conv": (dict(layer="sal", shared=True), dilate_conv),
            "inexact_double": (dict(layer="cl"), inexact_double)}


@pytest.mark.parametrize("edit", list(_edits()))
def test_pruned_form_with_a_changed_structure_is_refused(edit):
    """A pruned module whose structure was changed in torch (bias removed or added, a
    conv replaced by another shape or stride, a linear widened) was read as if nothing
    changed: silent wrong weights.  Every module, parameter and shape is compared with
    the exported program first."""
    cfg, fn = _edits()[edit]
    net = _net(cfg, _rng("structure", edit), width=6, integer_asl=True)
    net.beta = 25.0
    t = st.to_torch(salnp.export(net))
    match = fn(t)
    with pytest.raises(ValueError, match=match):
        st.from_torch(t)


def test_pruned_form_in_other_dtypes():
    """float64 and bfloat16 modules come back when their values are float32 values."""
    net = _net(dict(layer="sal"), _rng("pruned dtypes"), width=6)
    inf = salnp.export(net)
    t = st.to_torch(inf).double()
    assert np.array_equal(st.from_torch(t).weights, inf.weights)
    tb = st.to_torch(inf).to(torch.bfloat16)
    got = st.from_torch(tb).weights
    ref = torch.from_numpy(inf.weights).to(torch.bfloat16).float().numpy()
    assert not np.array_equal(got, inf.weights) and np.array_equal(got, ref)


def _sd(cfg, name="sd", width=4):
    net = _net(cfg, _rng(name, ids(cfg)), width=width)
    return net, st.to_torch(net).state_dict()


def test_tiny_state_dict_declaring_a_huge_width_lists_missing_keys():
    """Width 4096 asks for about 40 GiB: the missing keys are listed before anything
    is allocated (a child with a 3 GiB address-space headroom runs it)."""
    code = r"""
import resource, sys, time, torch
import salnp.torch as st
w = 4096
z = lambda *s: torch.zeros(1).expand(*s)
sd = {"conv1.weight": z(w, 3, 3, 3), "linear.weight": z(10, 4 * w), "linear.bias": z(10)}
for s, c in ((1, w), (2, 2 * w), (3, 4 * w)):
    sd[f"layer{s}.0.conv1.weight"] = z(c, c, 3, 3)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), hard))
t0 = time.perf_counter()
try:
    st.from_torch(sd)
except Exception as e:
    print(type(e).__name__, str(e)[:600], "%.1f s" % (time.perf_counter() - t0))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("ValueError"), (out.stdout, out.stderr[-2000:])
    assert "missing keys ['bn1.weight'" in out.stdout and "width" not in out.stderr
    assert float(out.stdout.split()[-2]) < 20


@pytest.mark.parametrize("value, msg", [
    (-1.0, r"layer1\.0\.conv1\.beta = -1\.0: must be finite and >= 0"),
    (float("inf"), r"layer1\.0\.conv1\.beta = inf: must be finite and >= 0"),
    (float("nan"), r"layer1\.0\.conv1\.beta = nan: must be finite and >= 0"),
])
def test_bad_beta_buffers_are_refused(value, msg):
    net, sd = _sd(dict(layer="sal"), "beta")
    for k in sd:
        if k.endswith(".beta"):
            sd[k] = torch.tensor(value)
    with pytest.raises(ValueError, match=msg):
        st.from_torch(sd)
    for bad in (value, "7"):
        with pytest.raises((ValueError, TypeError), match="beta="):
            st.from_torch(st.to_torch(net).state_dict(), beta=bad)


def test_state_dict_dtypes_exact_or_refused_naming_the_key():
    net, sd = _sd(dict(layer="sal"), "dtypes")
    # bfloat16 and float16: exact in float32, taken
    for dt in (torch.bfloat16, torch.float16):
        sdb = {k: (v.to(dt) if v.is_floating_point() else v) for k, v in sd.items()}
        back = st.from_torch(sdb, seed=net.config["seed"])
        for k, v in back.state_dict().items():
            ref = sdb[k].float() if sdb[k].is_floating_point() else sdb[k]
            assert np.array_equal(v, ref.numpy()), k
    # float64 holding float32 values: taken; other float64 values: refused, key named
    sdd = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
    _same_state(net, st.from_torch(sdd, seed=net.config["seed"]))
    sdd["layer2.0.conv1.logits"] = sdd["layer2.0.conv1.logits"] + 1e-12
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.logits: float64 values not exactly "
                                         r"float32"):
        st.from_torch(sdd)
    sdd = dict(sd, **{"linear.bias": sd["linear.bias"].double() * 1e300})
    with pytest.raises(ValueError, match=r"linear\.bias: float64 values not exactly float32"):
        st.from_torch(sdd)
    for k, v, why in [("linear.weight", sd["linear.weight"].to(torch.complex64), "complex64"),
                      ("linear.weight", sd["linear.weight"].to_sparse(), "sparse"),
                      ("linear.weight", torch.empty(sd["linear.weight"].shape, device="meta"),
                       "meta"),
                      ("linear.weight", "a string", "str"),
                      ("bn1.num_batches_tracked", torch.tensor(2.5), "float32 values not exactly "
                                                                     "int64")]:
        with pytest.raises(ValueError, match=rf"{k}: .*{why}"):
            st.from_torch(dict(sd, **{k: v}))


def test_sl_offsets_do_not_wrap():
    net, sd = _sd(dict(layer="sl", expansion=3), "offsets")
    k = "layer1.0.shift.offsets"
    sd[k] = sd[k].long()
    _same_state(net, st.from_torch(sd, seed=net.config["seed"]))
    sd[k] = sd[k].clone()
    sd[k][0, 0] = 2**32      # int32 wraps this to 0
    with pytest.raises(ValueError, match=rf"{k}: int64 values not exactly int32"):
        st.from_torch(sd)


def test_pruned_gather_without_bias():
    """A gather op with no bias (p1 < 0) became a PrunedSAL with a bias read from the
    weight arena at index -1: its torch form now has no bias, equals inf.forward and
    comes back."""
    from salnp.program import FIELDS, GATHER, Program

    net = _net(dict(layer="sal"), _rng("nobias"), width=6)
    inf = salnp.export(net)
    ops = inf.ops.copy()
    g = int(np.flatnonzero(ops[:, FIELDS.index("kind")] == GATHER)[0])
    ops[g, FIELDS.index("p1")] = -1
    inf = salnp.export.InferenceNet(Program.from_tables(ops, inf.channels, inf.shifts,
                                                        inf.pairs, inf.names),
                                    inf.weights, inf.config, inf.info)
    t = st.to_torch(inf)
    m = t.get_submodule(inf.names[g])
    assert isinstance(m, st.PrunedSAL) and m.bias is None
    x = _rng("nobias x").standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        got = t(torch.from_numpy(x)).numpy()
    ref = inf.forward(x)
    assert_close(got, ref, 1e-5 * float(np.abs(ref).max()), 1e-5, "no-bias gather")
    assert np.array_equal(st.from_torch(t).weights, inf.weights)
