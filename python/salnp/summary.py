"""Result rows summarised over seeds: groups of rows equal in every config key but the seed,
with the mean and standard deviation of each metric (what salnp.sweep's tables and
salnp.viz's error bars show).  Plain Python, no other salnp module."""
from __future__ import annotations

import math

__all__ = ["mean_std", "seed_groups"]


def mean_std(vals):
    """(mean, sample standard deviation (n - 1)) of the numbers in vals, None and NaN left
    out; (None, None) when none is left, std None for a single value."""
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    m = math.fsum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1))


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def seed_groups(rows, keys, metrics):
    """One dict per group of rows equal in every key of keys, in first-seen order: the keys'
    values, n, seeds, and (mean, std) of each metric."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(_hashable(r.get(k)) for k in keys), []).append(r)
    out = []
    for members in groups.values():
        g = {k: members[0].get(k) for k in keys}
        g["n"] = len(members)
        g["seeds"] = [m.get("seed") for m in members]
        for m in metrics:
            g[m] = mean_std(mm.get(m) for mm in members)
        out.append(g)
    return out
