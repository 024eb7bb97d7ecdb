"""Reproduction study: does SAL beat SL and ASL at equal parameters?  CL, SL, ASL and SAL
(shared and unshared) ResNet-20 on the CIFAR-10 subset, at matched inference budgets,
several seeds each, the same epochs for all.

    PYTHONPATH=python nice -n 10 python bench/study_reproduction.py --out runs/repro
    PYTHONPATH=python python bench/study_reproduction.py --out runs/repro --report \
        --write bench/studies        # table (markdown + JSON) and plot only

Budgets (parameters in the paper's convention, salnp.count(net, convention="paper")):
SL and ASL at expansion e = 1, 3, 6 against the SAL widths whose paper-convention count
is closest (unshared w = 15 / 26 / 36, shared w = 16 / 27 / 38), and CL ResNet-20 w = 16.
Every family trains with its reference solver (salnp.models.SOLVERS: ASL Nesterov with
steps at 1/2 and 3/4 of the run and no decay on BN, FC bias and shifts; the others plain
momentum, steps at 1/3 and 2/3), lr 0.1, batch 128, weight decay 5e-4, SAL beta 20 -> 70
geometric per step.  A seed sets the initial weights, the data order and the training
and test subsets (as ``python -m salnp train --subset N --seed S`` does), so the seed
pairs runs across families.

Each trial is one config dict of ``python -m salnp train`` options, trained by
``salnp.sweep`` (``--jobs`` spawned worker processes at one thread each; the trial folders
and results.jsonl live in OUT/sweep, and a rerun skips finished trials).  The rows of the
last run are kept in OUT/rows.json for ``--report``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import salnp

HERE = os.path.dirname(os.path.abspath(__file__))
CIFAR = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-subset")

# (label, options): the grid of models, cheapest first within a budget
MODELS = [
    ("SL e=1", dict(layer="sl", width=16, expansion=1)),
    ("ASL e=1", dict(layer="asl", width=16, expansion=1)),
    ("SAL w=15", dict(layer="sal", width=15)),
    ("SAL shared w=16", dict(layer="sal", width=16, shared=True)),
    ("SL e=3", dict(layer="sl", width=16, expansion=3)),
    ("ASL e=3", dict(layer="asl", width=16, expansion=3)),
    ("CL w=16", dict(layer="cl", width=16)),
    ("SAL w=26", dict(layer="sal", width=26)),
    ("SAL shared w=27", dict(layer="sal", width=27, shared=True)),
    ("SL e=6", dict(layer="sl", width=16, expansion=6)),
    ("ASL e=6", dict(layer="asl", width=16, expansion=6)),
    ("SAL w=36", dict(layer="sal", width=36)),
    ("SAL shared w=38", dict(layer="sal", width=38, shared=True)),
]
BUDGET = {"SL e=1": 1, "ASL e=1": 1, "SAL w=15": 1, "SAL shared w=16": 1, "SL e=3": 3,
          "ASL e=3": 3, "SAL w=26": 3, "SAL shared w=27": 3, "SL e=6": 6, "ASL e=6": 6,
          "SAL w=36": 6, "SAL shared w=38": 6, "CL w=16": 0}

# DESIGN.md section 7 (CIFAR-10, full data, full schedules): published top-1
PUBLISHED = {"CL w=16": "91.35 % (0.27 M, 40.8 M MACs)",
             "SL e=1": "86.66 %", "SL e=3": "90.08 %", "SL e=6": "90.59 %",
             "ASL e=1": "89.14 %", "ASL e=3": "91.62 %", "ASL e=6": "92.54 %"}


def configs(args):
    """The trials: one dict of `python -m salnp train` options per (model, seed)."""
    out = []
    for (label, m), seed in itertools.product(MODELS, args.seeds):
        if args.models and label not in args.models:
            continue
        c = dict(data="cifar10", root=os.path.abspath(args.root), depth=20, epochs=args.epochs,
                 subset=args.train, test_subset=args.test, batch_size=128, lr=0.1,
                 weight_decay=5e-4, beta0=20.0, beta1=70.0, seed=seed, shared=False,
                 expansion=1.0)
        c.update(m)
        c["label"] = label
        out.append(c)
    return out


def run_sweep(cfgs, out, jobs):
    """Train the trials through salnp.sweep (``jobs`` spawned worker processes, one thread
    each; a rerun skips finished trials) and return one row per finished trial: its
    options, the model's label, the sweep's metrics (test_acc, test_acc_hard, params,
    macs, train_macs, wall_s) and the paper-convention count of the architecture."""
    plain = [dict({k: v for k, v in c.items() if k != "label"}, name=c["label"]) for c in cfgs]
    res = salnp.sweep(plain, out=os.path.join(out, "sweep"), workers=jobs, threads_per_trial=1,
                      progress="lines")
    for c, err in res.failed:
        print(f"failed: {c}: {err}", file=sys.stderr)
    keys = [k for k in cfgs[0] if k != "label"]
    rows = []
    for r in res:
        net = salnp.models.resnet(20, r["width"], r["layer"], shared=r["shared"],
                                  expansion=r["expansion"])
        pap = salnp.count(net, convention="paper")
        rows.append(dict({k: r[k] for k in keys}, label=r["name"],
                         **{k: r[k] for k in METRICS}, params_paper=pap.params,
                         macs_paper=pap.macs))
    return rows


METRICS = ("test_acc", "test_acc_hard", "params", "macs", "train_macs", "wall_s")


def summarise(rows):
    """{label: dict(n, mean/std of soft and hard accuracy, params both conventions, MACs)}"""
    import numpy as np

    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    table = {}
    for label, _ in MODELS:
        rs = by.get(label)
        if not rs:
            continue
        soft = np.array([r["test_acc"] for r in rs])
        hard = np.array([r["test_acc_hard"] if r["test_acc_hard"] is not None else np.nan
                         for r in rs])
        sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else float("nan")
        table[label] = dict(
            n=len(rs), seeds=sorted(r["seed"] for r in rs), budget=BUDGET[label],
            soft_mean=float(soft.mean()), soft_std=sd(soft),
            hard_mean=float(np.nanmean(hard)) if np.isfinite(hard).any() else None,
            hard_std=sd(hard) if np.isfinite(hard).any() else None,
            params_paper=rs[0]["params_paper"], macs_paper=rs[0]["macs_paper"],
            params_exported=float(np.mean([r["params"] for r in rs])),
            macs_exported=float(np.mean([r["macs"] for r in rs])),
            train_macs=rs[0]["train_macs"], wall_s=float(np.mean([r["wall_s"] for r in rs])),
            per_seed={r["seed"]: (r["test_acc"], r["test_acc_hard"]) for r in rs})
    return table


def markdown(table, rows):
    r0 = rows[0]
    head = (f"CIFAR-10 subset (JPEG-derived pixels, see ../shared/data/cifar10-subset/README.md): "
            f"{r0['subset']} training / {r0['test_subset']} test images per seed, "
            f"{r0['epochs']} epochs, batch 128, lr 0.1; seeds per model as listed.  "
            "Accuracy mean ± std over seeds (sample std); params in the paper's convention and "
            "in the exported one (BN folded, pruned slices dropped, mean over seeds); MACs per "
            "image (inference, paper convention).")
    lines = [head, "",
             "| budget | model | seeds | test acc (soft) | test acc (binarised) | params (paper) "
             "| params (exported) | MACs (paper) | published top-1 (full CIFAR-10) |",
             "|---|---|---|---|---|---|---|---|---|"]
    f = lambda m, s: "—" if m is None else (f"{100 * m:.2f} ± {100 * s:.2f} %"
                                            if s == s else f"{100 * m:.2f} %")
    for label, t in table.items():
        b = {0: "CL", 1: "e=1", 3: "e=3", 6: "e=6"}[t["budget"]]
        lines.append(f"| {b} | {label} | {t['n']} | {f(t['soft_mean'], t['soft_std'])} | "
                     f"{f(t['hard_mean'], t['hard_std'])} | {t['params_paper']:,.0f} | "
                     f"{t['params_exported']:,.0f} | {t['macs_paper'] / 1e6:.2f} M | "
                     f"{PUBLISHED.get(label, '—')} |")
    return "\n".join(lines)


def compare(table):
    """SAL against SL and ASL per budget: the difference of mean soft accuracies, its
    standard error over seeds, z = diff / se, Welch's t-test and the paired t-test over
    the seeds both ran (a seed fixes the training and test subsets and the data order of
    every family, so runs pair up by seed)."""
    import math

    import numpy as np
    from scipy import stats

    out = []
    for b in (1, 3, 6):
        fam = {lab: t for lab, t in table.items() if t["budget"] == b}
        sal = [lab for lab in fam if lab.startswith("SAL")]
        base = [lab for lab in fam if not lab.startswith("SAL")]
        for s in sal:
            for o in base:
                ts, to = fam[s], fam[o]
                d = ts["soft_mean"] - to["soft_mean"]
                se = math.sqrt(ts["soft_std"] ** 2 / ts["n"] + to["soft_std"] ** 2 / to["n"]) \
                    if ts["n"] > 1 and to["n"] > 1 else float("nan")
                a = np.array([v[0] for v in ts["per_seed"].values()])
                c = np.array([v[0] for v in to["per_seed"].values()])
                both = sorted(set(ts["per_seed"]) & set(to["per_seed"]))
                pa = np.array([ts["per_seed"][k][0] for k in both])
                pc = np.array([to["per_seed"][k][0] for k in both])
                welch = float(stats.ttest_ind(a, c, equal_var=False).pvalue) \
                    if len(a) > 1 and len(c) > 1 else float("nan")
                paired = float(stats.ttest_rel(pa, pc).pvalue) if len(both) > 1 else float("nan")
                out.append(dict(budget=b, sal=s, other=o, diff=d, se=se,
                                z=d / se if se and se == se else float("nan"),
                                welch_p=welch, paired_p=paired, paired_n=len(both)))
    return out


def plot(table, ax=None, path=None):
    """Soft test accuracy against parameters (paper convention) per family, error bars
    over seeds, on ax (None: a new figure of its own, closed once saved to path).  No
    backend is chosen here: a notebook shows the figure inline, a script writes path."""
    import math

    from matplotlib.ticker import FuncFormatter

    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6, 4), layout="constrained").subplots()
    fig = ax.figure
    fams = {"CL": "k", "SL": "C0", "ASL": "C1", "SAL w": "C2", "SAL shared": "C3"}
    for fam, col in fams.items():
        pts = [(t["params_paper"], t["soft_mean"], t["soft_std"]) for lab, t in table.items()
               if lab.startswith(fam + " ") or (fam.startswith("SAL") and lab.startswith(fam))]
        if fam == "SAL w":
            pts = [(t["params_paper"], t["soft_mean"], t["soft_std"]) for lab, t in table.items()
                   if lab.startswith("SAL w")]
        if not pts:
            continue
        pts.sort()
        x, y, e = zip(*pts)
        ax.errorbar([v / 1e3 for v in x], [100 * v for v in y],
                    yerr=[100 * v if v == v else 0 for v in e], marker="o", color=col,
                    capsize=3, label={"SAL w": "SAL (unshared)"}.get(fam, fam))
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if hi / lo < 3:                  # budgets close together: a readable range around them
        ax.set_xlim(math.sqrt(lo * hi) / 2.5, math.sqrt(lo * hi) * 2.5)
    # plain numbers (20, 30, 50, 100, ...), not 3.491 x 10^1 on every minor tick
    lead = lambda v: round(v / 10 ** math.floor(math.log10(v) + 1e-9)) if v > 0 else 0
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if lead(v) in (2, 3, 5)
                                               else ""))
    ax.set_xlabel("parameters, paper convention (thousands)")
    ax.set_ylabel("test accuracy, soft (%)")
    ax.set_title("ResNet-20 family, CIFAR-10 subset (reduced scale)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return ax


def report(rows, write=None):
    if not rows:
        raise SystemExit("no finished trials")
    table = summarise(rows)
    md = markdown(table, rows)
    cmp_ = compare(table)
    lines = [md, "", "SAL minus baseline at the same budget (soft accuracy, points; ± the "
             "standard error of the difference over seeds; z = difference / standard error; "
             "Welch's t-test; paired t-test over the seeds, which fix the data subsets):", ""]
    for c in cmp_:
        lines.append(f"- e={c['budget']}: {c['sal']} − {c['other']}: {100 * c['diff']:+.2f} "
                     f"(± {100 * c['se']:.2f}, z = {c['z']:+.1f}; Welch p = {c['welch_p']:.3f}, "
                     f"paired p = {c['paired_p']:.3f} over {c['paired_n']} seeds)")
    text = "\n".join(lines)
    print(text)
    if write:
        os.makedirs(write, exist_ok=True)
        with open(os.path.join(write, "reproduction.md"), "w") as fh:
            fh.write(text + "\n")
        with open(os.path.join(write, "reproduction.json"), "w") as fh:
            json.dump(dict(table=table, compare=cmp_, trials=rows), fh, indent=1, default=str)
        plot(table, path=os.path.join(write, "reproduction.png"))
    return table, cmp_


def _seeds(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b)))
    return [int(v) for v in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=_seeds, default=_seeds("0-3"))
    ap.add_argument("--root", default=CIFAR)
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", type=lambda s: [v.strip() for v in s.split(";")], default=None,
                    help="only these labels, ';'-separated (e.g. 'SL e=1;SAL w=15')")
    ap.add_argument("--jobs", type=int, default=2, help="sweep worker processes (1 thread each)")
    ap.add_argument("--out", required=True, help="the sweep folder (resumable)")
    ap.add_argument("--report", action="store_true",
                    help="only the report, from the rows the last run wrote to OUT/rows.json")
    ap.add_argument("--write", default=None, help="folder for reproduction.md/.json/.png")
    args = ap.parse_args()
    rows_path = os.path.join(args.out, "rows.json")
    if not args.report:
        rows = run_sweep(configs(args), args.out, args.jobs)
        with open(rows_path, "w") as fh:
            json.dump(rows, fh, indent=1)
    with open(rows_path) as fh:
        rows = json.load(fh)
    report(rows, args.write)


if __name__ == "__main__":
    main()
