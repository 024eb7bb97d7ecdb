"""Plots of what shift networks learn and of training runs (matplotlib: the notebooks
extra).  seaborn's split: axes-level functions take ``ax=`` (None: the current axes,
``plt.gca()``) and return it; figure-level functions draw a grid of panels, take ``fig=``
(None: a new pyplot figure) and return the figure.  No function calls ``plt.show()`` or
selects a backend, and an axes-level call after a figure-level one (``ax=None``) starts a
new figure instead of drawing into the grid's last panel.

Figure-level:
    salnp.viz.attention_change(net)                # what training changed: chosen shifts
                                                   #   vs uniform, moved share per layer
    salnp.viz.attention_grid(net)                  # per SAL layer: 3x3 share per shift
    salnp.viz.slice_attention(net, ["layer1.0.conv1", "layer3.2.conv2"])   # p of each slice
Axes-level:
    salnp.viz.shift_distribution(net, initial)     # chosen shifts, all layers, vs 1/9
    salnp.viz.shift_preference(net)                # layers x shifts, white = uniform
    salnp.viz.shifts_moved(net, initial)           # share of slices moved, per layer
    salnp.viz.attention_heatmap(net, layer)        # one layer's 3x3 shares
    salnp.viz.slice_tiles(net, layer)              # one layer's slices
    salnp.viz.shift_histogram(net)                 # layers x 9 shift shares (SAL, SL); ASL:
    salnp.viz.asl_shifts(net)                      #   a scatter of the learned offsets
    salnp.viz.training_curves(history)             # accuracy (%) per epoch
    salnp.viz.attention_curves(history)            # beta and attention sharpness per epoch
    salnp.viz.accuracy_vs_macs(runs)               # runs: dicts or summary.json paths, or a
    salnp.viz.accuracy_vs_params(result)           #   sweep's rows (error bars over seeds)

Units: accuracies and shares in % everywhere.  Positions q = 0..8 of a 3x3 kernel are the
shifts (dy, dx) = (q // 3 - 1, q % 3 - 1).  A slice's chosen shift is the argmax of its
attention under its pruning mask (salnp.attention, which computes the numbers without
matplotlib); "binarised" counts only slices with max p > 0.5 at the network's beta.
Initial choices are uniform (U[0, 1) logits): every shift 1/9 = 11.1 %, the reference
line and the white of the diverging colour maps.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np

from .attention import (CHANCE_MOVED, UNIFORM, chosen_shifts, initial_state, sal_layers,
                        shift_change)
from .models import ActiveShift, Shift
from .summary import seed_groups

__all__ = ["sal_layers", "chosen_positions", "attention_heatmap", "attention_grid",
           "shift_distribution", "shift_preference", "shifts_moved", "attention_change",
           "slice_tiles", "slice_attention", "training_curves", "shift_counts",
           "shift_histogram", "asl_shifts", "attention_curves", "kept_taps", "load_runs",
           "accuracy_vs_macs", "accuracy_vs_params", "run_figure", "POSITION_LABELS"]

_TICKS = ["-1", "0", "+1"]
POSITION_LABELS = [f"({q // 3 - 1:+d},{q % 3 - 1:+d})" for q in range(9)]   # (dy, dx)
_ARROWS = ["\u2196", "\u2191", "\u2197", "\u2190", "\u00b7", "\u2192", "\u2199", "\u2193",
           "\u2198"]
SHIFT_LABELS = [f"{a}\n{p}" for a, p in zip(_ARROWS, POSITION_LABELS)]
_U = 100.0 * UNIFORM        # the uniform share in %


# ---------------------------------------------------------------- conventions
def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("salnp.viz needs matplotlib: pip install 'salnp[notebooks]'") from e
    return plt


def _axes(ax):
    """ax, or the current axes; a figure-level figure of salnp.viz is never drawn into
    (a new figure instead)."""
    if ax is not None:
        if not hasattr(ax, "figure") or not hasattr(ax, "plot"):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    plt = _plt()
    if getattr(plt.gcf(), "_salnp_figure_level", False):
        plt.figure()
    return plt.gca()


def _figure(fig, figsize):
    """fig, or a new pyplot figure of figsize (constrained layout); fig must be empty.
    The figure is marked as figure-level (see _axes)."""
    if fig is None:
        fig = _plt().figure(figsize=figsize, layout="constrained")
    else:
        from matplotlib.figure import FigureBase

        if not isinstance(fig, FigureBase):
            raise TypeError(f"fig must be a matplotlib Figure (or SubFigure) or None, got "
                            f"{type(fig).__name__}")
        if fig.axes:
            raise ValueError("fig must be empty (a figure-level function draws the whole "
                             "figure); pass fig=None for a new one")
        if hasattr(fig, "set_layout_engine") and fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
    fig._salnp_figure_level = True
    return fig


@contextlib.contextmanager
def _keep_current(ax):
    """Axes created inside (twins, colour bars, legends' axes) do not become the current
    axes of ax's figure."""
    prev = ax.figure.gca()
    try:
        yield
    finally:
        ax.figure.sca(prev)


def _epoch_axis(ax, epochs):
    """Integer ticks on the x (epoch) axis, at least half an epoch beyond the first and
    last (one epoch alone gets a tick, not a 0.01-wide range)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, min(epochs) - 0.5), max(hi, max(epochs) + 0.5))
    ax.set_xlabel("epoch")


def _uniform_norm(vmax):
    """Diverging colour norm in %: 0 .. uniform (white) .. vmax."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vmin=0.0, vcenter=_U, vmax=max(float(vmax), 2 * _U))


def _short(name):
    return name.replace("layer", "L").replace(".conv", ".c").replace(".shift", ".s")


def _sal_module(net, layer):
    if isinstance(layer, str):
        layers = dict(sal_layers(net))
        if layer not in layers:
            raise KeyError(f"{layer!r} is not a SAL layer of this network; SAL layers: "
                           f"{list(layers)[:4]}{' ...' if len(layers) > 4 else ''}")
        return layers[layer]
    return layer


def _need_sal(net, fn):
    layers = sal_layers(net)
    if not layers:
        raise ValueError(f"{fn}: the network has no SAL layers")
    return layers


# ---------------------------------------------------------------- one SAL layer
def chosen_positions(net, layer, hard=True):
    """3x3 array: for SAL layer `layer` (a name or module), the fraction (0..1) of kernel
    slices whose attention picks each position (hard: argmax of slices with max p > 0.5,
    the binarised choice; soft: the mean probability)."""
    m = _sal_module(net, layer)
    q = m.probs(net.beta).reshape(-1, 9)
    if not hard:
        return q.mean(0).reshape(3, 3)
    keep = q.max(1) > 0.5
    counts = np.bincount(q[keep].argmax(1), minlength=9).astype(float)
    return (counts / max(len(q), 1)).reshape(3, 3)


def _grid_ticks(ax, fontsize=None):
    ax.set_xticks([0, 1, 2], _TICKS, fontsize=fontsize)
    ax.set_yticks([0, 1, 2], _TICKS, fontsize=fontsize)
    ax.set_xlabel("dx", fontsize=fontsize)
    ax.set_ylabel("dy", fontsize=fontsize)


def attention_heatmap(net, layer, ax=None, hard=True, cmap="RdBu_r", annotate=True,
                      vmax=None, colorbar=False):
    """3x3 map of the share (%) of a SAL layer's slices choosing each shift (hard: the
    binarised choices; soft: the mean attention), on a diverging scale whose white is
    the uniform 11.1 %; vmax (%) fixes the top (panels with one vmax compare).  Returns ax."""
    ax = _axes(ax)
    h = 100.0 * chosen_positions(net, layer, hard)
    im = ax.imshow(h, cmap=cmap, norm=_uniform_norm(vmax if vmax is not None else h.max()))
    _grid_ticks(ax)
    name = layer if isinstance(layer, str) else type(layer).__name__
    ax.set_title(name, fontsize=8)
    if annotate:
        for (i, j), v in np.ndenumerate(h):
            far = not 0.2 < im.norm(v) < 0.8       # the dark ends of the diverging map
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="w" if far else "k")
    if colorbar:
        with _keep_current(ax):
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                               label="share of slices (%)" if hard else "mean p (%)")
    return ax


def attention_grid(net, hard=True, cols=6, title=None, colorbar=True, cmap="RdBu_r",
                   fig=None):
    """Figure-level: one attention_heatmap per SAL layer in network order, on one
    diverging colour scale (white: uniform 1/9 = 11.1 %) with one colour bar.  fig: an
    empty figure to draw into (None: a new one).  Returns the figure."""
    layers = _need_sal(net, "attention_grid")
    cols = max(1, min(int(cols), len(layers)))
    rows = -(-len(layers) // cols)
    vmax = max(100.0 * float(chosen_positions(net, m, hard).max()) for _, m in layers)
    fig = _figure(fig, (1.9 * cols + (0.8 if colorbar else 0), 1.9 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, m) in zip(axes.flat, layers):
        attention_heatmap(net, name, ax=ax, hard=hard, annotate=False, vmax=vmax, cmap=cmap)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.label.set_fontsize(6)
        ax.yaxis.label.set_fontsize(6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    what = "share of slices choosing each shift (binarised)" if hard else \
        "mean attention per position"
    fig.suptitle(title or f"SAL: {what}, beta = {net.beta:.3g}; white = uniform 11.1 %",
                 fontsize=10)
    if colorbar:
        fig.colorbar(axes.flat[0].images[0], ax=list(axes.flat), fraction=0.02, pad=0.02,
                     label="share of slices (%)" if hard else "mean p (%)")
    return fig


# ---------------------------------------------------------------- what training changed
def _change(net, initial, fn):
    _need_sal(net, fn)
    return shift_change(net, initial)


def _shift_axis(ax, labels=True):
    ax.set_xticks(range(9), SHIFT_LABELS if labels else [""] * 9, fontsize=7)
    ax.set_xlim(-0.5, 8.5)


def shift_distribution(net, initial=None, ax=None, layer=None):
    """Bars: the share (%) of SAL slices choosing each of the 9 shifts, at
    initialisation (grey) and now (red), against the uniform 1/9 (dashed).  All layers
    together, or one (layer: a name).  initial: the network before training, its state
    dict, or None (rebuilt from net.config's seed; salnp.attention).  Returns ax."""
    rows = _change(net, initial, "shift_distribution")
    if layer is not None:
        rows = [r for r in rows if r["name"] == layer]
        if not rows:
            raise KeyError(f"shift_distribution: {layer!r} is not a SAL layer of this network")
    ax = _axes(ax)
    n = sum(r["slices"] for r in rows)
    now = 100.0 * sum(r["counts"] for r in rows) / n
    init = 100.0 * sum(r["counts_initial"] for r in rows) / n
    x = np.arange(9)
    ax.bar(x - 0.2, init, 0.4, color="0.7", label="at initialisation")
    ax.bar(x + 0.2, now, 0.4, color="C3", label="now")
    ax.axhline(_U, color="k", ls="--", lw=0.8, label="uniform 1/9 = 11.1 %")
    _shift_axis(ax)
    ax.set_ylabel("share of slices (%)")
    ax.set_ylim(0, max(2 * _U, 1.15 * max(now.max(), init.max())))
    where = layer if layer is not None else f"all {len(rows)} SAL layers"
    ax.set_title(f"chosen shift of {n:,} slices ({where})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3, frameon=False)
    return ax


def shift_preference(net, ax=None, annotate=True, colorbar=True, cmap="RdBu_r"):
    """Layers x 9 shifts: the share (%) of each SAL layer's slices choosing each shift now,
    on a diverging scale whose white is the uniform 11.1 % (red: preferred, blue:
    avoided), annotated in %.  Returns ax."""
    names = [n for n, _ in _need_sal(net, "shift_preference")]
    ax = _axes(ax)
    chosen = chosen_shifts(net)
    data = 100.0 * np.array([np.bincount(chosen[n], minlength=9) / chosen[n].size
                             for n in names])
    im = ax.imshow(data, aspect="auto", cmap=cmap, norm=_uniform_norm(data.max()),
                   interpolation="nearest")
    _shift_axis(ax)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if annotate:
        for (i, j), v in np.ndenumerate(data):
            far = not 0.2 < im.norm(v) < 0.8
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                    color="w" if far else "k")
    if colorbar:
        with _keep_current(ax):
            ax.figure.colorbar(im, ax=ax, location="bottom", fraction=0.05, pad=0.02,
                               aspect=40, label="share of the layer's slices choosing the "
                               "shift (%); white = uniform 11.1 %")
    ax.set_title(f"chosen shift per layer (beta = {net.beta:.3g})", fontsize=9)
    return ax


def shifts_moved(net, initial=None, ax=None):
    """Horizontal bars: per SAL layer, the share (%) of slices whose chosen shift moved
    since initialisation; solid line: all layers; dotted: 8/9 = 88.9 %, what choices
    re-drawn at random would give.  initial as in shift_distribution.  Returns ax."""
    rows = _change(net, initial, "shifts_moved")
    ax = _axes(ax)
    y = np.arange(len(rows))
    share = np.array([100.0 * r["moved_share"] for r in rows])
    total = 100.0 * sum(r["moved"] for r in rows) / sum(r["slices"] for r in rows)
    ax.barh(y, share, 0.7, color="C0")
    for yi, v in zip(y, share):
        ax.text(v + 1.5, yi, f"{v:.1f}", va="center", fontsize=6)
    ax.axvline(total, color="C3", lw=1.2, label=f"all layers: {total:.1f} %")
    ax.axvline(100.0 * CHANCE_MOVED, color="k", ls=":", lw=1.0,
               label="random re-draw: 88.9 %")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("slices whose shift moved since initialisation (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("moved since initialisation", fontsize=9)
    return ax


def attention_change(net, initial=None, fig=None):
    """Figure-level, the story of what SAL training changed: the chosen-shift
    distribution of all slices at initialisation and now against the uniform 1/9 (top),
    per layer the share choosing each shift (white = uniform; left) and the share of
    slices whose shift moved since initialisation (right).  initial: the network before
    training, its state dict (net.state_dict() before fit, salnp.attention.initial_state)
    or None: rebuilt from net.config's seed.  The numbers: salnp.attention.shift_change.
    Returns the figure."""
    _need_sal(net, "attention_change")
    if initial is None:
        initial = initial_state(net)          # once for the three panels
    rows = shift_change(net, initial)
    n = sum(r["slices"] for r in rows)
    moved = 100.0 * sum(r["moved"] for r in rows) / n
    decided = 100.0 * sum(r["decided"] * r["slices"] for r in rows) / n
    fig = _figure(fig, (11, 3.6 + 0.27 * len(rows)))
    gs = fig.add_gridspec(2, 2, height_ratios=[1.4, max(2.0, 0.3 * len(rows))],
                          width_ratios=[2.6, 1.3])
    top = fig.add_subplot(gs[0, 0])
    left = fig.add_subplot(gs[1, 0], sharex=top)
    right = fig.add_subplot(gs[1, 1], sharey=left)
    note = fig.add_subplot(gs[0, 1])
    shift_distribution(net, initial, ax=top)
    shift_preference(net, ax=left)
    left.tick_params(labelbottom=False)
    left.set_title("")
    shifts_moved(net, initial, ax=right)
    right.tick_params(labelleft=False)
    right.set_title("")
    note.axis("off")
    note.text(0.0, 0.95, f"{n:,} slices in {len(rows)} SAL layers\n"
              f"moved since initialisation: {moved:.1f} %\n"
              f"  (a random re-draw: 88.9 %)\n"
              f"binarised (max p > 0.5): {decided:.1f} %\n"
              f"beta = {net.beta:.3g}", va="top", fontsize=9, family="monospace",
              transform=note.transAxes)
    fig.suptitle(f"What the SAL attention learned: {moved:.1f} % of slices moved their "
                 "shift since initialisation", fontsize=11)
    return fig


# ---------------------------------------------------------------- the attention itself
def _slice_image(net, layer, out_channels, max_inputs, columns=None):
    m = _sal_module(net, layer)
    p = m.probs(net.beta).astype(float)
    p[m.mask == 0] = np.nan
    if p.shape[0] == 1:
        outs = [0]
    elif isinstance(out_channels, (int, np.integer)):
        outs = list(range(min(int(out_channels), p.shape[0])))
    else:
        outs = [int(o) for o in out_channels]
    for o in outs:
        if not 0 <= o < p.shape[0]:
            raise ValueError(f"slice_attention: output channel {o} outside [0, {p.shape[0]})")
    nin = min(p.shape[1], int(max_inputs))
    cols = nin if columns is None else max(int(columns), nin)
    img = np.full((4 * len(outs) - 1, 4 * cols - 1), np.nan)
    for r, o in enumerate(outs):
        for c in range(nin):
            img[4 * r:4 * r + 3, 4 * c:4 * c + 3] = p[o, c].reshape(3, 3)
    return img, outs, nin, p.shape[0] == 1


def slice_tiles(net, layer, ax=None, out_channels=8, max_inputs=32, columns=None,
                cmap="magma", colorbar=False):
    """One SAL layer's attention itself: every kernel slice's 3x3 probabilities as a
    tile, a row of tiles per output channel (columns: input channels).  out_channels: an
    int n (the first n) or a list; shared layers have one row.  At most max_inputs input
    channels; columns pads the image to that many tile columns (equal widths side by
    side).  Pruned (masked) positions are grey.  Returns ax."""
    ax = _axes(ax)
    img, outs, nin, shared = _slice_image(net, layer, out_channels, max_inputs, columns)
    cm = _plt().get_cmap(cmap).with_extremes(bad="0.75")   # grey: pruned, gaps, padding
    im = ax.imshow(img, cmap=cm, vmin=0, vmax=1, interpolation="nearest")
    step = max(1, nin // 8)
    ax.set_xticks([4 * c + 1 for c in range(0, nin, step)],
                  [str(c) for c in range(0, nin, step)], fontsize=6)
    ax.set_yticks([4 * r + 1 for r in range(len(outs))],
                  ["shared" if shared else str(o) for o in outs], fontsize=6)
    ax.set_xlabel("input channel", fontsize=7)
    ax.set_ylabel("output channel", fontsize=7)
    name = layer if isinstance(layer, str) else type(layer).__name__
    what = f"output {outs[0]}" if len(outs) == 1 else f"outputs {outs[0]}..{outs[-1]}"
    ax.set_title(f"{name}: {what}, {nin} input slices", fontsize=8)
    if colorbar:
        with _keep_current(ax):
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="p")
    return ax


def slice_attention(net, layers=None, out_channels=6, max_inputs=24, cmap="magma", fig=None):
    """Figure-level: slice_tiles of several SAL layers (a name or a list; None: the
    first, middle and last), one panel per layer stacked, all of equal width (one tile
    grid, narrower layers padded grey) with one colour bar for p.  Returns the figure."""
    all_layers = _need_sal(net, "slice_attention")
    if layers is None:
        names = [all_layers[0][0], all_layers[len(all_layers) // 2][0], all_layers[-1][0]]
        names = list(dict.fromkeys(names))
    elif isinstance(layers, str):
        names = [layers]
    else:
        names = list(layers)
    for name in names:
        _sal_module(net, name)
    mods = dict(all_layers)
    cols = max(min(mods[n].cin, int(max_inputs)) for n in names)
    nrows = [1 if mods[n].shared else
             (min(int(out_channels), mods[n].cout) if isinstance(out_channels, (int, np.integer))
              else len(out_channels)) for n in names]
    fig = _figure(fig, (min(14.0, 0.28 * cols + 2.0), sum(0.28 * r + 0.8 for r in nrows) + 0.6))
    axes = fig.subplots(len(names), 1, squeeze=False, height_ratios=[r + 1.2 for r in nrows])[:, 0]
    for ax, name in zip(axes, names):
        slice_tiles(net, name, ax=ax, out_channels=out_channels, max_inputs=max_inputs,
                    columns=cols, cmap=cmap)
    fig.colorbar(axes[0].images[0], ax=list(axes), fraction=0.03, pad=0.02,
                 label="attention p (grey: pruned position or padding)")
    fig.suptitle(f"SAL attention of single kernel slices (beta = {net.beta:.3g})", fontsize=10)
    return fig


# ---------------------------------------------------------------- shifts across the network
def shift_counts(net, hard=True):
    """(kind, names, counts) for the shift layers in network order.

    SAL: counts (L, 10): per layer the number of kernel slices (shared: input channels)
    whose binarised attention picks each of the 9 positions, then those with no p > 0.5
    (pruned at export; hard=False: the summed probabilities instead, last column 0).
    SL: counts (L, 10) of channels per fixed offset (the last column: offsets outside the
    3x3 neighbourhood).  ASL: kind "asl", counts = list of (C, 2) learned (dy, dx).
    Networks without shift layers (CL): ("cl", [], empty)."""
    sal = sal_layers(net)
    if sal:
        names, rows = [], []
        for name, m in sal:
            q = m.probs(net.beta).reshape(-1, 9).astype(float)
            if hard:
                keep = q.max(1) > 0.5
                c = np.bincount(q[keep].argmax(1), minlength=9).astype(float)
                rows.append(np.append(c, float((~keep).sum())))
            else:
                rows.append(np.append(q.sum(0), 0.0))
            names.append(name)
        return "sal", names, np.array(rows)
    sl = [(n, m) for n, m in net.named_modules() if isinstance(m, Shift)]
    if sl:
        rows = []
        for _, m in sl:
            off = np.asarray(m.offsets, np.int64)
            inside = (np.abs(off) <= 1).all(1)
            q = (off[inside, 0] + 1) * 3 + off[inside, 1] + 1
            rows.append(np.append(np.bincount(q, minlength=9), (~inside).sum()).astype(float))
        return "sl", [n for n, _ in sl], np.array(rows)
    asl = [(n, m) for n, m in net.named_modules() if isinstance(m, ActiveShift)]
    if asl:
        return "asl", [n for n, _ in asl], [np.array(m.shift, np.float64) for _, m in asl]
    return "cl", [], np.zeros((0, 10))


def shift_histogram(net, ax=None, style="heatmap", normalize=True, hard=True, cmap=None):
    """Shift directions per layer across the network.  SAL (binarised choices) and SL (the
    fixed assignment): style "heatmap" (layers x 9 positions; normalised: a diverging
    scale, white = uniform 11.1 %) or "bars" (stacked horizontal bars per layer; SAL's
    pruned slices in grey); normalize: shares (%) of each layer's slices/channels
    instead of counts.  ASL: asl_shifts (a scatter of the learned offsets).  Returns ax."""
    if style not in ("heatmap", "bars"):
        raise ValueError(f"shift_histogram: style={style!r}: must be 'heatmap' or 'bars'")
    kind, names, counts = shift_counts(net, hard)
    if kind == "asl":
        return asl_shifts(net, ax=ax)
    if kind == "cl":
        raise ValueError("shift_histogram: the network has no shift layers (CL)")
    ax = _axes(ax)
    extra = counts[:, 9]
    data = counts.copy()
    if normalize:
        data = 100.0 * data / np.maximum(data.sum(1, keepdims=True), 1)
    short = [_short(n) for n in names]
    unit = "share (%)" if normalize else "count"
    if style == "heatmap":
        if normalize:
            im = ax.imshow(data[:, :9], aspect="auto", cmap=cmap or "RdBu_r",
                           norm=_uniform_norm(data[:, :9].max()), interpolation="nearest")
        else:
            im = ax.imshow(data[:, :9], aspect="auto", cmap=cmap or "viridis", vmin=0,
                           interpolation="nearest")
        ax.set_xticks(range(9), SHIFT_LABELS, fontsize=6)
        ax.set_yticks(range(len(names)), short, fontsize=6)
        ax.set_xlabel("shift")
        with _keep_current(ax):
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                               label=unit + ("; white = uniform" if normalize else ""))
    else:
        plt = _plt()
        colours = plt.get_cmap("tab10")
        left = np.zeros(len(names))
        y = np.arange(len(names))
        for q in range(9):
            ax.barh(y, data[:, q], left=left, color=colours(q), label=POSITION_LABELS[q])
            left += data[:, q]
        if extra.any():
            ax.barh(y, data[:, 9], left=left, color="0.8",
                    label="pruned" if kind == "sal" else "outside 3x3")
        ax.set_yticks(y, short, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.legend(fontsize=6, title="(dy, dx)", title_fontsize=6, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    what = {"sal": f"SAL binarised choices (beta={net.beta:.3g})" if hard
            else f"SAL mean attention (beta={net.beta:.3g})", "sl": "SL fixed assignment"}[kind]
    ax.set_title(f"shift directions per layer: {what}", fontsize=9)
    return ax


def asl_shifts(net, ax=None, style="scatter", bins=31):
    """The learned ASL offsets of every channel of every active-shift layer: style
    "scatter" (dx, dy, one colour per layer, a legend) or "hist2d" (a 2-D histogram of
    all layers).  Returns ax."""
    kind, names, offs = shift_counts(net)
    if kind != "asl":
        raise ValueError("asl_shifts: the network has no active-shift (ASL) layers")
    ax = _axes(ax)
    allo = np.concatenate(offs)
    if style == "scatter":
        plt = _plt()
        cmap = plt.get_cmap("tab10" if len(offs) <= 10 else "viridis")
        for i, (name, o) in enumerate(zip(names, offs)):
            col = cmap(i) if len(offs) <= 10 else cmap(i / max(len(offs) - 1, 1))
            ax.scatter(o[:, 1], o[:, 0], color=col, s=8, alpha=0.7, label=_short(name))
        ax.legend(fontsize=6, title="layer", title_fontsize=6, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, markerscale=1.5)
    elif style == "hist2d":
        lim = max(1.5, float(np.abs(allo).max()) + 0.5)
        *_, im = ax.hist2d(allo[:, 1], allo[:, 0], bins=bins, range=[[-lim, lim], [-lim, lim]],
                           cmap="viridis")
        with _keep_current(ax):
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="channels")
    else:
        raise ValueError(f"asl_shifts: style={style!r}: must be 'scatter' or 'hist2d'")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.axvline(0, color="0.6", lw=0.5)
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()   # dy grows downwards, as in the 3x3 heat maps
    ax.set_aspect("equal")
    ax.set_title(f"ASL learned shifts: {len(allo)} channels in {len(offs)} layers", fontsize=9)
    return ax


# ---------------------------------------------------------------- training
_CURVE_LABELS = {"train_acc": "train", "test_acc": "test", "test_acc_hard": "test, binarised"}


def _epochs(history, fn):
    if not history or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise ValueError(f"{fn}: history must be a non-empty list of fit() records (dicts "
                         "with 'epoch')")
    return [h["epoch"] for h in history]


def training_curves(history, ax=None, keys=("train_acc", "test_acc", "test_acc_hard"),
                    label=None):
    """Accuracy (%) per epoch from a fit() history (list of dicts), integer epoch ticks.
    label: a prefix for the legend (curves of several runs on one axes).  Returns ax."""
    ep = _epochs(history, "training_curves")
    ax = _axes(ax)
    for k in keys:
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            name = _CURVE_LABELS.get(k, k)
            if k == "test_acc" and any(h.get("test_acc_hard") is not None for h in history):
                name = "test, soft"
            name = name if label is None else (label if len(keys) == 1 else f"{label}: {name}")
            ax.plot(ep, [np.nan if v is None else 100.0 * v for v in vals], marker="o",
                    label=name)
    _epoch_axis(ax, ep)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def kept_taps(history, ax=None):
    """SAL training's cost as it prunes: the mean number of taps per slice that training
    computes (fit's history records "taps_kept" per epoch, "taps_kept_start" at step 0),
    one line per SAL layer against the optimiser step, coloured by stage; references at 9
    (the dense convolution) and 1 (a pure shift).  Returns ax."""
    rows = [h for h in history if h.get("taps_kept")]
    if not rows:
        raise ValueError("kept_taps: no taps_kept in the history (a SAL run of salnp.fit)")
    ax = _axes(ax)
    names = list(rows[0]["taps_kept"])
    start = history[0].get("taps_kept_start") or {}
    steps = ([0] if start else []) + [h["step"] for h in rows]
    colours = {}
    for name in names:
        stage = name.split(".")[0]
        first = stage not in colours
        col = colours.setdefault(stage, f"C{len(colours)}")
        ys = ([start[name]] if start else []) + [h["taps_kept"][name] for h in rows]
        ax.plot(steps, ys, color=col, lw=1, alpha=0.8, label=stage if first else None)
    mean = [np.mean(list(start.values()))] if start else []
    mean += [np.mean(list(h["taps_kept"].values())) for h in rows]
    ax.plot(steps, mean, color="k", lw=2.5, label="all layers")
    ax.axhline(9, color="0.5", ls="--", lw=1)
    ax.axhline(1, color="0.5", ls=":", lw=1)
    tr = ax.get_yaxis_transform()      # x in axes fractions, y in data
    ax.text(0.99, 9, "9: the dense 3x3", transform=tr, ha="right", va="bottom", fontsize=7,
            color="0.4")
    ax.text(0.99, 1, "1: a pure shift", transform=tr, ha="right", va="bottom", fontsize=7,
            color="0.4")
    ax.set_ylim(0, 9.6)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("taps computed per slice (mean)")
    ax.set_title("Taps SAL training computes as the attention sharpens", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    return ax


def attention_curves(history, ax=None, log_beta=True):
    """From a fit() history: beta per epoch (left axis) and, in % on the right axis
    (ax.right), the mean max p of the SAL slices, the share with max p > 0.5 (binarised),
    with stepwise pruning the mean allowed positions / 9, and, when the records have
    attn_moved, the share of slices whose shift moved since initialisation.  Returns
    the left axis."""
    ep = _epochs(history, "attention_curves")
    if all(h.get("beta") is None for h in history):
        raise ValueError("attention_curves: no beta in the history (not a SAL run?)")
    ax = _axes(ax)
    get = lambda k: [np.nan if h.get(k) is None else float(h[k]) for h in history]
    beta = get("beta")
    ax.plot(ep, beta, color="C0", marker="o", label="beta (left axis)")
    fin = [b for b in beta if np.isfinite(b) and b > 0]
    if log_beta and fin and max(fin) > 1.5 * min(fin):   # constant beta: a linear axis
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    _epoch_axis(ax, ep)
    ax.set_ylabel("beta (inverse temperature)", color="C0")
    with _keep_current(ax):
        right = ax.twinx()
    pct = lambda k: [100.0 * v for v in get(k)]
    right.plot(ep, pct("attn_maxp"), color="C1", marker="s", label="mean max p")
    right.plot(ep, pct("attn_onehot"), color="C2", marker="^", label="slices with max p > 0.5")
    allowed = get("attn_allowed")
    if any(np.isfinite(a) and a < 9 for a in allowed):
        right.plot(ep, [100.0 * a / 9 for a in allowed], color="C3", marker="v", ls="--",
                   label="allowed positions / 9")
    if any(h.get("attn_moved") is not None for h in history):
        right.plot(ep, pct("attn_moved"), color="C4", marker="D", ls="-.",
                   label="slices moved since init")
    right.set_ylim(0, 105)
    right.set_ylabel("attention (%)")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, ncol=2, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.set_title("SAL annealing: beta and attention sharpness", fontsize=9)
    ax.right = right
    return ax


# ---------------------------------------------------------------- runs and sweeps
def _run_name(s):
    c = s.get("model") or s.get("config") or {}
    if not c:
        return "run"
    name = f"{str(c.get('layer', '?')).upper()}-{c.get('depth', '?')} w{c.get('width', '?')}"
    if c.get("layer") in ("sl", "asl", "asl-post") and c.get("expansion") not in (None, 1):
        name += f" e{c['expansion']:g}"
    if c.get("shared"):
        name += " shared"
    return name


def load_runs(runs, hard=True):
    """Normalise runs to dicts (name, macs, params, accuracy, accuracy_soft, accuracy_hard).
    Each run: a dict (keys name, macs, and accuracy or test_acc[/test_acc_hard]) or the
    path of a summary.json written by ``python -m salnp train`` (or its directory).
    accuracy is the binarised accuracy when hard and available, else the soft one."""
    out = []
    for r in runs:
        if isinstance(r, (str, os.PathLike)):
            path = os.fspath(r)
            if os.path.isdir(path):
                path = os.path.join(path, "summary.json")
            with open(path) as f:
                s = json.load(f)
            s.setdefault("name", _run_name(s))
        elif isinstance(r, dict):
            s = dict(r)
        else:
            raise TypeError(f"load_runs: a run must be a dict or a summary.json path, got "
                            f"{type(r).__name__}")
        soft = s.get("accuracy_soft", s.get("test_acc", s.get("accuracy")))
        hardv = s.get("accuracy_hard", s.get("test_acc_hard"))
        acc = s.get("accuracy")
        if acc is None or "test_acc" in s or "accuracy_soft" in s:
            acc = hardv if (hard and hardv is not None) else soft
        if s.get("macs") is None or acc is None:
            raise ValueError(f"load_runs: run {s.get('name', r)!r} needs macs and an accuracy")
        out.append(dict(name=str(s.get("name", _run_name(s))), macs=float(s["macs"]),
                        params=s.get("params"), accuracy=float(acc),
                        accuracy_soft=soft, accuracy_hard=hardv))
    return out


_LAYER_COLOURS = {"cl": "C0", "sl": "C1", "asl": "C2", "asl-post": "C4", "sal": "C3"}
# the metrics of a sweep's rows (salnp.sweep.METRICS; viz takes sweeps as data)
_SWEEP_METRICS = ("test_acc", "test_acc_hard", "params", "macs", "train_macs", "wall_s")
_NOT_CONFIG = set(_SWEEP_METRICS) | {"dir", "trial_id", "seed", "n", "seeds"}


def _sweep_rows(runs):
    """The rows (dicts) of a sweep's result: salnp.sweep's SweepResult or a pandas
    DataFrame of its rows (a table with a seed column); None for a list of runs."""
    cols = getattr(runs, "columns", None)
    if cols is None or "seed" not in list(cols):
        return None
    if hasattr(runs, "to_dict") and not isinstance(runs, list):
        return runs.to_dict("records")
    return list(runs)


_RINGS = (4, 9, 15, 22, 30, 40)                 # offsets tried, in points
_DIRS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0)]


def _label_points(ax, xs, ys, texts, fontsize=7):
    """Annotate the points (data coordinates) with texts that do not overlap: the
    annotations are placed when the axes is drawn (after the layout, with the real text
    sizes) by an invisible artist drawn before them (_LabelPlacer)."""
    if not texts:
        return
    from matplotlib.artist import Artist

    class _LabelPlacer(Artist):
        """Each label goes to the first offset of growing rings around its point whose
        box overlaps no earlier label and no point and stays inside the axes (else the
        least bad one); a thin leader line joins it to its point when it sits away."""

        def draw(self, renderer):
            _place_labels(ax, anns, np.column_stack([xs, ys]), renderer)

    anns = [ax.annotate(t, (x, y), xytext=(_RINGS[0], _RINGS[0]), textcoords="offset points",
                        fontsize=fontsize, ha="left", va="bottom",
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0,
                                        shrinkB=3))
            for x, y, t in zip(xs, ys, texts)]
    for a in anns:
        a.set_in_layout(False)        # kept inside the axes by the placement
        a.arrow_patch.set_visible(False)
    placer = _LabelPlacer()
    placer.set_zorder(min(a.get_zorder() for a in anns) - 0.5)
    placer.set_in_layout(False)
    ax.add_artist(placer)


def _place_labels(ax, anns, xy, renderer):
    from matplotlib.text import Text

    pts = ax.transData.transform(xy)
    r0 = renderer.points_to_pixels(4.0)
    taken = [(px - r0, py - r0, px + r0, py + r0) for px, py in pts]
    box_ax = ax.bbox.extents

    def overlap(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    def box_at(a, ring, dx, dy):
        a.xyann = (dx * ring, dy * ring)
        a.set_ha("left" if dx > 0 else ("right" if dx < 0 else "center"))
        a.set_va("bottom" if dy > 0 else ("top" if dy < 0 else "center"))
        a.update_positions(renderer)
        return Text.get_window_extent(a, renderer).extents

    for a in anns:
        best = None
        for ring in _RINGS:
            for dx, dy in _DIRS:
                b = box_at(a, ring, dx, dy)
                outside = (max(0, box_ax[0] - b[0]) + max(0, b[2] - box_ax[2])
                           + max(0, box_ax[1] - b[1]) + max(0, b[3] - box_ax[3]))
                cost = sum(overlap(b, t) for t in taken) + 100 * outside
                if best is None or cost < best[0]:
                    best = (cost, ring, dx, dy)
            if best[0] == 0:
                break
        _, ring, dx, dy = best
        taken.append(box_at(a, ring, dx, dy))
        a.arrow_patch.set_visible(ring > _RINGS[0])


def _eng_log_axis(axis, lo, hi):
    """Tick labels of a log axis as 400k, 4M, 20M; over less than about a decade also the
    minor ticks 2, 3 and 5 of each decade."""
    from matplotlib.ticker import EngFormatter, FuncFormatter

    eng = EngFormatter(sep="")
    few = math.log10(hi / lo) < 1.3

    def minor(x, pos=None):
        if not few or x <= 0:
            return ""
        lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
        return eng.format_eng(x) if lead in (2, 3, 5) else ""

    axis.set_major_formatter(eng)
    axis.set_minor_formatter(FuncFormatter(minor))


def _min_span(ax, span):
    """Widen the y limits symmetrically to at least `span` (a single run must not zoom
    into 0.01 points)."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def accuracy_vs_macs(runs, ax=None, hard=True, logx=True, labels=True, percent=True,
                     show_soft=True):
    """Accuracy versus inference MACs per image, on a log-x axis.

    runs: a sweep's result (salnp.sweep's return value or salnp.sweep.load(folder), or a
    pandas DataFrame of its rows): one point per config, the mean over its seeds with
    error bars of one standard deviation, coloured by layer type; or a list of runs
    (load_runs): one labelled point per run.  show_soft also draws the soft-attention
    accuracy of runs that have both (open markers), joined to the binarised one by a
    thin line.  Labels are placed so that they do not overlap; the accuracy axis spans
    at least 2 points.  Returns ax."""
    return _accuracy_vs(runs, "macs", "MACs per image (inference)", "accuracy vs MACs",
                        "accuracy_vs_macs", ax, hard, logx, labels, percent, show_soft)


def accuracy_vs_params(runs, ax=None, hard=True, logx=True, labels=True, percent=True,
                       show_soft=True):
    """Accuracy versus inference parameters (binarised SAL weights count 36/32), as
    accuracy_vs_macs: a sweep's result (error bars over seeds, colour = layer) or a list
    of runs with ``params``.  Returns ax."""
    return _accuracy_vs(runs, "params", "parameters (inference)", "accuracy vs parameters",
                        "accuracy_vs_params", ax, hard, logx, labels, percent, show_soft)


def _accuracy_vs(runs, xkey, xlabel, title, fn, ax, hard, logx, labels, percent, show_soft):
    if isinstance(runs, (str, os.PathLike)):
        raise TypeError(f"{fn}: runs must be a list of runs or a sweep's result; for a sweep "
                        f"folder pass salnp.sweep.load({os.fspath(runs)!r})")
    ax = _axes(ax)
    if logx:
        ax.set_xscale("log")
    rows = _sweep_rows(runs)
    note = " (filled: binarised, open: soft)" if show_soft and hard else ""
    k = 100.0 if percent else 1.0
    if rows is not None:
        pts, seeds = _sweep_points(ax, rows, xkey, hard, k, show_soft, fn)
        note = f"; {seeds}" + note
    else:
        pts = _run_points(ax, runs, xkey, hard, k, show_soft, fn)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy" + (" (%)" if percent else " (fraction)"))
    ax.set_title(title + note, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.autoscale_view()
    _min_span(ax, 2.0 * k / 100.0)
    if logx:
        lo, hi = ax.get_xlim()
        if hi / lo < 3:                       # one x value: a readable decade around it
            mid = math.sqrt(lo * hi)
            ax.set_xlim(mid / 2.5, mid * 2.5)
        _eng_log_axis(ax.xaxis, *ax.get_xlim())
    if labels:
        pts = [p for p in pts if p[2]]
        _label_points(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])
    return ax


def _sweep_points(ax, rows, xkey, hard, k, show_soft, fn):
    """One point per group of seeds (mean, error bars = std over seeds), coloured by layer."""
    if not rows:
        raise ValueError(f"{fn}: the sweep has no finished trials")
    keys = []
    for r in rows:
        keys += [c for c in r if c not in keys and c not in _NOT_CONFIG
                 and not c.endswith(("_mean", "_std"))]
    groups = seed_groups(rows, keys, ("test_acc", "test_acc_hard", "params", "macs"))
    vary = [c for c in keys if c not in ("layer", "name")
            and len({json.dumps(g.get(c), default=str) for g in groups}) > 1]
    seen, pts = set(), []
    for g in groups:
        layer = str(g.get("layer", "?"))
        col = _LAYER_COLOURS.get(layer, "C7")
        (x, xe), (soft, soft_e) = g[xkey], g["test_acc"]
        use_hard = hard and g["test_acc_hard"][0] is not None
        y, ye = g["test_acc_hard"] if use_hard else (soft, soft_e)
        if x is None or y is None:
            continue
        ax.errorbar([x], [k * y], yerr=[k * (ye or 0.0)], xerr=[xe] if xe else None, fmt="o",
                    color=col, ms=6, capsize=3, zorder=3,
                    label=None if layer in seen else layer.upper())
        seen.add(layer)
        if show_soft and use_hard and soft is not None:
            ax.errorbar([x], [k * soft], yerr=[k * (soft_e or 0.0)], fmt="o", mfc="none",
                        color=col, ms=6, capsize=2, zorder=3, alpha=0.8)
            ax.plot([x, x], [k * soft, k * y], color=col, lw=0.8)
        text = g.get("name") or " ".join(f"{c}={g.get(c)}" for c in vary)
        pts.append((x, k * y, text or ""))
    ax.legend(fontsize=7, title="layer", title_fontsize=7)
    n = sorted({g["n"] for g in groups})
    return pts, f"mean ± std over {n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} seed(s)"


def _run_points(ax, runs, xkey, hard, k, show_soft, fn):
    rs = load_runs(runs, hard)
    if not rs:
        raise ValueError(f"{fn}: no runs")
    if any(r[xkey] is None for r in rs):
        raise ValueError(f"{fn}: every run needs {xkey!r}")
    pts = []
    for i, r in enumerate(rs):
        col = f"C{i % 10}"
        x = float(r[xkey])
        ax.scatter([x], [k * r["accuracy"]], color=col, s=36, zorder=3)
        soft = r["accuracy_soft"]
        if show_soft and hard and r["accuracy_hard"] is not None and soft is not None:
            ax.scatter([x], [k * soft], facecolors="none", edgecolors=col, s=36, zorder=3)
            ax.plot([x] * 2, [k * soft, k * r["accuracy"]], color=col, lw=0.8)
        pts.append((x, k * r["accuracy"], r["name"]))
    return pts


# ---------------------------------------------------------------- the command line's figures
def run_figure(net, history, out, initial=None):
    """The figures of one training run (python -m salnp train), written into the folder
    out without pyplot (no backend is selected, nothing stays open): curves.png (accuracy
    per epoch; SAL also beta and attention sharpness) and, for SAL, attention.png
    (attention_change against the initial network: `initial`, or rebuilt from the
    seed).  Returns the file names written, comma-separated ("attention.png,
    curves.png"), or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    names = []
    sal = bool(sal_layers(net))
    if sal:
        fig = attention_change(net, initial, fig=Figure())
        fig.set_size_inches(11, 3.6 + 0.27 * len(sal_layers(net)))
        fig.savefig(os.path.join(out, "attention.png"), dpi=120)
        names.append("attention.png")
    sal_curves = sal and any(h.get("beta") is not None for h in history)
    fig = Figure(figsize=(11 if sal_curves else 5.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if sal_curves else 1, squeeze=False)[0]
    training_curves(history, ax=axes[0])
    axes[0].set_title("accuracy per epoch", fontsize=9)
    if sal_curves:
        attention_curves(history, ax=axes[1])
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)
    names.append("curves.png")
    return ", ".join(names)
