"""Plots of what shift networks learn.  matplotlib is an optional extra
(``pip install salnp[notebooks]``); every function takes an optional ``ax``, returns
it (or the figure for multi-panel plots) and never calls ``plt.show()``."""
from __future__ import annotations

import numpy as np

from . import ops
from .models import SALConv2d

__all__ = ["sal_layers", "chosen_positions", "attention_heatmap", "attention_grid",
           "slice_attention", "training_curves"]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("salnp.viz needs matplotlib: pip install 'salnp[notebooks]'") from e
    return plt


def sal_layers(net):
    """[(name, SALConv2d)] in network order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, SALConv2d)]


def chosen_positions(net, layer, hard=True):
    """3x3 array: for SAL layer `layer` (a name or module), the fraction of kernel slices
    whose attention picks each position (hard: argmax of slices with max p > 0.5, the
    binarised choice; soft: the mean probability)."""
    m = dict(sal_layers(net))[layer] if isinstance(layer, str) else layer
    p = ops.sal_probs(m.logits, net.beta)
    if not hard:
        return p.reshape(-1, 9).mean(0).reshape(3, 3)
    q = p.reshape(-1, 9)
    keep = q.max(1) > 0.5
    counts = np.bincount(q[keep].argmax(1), minlength=9).astype(float)
    return (counts / max(len(q), 1)).reshape(3, 3)


def attention_heatmap(net, layer, ax=None, hard=True, cmap="viridis", annotate=True):
    """3x3 heat map of the positions (shifts) a SAL layer's slices chose."""
    plt = _plt()
    ax = ax or plt.gca()
    h = chosen_positions(net, layer, hard)
    im = ax.imshow(h, cmap=cmap, vmin=0.0)
    ax.set_xticks([0, 1, 2], ["-1", "0", "+1"])
    ax.set_yticks([0, 1, 2], ["-1", "0", "+1"])
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
    name = layer if isinstance(layer, str) else type(layer).__name__
    ax.set_title(name, fontsize=8)
    if annotate:
        for (i, j), v in np.ndenumerate(h):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if v < h.max() * 0.6 else "k")
    ax.figure.colorbar(im, ax=ax, fraction=0.046) if annotate else None
    return ax


def attention_grid(net, hard=True, cols=6, title=None):
    """One attention_heatmap per SAL layer, in network order; returns the figure."""
    plt = _plt()
    layers = sal_layers(net)
    if not layers:
        raise ValueError("attention_grid: the network has no SAL layers")
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, layers):
        attention_heatmap(net, name, ax=ax, hard=hard, annotate=False)
        for t in ax.get_xticklabels() + ax.get_yticklabels():
            t.set_fontsize(6)
        ax.xaxis.label.set_fontsize(6)
        ax.yaxis.label.set_fontsize(6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(title or f"SAL: share of kernel slices choosing each shift (beta={net.beta:.3g})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def slice_attention(net, layer, out_channel=0, ax=None, cmap="magma"):
    """For one output channel of a SAL layer: each input channel's 3x3 probabilities,
    tiled in a row (a picture of the attention itself)."""
    plt = _plt()
    ax = ax or plt.gca()
    m = dict(sal_layers(net))[layer] if isinstance(layer, str) else layer
    p = ops.sal_probs(m.logits, net.beta)
    o = 0 if p.shape[0] == 1 else out_channel
    tiles = p[o].reshape(-1, 3, 3)
    img = np.concatenate([np.pad(t, ((0, 0), (0, 1)), constant_values=np.nan) for t in tiles], 1)
    ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_title(f"{layer}: output {o}, {len(tiles)} input slices", fontsize=8)
    return ax


def training_curves(history, ax=None, keys=("train_acc", "test_acc", "test_acc_hard")):
    """Accuracy curves from a fit() history (list of dicts)."""
    plt = _plt()
    ax = ax or plt.gca()
    ep = [h["epoch"] for h in history]
    for k in keys:
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            ax.plot(ep, [np.nan if v is None else v for v in vals], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    return ax
