"""Stepwise hard pruning of SAL attention: an alternative to beta annealing for ablations.

This schedule is salnp's extension, not the paper's method: Boukli Hacene et al. prune
only by annealing beta (the attention sharpens until one position per slice passes
p > 0.5).  Use it to ask whether hard, scheduled pruning does as well.

    salnp.fit(net, train, test, epochs=8, beta=(20, 20), prune_epochs=[2, 4, 6, 8])
    # before epochs 2, 4, 6 and 8: every slice keeps its 5, 3, 2, 1 most likely positions

Every SAL layer carries a mask (a buffer of the logits' shape, float 0/1, all ones at
first) of the positions each kernel slice may still use.  A prune step keeps, in every
slice, the ``keep`` allowed positions of highest attention probability (ties: the lower
position index) and clears the rest.  Masked positions get p = 0; the softmax runs over
the allowed positions only, of beta * a / s with s still the std of all nine logits
(libsal ``sal/attention.h``, "Masks"), so after the step to keep = 1 every slice is a fixed
shift: p = 1 at its one position, the soft and the hard (binarised) forward are the same
computation and export keeps every slice.

The 2-position stage.  With mean and std taken over the allowed positions only (the
rule before), two positions are always +-1/sqrt(2) apart after normalisation: p was a
constant of the sign of a1 - a2 and the logits got no gradient, so the stage trained
the weights only.  With s over all nine (the rule now) a prune step changes which
positions compete but not the temperature, and the stage keeps learning which of its two
positions to keep.  The ablation (bench/STUDIES.md, "Stepwise pruning") compares both.

Masks live in the buffer arena: they are saved with the network and in checkpoints,
and a resumed run continues with them.
"""
from __future__ import annotations

import numpy as np

from .nn import SALConv2d

__all__ = ["sal_modules", "prune_step", "reset_masks", "mask_counts", "default_keep"]


def sal_modules(net):
    """[(name, SALConv2d)] in network order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, SALConv2d)]


def default_keep(steps: int) -> list[int]:
    """Positions kept after each of `steps` (1..8) prune steps: about 9^(1 - j/steps),
    strictly decreasing, ending at 1 (4 steps: 5, 3, 2, 1; 2 steps: 3, 1; 8 steps:
    8, 7, ..., 1)."""
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 8:
        raise ValueError(f"default_keep: steps={steps!r}: must be an integer in [1, 8] "
                         "(9 positions, at least one removed per step)")
    return [min(9 - j, max(int(round(9 ** (1 - j / steps))), steps - j + 1))
            for j in range(1, steps + 1)]


def prune_step(net, keep: int, beta=None) -> dict:
    """Keep the `keep` most likely allowed positions of every SAL slice (probabilities at
    inverse temperature `beta`, default net.beta, under the current mask); the others are
    masked.  A slice that already has <= keep positions is unchanged.  Returns
    {layer name: mean allowed positions per slice after the step}."""
    if not isinstance(keep, (int, np.integer)) or not 1 <= keep <= 9:
        raise ValueError(f"prune_step: keep={keep!r}: must be an integer in [1, 9]")
    beta = float(net.beta if beta is None else beta)
    out = {}
    for name, m in sal_modules(net):
        p = m.probs(beta).reshape(-1, 9).astype(np.float64)
        allowed = m.mask.reshape(-1, 9) != 0
        # rank the allowed positions by probability, ties by position (stable sort)
        score = np.where(allowed, p, -1.0)
        order = np.argsort(-score, axis=1, kind="stable")
        new = np.zeros_like(allowed)
        rows = np.arange(len(order))[:, None]
        new[rows, order[:, :keep]] = True
        new &= allowed
        m.mask.reshape(-1, 9)[...] = new.astype(np.float32)
        out[name] = float(new.sum(1).mean())
    return out


def reset_masks(net) -> None:
    """Allow every position of every SAL slice again."""
    for _, m in sal_modules(net):
        m.mask[...] = 1.0


def mask_counts(net) -> dict:
    """{layer name: int array (9,)}: how many slices still allow each position."""
    return {name: (m.mask.reshape(-1, 9) != 0).sum(0) for name, m in sal_modules(net)}
