"""Plots of what shift networks learn.  matplotlib is an optional extra
(``pip install salnp[notebooks]``); every function takes an optional ``ax``, returns
it (or the figure for multi-panel plots) and never calls ``plt.show()``.

    salnp.viz.attention_grid(net)                 # per SAL layer: share of slices per shift
    salnp.viz.slice_attention(net, "layer1.0.conv1", out_channels=8)   # the 3x3 p per slice
    salnp.viz.shift_histogram(net)                # layer x 9 shift counts (SAL, SL); ASL: scatter
    salnp.viz.attention_curves(history)           # beta and mean max-p per epoch (fit history)
    salnp.viz.accuracy_vs_macs(runs)              # runs: dicts or summary.json paths, or a
    salnp.viz.accuracy_vs_params(result)          #   sweep result (error bars over seeds)

Positions q = 0..8 of a 3x3 kernel are the shifts (dy, dx) = (q // 3 - 1, q % 3 - 1).
Attention probabilities are taken at the network's beta under its pruning masks.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .models import ActiveShift, SALConv2d, Shift
from .sweep import SweepResult, load

__all__ = ["sal_layers", "chosen_positions", "attention_heatmap", "attention_grid",
           "slice_attention", "training_curves", "shift_counts", "shift_histogram",
           "asl_shifts", "attention_curves", "load_runs", "accuracy_vs_macs",
           "accuracy_vs_params"]

_TICKS = ["-1", "0", "+1"]
POSITION_LABELS = [f"({q // 3 - 1:+d},{q % 3 - 1:+d})" for q in range(9)]   # (dy, dx)


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("salnp.viz needs matplotlib: pip install 'salnp[notebooks]'") from e
    return plt


def _axes(ax):
    return ax if ax is not None else _plt().gca()


def sal_layers(net):
    """[(name, SALConv2d)] in network order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, SALConv2d)]


def _sal_module(net, layer):
    if isinstance(layer, str):
        layers = dict(sal_layers(net))
        if layer not in layers:
            raise KeyError(f"{layer!r} is not a SAL layer of this network; SAL layers: "
                           f"{list(layers)[:4]}{' ...' if len(layers) > 4 else ''}")
        return layers[layer]
    return layer


def chosen_positions(net, layer, hard=True):
    """3x3 array: for SAL layer `layer` (a name or module), the fraction of kernel slices
    whose attention picks each position (hard: argmax of slices with max p > 0.5, the
    binarised choice; soft: the mean probability)."""
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


def attention_heatmap(net, layer, ax=None, hard=True, cmap="viridis", annotate=True,
                      vmax=None, colorbar=False):
    """3x3 heat map of the positions (shifts) a SAL layer's slices chose.  vmax fixes the
    top of the colour scale (panels with the same vmax are comparable); colorbar adds one."""
    ax = _axes(ax)
    h = chosen_positions(net, layer, hard)
    im = ax.imshow(h, cmap=cmap, vmin=0.0, vmax=vmax)
    _grid_ticks(ax)
    name = layer if isinstance(layer, str) else type(layer).__name__
    ax.set_title(name, fontsize=8)
    if annotate:
        for (i, j), v in np.ndenumerate(h):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if v < 0.6 * (vmax or h.max() or 1) else "k")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_grid(net, hard=True, cols=6, title=None, shared_scale=True, colorbar=True,
                   cmap="viridis"):
    """One attention_heatmap per SAL layer, in network order, on one colour scale
    (shared_scale: 0 .. the largest share over all layers) with one colorbar for all
    panels; returns the figure."""
    plt = _plt()
    layers = sal_layers(net)
    if not layers:
        raise ValueError("attention_grid: the network has no SAL layers")
    cols = max(1, min(cols, len(layers)))
    rows = -(-len(layers) // cols)
    vmax = None
    if shared_scale:
        vmax = max(float(chosen_positions(net, m, hard).max()) for _, m in layers) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + (0.6 if colorbar else 0),
                                                  2.2 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, layers):
        attention_heatmap(net, name, ax=ax, hard=hard, annotate=False, vmax=vmax, cmap=cmap)
        for t in ax.get_xticklabels() + ax.get_yticklabels():
            t.set_fontsize(6)
        ax.xaxis.label.set_fontsize(6)
        ax.yaxis.label.set_fontsize(6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    what = "share of kernel slices choosing each shift" if hard else "mean attention per shift"
    fig.suptitle(title or f"SAL: {what} (beta={net.beta:.3g})", fontsize=10)
    fig.tight_layout()
    if colorbar:
        im = axes.flat[0].images[0]
        fig.colorbar(im, ax=list(axes.flat), fraction=0.02, pad=0.02,
                     label="share of slices" if hard else "mean p")
    return fig


def slice_attention(net, layer, out_channel=0, ax=None, cmap="magma", out_channels=None,
                    max_inputs=32, colorbar=False):
    """The attention itself: every kernel slice's 3x3 probabilities as a tile, a row of
    tiles per output channel (columns: input channels).  out_channels: None (just
    `out_channel`), an int n (the first n) or a list; shared layers have one row.  At most
    max_inputs input channels are drawn.  Pruned (masked) positions are drawn blank."""
    ax = _axes(ax)
    m = _sal_module(net, layer)
    p = m.probs(net.beta).astype(float)
    p[m.mask == 0] = np.nan
    if p.shape[0] == 1:
        outs = [0]
    elif out_channels is None:
        outs = [int(out_channel)]
    elif isinstance(out_channels, (int, np.integer)):
        outs = list(range(min(int(out_channels), p.shape[0])))
    else:
        outs = [int(o) for o in out_channels]
    for o in outs:
        if not 0 <= o < p.shape[0]:
            raise ValueError(f"slice_attention: output channel {o} outside [0, {p.shape[0]})")
    nin = min(p.shape[1], int(max_inputs))
    img = np.full((4 * len(outs) - 1, 4 * nin - 1), np.nan)
    for r, o in enumerate(outs):
        for c in range(nin):
            img[4 * r:4 * r + 3, 4 * c:4 * c + 3] = p[o, c].reshape(3, 3)
    im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    step = max(1, nin // 8)
    ax.set_xticks([4 * c + 1 for c in range(0, nin, step)], [str(c) for c in range(0, nin, step)],
                  fontsize=6)
    ax.set_yticks([4 * r + 1 for r in range(len(outs))],
                  ["shared" if p.shape[0] == 1 else str(o) for o in outs], fontsize=6)
    ax.set_xlabel("input channel", fontsize=7)
    ax.set_ylabel("output channel", fontsize=7)
    name = layer if isinstance(layer, str) else type(layer).__name__
    what = f"output {outs[0]}" if len(outs) == 1 else f"outputs {outs[0]}..{outs[-1]}"
    ax.set_title(f"{name}: {what}, {nin} input slices (beta={net.beta:.3g})", fontsize=8)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="p")
    return ax


def training_curves(history, ax=None, keys=("train_acc", "test_acc", "test_acc_hard")):
    """Accuracy curves from a fit() history (list of dicts)."""
    ax = _axes(ax)
    ep = [h["epoch"] for h in history]
    for k in keys:
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            ax.plot(ep, [np.nan if v is None else v for v in vals], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    return ax


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


def shift_histogram(net, ax=None, style="heatmap", normalize=True, hard=True, cmap="viridis"):
    """Shift directions per layer across the network.  SAL (binarised choices) and SL (the
    fixed assignment): style "heatmap" (layers x 9 positions, annotated) or "bars"
    (stacked horizontal bars per layer; SAL's pruned slices in grey); normalize: shares
    of each layer's slices/channels instead of counts.  ASL: asl_shifts (a scatter of the
    learned offsets).  Returns ax."""
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
        data = data / np.maximum(data.sum(1, keepdims=True), 1)
    short = [n.replace("layer", "L").replace(".conv", ".c").replace(".shift", "") for n in names]
    unit = "share" if normalize else "count"
    if style == "heatmap":
        im = ax.imshow(data[:, :9], aspect="auto", cmap=cmap, vmin=0)
        ax.set_xticks(range(9), POSITION_LABELS, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), short, fontsize=6)
        ax.set_xlabel("shift (dy, dx)")
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=unit)
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
    "scatter" (dx, dy coloured by layer depth) or "hist2d" (a 2-D histogram).  Returns ax."""
    kind, names, offs = shift_counts(net)
    if kind != "asl":
        raise ValueError("asl_shifts: the network has no active-shift (ASL) layers")
    ax = _axes(ax)
    allo = np.concatenate(offs)
    depth = np.concatenate([np.full(len(o), i) for i, o in enumerate(offs)])
    if style == "scatter":
        sc = ax.scatter(allo[:, 1], allo[:, 0], c=depth, cmap="viridis", s=8, alpha=0.7)
        cb = ax.figure.colorbar(sc, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("layer (0 = first)")
    elif style == "hist2d":
        lim = max(1.5, float(np.abs(allo).max()) + 0.5)
        *_, im = ax.hist2d(allo[:, 1], allo[:, 0], bins=bins, range=[[-lim, lim], [-lim, lim]],
                           cmap="viridis")
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="channels")
    else:
        raise ValueError(f"asl_shifts: style={style!r}: must be 'scatter' or 'hist2d'")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.axvline(0, color="0.6", lw=0.5)
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
    ax.invert_yaxis()   # dy grows downwards, as in the 3x3 heat maps
    ax.set_aspect("equal")
    ax.set_title(f"ASL learned shifts: {len(allo)} channels in {len(offs)} layers", fontsize=9)
    return ax


# ---------------------------------------------------------------- training and runs
def attention_curves(history, ax=None, log_beta=True):
    """From a fit() history: beta per epoch (left axis) and the mean max-probability and
    one-hot share of the SAL slices (right axis, 0..1; with stepwise pruning also the
    mean allowed positions / 9).  Returns the left axis; the right one is ax.right."""
    ax = _axes(ax)
    ep = [h["epoch"] for h in history]
    get = lambda k: [np.nan if h.get(k) is None else float(h[k]) for h in history]
    if all(h.get("beta") is None for h in history):
        raise ValueError("attention_curves: no beta in the history (not a SAL run?)")
    ax.plot(ep, get("beta"), color="C0", marker="o", label="beta")
    if log_beta:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("beta (inverse temperature)", color="C0")
    right = ax.twinx()
    right.plot(ep, get("attn_maxp"), color="C1", marker="s", label="mean max p")
    right.plot(ep, get("attn_onehot"), color="C2", marker="^", label="share max p > 0.5")
    allowed = get("attn_allowed")
    if any(np.isfinite(a) and a < 9 for a in allowed):
        right.plot(ep, [a / 9 for a in allowed], color="C3", marker="v", ls="--",
                   label="allowed positions / 9")
    right.set_ylim(0, 1.05)
    right.set_ylabel("attention")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax.set_title("SAL annealing: beta and attention sharpness", fontsize=9)
    ax.right = right
    return ax


def _run_name(s):
    c = s.get("model") or s.get("config") or {}
    if not c:
        return "run"
    name = f"{str(c.get('layer', '?')).upper()}-{c.get('depth', '?')} w{c.get('width', '?')}"
    if c.get("layer") in ("sl", "asl") and c.get("expansion") not in (None, 1):
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


_LAYER_COLOURS = {"cl": "C0", "sl": "C1", "asl": "C2", "sal": "C3"}


def _as_sweep(runs):
    """A sweep result (salnp.sweep's SweepResult, its folder, or a pandas DataFrame of its
    rows) as a SweepResult; None for anything else (a list of runs)."""
    if isinstance(runs, SweepResult):
        return runs
    if isinstance(runs, (str, os.PathLike)) and os.path.isfile(
            os.path.join(os.fspath(runs), "sweep.json")):
        return load(runs)
    cols = getattr(runs, "columns", None)
    if hasattr(runs, "to_dict") and cols is not None and {"layer", "seed"} <= set(cols):
        return SweepResult(runs.to_dict("records"))
    return None


def _sweep_points(ax, res, xkey, hard, labels, percent, show_soft, fn):
    """One point per group of seeds (mean, error bars = std over seeds), coloured by layer."""
    k = 100.0 if percent else 1.0
    summ = res.summary(metrics=("test_acc", "test_acc_hard", xkey))
    if not summ:
        raise ValueError(f"{fn}: the sweep has no finished trials")
    vary = [c for c in summ.columns if c != "layer"
            and len({str(r.get(c)) for r in summ}) > 1]
    seen = set()
    for r in summ:
        layer = str(r.get("layer", "?"))
        col = _LAYER_COLOURS.get(layer, "C7")
        x, xe = r[f"{xkey}_mean"], r[f"{xkey}_std"] or 0.0
        soft, soft_e = r["test_acc_mean"], r["test_acc_std"] or 0.0
        use_hard = hard and r["test_acc_hard_mean"] is not None
        y, ye = (r["test_acc_hard_mean"], r["test_acc_hard_std"] or 0.0) if use_hard else (soft, soft_e)
        if x is None or y is None:
            continue
        ax.errorbar([x], [k * y], yerr=[k * ye], xerr=[xe] if xe else None, fmt="o", color=col,
                    ms=6, capsize=3, zorder=3, label=None if layer in seen else layer.upper())
        seen.add(layer)
        if show_soft and use_hard and soft is not None:
            ax.errorbar([x], [k * soft], yerr=[k * soft_e], fmt="o", mfc="none", color=col,
                        ms=6, capsize=2, zorder=3, alpha=0.8)
            ax.plot([x, x], [k * soft, k * y], color=col, lw=0.8)
        if labels:
            text = r.get("name") or " ".join(f"{c}={r.get(c)}" for c in vary if c != "name")
            if text:
                ax.annotate(text, (x, k * y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax.legend(fontsize=7, title="layer", title_fontsize=7)
    n = sorted({r["n"] for r in summ})
    return f"mean ± std over {n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} seed(s)"


def accuracy_vs_macs(runs, ax=None, hard=True, logx=True, labels=True, percent=True,
                     show_soft=True):
    """Accuracy versus inference MACs per image, on a log-x axis.

    runs: a sweep result (salnp.sweep's return value, its folder, or its DataFrame): one
    point per config, the mean over its seeds with error bars of one standard deviation,
    coloured by layer type; or a list of runs (load_runs): one labelled point per run.
    show_soft also draws the soft-attention accuracy of runs that have both (open
    markers), joined to the binarised one by a thin line.  Returns ax."""
    return _accuracy_vs(runs, "macs", "MACs per image (inference)", "accuracy vs MACs",
                        "accuracy_vs_macs", ax, hard, logx, labels, percent, show_soft)


def accuracy_vs_params(runs, ax=None, hard=True, logx=True, labels=True, percent=True,
                       show_soft=True):
    """Accuracy versus inference parameters (binarised SAL weights count 36/32), as
    accuracy_vs_macs: a sweep result (error bars over seeds, colour = layer) or a list
    of runs with ``params``.  Returns ax."""
    return _accuracy_vs(runs, "params", "parameters (inference)", "accuracy vs parameters",
                        "accuracy_vs_params", ax, hard, logx, labels, percent, show_soft)


def _accuracy_vs(runs, xkey, xlabel, title, fn, ax, hard, logx, labels, percent, show_soft):
    ax = _axes(ax)
    res = _as_sweep(runs)
    note = " (filled: binarised, open: soft)" if show_soft and hard else ""
    if res is not None:
        seeds = _sweep_points(ax, res, xkey, hard, labels, percent, show_soft, fn)
        note = f"; {seeds}" + note
    else:
        _run_points(ax, runs, xkey, hard, labels, percent, show_soft, fn)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy" + (" (%)" if percent else ""))
    ax.set_title(title + note, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return ax


def _run_points(ax, runs, xkey, hard, labels, percent, show_soft, fn):
    rs = load_runs(runs, hard)
    if not rs:
        raise ValueError(f"{fn}: no runs")
    if any(r[xkey] is None for r in rs):
        raise ValueError(f"{fn}: every run needs {xkey!r}")
    k = 100.0 if percent else 1.0
    for i, r in enumerate(rs):
        col = f"C{i % 10}"
        x = float(r[xkey])
        ax.scatter([x], [k * r["accuracy"]], color=col, s=36, zorder=3, label=r["name"])
        soft = r["accuracy_soft"]
        if show_soft and hard and r["accuracy_hard"] is not None and soft is not None:
            ax.scatter([x], [k * soft], facecolors="none", edgecolors=col, s=36, zorder=3)
            ax.plot([x] * 2, [k * soft, k * r["accuracy"]], color=col, lw=0.8)
        if labels:
            ax.annotate(r["name"], (x, k * r["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)


def run_figure(net, history, out):
    """The figure of one training run (python -m salnp train), written into the folder
    out: attention.png (SAL: attention_grid) or curves.png (training_curves).  Returns
    the file name, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if any(isinstance(m, SALConv2d) for _, m in net.named_modules()):
        fig, name = attention_grid(net), "attention.png"
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        training_curves(history, ax=ax)
        name = "curves.png"
    fig.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
    plt.close(fig)
    return name
