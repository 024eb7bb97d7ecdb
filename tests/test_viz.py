"""salnp.viz and salnp.attention, headless (Agg, selected here, never by the library).

The conventions (seaborn's split): axes-level functions take ax= (None: the current axes)
and return it without making another axes current; figure-level functions take fig=
(None: a new figure), return it, and an axes-level call after them starts a new figure.
Then the figures' content: epoch axes in integers, units in %, the attention-change
numbers against a hand computation, labels that do not overlap, equal panel widths."""
import ast
import json
import os

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib",
                          reason="salnp.viz needs matplotlib (the notebooks/test extra)")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import salnp  # noqa: E402
from salnp import attention, viz  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("salnp.viz called plt.show()")
    monkeypatch.setattr(plt, "show", boom)
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sal_net():
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    net.beta = 30.0
    return net


def _ax():
    return plt.subplots()[1]


HISTORY = [dict(epoch=e, lr=0.1, beta=20 * 1.5 ** e, train_loss=1.0, train_acc=0.3 + 0.1 * e,
                test_loss=1.0, test_acc=0.3 + 0.1 * e, test_acc_hard=0.2 + 0.1 * e,
                attn_maxp=0.2 + 0.15 * e, attn_onehot=0.1 * e, attn_allowed=9 - 2 * e,
                time_s=1.0, images_per_s=100.0) for e in range(1, 5)]


# ---------------------------------------------------------------- no backend, no /dev/null
def _backend_selections(source, filename):
    """Lines of `source` that select a matplotlib backend: matplotlib.use (any alias),
    from matplotlib import use, pyplot.switch_backend, rcParams["backend"] = ..."""
    tree = ast.parse(source, filename)
    mpl_names, use_names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "matplotlib":
                    mpl_names.add(a.asname or "matplotlib")
        elif isinstance(node, ast.ImportFrom) and node.module == "matplotlib":
            use_names |= {a.asname or a.name for a in node.names if a.name == "use"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            mpl_use = (isinstance(f, ast.Attribute) and f.attr == "use"
                       and isinstance(f.value, ast.Name) and f.value.id in mpl_names)
            if mpl_use or (isinstance(f, ast.Name) and f.id in use_names) \
                    or (isinstance(f, ast.Attribute) and f.attr == "switch_backend"):
                found.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.slice, ast.Constant) and node.slice.value == "backend":
                found.append(node.lineno)
    return found


def test_the_backend_check_catches_each_form():
    assert _backend_selections("import matplotlib\nmatplotlib.use('Agg')\n", "x") == [2]
    assert _backend_selections("import matplotlib as m\n\nm.use('Agg')\n", "x") == [3]
    assert _backend_selections("from matplotlib import use as u\nu('Agg')\n", "x") == [2]
    pyplot, rc = "import matplotlib.pyplot as plt\n", "import matplotlib as mpl\n"
    assert _backend_selections(pyplot + "plt.switch_backend('x')\n", "x") == [2]
    assert _backend_selections(rc + "mpl.rcParams['backend'] = 'x'\n", "x") == [2]
    assert _backend_selections("import numpy as np\nnp.use = 1\nx.use('y')\n", "x") == []
    assert _dev_null_strings('"""/dev/null in a docstring"""\nf(x, "/dev/null")\n', "x") == [2]


def _notebook_code(path):
    nb = json.load(open(path))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_no_library_code_selects_a_backend_or_writes_to_dev_null():
    """python/salnp, the notebooks and the bench modules the notebooks import."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "python", "salnp"))
             for f in fs if f.endswith(".py")]
    notebooks = sorted(os.path.join(ROOT, "notebooks", f)
                       for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))
    bench = os.path.join(ROOT, "bench")
    sources = {f: open(f).read() for f in files}
    for nb in notebooks:
        code = "\n".join(line for line in _notebook_code(nb).splitlines()
                         if not line.lstrip().startswith(("%", "!")))
        sources[nb] = code
        for node in ast.walk(ast.parse(code, nb)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                path = os.path.join(bench, name.split(".")[0] + ".py")
                if os.path.isfile(path):
                    sources[path] = open(path).read()
    assert any(p.endswith("study_reproduction.py") for p in sources)   # reproduction.ipynb's
    bad = {p: _backend_selections(src, p) for p, src in sources.items()}
    assert not {p: v for p, v in bad.items() if v}, "a backend is selected (file: lines)"
    dev_null = {p: _dev_null_strings(src, p) for p, src in sources.items()}
    assert not {p: v for p, v in dev_null.items() if v}, "/dev/null in code (file: lines)"


def _dev_null_strings(source, filename):
    """Lines of string constants naming /dev/null, docstrings aside."""
    tree = ast.parse(source, filename)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and "/dev/null" in n.value and id(n) not in docs]


# ---------------------------------------------------------------- the ax= / fig= conventions
def _axes_level_calls(sal_net):
    sl = salnp.models.resnet(8, 4, "sl", expansion=3)
    asl = salnp.models.resnet(8, 4, "asl")
    name = viz.sal_layers(sal_net)[1][0]
    runs = [dict(name="a", macs=1e6, accuracy=0.8), dict(name="b", macs=2e6, accuracy=0.85)]
    return {
        "attention_heatmap": lambda ax: viz.attention_heatmap(sal_net, name, ax=ax, colorbar=True),
        "shift_distribution": lambda ax: viz.shift_distribution(sal_net, ax=ax),
        "shift_preference": lambda ax: viz.shift_preference(sal_net, ax=ax),
        "shifts_moved": lambda ax: viz.shifts_moved(sal_net, ax=ax),
        "slice_tiles": lambda ax: viz.slice_tiles(sal_net, name, ax=ax, colorbar=True),
        "shift_histogram": lambda ax: viz.shift_histogram(sal_net, ax=ax),
        "shift_histogram_bars": lambda ax: viz.shift_histogram(sl, ax=ax, style="bars"),
        "asl_shifts": lambda ax: viz.asl_shifts(asl, ax=ax),
        "asl_hist2d": lambda ax: viz.asl_shifts(asl, ax=ax, style="hist2d"),
        "training_curves": lambda ax: viz.training_curves(HISTORY, ax=ax),
        "attention_curves": lambda ax: viz.attention_curves(HISTORY, ax=ax),
        "accuracy_vs_macs": lambda ax: viz.accuracy_vs_macs(runs, ax=ax),
    }


@pytest.mark.parametrize("fn", sorted(_axes_level_calls(salnp.models.resnet(8, 4, "sal"))))
def test_axes_level_functions_take_ax_and_leave_the_current_axes_alone(sal_net, fn):
    call = _axes_level_calls(sal_net)[fn]
    fig, (a, b) = plt.subplots(1, 2)
    plt.sca(a)
    assert call(b) is b                                  # draws into the given axes
    assert plt.gca() is a and plt.gcf() is fig           # twins / colour bars not made current
    other = plt.figure()
    assert plt.gcf() is other
    got = call(None)                                     # None: the current axes
    assert got is other.axes[0] and got.figure is other
    assert plt.gca() is got                              # and it stays current


def test_figure_level_functions_make_or_take_a_figure(sal_net):
    calls = {"attention_grid": lambda fig: viz.attention_grid(sal_net, fig=fig),
             "attention_change": lambda fig: viz.attention_change(sal_net, fig=fig),
             "slice_attention": lambda fig: viz.slice_attention(sal_net, fig=fig)}
    for name, call in calls.items():
        n = len(plt.get_fignums())
        fig = call(None)
        assert isinstance(fig, Figure) and len(plt.get_fignums()) == n + 1, name
        mine = plt.figure()
        assert call(mine) is mine, name
        standalone = Figure()                            # no pyplot at all (run_figure)
        assert call(standalone) is standalone and standalone.axes, name
        with pytest.raises(ValueError, match="empty"):
            call(mine)
    with pytest.raises(TypeError, match="fig must be"):
        viz.attention_grid(sal_net, fig=_ax())


def test_readme_sequence_gives_two_figures(sal_net):
    """salnp.viz.attention_grid(net); salnp.viz.shift_histogram(net): the histogram gets its
    own figure, the grid's last panel is left as it was."""
    grid = viz.attention_grid(sal_net)
    panels = [(len(a.images), len(a.texts), len(a.collections)) for a in grid.axes]
    ax = viz.shift_histogram(sal_net)
    assert ax.figure is not grid and len(plt.get_fignums()) == 2
    assert [(len(a.images), len(a.texts), len(a.collections)) for a in grid.axes] == panels
    ax2 = viz.training_curves(HISTORY)                   # the next call: the same new figure
    assert ax2.figure is ax.figure


# ---------------------------------------------------------------- what training changed
def _one_hot_logits(positions, second=None):
    """(len(positions), 9) logits whose argmax is positions[i] (0.9; 0.5 at second[i])."""
    a = np.full((len(positions), 9), 0.1, np.float32)
    a[np.arange(len(positions)), positions] = 0.9
    if second is not None:
        a[np.arange(len(positions)), second] = 0.5
    return a


def test_attention_change_numbers_by_hand():
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    layers = attention.sal_layers(net)
    name, m = layers[0]                                   # layer1.0.conv1: 4 x 4 = 16 slices
    assert m.logits.shape == (4, 4, 9)
    init = {f"{n}.logits": np.array(mm.logits) for n, mm in layers}
    init[f"{name}.logits"] = _one_hot_logits([i % 9 for i in range(16)]).reshape(4, 4, 9)
    # now: slices 0..7 choose 4 (slice 0 with 0 second), slices 8..15 keep i % 9
    now = [4] * 8 + [i % 9 for i in range(8, 16)]
    m.logits[...] = _one_hot_logits(now, [0] * 16).reshape(4, 4, 9)
    # by hand: initial choices 0 1 2 3 4 5 6 7 8 0 1 2 3 4 5 6; slices 0..7 moved except 4
    rows = attention.shift_change(net, init)
    r = rows[0]
    assert r["name"] == name and r["slices"] == 16
    assert r["moved"] == 7 and r["moved_share"] == 7 / 16
    assert r["counts_initial"].tolist() == [2, 2, 2, 2, 2, 2, 2, 1, 1]
    assert r["counts"].tolist() == [1, 1, 1, 1, 9, 1, 1, 0, 1]   # 4: slices 0..7 and 13
    np.testing.assert_allclose(r["shares"], r["counts"] / 16)
    assert all(x["moved"] == 0 for x in rows[1:])
    total = sum(x["slices"] for x in rows)
    assert attention.moved_share(net, init) == pytest.approx(7 / total)
    # a mask that forbids slice 0's position 4: its choice is its second best, 0 = initial
    m.mask[0, 0, 4] = 0
    try:
        r = attention.shift_change(net, init)[0]
        assert r["moved"] == 6 and r["counts"].tolist() == [2, 1, 1, 1, 8, 1, 1, 0, 1]
        # a state dict's own mask applies to the initial choices the same way
        init_masked = dict(init, **{f"{name}.mask": np.array(m.mask)})
        assert attention.shift_change(net, init_masked)[0]["counts_initial"].tolist() == \
            [2, 2, 2, 2, 2, 2, 2, 1, 1]
    finally:
        m.mask[...] = 1
    # the figure shows those numbers
    fig = viz.attention_change(net, init)
    share = 100 * 7 / total
    assert f"{share:.1f} % of slices moved" in fig._suptitle.get_text()
    top, left, right, note = fig.axes[:4]
    assert any(np.allclose(ln.get_ydata(), 100 / 9) for ln in top.get_lines())   # uniform 1/9
    bars = [p for p in right.patches if isinstance(p, Rectangle)]
    assert [b.get_width() for b in bars][0] == pytest.approx(100 * 7 / 16)
    assert any(np.allclose(ln.get_xdata(), 100 * 8 / 9) for ln in right.get_lines())
    assert any(np.allclose(ln.get_xdata(), share) for ln in right.get_lines())
    img = left.images[0].get_array()
    np.testing.assert_allclose(img[0], 100 * np.array([1, 1, 1, 1, 9, 1, 1, 0, 1]) / 16)
    assert left.images[0].norm.vcenter == pytest.approx(100 / 9)   # white = uniform
    assert left.get_shared_y_axes().joined(left, right)
    assert top.get_shared_x_axes().joined(top, left)


def test_attention_change_initial_forms(rng):
    net = salnp.models.resnet(8, 4, "sal", shared=True, seed=5)
    before = net.state_dict()
    fresh = salnp.models.resnet(**net.config)
    for initial in (None, before, fresh, attention.initial_state(net)):
        assert attention.moved_share(net, initial) == 0.0
    name, m = attention.sal_layers(net)[2]
    m.logits[...] = rng.random(m.logits.shape, dtype=np.float32)
    expect = np.mean(m.logits.reshape(-1, 9).argmax(1)
                     != before[f"{name}.logits"].reshape(-1, 9).argmax(1))
    rows = attention.shift_change(net, before)
    assert rows[2]["moved_share"] == pytest.approx(expect) and expect > 0
    for initial in (None, fresh):
        assert attention.shift_change(net, initial)[2]["moved"] == rows[2]["moved"]
    with pytest.raises(KeyError, match="logits"):
        attention.shift_change(net, {})
    with pytest.raises(ValueError, match="other SAL layers"):
        attention.shift_change(net, salnp.models.resnet(14, 4, "sal"))
    with pytest.raises(TypeError, match="initial must be"):
        attention.shift_change(net, 3)
    assert attention.shift_change(salnp.models.resnet(8, 4, "cl"), None) == []
    assert attention.moved_share(salnp.models.resnet(8, 4, "cl")) is None
    with pytest.raises(ValueError, match="no SAL layers"):
        viz.attention_change(salnp.models.resnet(8, 4, "cl"))


def test_initial_state_is_the_seeds_initial_network(rng, tmp_path):
    """resnet(**net.config) rebuilds the initial logits of the seed, after training and
    after a save/load round trip; another seed gives others."""
    net = salnp.models.resnet(8, 4, "sal", seed=7, in_channels=1, num_classes=3)
    start = {k: v for k, v in net.state_dict().items() if k.endswith(".logits")}
    images = rng.integers(0, 256, (24, 1, 10, 10), dtype=np.uint8)
    data = salnp.data.Dataset(images, rng.integers(0, 3, 24), name="random")
    salnp.fit(net, data, None, epochs=1, batch_size=8, lr=0.5, progress=False, threads=1)
    assert any(not np.array_equal(v, net.state_dict()[k]) for k, v in start.items())  # trained
    got = attention.initial_state(net)
    assert got.keys() == start.keys()
    for k in start:
        np.testing.assert_array_equal(got[k], start[k])
    salnp.save(net, tmp_path / "net.npz")
    back = attention.initial_state(salnp.load(tmp_path / "net.npz"))
    assert all(np.array_equal(back[k], start[k]) for k in start)
    other = attention.initial_state(salnp.models.resnet(8, 4, "sal", seed=8, in_channels=1,
                                                        num_classes=3))
    assert not any(np.array_equal(other[k], start[k]) for k in start)
    with pytest.raises(TypeError, match="salnp network"):
        attention.initial_state({})


# ---------------------------------------------------------------- axes and units
def _visible_ticks(ax):
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if lo <= t <= hi]


@pytest.mark.parametrize("n", [1, 3, 12])
def test_epoch_axes_have_integer_ticks(n):
    hist = [dict(h, epoch=e) for e, h in zip(range(1, n + 1), HISTORY * 3)]
    for fn in (viz.training_curves, viz.attention_curves):
        ax = fn(hist, ax=_ax())
        ax.figure.canvas.draw()
        ticks = _visible_ticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), (fn.__name__, ticks)
        assert set(range(1, n + 1)) >= set(int(t) for t in ticks) - {0, n + 1}
        assert ax.get_xlabel() == "epoch"


def test_units_are_percent():
    ax = viz.training_curves(HISTORY, ax=_ax())
    assert "%" in ax.get_ylabel()
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(),
                               [100 * h["test_acc"] for h in HISTORY])
    assert [ln.get_label() for ln in ax.get_lines()] == ["train", "test, soft", "test, binarised"]
    ax = viz.attention_curves(HISTORY + [dict(HISTORY[-1], epoch=5, attn_moved=0.25)], ax=_ax())
    assert [ln.get_label() for ln in ax.get_lines()] == ["beta (left axis)"]
    assert ax.get_yscale() == "log"
    right = ax.right
    assert "%" in right.get_ylabel() and right.get_ylim() == (0, 105)
    labels = [ln.get_label() for ln in right.get_lines()]
    assert labels == ["mean max p", "slices with max p > 0.5", "allowed positions / 9",
                      "slices moved since init"]
    np.testing.assert_allclose(right.get_lines()[0].get_ydata()[:4],
                               [100 * h["attn_maxp"] for h in HISTORY])
    assert right.get_lines()[3].get_ydata()[-1] == pytest.approx(25.0)
    ax2 = viz.attention_curves([dict(h, attn_allowed=9.0, beta=20.0) for h in HISTORY], ax=_ax())
    assert len(ax2.right.get_lines()) == 2 and ax2.get_yscale() == "linear"   # constant beta
    ax3 = viz.training_curves(HISTORY, ax=_ax(), keys=("test_acc",), label="SAL w16")
    assert [ln.get_label() for ln in ax3.get_lines()] == ["SAL w16"]
    with pytest.raises(ValueError, match="no beta"):
        viz.attention_curves([dict(h, beta=None) for h in HISTORY], ax=_ax())
    with pytest.raises(ValueError, match="history"):
        viz.training_curves([], ax=_ax())


def test_attention_heatmap_and_grid_share_one_diverging_scale(sal_net):
    ax = _ax()
    name = viz.sal_layers(sal_net)[0][0]
    assert viz.attention_heatmap(sal_net, name, ax=ax, colorbar=True, vmax=50.0) is ax
    im = ax.images[0]
    h = viz.chosen_positions(sal_net, name)
    np.testing.assert_allclose(im.get_array(), 100 * h)
    assert (im.norm.vmin, im.norm.vcenter, im.norm.vmax) == (0.0, pytest.approx(100 / 9), 50.0)
    assert len(ax.texts) == 9 and ax.get_title() == name
    assert [t.get_text() for t in ax.texts][:1] == [f"{100 * h[0, 0]:.0f}"]
    assert len(ax.figure.axes) == 2                  # the colour bar
    assert 0 <= h.sum() <= 1 + 1e-9
    assert viz.chosen_positions(sal_net, name, hard=False).sum() == pytest.approx(1, abs=1e-5)
    with pytest.raises(KeyError, match="not a SAL layer"):
        viz.chosen_positions(sal_net, "nope")
    fig = viz.attention_grid(sal_net, cols=3)
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == len(viz.sal_layers(sal_net))
    norms = {(a.images[0].norm.vmin, a.images[0].norm.vcenter, a.images[0].norm.vmax)
             for a in panels}
    assert len(norms) == 1                           # one colour scale for all panels
    vmax = max(100 * viz.chosen_positions(sal_net, m).max() for _, m in viz.sal_layers(sal_net))
    assert norms.pop()[2] == pytest.approx(max(vmax, 200 / 9))
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    assert "beta = 30" in fig._suptitle.get_text()
    fig2 = viz.attention_grid(sal_net, colorbar=False, hard=False)
    assert not any(a.get_label() == "<colorbar>" for a in fig2.axes)
    with pytest.raises(ValueError, match="no SAL layers"):
        viz.attention_grid(salnp.models.resnet(8, 4, "cl"))


def test_slice_attention_panels_have_equal_widths(sal_net):
    layers = viz.sal_layers(sal_net)
    names = [layers[0][0], layers[2][0], layers[-1][0]]     # 4, 4 and 16 input channels
    assert [m.cin for n, m in layers if n in names] == [4, 4, 16]
    fig = viz.slice_attention(sal_net, names, out_channels=3, max_inputs=12)
    fig.canvas.draw()
    panels = [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]
    assert len(panels) == 3
    widths = [a.get_window_extent().width for a in panels]
    assert max(widths) - min(widths) < 1.0, widths
    img = panels[0].images[0].get_array()
    assert img.shape == (4 * 3 - 1, 4 * 12 - 1)              # padded to 12 columns
    p = layers[0][1].probs(sal_net.beta)
    np.testing.assert_allclose(img[4:7, 4:7], p[1, 1].reshape(3, 3))
    assert np.ma.is_masked(img[0, 4 * 4 + 1]) or np.isnan(img[0, 4 * 4 + 1])   # padding
    assert len([a for a in fig.axes if a.get_label() == "<colorbar>"]) == 1
    # the axes-level tiles: pruned positions blank, a bad output channel refused
    m = layers[1][1]
    m.mask[0, 0, 4] = 0
    try:
        ax = viz.slice_tiles(sal_net, layers[1][0], ax=_ax(), out_channels=[0])
        v = ax.images[0].get_array()[1, 1]
        assert np.ma.is_masked(v) or np.isnan(v)
    finally:
        m.mask[...] = 1
    with pytest.raises(ValueError, match="output channel"):
        viz.slice_tiles(sal_net, layers[1][0], ax=_ax(), out_channels=[99])
    assert len(viz.slice_attention(sal_net).axes) == 4       # first, middle, last + colour bar


def test_shift_histogram_sal(sal_net):
    kind, names, counts = viz.shift_counts(sal_net)
    assert kind == "sal" and counts.shape == (len(names), 10)
    for (name, m), row in zip(viz.sal_layers(sal_net), counts):
        assert row.sum() == m.logits.shape[0] * m.logits.shape[1]
    ax = viz.shift_histogram(sal_net, ax=_ax())
    data = ax.images[0].get_array()
    assert data.shape == (len(names), 9)
    np.testing.assert_allclose(data, 100 * counts[:, :9] / counts.sum(1, keepdims=True))
    assert len(ax.get_yticklabels()) == len(names)
    ax = viz.shift_histogram(sal_net, ax=_ax(), style="bars")
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    extra = int(counts[:, 9].any())
    assert len(bars) == len(names) * (9 + extra)
    widths = np.array([b.get_width() for b in bars]).reshape(9 + extra, len(names))
    np.testing.assert_allclose(widths.sum(0), 100.0)     # shares per layer, in %
    assert "%" in ax.get_xlabel()
    with pytest.raises(ValueError, match="style"):
        viz.shift_histogram(sal_net, ax=_ax(), style="pie")


def test_shift_histogram_sl_and_asl_with_a_discrete_legend():
    sl = salnp.models.resnet(8, 4, "sl", expansion=3)
    kind, names, counts = viz.shift_counts(sl)
    assert kind == "sl"
    # the fixed assignment: 12 mid channels -> 9 shifted + 3 at (0, 0) -> centre count 4
    assert counts[0].tolist() == [1, 1, 1, 1, 4, 1, 1, 1, 1, 0]
    ax = viz.shift_histogram(sl, ax=_ax(), normalize=False)
    assert "SL fixed" in ax.get_title()
    asl = salnp.models.resnet(8, 4, "asl")
    ax = _ax()
    assert viz.shift_histogram(asl, ax=ax) is ax        # dispatches to asl_shifts
    offs = viz.shift_counts(asl)[2]
    sc = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in sc] == [len(o) for o in offs]   # one per layer
    assert len(ax.figure.axes) == 1                     # no colour bar ...
    legend = ax.get_legend()                            # ... a legend of the layers
    assert len(legend.get_texts()) == len(offs) == 3
    colours = {tuple(c.get_facecolor()[0][:3]) for c in sc}
    assert len(colours) == len(offs)
    ax = viz.asl_shifts(asl, ax=_ax(), style="hist2d")
    assert ax.collections                               # the QuadMesh
    with pytest.raises(ValueError, match="no shift layers"):
        viz.shift_histogram(salnp.models.resnet(8, 4, "cl"), ax=_ax())
    with pytest.raises(ValueError, match="ASL"):
        viz.asl_shifts(sl, ax=_ax())


# ---------------------------------------------------------------- runs
def _boxes_overlap(a, b):
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


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
    assert ax.get_xscale() == "log" and "%" in ax.get_ylabel()
    pts = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(pts) == 4                             # 3 runs + the SAL run's soft point
    assert [t.get_text() for t in ax.texts] == ["CL", "SAL-20 w16", "SL"]
    assert tuple(pts[0].get_offsets()[0]) == (4.08e7, pytest.approx(91.0))
    with pytest.raises(ValueError, match="needs macs"):
        viz.accuracy_vs_macs([dict(name="x", accuracy=0.5)], ax=_ax())
    with pytest.raises(TypeError):
        viz.load_runs([3])
    with pytest.raises(TypeError, match="salnp.sweep.load"):
        viz.accuracy_vs_macs(str(tmp_path), ax=_ax())


def test_one_run_does_not_zoom_in():
    """78.15 % soft and 78.14 % binarised: the axis spans at least 2 points, not 0.01."""
    ax = viz.accuracy_vs_macs([dict(name="main", macs=3.73e6, test_acc=0.7815,
                                    test_acc_hard=0.7814)], ax=_ax())
    lo, hi = ax.get_ylim()
    assert hi - lo >= 2.0 and lo < 78.14 < 78.15 < hi
    lo, hi = ax.get_xlim()
    assert hi / lo >= 3                              # and a readable range of MACs
    ax = viz.accuracy_vs_macs([dict(name="main", macs=3.73e6, accuracy=0.78)], ax=_ax(),
                              percent=False)
    assert np.diff(ax.get_ylim())[0] >= 0.02 and "fraction" in ax.get_ylabel()


def test_point_labels_do_not_overlap():
    runs = [dict(name=f"SAL-20 w{16 + i}", macs=3.7e6 * (1 + 0.02 * i), accuracy=0.78 + 0.001 * i)
            for i in range(6)] + [dict(name="CL-20 w16", macs=4.08e7, accuracy=0.91)]
    fig, ax = plt.subplots(figsize=(6, 4))
    viz.accuracy_vs_macs(runs, ax=ax)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, r) for t in ax.texts]   # the text, not its leader line
    assert len(boxes) == 7
    clashes = [(ax.texts[i].get_text(), ax.texts[j].get_text())
               for i in range(len(boxes)) for j in range(i) if _boxes_overlap(boxes[i], boxes[j])]
    assert not clashes


def test_run_figure_writes_pngs_without_pyplot(tmp_path, sal_net):
    backend = mpl.get_backend()
    open_before = plt.get_fignums()
    names = viz.run_figure(sal_net, HISTORY, str(tmp_path))
    assert names == "attention.png, curves.png"
    for n in ("attention.png", "curves.png"):
        assert (tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == open_before and mpl.get_backend() == backend
    cl = salnp.models.resnet(8, 4, "cl")
    hist = [{k: v for k, v in h.items() if not k.startswith(("attn", "beta", "test_acc_hard"))}
            for h in HISTORY]
    assert viz.run_figure(cl, hist, str(tmp_path / ".")) == "curves.png"


def test_kept_taps_figure_from_a_real_history():
    """fit records the taps SAL training computes (per layer, per epoch and at step 0);
    viz.kept_taps draws them against the step with the dense and shift references."""
    train = salnp.data.Dataset(np.random.default_rng(0).integers(0, 256, (96, 3, 12, 12),
                                                                  dtype=np.uint8),
                               np.arange(96) % 10)
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    h = salnp.fit(net, train, epochs=2, batch_size=32, beta=(20, 70), progress=False)
    assert set(h[0]["taps_kept_start"]) == set(h[-1]["taps_kept"]) == {
        n for n, m in net.named_modules() if isinstance(m, salnp.models.SALConv2d)}
    assert [r["step"] for r in h] == [3, 6]
    assert all(1 <= v <= 9 for r in h for v in r["taps_kept"].values())
    assert salnp.attention.kept_taps(net) == h[-1]["taps_kept"]
    fig, ax = plt.subplots()
    assert salnp.viz.kept_taps(h, ax=ax) is ax
    xs = ax.get_lines()[0].get_xdata()
    assert list(xs) == [0, 3, 6] and ax.get_ylim()[1] >= 9
    plt.close(fig)
    with pytest.raises(ValueError, match="no taps_kept"):
        salnp.viz.kept_taps([{"epoch": 1}])
