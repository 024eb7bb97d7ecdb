"""The science: faithful baselines, the paper's counting, fresh-network behaviour, recipes.

Published figures these reproduce: DESIGN.md sections 3 and 7; Jeon & Kim's CIFAR
prototxts (jyh2986/Active-Shift, models/ASL_Model/CIFAR10/[16xE]solver.prototxt)."""
import json

import numpy as np
import pytest

import salnp
from salnp.models import PreActASLBlock


@pytest.mark.parametrize("kw, params, macs", [
    (dict(layer="sal"), 38_618, 5_161_600),
    (dict(layer="sal", shared=True), 34_984, 5_161_600),
    (dict(layer="cl"), 272_474, 40_813_184),
    (dict(layer="sl", expansion=3), 95_642, 16_433_792),
    (dict(layer="sal", width=83), 981_609.5, 129_276_152),       # the authors' default
], ids=["sal", "sal-shared", "cl", "sl-e3", "sal-w83"])
def test_paper_convention_reproduces_published_counts(kw, params, macs):
    net = salnp.models.resnet(20, **{"width": 16, **kw})
    r = salnp.count(net, convention="paper")
    assert r.params == params and r.macs == macs
    assert r.convention == "paper" and "paper convention" in r.table().splitlines()[0]
    assert r.to_dict()["convention"] == "paper"
    # independent of beta and of training: every slice kept
    net.beta = 1e-3
    assert salnp.count(net, convention="paper").params == params


@pytest.mark.parametrize("e, params, rounded, macs", [
    (1, 35_386, 0.035, 5.9), (3, 97_466, 0.097, 16.4), (6, 190_586, 0.191, 32.2)])
def test_asnet_counts_match_jeon_and_kim(e, params, rounded, macs):
    """ASNet-20 [16 x e]: 0.035 / 0.097 / 0.191 M parameters in their table (BN scale and
    shift, the shifts, FC bias); 5.9 / 16.4 / 32.2 M MACs (DESIGN 7)."""
    net = salnp.models.resnet(20, 16, "asl", expansion=e)
    r = salnp.count(net, convention="paper")
    assert r.params == params == net.num_parameters()
    assert round(r.params / 1e6, 3) == rounded
    assert round(r.macs / 1e6, 1) == macs
    assert salnp.count(net).params == params     # training convention: the same here


def test_asnet_architecture_is_jeon_and_kims():
    net = salnp.models.resnet(20, 16, "asl", expansion=3)
    names = [n for n, _ in net.named_parameters()]
    assert "bn1.weight" not in names and "bn_final.weight" in names   # stem conv alone
    b = net.layer2[0]
    assert isinstance(b, PreActASLBlock)
    assert b.shift.stride == 2 and b.conv2.stride == 1               # stride in the shift
    assert b.shortcut.stride == 2 and "layer2.0.shortcut.weight" in names   # conv, no BN
    assert not any(n.startswith("layer2.0.bn3") for n in names)      # no BN after 2nd 1x1
    # solver: Nesterov, no decay on BN / FC bias / shifts, shift lr x 0.01
    solver = salnp.runconfig.solver_of("asl")
    assert solver["nesterov"] and tuple(solver["milestones"]) == (0.5, 0.75)
    off = net.arena.offsets
    for name, wd, lr in [("layer2.0.bn1.weight", 0, 1), ("bn_final.bias", 0, 1),
                         ("linear.bias", 0, 1), ("linear.weight", 1, 1),
                         ("layer2.0.conv1.weight", 1, 1), ("layer2.0.shift.shift", 0, 0.01)]:
        start = off[name][0]
        assert net.arena.decay[start] == wd and net.arena.lr_scale[start] == pytest.approx(lr), name
    # msra init: N(0, 2 / fan_in)
    w = net.layer3[1].conv1.weight
    assert np.std(w) == pytest.approx(np.sqrt(2 / 64), rel=0.05)


def test_fit_uses_the_family_solver(monkeypatch):
    seen = {}
    real = salnp.train.SGD.__init__

    def spy(self, net, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False):
        seen["nesterov"] = nesterov
        real(self, net, lr, momentum, weight_decay, nesterov)

    monkeypatch.setattr(salnp.train.SGD, "__init__", spy)
    rng = np.random.default_rng(0)
    data = salnp.data.Dataset(rng.integers(0, 255, (8, 3, 8, 8), dtype=np.uint8),
                              np.arange(8) % 10, classes=[str(i) for i in range(10)])
    for layer, nest in (("asl", True), ("sl", False)):
        net = salnp.models.resnet(8, 2, layer)
        h = salnp.fit(net, data, None, epochs=4, batch_size=8, progress=False, threads=1)
        assert seen["nesterov"] is nest
        lrs = [r["lr"] for r in h]
        assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001] if layer == "asl" else
                                    [0.1, 0.1, 0.01, 0.001])
    net = salnp.models.resnet(8, 2, "asl")
    salnp.fit(net, data, None, epochs=1, batch_size=8, progress=False, threads=1, nesterov=False)
    assert seen["nesterov"] is False                       # an explicit argument wins


def test_fresh_sal_net_starts_at_beta0_and_exports_sensibly():
    net = salnp.models.resnet(20, 16, "sal", seed=1)
    assert net.beta == salnp.models.BETA0 == 20.0
    inf = salnp.export(net)
    kept = sum(lay["kept"] for lay in inf.info["sal_layers"])
    total = sum(lay["slices"] for lay in inf.info["sal_layers"])
    assert kept / total > 0.9          # at beta = 1 only ~14 % of the slices survived
    r = salnp.count(net, mode="inference")
    assert r.params == inf.count().params
    assert salnp.count(net, convention="paper").params >= r.params
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(inf.forward(x), net.forward(x, train=False, hard=True),
                               rtol=1e-4, atol=1e-4)


def test_save_load_keeps_beta(tmp_path):
    net = salnp.models.resnet(8, 2, "sal")
    net.beta = 47.5
    salnp.save(net, tmp_path / "n.npz")
    assert salnp.load(tmp_path / "n.npz").beta == 47.5


def test_faithful_asl_exports(rng):
    """Pre-activation BNs cannot fold: they run as per-channel affine + ReLU, counted as BN."""
    net = salnp.models.resnet(20, 4, "asl", expansion=2, seed=3)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    for _ in range(2):
        net.forward(x, train=True)                      # non-trivial running statistics
    for n, p in net.named_parameters():
        if n.endswith("shift.shift"):
            p[...] = np.round(p)                        # integer offsets: export is exact
    inf = salnp.export(net)
    np.testing.assert_allclose(inf.forward(x), net.forward(x, train=False), rtol=1e-4, atol=1e-4)
    e, r, t = inf.count(), salnp.count(net, mode="inference"), salnp.count(net)
    assert (e.params, e.macs) == (r.params, r.macs)
    assert e.macs == t.macs
    assert sum(row["type"] == "bn" for row in e.rows) == 10      # 9 pre-activations + final


def test_count_convention_arguments():
    net = salnp.models.resnet(8, 2, "sal")
    assert salnp.count(net).convention == "training"
    assert salnp.count(net, mode="inference").convention == "exported"
    assert salnp.count(net, convention="exported").mode == "inference"
    with pytest.raises(ValueError, match="convention"):
        salnp.count(net, convention="thop")
    with pytest.raises(ValueError, match="mode"):
        salnp.count(net, mode="train", convention="paper")
    with pytest.raises(ValueError, match="convention"):
        salnp.count(salnp.export(net), convention="paper")


def test_recipe_paper_and_explicit_flags():
    from salnp.cli import parser

    def resolve(argv):
        args = vars(parser().parse_args(["train", *argv]))
        return salnp.RunConfig.make({k: v for k, v in args.items() if k not in ("cmd", "debug")})

    a = resolve(["--recipe", "paper", "--out", "x"])
    assert (a.width, a.data, a.epochs, a.batch_size, a.lr, a.weight_decay) == \
        (83, "cifar10", 300, 128, 0.1, 5e-4)
    assert (a.milestones, a.beta0, a.beta1, a.beta_schedule, a.layer, a.reset_momentum) == \
        ((100, 200), 20.0, 70.0, "geometric", "sal", True)
    a = resolve(["--recipe", "paper", "--epochs", "3", "--width", "16", "--milestones", "1,2",
                 "--subset", "500", "--out", "x"])
    assert (a.epochs, a.width, a.milestones, a.subset, a.batch_size) == (3, 16, (1, 2), 500, 128)
    a = resolve(["--out", "x"])
    assert (a.width, a.data, a.epochs, a.milestones) == (16, "fashion-mnist", 10, None)
    json.dumps(a.to_dict())
