"""The science: faithful baselines, the paper's counting, fresh-network behaviour, recipes
and their sources, the attention freeze, and the studies (bench/study_*.py): their
statistics against scipy and hand computations, their rows' schema, and a tiny end-to-end
run of each study script.

Published figures these reproduce: DESIGN.md sections 3 and 7; Jeon & Kim's CIFAR
prototxts (jyh2986/Active-Shift, models/ASL_Model/CIFAR10/[16xE]solver.prototxt)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import salnp
from salnp.models import PreActASLBlock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
CIFAR = os.environ.get("SALNP_CIFAR", os.path.join(ROOT, "..", "shared", "data", "cifar10-subset"))
sys.path.insert(0, BENCH)
import study_common as sc  # noqa: E402


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

    def spy(self, net, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, frozen=()):
        seen["nesterov"] = nesterov
        real(self, net, lr, momentum, weight_decay, nesterov, frozen)

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


# ---------------------------------------------------------------- recipes and their sources
FILE_LINE = re.compile(r"[\w./\[\]-]+\.(py|prototxt):\d+")
REPO_AT = re.compile(r"github\.com/[\w.-]+/[\w.-]+@[0-9a-f]{7}")


@pytest.mark.parametrize("table, key", [("FAMILY_SOLVERS", k) for k in
                                        salnp.recipes.FAMILY_SOLVERS] +
                         [("RECIPES", k) for k in salnp.recipes.RECIPES])
def test_every_recipe_names_its_source_file_and_line(table, key):
    src = getattr(salnp.recipes, table)[key]["source"]
    assert FILE_LINE.search(src), f"{table}[{key!r}]: no file:line in {src!r}"
    assert REPO_AT.search(src), f"{table}[{key!r}]: no repository@commit in {src!r}"


def test_family_schedules_match_the_cited_code():
    """The decays, transcribed from the cited lines, against salnp's lr_at."""
    lr_at = salnp.train.lr_at
    # Wu et al., shiftresnet-cifar main.py:148-154: lr while epoch <= 81, lr/10 while <= 122
    sl = salnp.runconfig.solver_of("sl")["milestones"]
    for epoch in range(164):
        want = 0.1 if epoch <= 81 else 0.01 if epoch <= 122 else 0.001
        assert lr_at(epoch, 164, 0.1, "step", sl) == pytest.approx(want), epoch
    # eghouti/SAL cifar10/main.py:172-178: lr / lr/10 / lr/100 for epochs < 100 / < 200 / after
    sal = salnp.runconfig.solver_of("sal")["milestones"]
    paper = salnp.RunConfig.make({"recipe": "paper"})
    for epoch in range(300):
        want = 0.1 if epoch < 100 else 0.01 if epoch < 200 else 0.001
        assert lr_at(epoch, 300, 0.1, "step", sal) == pytest.approx(want), epoch
        assert lr_at(epoch, 300, 0.1, "step", paper.milestones) == pytest.approx(want), epoch
    assert paper.reset_momentum and paper.weight_decay == 5e-4 and paper.momentum == 0.9
    # jyh2986/Active-Shift [16x1]solver.prototxt:5-15: 64000 iterations, steps 32000 and 48000
    asl = salnp.RunConfig.make({"recipe": "asl"})
    iters_per_epoch = 50_000 / 128
    assert [round(m * iters_per_epoch, -3) for m in asl.milestones] == [32_000, 48_000]
    assert asl.nesterov and salnp.runconfig.solver_of("asl")["nesterov"]


# ---------------------------------------------------------------- freezing the attention
def _tiny_data(rng, n=16):
    return salnp.data.Dataset(rng.integers(0, 255, (n, 3, 8, 8), dtype=np.uint8),
                              np.arange(n) % 10, classes=[str(i) for i in range(10)])


def test_freeze_attention_keeps_the_logits_bit_for_bit(rng):
    data = _tiny_data(rng)
    for freeze in (True, False):
        net = salnp.models.resnet(8, 3, "sal", seed=4)
        before = {n: np.array(p) for n, p in net.named_parameters()}
        salnp.fit(net, data, None, epochs=2, batch_size=8, progress=False, threads=1,
                  freeze_attention=freeze, lr=0.5)
        after = dict(net.named_parameters())
        logits = [n for n in before if n.endswith(".logits")]
        weights = [n for n in before if n.endswith("conv1.weight")]
        assert logits and weights
        same = [np.array_equal(before[n], after[n]) for n in logits]
        # bit for bit frozen; without the freeze the same run moves every logit tensor
        assert all(same) if freeze else not any(same), (freeze, same)
        assert not any(np.array_equal(before[n], after[n]) for n in weights)
        assert any(not np.array_equal(before[n], after[n]) for n in before
                   if n.startswith(("bn1", "linear")))


def test_freeze_attention_is_sal_only_and_names_frozen_parameters():
    with pytest.raises(salnp.runconfig.ConfigError, match="freeze_attention=True: applies to "
                       "layer='sal' only, not 'sl'"):
        salnp.RunConfig(layer="sl", freeze_attention=True)
    assert salnp.RunConfig(freeze_attention=True).identity()["freeze_attention"] is True
    assert "freeze_attention" not in salnp.RunConfig().identity()   # old trial ids unchanged
    net = salnp.models.resnet(8, 2, "cl")
    data = _tiny_data(np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="freeze_attention=True: applies to SAL networks"):
        salnp.fit(net, data, None, epochs=1, progress=False, freeze_attention=True)
    with pytest.raises(TypeError, match="freeze_attention"):
        salnp.fit(net, data, None, epochs=1, progress=False, freeze_attention="yes")
    with pytest.raises(ValueError, match="frozen='conv1.logits': not a parameter"):
        salnp.train.SGD(net, frozen=["conv1.logits"])


def test_freeze_attention_reaches_fit_from_a_run_config(tmp_path):
    """The sweep's path (salnp.runs.train_run) honours the field: no slice moves."""
    if not os.path.isdir(CIFAR):
        pytest.skip(f"needs the CIFAR-10 subset at {CIFAR}")
    cfg = dict(data="cifar10", root=CIFAR, depth=8, width=3, epochs=1, subset=40,
               test_subset=20, batch_size=20, lr=0.5, seed=1, freeze_attention=True)
    s = salnp.runs.train_run(cfg, str(tmp_path / "frozen"), export_net=False)
    assert s["attn_moved"] == 0.0 and s["config"]["freeze_attention"] is True
    net = salnp.models.resnet(8, 3, "sal", seed=1)
    with np.load(tmp_path / "frozen" / "checkpoint.npz") as z:
        for n, p in net.named_parameters():
            if n.endswith(".logits"):
                assert np.array_equal(z[n], p), n


# ---------------------------------------------------------------- the studies' statistics
def test_paired_interval_and_p_match_scipy(rng):
    from scipy import stats

    d = rng.normal(0.3, 1.1, 7)
    s = sc.paired(d)
    lo, hi = stats.t.interval(0.95, 6, loc=d.mean(), scale=stats.sem(d))
    assert (s["lo"], s["hi"]) == pytest.approx((lo, hi), rel=1e-12)
    assert s["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-12)
    assert s["sd"] == pytest.approx(np.std(d, ddof=1)) and s["n"] == 7
    assert math.isnan(sc.paired([0.4])["p"])


@pytest.mark.parametrize("shift", [0.0, 0.6, 1.4])
def test_tost_paired_is_two_one_sided_scipy_tests(rng, shift):
    from scipy import stats

    d = rng.normal(shift, 0.7, 9)
    t = sc.tost_paired(d, 1.0)
    p_lower = stats.ttest_1samp(d, -1.0, alternative="greater").pvalue
    p_upper = stats.ttest_1samp(d, 1.0, alternative="less").pvalue
    assert (t["p_lower"], t["p_upper"]) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert t["p"] == pytest.approx(max(p_lower, p_upper), rel=1e-10)
    lo, hi = stats.t.interval(0.90, 8, loc=d.mean(), scale=stats.sem(d))
    assert (t["lo"], t["hi"]) == pytest.approx((lo, hi), rel=1e-10)
    # TOST at 0.05 <=> the 90 % interval inside the margin
    assert t["equivalent"] == (lo > -1.0 and hi < 1.0) == (t["p"] < 0.05)


def test_tost_by_hand():
    """d = (0.1, -0.1, 0.2, 0.0), margin 0.5: mean 0.05, sd sqrt(0.05 / 3), se sd / 2;
    t_lower = 0.55 / se, t_upper = -0.45 / se on 3 degrees of freedom."""
    from scipy import stats

    se = math.sqrt(0.05 / 3) / 2
    t = sc.tost_paired([0.1, -0.1, 0.2, 0.0], 0.5)
    assert t["mean"] == pytest.approx(0.05) and t["se"] == pytest.approx(se)
    assert t["p_lower"] == pytest.approx(stats.t.sf(0.55 / se, 3))
    assert t["p_upper"] == pytest.approx(stats.t.cdf(-0.45 / se, 3))
    assert t["equivalent"]
    assert not sc.tost_paired([0.1, -0.1, 0.2, 0.0], 0.1)["equivalent"]   # margin too tight
    with pytest.raises(ValueError, match="margin"):
        sc.tost_paired([0.1, 0.2], 0.0)


def test_tost_welch_is_two_one_sided_welch_tests(rng):
    from scipy import stats

    a, b = rng.normal(0.2, 0.5, 8), rng.normal(0.0, 0.9, 6)
    t = sc.tost_welch(a, b, 1.0)
    p_lower = stats.ttest_ind(a + 1.0, b, equal_var=False, alternative="greater").pvalue
    p_upper = stats.ttest_ind(a - 1.0, b, equal_var=False, alternative="less").pvalue
    assert (t["p_lower"], t["p_upper"]) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert t["n"] == (8, 6)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08, 0.20; running max
    assert sc.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert sc.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])          # capped at 1
    got = sc.holm([0.02, float("nan"), 0.01])                         # NaN left out of m
    assert got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.02) and math.isnan(got[1])
    assert sc.holm([0.03]) == pytest.approx([0.03])


# ---------------------------------------------------------------- rows
def _row(**kw):
    r = dict(arm="salnp", seed=0, train_images=10000, test_images=10000, epochs=15,
             acc_soft=0.7, acc_hard=0.69, test_loss=0.9, wall_s=100.0, commit="a" * 40,
             config={"lr": 0.1})
    r.update(kw)
    return r


def test_rows_schema_accepts_a_study_row():
    assert sc.check_rows([_row(), _row(arm="torch"), _row(arm="torch-native", seed=1)], "arm")
    r = _row(model="sl-e1", acc_hard=None)
    del r["arm"]
    assert sc.check_rows([r], "model")


@pytest.mark.parametrize("bad, match", [
    (dict(acc_soft=None), "acc_soft=None: must be a finite number"),
    (dict(acc_hard=1.5), r"acc_hard=1.5: must be in \[0, 1\]"),
    (dict(arm="jax"), "arm='jax': must be one of salnp, torch, torch-native"),
    (dict(seed=-1), "seed=-1: must be an integer"),
    (dict(epochs=3), "scale .* differs"),
    (dict(commit="b" * 40), "commit .* differs"),
    (dict(config={}), "config: must be"),
    (dict(test_loss=float("nan")), "test_loss=nan"),
], ids=lambda v: str(v)[:30])
def test_rows_schema_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        sc.check_rows([_row(), _row(**{"seed": 1, **bad})], "arm")


def test_rows_schema_refuses_a_missing_key():
    r = _row()
    del r["commit"]
    with pytest.raises(ValueError, match=r"row 0: missing keys \['commit'\]"):
        sc.check_rows([r], "arm")


def test_generated_section_replaces_only_its_own_text(tmp_path):
    md = tmp_path / "S.md"
    md.write_text("# head\n\nkept\n")
    sc.replace_section(str(md), "x", "one")
    sc.replace_section(str(md), "y", "other")
    sc.replace_section(str(md), "x", "two")
    text = md.read_text()
    assert text.count("begin generated: x") == 1 and "two" in text and "one" not in text
    assert "other" in text and text.startswith("# head\n\nkept\n")


# ---------------------------------------------------------------- the study scripts, tiny
def _study(script, tmp_path, *argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--root", CIFAR,
                          "--out", str(tmp_path / "work"), "--write", str(tmp_path),
                          "--studies-md", str(tmp_path / "STUDIES.md"), "--allow-dirty",
                          "--train", "200", "--test", "200", "--epochs", "1", *argv],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _commit_of_this_tree():
    try:
        return sc.code_state(allow_dirty=True)
    except SystemExit:
        return "unknown"


@pytest.mark.slow
def test_fidelity_study_end_to_end(tmp_path):
    if not os.path.isdir(CIFAR):
        pytest.skip(f"needs the CIFAR-10 subset at {CIFAR}")
    rows_path = tmp_path / "fidelity.json"
    text = _study("study_fidelity.py", tmp_path, "--rows", str(rows_path), "--seeds", "0-2",
                  "--width", "4", "--steps", "3", "--threads", "1")
    rows = sc.read_rows(str(rows_path), "arm")
    assert sorted((r["arm"], r["seed"]) for r in rows) == sorted(
        (a, s) for a in ("salnp", "torch", "torch-native") for s in (0, 1))
    assert {r["commit"] for r in rows} == {_commit_of_this_tree()}
    assert all(r["train_images"] == 200 and r["test_images"] == 200 and r["epochs"] == 1
               for r in rows)
    assert {r["config"]["pipeline"] for r in rows} == {"salnp.data", "torch-native"}
    with open(tmp_path / "fidelity_trajectory.json") as fh:
        traj = json.load(fh)
    assert [r["step"] for r in traj["log"]] == [1, 2, 3]
    assert set(traj["log"][0]["dist"]["salnp"]) == {"weights", "logits", "BN", "linear"}
    assert all(v > 0 for r in traj["log"] for v in r["dist"]["torch-nudged"].values())
    assert "salnp − torch | primary | paired | soft acc" in text
    md = (tmp_path / "STUDIES.md").read_text()
    assert "begin generated: fidelity" in md and "fidelity_outcome.png" in md
    assert (tmp_path / "fidelity_outcome.png").stat().st_size > 0
    assert (tmp_path / "fidelity_trajectory.png").stat().st_size > 0
    # the report alone, from the rows: the same text
    first = (tmp_path / "fidelity.md").read_text()
    _study("study_fidelity.py", tmp_path, "--rows", str(rows_path), "--report")
    assert (tmp_path / "fidelity.md").read_text() == first


@pytest.mark.slow
def test_reproduction_study_end_to_end(tmp_path):
    if not os.path.isdir(CIFAR):
        pytest.skip(f"needs the CIFAR-10 subset at {CIFAR}")
    rows_path = tmp_path / "reproduction.json"
    text = _study("study_reproduction.py", tmp_path, "--rows", str(rows_path), "--seeds-min",
                  "2", "--seeds-max", "2")
    rows = sc.read_rows(str(rows_path), "model")
    models = ("sal-w15", "sal-shared-w16", "sl-e1", "asl-e1", "sal-w15-frozen",
              "sal-w15-beta0.15")
    assert sorted((r["model"], r["seed"]) for r in rows) == sorted(
        (m, s) for m in models for s in (0, 1))
    by = {(r["model"], r["seed"]): r for r in rows}
    for s in (0, 1):
        assert by["sal-w15-frozen", s]["moved_share"] == 0.0
        assert by["sal-w15-frozen", s]["config"]["freeze_attention"] is True
        assert by["sal-w15-beta0.15", s]["config"]["beta0"] == 0.15
        assert by["sl-e1", s]["acc_hard"] is None and by["sl-e1", s]["moved_share"] is None
    # one schedule for every family
    sched = {(r["config"]["lr_schedule"], r["config"]["nesterov"], r["config"]["momentum"],
              r["config"]["weight_decay"], r["config"]["lr"]) for r in rows}
    assert sched == {("cosine", False, 0.9, 5e-4, 0.1)}
    assert {r["commit"] for r in rows} == {_commit_of_this_tree()}
    for needle in ("sal-w15 − sl-e1 | primary", "sal-w15 − asl-e1 | secondary",
                   "asl-e1 − sl-e1 | positive control", "sal-w15 − sal-w15-frozen",
                   "Positive control"):
        assert needle in text, needle
    md = (tmp_path / "STUDIES.md").read_text()
    assert "begin generated: reproduction" in md and "reproduction.png" in md
    assert (tmp_path / "reproduction.png").stat().st_size > 0
    # a work folder holds one code state
    (tmp_path / "work" / "provenance.json").write_text(json.dumps({"commit": "0" * 40}))
    out = subprocess.run([sys.executable, os.path.join(BENCH, "study_reproduction.py"),
                          "--out", str(tmp_path / "work"), "--allow-dirty", "--root", CIFAR,
                          "--rows", str(tmp_path / "r2.json")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.abspath(salnp.__file__)))))
    assert out.returncode != 0 and "holds runs of code state 0000" in out.stderr
