"""salnp.viz headless (Agg): the expected artists, ax taken and returned, no plt.show."""
import json

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib", reason="salnp.viz needs matplotlib (the notebooks/test extra)")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import salnp  # noqa: E402
from salnp import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("salnp.viz called plt.show()")
    monkeypatch.setattr(plt, "show", boom)
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sal_net():
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    net.beta = 30.0
    return net


def _ax():
    return plt.subplots()[1]


def test_attention_heatmap(sal_net):
    ax = _ax()
    name = viz.sal_layers(sal_net)[0][0]
    assert viz.attention_heatmap(sal_net, name, ax=ax, colorbar=True, vmax=1.0) is ax
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (3, 3)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert len(ax.texts) == 9 and ax.get_title() == name
    assert len(ax.figure.axes) == 2                  # the colorbar
    h = viz.chosen_positions(sal_net, name)
    assert h.shape == (3, 3) and 0 <= h.sum() <= 1 + 1e-9
    assert viz.chosen_positions(sal_net, name, hard=False).sum() == pytest.approx(1, abs=1e-5)
    with pytest.raises(KeyError, match="not a SAL layer"):
        viz.chosen_positions(sal_net, "nope")


def test_attention_grid_shared_scale(sal_net):
    fig = viz.attention_grid(sal_net, cols=3)
    n = len(viz.sal_layers(sal_net))
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == n
    clims = {a.images[0].get_clim() for a in panels}
    assert len(clims) == 1                           # one colour scale for all panels
    vmax = max(viz.chosen_positions(sal_net, m).max() for _, m in viz.sal_layers(sal_net))
    assert clims.pop() == (0.0, pytest.approx(vmax))
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    assert "beta=30" in fig._suptitle.get_text()
    fig2 = viz.attention_grid(sal_net, shared_scale=False, colorbar=False, hard=False)
    assert not any(a.get_label() == "<colorbar>" for a in fig2.axes)
    with pytest.raises(ValueError, match="no SAL layers"):
        viz.attention_grid(salnp.models.resnet(8, 4, "cl"))


def test_slice_attention(sal_net):
    name, m = viz.sal_layers(sal_net)[1]
    ax = _ax()
    assert viz.slice_attention(sal_net, name, ax=ax) is ax       # the old single-output form
    assert ax.images[0].get_array().shape == (3, 4 * m.cin - 1)
    ax = _ax()
    viz.slice_attention(sal_net, name, ax=ax, out_channels=3, max_inputs=2, colorbar=True)
    img = ax.images[0].get_array()
    assert img.shape == (4 * 3 - 1, 4 * 2 - 1)
    p = m.probs(sal_net.beta)
    np.testing.assert_allclose(img[4:7, 4:7], p[1, 1].reshape(3, 3))
    assert "outputs 0..2" in ax.get_title()
    # pruned positions are blank
    m.mask[0, 0, 4] = 0
    try:
        ax = _ax()
        viz.slice_attention(sal_net, name, ax=ax, out_channels=[0])
        assert np.ma.is_masked(ax.images[0].get_array()[1, 1]) or np.isnan(ax.images[0].get_array()[1, 1])
    finally:
        m.mask[...] = 1
    with pytest.raises(ValueError, match="output channel"):
        viz.slice_attention(sal_net, name, ax=_ax(), out_channels=[99])


def test_shift_histogram_sal(sal_net):
    kind, names, counts = viz.shift_counts(sal_net)
    assert kind == "sal" and counts.shape == (len(names), 10)
    for (name, m), row in zip(viz.sal_layers(sal_net), counts):
        assert row.sum() == m.logits.shape[0] * m.logits.shape[1]
    ax = _ax()
    assert viz.shift_histogram(sal_net, ax=ax) is ax
    assert ax.images[0].get_array().shape == (len(names), 9)
    assert len(ax.get_yticklabels()) == len(names)
    ax = _ax()
    viz.shift_histogram(sal_net, ax=ax, style="bars")
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    extra = int(counts[:, 9].any())
    assert len(bars) == len(names) * (9 + extra)
    widths = np.array([b.get_width() for b in bars]).reshape(9 + extra, len(names))
    np.testing.assert_allclose(widths.sum(0), 1.0)     # shares per layer
    with pytest.raises(ValueError, match="style"):
        viz.shift_histogram(sal_net, ax=_ax(), style="pie")


def test_shift_histogram_sl_and_asl():
    sl = salnp.models.resnet(8, 4, "sl", expansion=3)
    kind, names, counts = viz.shift_counts(sl)
    assert kind == "sl"
    # the fixed assignment: 12 mid channels -> 9 shifted + 3 at (0, 0) -> centre count 4
    assert counts[0].tolist() == [1, 1, 1, 1, 4, 1, 1, 1, 1, 0]
    ax = _ax()
    viz.shift_histogram(sl, ax=ax, normalize=False)
    assert "SL fixed" in ax.get_title()
    asl = salnp.models.resnet(8, 4, "asl")
    ax = _ax()
    assert viz.shift_histogram(asl, ax=ax) is ax        # dispatches to asl_shifts
    sc = [c for c in ax.collections if isinstance(c, PathCollection)]
    total = sum(len(o) for o in viz.shift_counts(asl)[2])
    assert len(sc) == 1 and len(sc[0].get_offsets()) == total
    ax = _ax()
    viz.asl_shifts(asl, ax=ax, style="hist2d")
    assert ax.collections                               # the QuadMesh
    with pytest.raises(ValueError, match="no shift layers"):
        viz.shift_histogram(salnp.models.resnet(8, 4, "cl"), ax=_ax())
    with pytest.raises(ValueError, match="ASL"):
        viz.asl_shifts(sl, ax=_ax())


HISTORY = [dict(epoch=e, lr=0.1, beta=20 * 1.5 ** e, train_loss=1.0, train_acc=0.3 + 0.1 * e,
                test_loss=1.0, test_acc=0.3 + 0.1 * e, test_acc_hard=0.2 + 0.1 * e,
                attn_maxp=0.2 + 0.15 * e, attn_onehot=0.1 * e, attn_allowed=9 - 2 * e,
                time_s=1.0, images_per_s=100.0) for e in range(1, 5)]


def test_attention_curves_and_training_curves():
    ax = _ax()
    assert viz.attention_curves(HISTORY, ax=ax) is ax
    assert [ln.get_label() for ln in ax.get_lines()] == ["beta"]
    assert ax.get_yscale() == "log"
    right = ax.right
    labels = [ln.get_label() for ln in right.get_lines()]
    assert labels == ["mean max p", "share max p > 0.5", "allowed positions / 9"]
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), [h["attn_maxp"] for h in HISTORY])
    ax2 = _ax()
    viz.attention_curves([dict(h, attn_allowed=9.0) for h in HISTORY], ax=ax2, log_beta=False)
    assert len(ax2.right.get_lines()) == 2
    with pytest.raises(ValueError, match="no beta"):
        viz.attention_curves([dict(h, beta=None) for h in HISTORY], ax=_ax())
    ax3 = _ax()
    assert viz.training_curves(HISTORY, ax=ax3) is ax3
    assert len(ax3.get_lines()) == 3


def test_accuracy_vs_macs(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(dict(
        test_acc=0.8, test_acc_hard=0.75, macs=5e6, params=1e4,
        model=dict(layer="sal", depth=20, width=16, shared=False))))
    runs = [dict(name="CL", macs=4.08e7, accuracy=0.91), str(d),
            dict(name="SL", macs=6e6, test_acc=0.85, test_acc_hard=None)]
    rs = viz.load_runs(runs)
    assert [r["name"] for r in rs] == ["CL", "SAL-20 w16", "SL"]
    assert [r["accuracy"] for r in rs] == [0.91, 0.75, 0.85]
    assert viz.load_runs(runs, hard=False)[1]["accuracy"] == 0.8
    ax = _ax()
    assert viz.accuracy_vs_macs(runs, ax=ax) is ax
    assert ax.get_xscale() == "log"
    filled = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(filled) == 4                          # 3 runs + the SAL run's soft point
    assert [t.get_text() for t in ax.texts] == ["CL", "SAL-20 w16", "SL"]
    xy = filled[0].get_offsets()[0]
    assert tuple(xy) == (4.08e7, pytest.approx(91.0))
    with pytest.raises(ValueError, match="needs macs"):
        viz.accuracy_vs_macs([dict(name="x", accuracy=0.5)], ax=_ax())
    with pytest.raises(TypeError):
        viz.load_runs([3])


def test_default_axes_are_current():
    """Without ax, functions draw on plt.gca() and return it."""
    net = salnp.models.resnet(8, 4, "sal", seed=1)
    fig = plt.figure()
    ax = viz.shift_histogram(net)
    assert ax is fig.gca()
