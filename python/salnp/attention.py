"""What SAL attention chose, and what training changed since initialisation.

    initial = salnp.attention.initial_state(net)     # the logits the same seed started from
    ...train...
    salnp.attention.moved_share(net, initial)        # 0.085: share of slices whose shift moved
    salnp.attention.shift_change(net, initial)       # per SAL layer: slices, moved, counts

A slice's *chosen shift* is the position q = 0..8 of its largest attention logit among the
positions its pruning mask allows (q = 3 (dy + 1) + (dx + 1)); the softmax is monotone,
so this is the argmax of p at any beta > 0.  It is the shift the slice keeps when its
attention binarises (when max p > 0.5; otherwise export prunes the slice).  A slice has
*moved* when its chosen shift now differs from the one of its initial logits.  The
initial logits are U[0, 1) draws, so the initial choices are uniform over the 9 shifts
(1/9 each) and a slice re-drawn at random would have moved with probability 8/9.

Plain NumPy, no matplotlib: the command line prints these numbers per epoch and
salnp.viz draws them (salnp.viz.attention_change).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .models import ResNet, SALConv2d, resnet
from .ops import sal_kept_taps

__all__ = ["sal_layers", "chosen_shifts", "initial_state", "shift_change", "moved_share",
           "kept_taps", "UNIFORM", "CHANCE_MOVED"]

UNIFORM = 1.0 / 9.0        # the share of each shift under uniform (initial) choices
CHANCE_MOVED = 8.0 / 9.0   # the moved share of a slice whose choice is re-drawn uniformly


def sal_layers(net):
    """[(name, SALConv2d)] in network order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, SALConv2d)]


def _choices(logits, mask=None):
    """(slices,) int: argmax of the logits (O|1, C, 9) over the allowed positions (mask
    != 0; None: all), ties to the lower position."""
    a = np.asarray(logits, dtype=np.float64).reshape(-1, 9)
    if mask is not None:
        a = np.where(np.asarray(mask).reshape(-1, 9) != 0, a, -np.inf)
    return a.argmax(1)


def chosen_shifts(net) -> dict:
    """{SAL layer name: int array (slices,)}: every slice's chosen shift (0..8) under its
    mask; slices in logits order (output-major, then input channel; shared: one per
    input channel)."""
    return {name: _choices(m.logits, m.mask) for name, m in sal_layers(net)}


def initial_state(net) -> dict:
    """{'<layer>.logits': array}: the SAL logits `net` had when it was built, from a
    network of the same configuration and seed (``salnp.models.resnet(**net.config)``
    draws the same arena, so the same logits).  Take it once, before or during
    training, and pass it to moved_share / shift_change."""
    if not isinstance(net, ResNet):
        raise TypeError(f"initial_state: net must be a salnp network (salnp.models.ResNet), "
                        f"got {type(net).__name__}")
    fresh = resnet(**net.config)
    return {f"{name}.logits": np.array(m.logits, copy=True) for name, m in sal_layers(fresh)}


def _initial_choices(net, initial):
    """{layer: (slices,) int} of the initial network, from `initial`: a network, a state
    dict (``net.state_dict()`` taken before training, or initial_state(net)) or None
    (initial_state(net)).  A state dict's ``<layer>.mask`` applies when present."""
    if initial is None:
        initial = initial_state(net)
    layers = sal_layers(net)
    if isinstance(initial, Mapping):
        out = {}
        for name, m in layers:
            key = f"{name}.logits"
            if key not in initial:
                raise KeyError(f"initial: no {key!r} (a state dict of this network's SAL "
                               "logits, e.g. net.state_dict() or "
                               "salnp.attention.initial_state(net))")
            a = np.asarray(initial[key])
            if a.shape != m.logits.shape:
                raise ValueError(f"initial: {key} has shape {a.shape}, the network "
                                 f"{m.logits.shape}")
            out[name] = _choices(a, initial.get(f"{name}.mask"))
        return out
    if hasattr(initial, "named_modules"):
        other = dict(sal_layers(initial))
        if list(other) != [n for n, _ in layers] or any(
                other[n].logits.shape != m.logits.shape for n, m in layers):
            raise ValueError("initial: a network with other SAL layers than net's "
                             "(not the same configuration)")
        return chosen_shifts(initial)
    raise TypeError(f"initial must be a salnp network, a state dict or None, got "
                    f"{type(initial).__name__}")


def shift_change(net, initial=None, beta=None) -> list:
    """Per SAL layer, in network order, a dict:

    name, slices; moved (slices whose chosen shift differs from the initial one) and
    moved_share = moved / slices; counts (9,) int: slices choosing each shift now, and
    counts_initial (9,) at initialisation; shares = counts / slices; decided: the share
    of slices with max p > 0.5 at `beta` (default net.beta), the ones binarisation keeps.

    initial: the network before training, its state dict, or None: the initial network of
    the same seed (initial_state(net)).  A network without SAL layers gives []."""
    layers = sal_layers(net)
    if not layers:
        return []
    before = _initial_choices(net, initial)
    beta = float(net.beta if beta is None else beta)
    rows = []
    for name, m in layers:
        now = _choices(m.logits, m.mask)
        init = before[name]
        n = int(now.size)
        counts = np.bincount(now, minlength=9)
        decided = float((m.probs(beta).reshape(-1, 9).max(1) > 0.5).mean())
        rows.append(dict(name=name, slices=n, moved=int((now != init).sum()),
                         moved_share=float((now != init).mean()), counts=counts,
                         counts_initial=np.bincount(init, minlength=9),
                         shares=counts / n, decided=decided))
    return rows


def moved_share(net, initial=None):
    """The share (0..1) of all SAL slices whose chosen shift moved since initialisation
    (see shift_change for `initial`); None for a network without SAL layers."""
    layers = sal_layers(net)
    if not layers:
        return None
    before = _initial_choices(net, initial)
    moved = sum(int((_choices(m.logits, m.mask) != before[name]).sum()) for name, m in layers)
    return moved / sum(before[name].size for name, _ in layers)


def kept_taps(net, beta=None) -> dict:
    """{SAL layer name: the mean number of taps per slice that training computes} at `beta`
    (default net.beta) and each layer's tap threshold (SALConv2d.tap_threshold; 9: the dense
    convolution, 1: a pure shift).  A network without SAL layers gives {}."""
    beta = float(net.beta if beta is None else beta)
    return {name: float(sal_kept_taps(m.logits, beta, tap_threshold=m.tap_threshold,
                                      mask=m.mask).reshape(-1, 9).sum(1).mean())
            for name, m in sal_layers(net)}
