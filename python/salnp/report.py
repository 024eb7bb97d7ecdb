"""The accounting's data: per-layer rows of a program's cost and the report that tabulates
them (DESIGN.md section 3).  ``salnp.count`` (salnp.flops) makes reports; this module only
holds and formats them, and knows every convention's rules.

Units: MACs (one multiply-add = 1) of convolutions, SAL/GATHER layers and Linear layers
per image; BN, ReLU, add, pooling and shifts count 0; FLOPs = 2 x MACs, labelled as such.
Parameters: conv and Linear weights, their biases, BN gamma and beta (not the running
statistics).  The rows come from libsal (``sal_net_count``): it counts the program it is
given and predicts nothing.

Conventions (every report says which: ``report.convention``, the table's first line):
- "training": the training program.  A soft SAL layer counts as the dense 3x3 convolution
  it computes; its attention logits are training-only (``train_only_params``, not
  ``params``); ASL shifts count as parameters (learned).  ``bwd_macs`` is the backward
  cost: 2 x forward MACs for every conv/SAL/Linear (input gradient + weight gradient),
  1 x for the stem (the input gradient of the network input is never computed).
- "exported": the program ``salnp.export`` makes (the count of ``salnp.export(net)``).
  Every BN after a conv/SAL layer is folded into the layer's weights plus a bias (O bias
  values instead of the BN's 2 O); a BN that cannot fold keeps 2 C.  SAL layers are
  binarised with the net's beta (p > 0.5, masked positions never chosen) and pruned slices
  dropped: unshared kept slices count 36/32 each (a 32-bit weight + a 4-bit position
  index) and Ho*Wo MACs each; shared: C_kept * C_out (+ C_out bias) + C_kept * 4/32
  parameters, C_kept * C_out * Ho * Wo MACs and C_kept * Ho * Wo moved elements.  ASL
  offsets are rounded to integers (a fixed shift, 0 parameters).
- "paper": the convention of the SAL paper's tables and of Jeon & Kim's counts (DESIGN
  section 3), so that figures compare with published ones: the training program with BN
  as gamma and beta (2 C), conv and Linear weights, the Linear bias and shortcut
  convolutions in full, ASL shifts (2 per channel), and every SAL slice kept whatever the
  attention: unshared C_in C_out 36/32, shared C_in C_out + C_in 4/32; MACs as the
  binarised layer (C_in C_out H_out W_out for SAL).  It depends on neither beta nor
  training: SAL ResNet-20 w=16 38,618 (shared 34,984), CL ResNet-20 272,474,
  ShiftResNet-20 e=3 95,642, ASNet-20 [16x1] 35,386.
"""
from __future__ import annotations

__all__ = ["CountReport", "CONVENTIONS", "count_rows", "paper_rows", "check_input_shape"]

CONVENTIONS = ("training", "exported", "paper")

# columns of the int64 part returned by _core.net_count
_COLS = ("op", "kind", "in_c", "in_h", "in_w", "out_c", "out_h", "out_w", "train_only", "kept",
         "macs", "bwd_macs", "shift_moves")


def _num(v):
    """An int when the value is integral (parameter counts), else the float."""
    v = float(v)
    return int(v) if v.is_integer() else v


class CountReport:
    """Per-layer rows and totals of a network's cost, per image.

    rows: list of dicts with keys name, type, in_shape, out_shape, params, macs,
    shift_moves, bwd_macs, train_only_params, kept.  Totals as attributes (macs, params,
    flops = 2 * macs, shift_moves, bwd_macs, train_macs = macs + bwd_macs,
    train_only_params) and in ``totals``."""

    def __init__(self, rows, mode, input_shape, beta=None, convention=None):
        self.rows = rows
        self.mode = mode
        self.convention = convention or ("training" if mode == "train" else "exported")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.beta = beta
        self.macs = int(sum(r["macs"] for r in rows))
        self.params = _num(sum(r["params"] for r in rows))
        self.flops = 2 * self.macs
        self.shift_moves = int(sum(r["shift_moves"] for r in rows))
        self.bwd_macs = int(sum(r["bwd_macs"] for r in rows))
        self.train_macs = self.macs + self.bwd_macs if mode == "train" else None
        self.train_only_params = int(sum(r["train_only_params"] for r in rows))
        self.totals = dict(params=self.params, macs=self.macs, flops=self.flops,
                           shift_moves=self.shift_moves, bwd_macs=self.bwd_macs,
                           train_macs=self.train_macs, train_only_params=self.train_only_params)

    def to_dict(self) -> dict:
        """Plain JSON-able dict: mode, input_shape, beta, units, totals, rows."""
        return dict(mode=self.mode, convention=self.convention,
                    input_shape=list(self.input_shape), beta=self.beta,
                    units=dict(macs="multiply-adds per image", flops="2 x MACs per image",
                               params="parameters (binarised SAL weights 36/32 each)",
                               shift_moves="elements moved by shifts per image"),
                    totals=dict(self.totals),
                    rows=[dict(r, in_shape=list(r["in_shape"]), out_shape=list(r["out_shape"]))
                          for r in self.rows])

    def to_dataframe(self):
        """The rows as a pandas DataFrame (one row per op: name, type, in/out shapes as
        tuples, params, macs, shift_moves, bwd_macs, train_only_params, kept), indexed by
        position; ``df.attrs`` holds mode, input_shape, beta, units and totals.
        Needs pandas (pip install "salnp[pandas]")."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("CountReport.to_dataframe needs pandas: pip install "
                              "'salnp[pandas]' (or pandas)") from e
        cols = ["name", "type", "in_shape", "out_shape", "params", "macs", "shift_moves",
                "bwd_macs", "train_only_params", "kept"]
        df = pd.DataFrame([{c: r[c] for c in cols} for r in self.rows], columns=cols)
        d = self.to_dict()
        df.attrs.update(mode=self.mode, input_shape=self.input_shape, beta=self.beta,
                        units=d["units"], totals=d["totals"])
        return df

    def table(self, skip_zero=False) -> str:
        """A fixed-width table with units; skip_zero drops rows with no params, MACs or moves."""
        train = self.mode == "train"
        head = ["layer", "type", "in (C,H,W)", "out (C,H,W)", "params", "MACs"]
        head += ["bwd MACs", "train-only"] if train else ["kept"]
        head += ["shift moves"]
        # binarised SAL weights count 36/32 (exported, paper): parameters in eighths of a word
        words = (self.mode != "train" or self.convention == "paper") and any(
            r["type"] in ("sal", "sal_shared", "sal_gather", "sal_shift") for r in self.rows)
        par = lambda v: _params_cell(v, words)
        lines = []
        for r in self.rows:
            if skip_zero and not (r["params"] or r["macs"] or r["shift_moves"] or r["train_only_params"]):
                continue
            cells = [r["name"], r["type"], "x".join(map(str, r["in_shape"])),
                     "x".join(map(str, r["out_shape"])), par(r["params"]), f"{r['macs']:,}"]
            cells += [f"{r['bwd_macs']:,}", f"{r['train_only_params']:,}"] if train else \
                [f"{r['kept']:,}" if r["kept"] else ""]
            cells.append(f"{r['shift_moves']:,}")
            lines.append(cells)
        tot = ["total", "", "", "", par(self.params), f"{self.macs:,}"]
        tot += [f"{self.bwd_macs:,}", f"{self.train_only_params:,}"] if train else [""]
        tot.append(f"{self.shift_moves:,}")
        width = [max(len(h), *(len(c[i]) for c in lines + [tot])) for i, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, width)))

        out = [f"{self.mode} network ({self.convention} convention), input "
               f"{'x'.join(map(str, self.input_shape))}"
               + (f", SAL beta {self.beta:g}" if self.beta is not None else "")
               + "; units: MACs = multiply-adds per image, FLOPs = 2 x MACs"]
        if words:
            out.append("params in 32-bit words: a kept SAL weight counts 36/32 (the weight + "
                       "its 4-bit shift index), a shared SAL layer C_in x C_out + C_in x 4/32; "
                       "hence eighths")
        out += [fmt(head), fmt(["-" * w for w in width])]
        out += [fmt(c) for c in lines]
        out += [fmt(["-" * w for w in width]), fmt(tot)]
        out.append(f"forward: {self.macs:,} MACs = {self.flops:,} FLOPs per image; "
                   f"params {par(self.params).rstrip()}")
        if train:
            out.append(f"training per image (forward + backward, backward = 2 x conv/linear "
                       f"MACs, 1 x for the stem): {self.train_macs:,} MACs = "
                       f"{2 * self.train_macs:,} FLOPs; training-only (SAL logits): "
                       f"{self.train_only_params:,}")
        out.append(f"elements moved by shifts: {self.shift_moves:,} per image")
        return "\n".join(out)

    def __repr__(self):
        return (f"CountReport(mode={self.mode!r}, convention={self.convention!r}, "
                f"input_shape={self.input_shape}, "
                f"params={self.params}, macs={self.macs:,})")


def _params_cell(v, words):
    """A parameter count as text: an integer with thousands separators; with words
    (counts in eighths of a word) up to 3 decimals, trailing zeros as spaces so that the
    decimal points line up in a right-aligned column ("4,666.375", "  304    ")."""
    if not words:
        return f"{v:,}" if float(v).is_integer() else f"{v:,.3f}"
    text = f"{float(v):,.3f}"
    short = text.rstrip("0").rstrip(".")
    return short + " " * (len(text) - len(short))


def count_rows(ints, params, names, types):
    """Row dicts from libsal's count (ints (nops, 13), params (nops,)), the op names and types."""
    rows = []
    for k, (iv, p) in enumerate(zip(ints, params)):
        r = dict(zip(_COLS, (int(v) for v in iv)))
        rows.append(dict(name=names[k], type=types[k], in_shape=(r["in_c"], r["in_h"], r["in_w"]),
                         out_shape=(r["out_c"], r["out_h"], r["out_w"]), params=_num(p),
                         macs=r["macs"], shift_moves=r["shift_moves"], bwd_macs=r["bwd_macs"],
                         train_only_params=r["train_only"], kept=r["kept"]))
    return rows


def check_input_shape(input_shape, in_channels, fn="count"):
    """(C, H, W) as ints, C = the network's in_channels; None: (in_channels, 32, 32)."""
    if input_shape is None:
        input_shape = (in_channels, 32, 32)
    try:
        shape = tuple(int(v) for v in input_shape)
        ok = len(shape) == 3 and all(int(v) == v for v in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{fn}: input_shape={input_shape!r}: must be (C, H, W) of integers")
    if shape[0] != in_channels or not 1 <= shape[1] <= 2**24 or not 1 <= shape[2] <= 2**24:
        raise ValueError(f"{fn}: input_shape={shape}: must be (C={in_channels}, H, W) with H, W "
                         f"in [1, 2**24] "
                         f"for this network (in_channels={in_channels})")
    return shape


def paper_rows(rows):
    """The paper convention's rows from a training program's rows (module docstring):
    every SAL slice kept at 36/32 (shared: C_in*C_out + C_in*4/32) and one 1x1 conv's
    MACs; BN as gamma and beta, everything else in full; nothing training-only."""
    for r in rows:
        r["bwd_macs"] = r["train_only_params"] = 0
        if r["type"] in ("sal", "sal_shared"):
            shared = r["type"] == "sal_shared"
            cin, cout = r["in_shape"][0], r["out_shape"][0]
            hw = r["out_shape"][1] * r["out_shape"][2]
            r["params"] = _num(cin * cout + cin * 4 / 32 if shared else cin * cout * 36 / 32)
            r["macs"] = cin * cout * hw
            r["shift_moves"] = cin * hw if shared else 0
            r["kept"] = cin if shared else cin * cout
    return rows
