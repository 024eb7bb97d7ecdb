"""Accounting: parameters, MACs and shift traffic per layer (DESIGN.md section 3).

    report = salnp.count(net)                       # the training network, per image
    report = salnp.count(net, mode="inference")     # = salnp.count(salnp.export(net))
    report = salnp.count(net, convention="paper")   # the published tables' convention
    print(report.table())
    report.macs, report.params, report.rows, report.totals, report.to_dict()
    report.to_dataframe()            # pandas, when installed

Every number comes from libsal counting a program (``sal_net_count``): the training
program, or the program ``salnp.export`` makes of it -- the inference count of a network IS
the count of its export, one code path.  Units and conventions: salnp.report.
"""
from __future__ import annotations

from .export import export
from .infer import InferenceNet
from .models import ResNet
from .program import SAL
from .report import CONVENTIONS, CountReport, check_input_shape, paper_rows

__all__ = ["count", "CountReport", "CONVENTIONS"]


def count(net, input_shape=None, mode=None, convention=None) -> CountReport:
    """Cost of net per image of input_shape (C, H, W), default (the net's C, 32, 32).

    net: a salnp network (salnp.models.ResNet) or an exported salnp.export.InferenceNet.
    mode: "train" (a network's default) or "inference" (an exported network's only mode;
    for a network: the count of salnp.export(net), with its current beta).
    convention: None (the mode's own: "training" or "exported"), or "paper" (the published
    tables' counting, salnp.report; a network only, the same whatever mode says, so mode
    "train" is refused with it)."""
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"count: convention={convention!r}: must be None, 'training', "
                         "'exported' or 'paper'")
    if mode not in (None, "train", "inference"):
        raise ValueError(f"count: mode={mode!r}: must be 'train' or 'inference'")
    if isinstance(net, InferenceNet):
        if mode not in (None, "inference"):
            raise ValueError(f"count: mode={mode!r}: an exported network counts as 'inference'")
        if convention not in (None, "exported"):
            raise ValueError(f"count: convention={convention!r}: an exported network counts in "
                             "the 'exported' convention (count the training network for 'paper')")
        return net.count(input_shape)
    if not isinstance(net, ResNet):
        raise TypeError(f"count: net must be a salnp network (salnp.models.ResNet or "
                        f"salnp.export.InferenceNet), got {type(net).__name__}")
    shape = check_input_shape(input_shape, net.in_channels)
    if convention == "paper":
        if mode == "train":
            raise ValueError("count: mode='train' with convention='paper': the paper convention "
                             "counts the inference network (mode None or 'inference')")
        return CountReport(paper_rows(net.engine.count_rows(shape)), "inference", shape, None,
                           "paper")
    if mode == "inference" or convention == "exported":
        if convention not in (None, "exported"):
            raise ValueError(f"count: convention={convention!r} does not go with mode='inference'")
        return export(net).count(shape)
    if convention not in (None, "training"):
        raise ValueError(f"count: convention={convention!r} does not go with mode='train'")
    has_sal = any(r["kind"] == SAL for r in net.program.ops)
    return CountReport(net.engine.count_rows(shape), "train", shape,
                       net.beta if has_sal else None)
