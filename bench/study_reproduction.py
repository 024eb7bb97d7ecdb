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

Each trial is one config dict of ``python -m salnp train`` options.  With ``salnp.sweep``
(the sweeps issue) present the trials can run through it; otherwise through the local
runner below (the default; ``--sweep`` opts in): one process per trial at one thread, ``--jobs`` at a time, nice 10, each
trial's JSON in OUT (a rerun skips finished trials).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

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


def trial_name(c):
    return c["label"].replace(" ", "_").replace("=", "") + f"-seed{c['seed']}"


def run_trial(c):
    """Train, evaluate (soft and binarised), count (both conventions) and time one config."""
    import numpy as np

    import salnp

    salnp.set_num_threads(1)
    train = salnp.data.load("cifar10", c["root"], train=True)
    test = salnp.data.load("cifar10", c["root"], train=False)
    if c["subset"]:
        train = train.subset(c["subset"], seed=c["seed"])
    if c["test_subset"]:
        test = test.subset(c["test_subset"], seed=c["seed"])
    net = salnp.models.resnet(depth=c["depth"], width=c["width"], layer=c["layer"],
                              shared=c["shared"], expansion=c["expansion"], seed=c["seed"])
    t0 = time.perf_counter()
    hist = salnp.fit(net, train, test, epochs=c["epochs"], batch_size=c["batch_size"],
                     lr=c["lr"], weight_decay=c["weight_decay"], beta=(c["beta0"], c["beta1"]),
                     seed=c["seed"], progress=False, threads=1)
    wall = time.perf_counter() - t0
    inf = salnp.count(net, mode="inference")
    pap = salnp.count(net, convention="paper")
    tr = salnp.count(net)
    last = hist[-1]
    return dict(c, test_acc=last["test_acc"], test_acc_hard=last.get("test_acc_hard"),
                train_acc=last["train_acc"], params=inf.params, macs=inf.macs,
                params_paper=pap.params, macs_paper=pap.macs, train_macs=tr.train_macs,
                wall_s=wall, solver=dict(net.solver), history=hist,
                versions=dict(salnp=salnp.__version__, numpy=np.__version__))


def run_local(cfgs, out, jobs, nice):
    """Fallback runner: one process per trial, one thread each, `jobs` at a time."""
    os.makedirs(out, exist_ok=True)
    todo = [c for c in cfgs if not os.path.exists(os.path.join(out, trial_name(c) + ".json"))]
    env = dict(os.environ, OMP_NUM_THREADS="1", BLIS_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    running = []
    while todo or running:
        while todo and len(running) < jobs:
            c = todo.pop(0)
            cmd = ["nice", "-n", str(nice), sys.executable, os.path.abspath(__file__), "--worker",
                   json.dumps(c), "--out", out]
            running.append((c, subprocess.Popen(cmd, env=env)))
        time.sleep(2)
        for item in list(running):
            c, p = item
            if p.poll() is not None:
                running.remove(item)
                print(f"{trial_name(c)}: exit {p.returncode}", flush=True)


def run_sweep(cfgs, out, jobs):
    """Through salnp.sweep (the sweeps issue's API) when it exists; None otherwise."""
    import salnp

    sweep = getattr(salnp, "sweep", None)
    if not callable(sweep):
        return None
    plain = [{k: v for k, v in c.items() if k != "label"} for c in cfgs]
    res = sweep(plain, out=os.path.join(out, "sweep"), workers=jobs, threads_per_trial=1)
    rows = res.to_dicts() if hasattr(res, "to_dicts") else list(res)
    import salnp as _s
    for c, r in zip(cfgs, rows):        # sweep keeps the order of its configs
        net = _s.models.resnet(20, c["width"], c["layer"], shared=c["shared"],
                               expansion=c["expansion"])
        pap = _s.count(net, convention="paper")
        r = dict(c, **{k: v for k, v in r.items() if k not in c}, params_paper=pap.params,
                 macs_paper=pap.macs)
        with open(os.path.join(out, trial_name(c) + ".json"), "w") as fh:
            json.dump(r, fh, indent=1, default=str)
    return rows


def load_results(out):
    rows = []
    for f in sorted(os.listdir(out)):
        if f.endswith(".json") and "-seed" in f:
            with open(os.path.join(out, f)) as fh:
                rows.append(json.load(fh))
    return rows


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
    """SAL against SL and ASL per budget: differences of means against the spread."""
    import math

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
                out.append(dict(budget=b, sal=s, other=o, diff=d, se=se,
                                z=d / se if se and se == se else float("nan")))
    return out


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.set_xlabel("parameters, paper convention (thousands)")
    ax.set_ylabel("test accuracy, soft (%)")
    ax.set_title("ResNet-20 family, CIFAR-10 subset (reduced scale)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return ax


def report(out, write=None):
    rows = load_results(out)
    if not rows:
        raise SystemExit(f"{out}: no finished trials")
    table = summarise(rows)
    md = markdown(table, rows)
    cmp_ = compare(table)
    lines = [md, "", "SAL minus baseline at the same budget (soft accuracy, points; z = "
             "difference / its standard error over seeds):", ""]
    for c in cmp_:
        lines.append(f"- e={c['budget']}: {c['sal']} − {c['other']}: {100 * c['diff']:+.2f} "
                     f"(± {100 * c['se']:.2f}, z = {c['z']:+.1f})")
    text = "\n".join(lines)
    print(text)
    if write:
        os.makedirs(write, exist_ok=True)
        with open(os.path.join(write, "reproduction.md"), "w") as fh:
            fh.write(text + "\n")
        slim = [{k: v for k, v in r.items() if k != "history"} for r in rows]
        with open(os.path.join(write, "reproduction.json"), "w") as fh:
            json.dump(dict(table=table, compare=cmp_, trials=slim), fh, indent=1, default=str)
        plot(table, os.path.join(write, "reproduction.png"))
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
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="only the report")
    ap.add_argument("--sweep", action="store_true",
                    help="run the trials through salnp.sweep (when it exists)")
    ap.add_argument("--write", default=None, help="folder for reproduction.md/.json/.png")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        c = json.loads(args.worker)
        res = run_trial(c)
        path = os.path.join(args.out, trial_name(c) + ".json")
        with open(path + ".tmp", "w") as fh:
            json.dump(res, fh, indent=1, default=float)
        os.replace(path + ".tmp", path)
        return
    if not args.report:
        cfgs = configs(args)
        os.makedirs(args.out, exist_ok=True)
        res = run_sweep(cfgs, args.out, args.jobs) if args.sweep else None
        if res is None:
            run_local(cfgs, args.out, args.jobs, args.nice)
    report(args.out, args.write)


if __name__ == "__main__":
    main()
