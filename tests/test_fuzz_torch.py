"""Fuzzing (hypothesis) of salnp.torch.from_torch: state dicts and pruned modules of real
networks, mutated the way a foreign checkpoint or an edit in PyTorch changes them (keys
dropped, added or renamed, shapes changed or declared huge, dtypes changed, values that
are no tensors, beta buffers out of range; modules replaced, biases removed, strides
changed).  Each either comes back as a salnp network whose state equals the input
exactly, or is refused with a ValueError / TypeError / KeyError; nothing else is raised
and nothing is allocated for a declared (not held) size."""
import functools
import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import salnp  # noqa: E402
import salnp.torch as sto  # noqa: E402

EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REFUSED = (ValueError, TypeError, KeyError)
CFGS = [dict(layer="cl"), dict(layer="sal"), dict(layer="sal", shared=True),
        dict(layer="sl", expansion=2), dict(layer="asl", expansion=2), dict(layer="asl-post")]


@functools.lru_cache(maxsize=None)
def _reference(i):
    cfg = CFGS[i]
    rng = np.random.default_rng(zlib.crc32(repr(cfg).encode()))
    net = salnp.models.resnet(8, 4, seed=3, **cfg)
    net.forward(rng.standard_normal((2, 3, 8, 8), dtype=np.float32), train=True)
    net.beta = 12.5
    return net


def _state(i):
    return dict(sto.to_torch(_reference(i)).state_dict())


DTYPES = [torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.bool,
          torch.complex64, torch.uint8]


@st.composite
def states(draw):
    i = draw(st.integers(0, len(CFGS) - 1))
    sd = _state(i)
    keys = sorted(sd)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 9))
        k = draw(st.sampled_from(keys))
        v = sd.get(k)
        v = v if torch.is_tensor(v) and v.layout == torch.strided and not v.is_meta else None
        if kind == 0:
            sd.pop(k, None)
        elif kind == 1:
            sd[draw(st.sampled_from([k + "x", "layer9.0.conv1.weight", "linear.extra",
                                     k.replace("weight", "bias")]))] = torch.zeros(2)
        elif kind == 2 and v is not None and v.ndim:
            shape = list(v.shape)
            d = draw(st.integers(0, len(shape) - 1))
            shape[d] = draw(st.sampled_from([shape[d] + 1, max(shape[d] - 1, 0), 2**12, 2**20]))
            sd[k] = torch.zeros(1, dtype=v.dtype).expand(*shape)     # declared, not held
        elif kind == 3 and v is not None:
            dt = draw(st.sampled_from(DTYPES))
            sd[k] = v.to(dt)
            if dt == torch.float64 and draw(st.booleans()):
                sd[k] = sd[k] + 1e-13
        elif kind == 4:
            sd[k] = draw(st.sampled_from(["text", None, [1.0, 2.0], 3.5, {"a": 1}, b"x"]))
        elif kind == 5:
            for b in keys:
                if b.endswith(".beta"):
                    sd[b] = torch.tensor(draw(st.sampled_from(
                        [-1.0, float("inf"), float("nan"), 1e300, 0.0, 3.0])))
        elif kind == 6 and v is not None and v.is_floating_point() and v.numel():
            v = v.clone()
            v.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -1.0, 1e30]))
            sd[k] = v
        elif kind == 7:
            sd = {"module." + kk: vv for kk, vv in sd.items()}
            keys = sorted(sd)
        elif kind == 8:
            sd = {"net": sd, "epoch": 3}
            break
        elif kind == 9 and v is not None:
            sd[k] = torch.empty(v.shape, device="meta") if draw(st.booleans()) else \
                v.to_sparse() if v.ndim else v
    config = draw(st.sampled_from([{}] * 6 + [{"seed": 3}, {"depth": 7}, {"width": 5},
                                              {"layer": "cl"}]))
    beta = draw(st.sampled_from([None] * 8 + [2.0, -1.0, float("nan"), "2"]))
    return sd, config, beta


def _flat(sd):
    if "net" in sd and "epoch" in sd:
        sd = sd["net"]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


@FUZZ
@given(case=states())
def test_fuzz_from_torch_state_dicts(case):
    sd, config, beta = case
    try:
        net = sto.from_torch(sd, beta=beta, **config)
    except REFUSED as e:
        assert str(e)
        return
    assert np.isfinite(net.beta) and net.beta >= 0
    got = net.state_dict()
    for k, v in _flat(sd).items():
        if k.endswith(".beta"):
            continue
        ref = v.float() if v.dtype in (torch.bfloat16, torch.float16) else v
        ref = ref.numpy().astype(np.float64)
        assert got[k].shape == ref.shape and np.array_equal(got[k].astype(np.float64), ref), k


@st.composite
def pruned_modules(draw):
    i = draw(st.integers(0, len(CFGS) - 1))
    net = _reference(i)
    inf = salnp.export(net)
    t = sto.to_torch(inf)
    mods = [(n, m) for n, m in t.named_modules() if n and not list(m.children())]
    for _ in range(draw(st.integers(0, 2))):
        n, m = draw(st.sampled_from(mods))
        kind = draw(st.integers(0, 6))
        if kind == 0 and getattr(m, "bias", None) is not None:
            m.bias = None
        elif kind == 1 and hasattr(m, "stride"):
            m.stride = (2, 2) if isinstance(m.stride, tuple) else 2
        elif kind == 2 and isinstance(m, torch.nn.Conv2d):
            parent, _, leaf = n.rpartition(".")
            k = draw(st.sampled_from([1, 3, 5]))
            (t.get_submodule(parent) if parent else t).add_module(
                leaf, torch.nn.Conv2d(m.in_channels, m.out_channels, k, m.stride, k // 2,
                                      bias=m.bias is not None))
        elif kind == 3:
            m.to(draw(st.sampled_from([torch.float64, torch.bfloat16, torch.float16])))
        elif kind == 4 and isinstance(getattr(m, "weight", None), torch.nn.Parameter):
            with torch.no_grad():
                m.weight.mul_(draw(st.sampled_from([0.5, 2.0, float("nan")])))
        elif kind == 5 and hasattr(m, "padding"):
            m.padding = (0, 0)
        elif kind == 6 and isinstance(m, torch.nn.Linear):
            t.linear = torch.nn.Linear(m.in_features, m.out_features + 1)
    return t


@FUZZ
@given(t=pruned_modules())
def test_fuzz_from_torch_pruned_modules(t):
    try:
        inf = sto.from_torch(t)
    except REFUSED as e:
        assert str(e)
        return
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = t.float()(torch.from_numpy(x)).numpy()
    got = inf.forward(x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
