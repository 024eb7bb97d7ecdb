"""Reproduction study at the e=1 budget: does SAL beat SL and ASL at about 35 k parameters,
and does its attention learn at all?  One command trains, analyses and reports.

    PYTHONPATH=python nice -n 5 python bench/study_reproduction.py --out runs/repro
    PYTHONPATH=python nice -n 5 python bench/study_reproduction.py --out runs/repro30 --epochs 30
    PYTHONPATH=python python bench/study_reproduction.py --report     # tables, figure from rows

Models (ResNet-20, about 34-35 k parameters in the paper's convention):
- ``sal-w15``: SAL, width 15;  ``sal-shared-w16``: SAL with one shift per input channel, w 16;
- ``sl-e1``: Wu et al.'s shift block, expansion 1;  ``asl-e1``: Jeon & Kim's ASNet, e = 1;
- ``sal-w15-frozen``: SAL w 15 with its attention logits frozen at initialisation
  (RunConfig.freeze_attention: lr 0 and no weight decay on them);
- ``sal-w15-beta0.15``: SAL w 15 with beta 0.15 -> 70, the start of the authors' ImageNet
  schedule (github.com/eghouti/SAL imagenet/parameters.py:40, where it ends at 60; here it ends
  at 70 like the other SAL models, so that only the start differs), where the attention starts
  nearly uniform instead of nearly one-hot.

Training, ONE schedule for every family: all 10,000 training and 10,000 test images of the
CIFAR-10 subset (JPEG-derived pixels, ../shared/data/cifar10-subset), ``--epochs`` (20; 30 if
the machine allows), batch 128, SGD with plain momentum 0.9 (no Nesterov for any family),
lr 0.1 on a cosine (per epoch) to 0, weight decay 5e-4, no momentum reset.  What stays
per method is what belongs to it: ASL's shift lr x 0.01, no decay on its shifts and its
normalised shift gradients, SAL's beta 20 -> 70 geometric per step.  (One more difference
remains in the architectures' declarations: Jeon & Kim's ASNet carries no weight decay on its
BN scale and shift and its FC bias; the other families decay every parameter.)

Seeds: ``--seeds-min`` (3) for every model, then one more seed for every model while the 95 %
interval of the primary contrast straddles zero, up to ``--seeds-max`` (5).  A seed sets the
initial weights and the data order; runs pair up by seed.  (Adding seeds while the interval
straddles zero is a sequential design: its p-values are slightly optimistic; the report says
how many rounds ran.)  Every trial runs through salnp.sweep (``--jobs`` worker processes, one
thread each; OUT/sweep; a rerun skips finished trials and resumes interrupted ones).

Analysis, stated before the runs, on paired differences of soft test accuracy over seeds
(paired t: mean, 95 % interval, two-sided p):
- primary: sal-w15 - sl-e1 (the abstract's claim), at alpha 0.05;
- secondary, Holm-corrected as one family: sal-w15 - asl-e1, sal-shared-w16 - sl-e1,
  sal-shared-w16 - asl-e1;
- positive control: asl-e1 - sl-e1 must come out above zero (published +2.5 points on the
  full data, 89.14 % against 86.66 %); passed when the one-sided paired t p < 0.05; if not,
  the report says the scale is too small to rank the families;
- attention controls (exploratory, unadjusted): sal-w15 - sal-w15-frozen and sal-w15 -
  sal-w15-beta0.15; per model, the share of SAL slices whose chosen shift moved during
  training (salnp.attention.moved_share).

Rows: bench/studies/reproduction.json ({"trials": [...]}: model, seed, train_images,
test_images, epochs, acc_soft, acc_hard, test_loss, wall_s, commit, config (the full
RunConfig), moved_share, counts).  Report: bench/studies/reproduction.md, the generated
section of bench/STUDIES.md, bench/studies/reproduction.png.  The tree must be clean (the
rows record its commit) unless --allow-dirty.
"""
from __future__ import annotations

import argparse
import json
import os

import study_common as sc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = sc.ROOT
STUDIES = os.path.join(HERE, "studies")

MODELS = {
    "sal-w15": dict(layer="sal", width=15),
    "sal-shared-w16": dict(layer="sal", width=16, shared=True),
    "sl-e1": dict(layer="sl", width=16, expansion=1.0),
    "asl-e1": dict(layer="asl", width=16, expansion=1.0),
    "sal-w15-frozen": dict(layer="sal", width=15, freeze_attention=True),
    "sal-w15-beta0.15": dict(layer="sal", width=15, beta0=0.15),
}
# the one schedule of every family (the model's options are laid over it)
SCHEDULE = dict(data="cifar10", depth=20, batch_size=128, lr=0.1, lr_schedule="cosine",
                momentum=0.9, nesterov=False, weight_decay=5e-4, reset_momentum=False,
                beta0=20.0, beta1=70.0, beta_schedule="geometric", augment=True)

# stated before the runs (see the module docstring)
ALPHA = 0.05
PRIMARY = ("sal-w15", "sl-e1")
SECONDARY = (("sal-w15", "asl-e1"), ("sal-shared-w16", "sl-e1"), ("sal-shared-w16", "asl-e1"))
POSITIVE = ("asl-e1", "sl-e1")
CONTROLS = (("sal-w15", "sal-w15-frozen"), ("sal-w15", "sal-w15-beta0.15"))
PUBLISHED = {"sl-e1": "86.66 %", "asl-e1": "89.14 %"}     # DESIGN 7, full CIFAR-10


def configs(models, seeds, root, epochs, train, test):
    """One dict of RunConfig fields per (model, seed), named by the model."""
    out = []
    for m in models:
        for s in seeds:
            c = dict(SCHEDULE, root=os.path.abspath(root), epochs=epochs, subset=train,
                     test_subset=test, seed=s, name=m, eval_every=epochs)  # the last epoch
            c.update(MODELS[m])
            out.append(c)
    return out


def _sizes(root):
    """(training images, test images) of the full data set at root."""
    import salnp

    return (len(salnp.data.cifar10(root, train=True)),
            len(salnp.data.cifar10(root, train=False)))


def run_sweep(cfgs, out, jobs, commit):
    """Train cfgs through salnp.sweep (``jobs`` worker processes, one thread each; OUT/sweep;
    a rerun skips finished trials) and return one row per finished trial."""
    import salnp

    res = salnp.sweep(cfgs, out=os.path.join(out, "sweep"), workers=jobs, threads_per_trial=1,
                      progress="lines")
    if res.failed:
        raise SystemExit("failed trials: " + "; ".join(f"{f['name']} seed {f['seed']}: "
                                                       f"{f['error']}" for f in res.failed))
    rows = []
    for r in res:
        with open(os.path.join(r["dir"], "summary.json")) as fh:
            s = json.load(fh)
        with open(os.path.join(r["dir"], "history.json")) as fh:
            last = json.load(fh)[-1]
        rows.append(dict(
            model=r["name"], seed=r["seed"], train_images=s["train_size"],
            test_images=s["test_size"], epochs=s["epochs"], acc_soft=s["test_acc"],
            acc_hard=s["test_acc_hard"], test_loss=last["test_loss"], wall_s=r["wall_s"],
            commit=commit, config=s["config"], moved_share=s.get("attn_moved"),
            params_paper=s["params_paper"], macs_paper=s["macs_paper"], params=s["params"],
            macs=s["macs"], train_macs=s["train_macs"], threads=s["threads"],
            versions=s["versions"], trial=os.path.basename(r["dir"])))
    return rows


def run(args):
    """Train (seeds-min seeds, then more while the primary interval straddles zero, up to
    seeds-max), write the rows and return them."""
    commit = sc.code_state(args.allow_dirty)
    sc.pin_code_state(args.out, commit)
    n_train, n_test = _sizes(args.root)
    train = 0 if args.train in (0, n_train) else args.train
    test = 0 if args.test in (0, n_test) else args.test
    models = args.models or list(MODELS)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds_min))
    rounds = []
    while True:
        rows = run_sweep(configs(models, seeds, args.root, args.epochs, train, test), args.out,
                         args.jobs, commit)
        prim = contrast(rows, *PRIMARY) if set(PRIMARY) <= set(models) else None
        straddles = prim is not None and not (prim["lo"] > 0 or prim["hi"] < 0)
        rounds.append(dict(seeds=list(seeds), primary=prim, straddles=straddles))
        print(f"seeds {seeds}: primary {PRIMARY[0]} - {PRIMARY[1]}: " + (
            f"{100 * prim['mean']:+.2f} points, 95 % interval [{100 * prim['lo']:+.2f}, "
            f"{100 * prim['hi']:+.2f}]" if prim else "not in the models"), flush=True)
        if not straddles or len(seeds) >= args.seeds_max:
            break
        seeds.append(seeds[-1] + 1)
    sc.write_rows(args.rows, rows, "model", study="reproduction", commit=commit,
                  seed_rounds=[dict(seeds=r["seeds"], straddles=r["straddles"]) for r in rounds])
    return rows


# ---------------------------------------------------------------- analysis
def _by(rows):
    by = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["seed"]] = r
    return by


def contrast(rows, a, b, metric="acc_soft"):
    """Paired difference a - b of metric over the seeds both models ran: study_common.paired
    plus a, b, the seeds and the one-sided p of mean > 0 (None when no seed is shared)."""
    from scipy import stats

    by = _by(rows)
    seeds = sorted(set(by.get(a, {})) & set(by.get(b, {})))
    if not seeds:
        return None
    d = [by[a][s][metric] - by[b][s][metric] for s in seeds]
    out = sc.paired(d, ALPHA)
    out.update(a=a, b=b, seeds=seeds)
    out["p_greater"] = (float(stats.t.sf(out["mean"] / out["se"], out["df"]))
                        if out["se"] == out["se"] and out["se"] > 0 else float("nan"))
    return out


def summarise(rows):
    """{model: n, seeds, mean / sd / 95 % interval of soft accuracy, binarised, test loss,
    moved share, counts, wall time}, in MODELS order."""
    import numpy as np

    by = _by(rows)
    table = {}
    for m in MODELS:
        if m not in by:
            continue
        rs = [by[m][s] for s in sorted(by[m])]
        soft = sc.paired([r["acc_soft"] for r in rs], ALPHA)
        hard = [r["acc_hard"] for r in rs if r["acc_hard"] is not None]
        moved = [r["moved_share"] for r in rs if r.get("moved_share") is not None]
        table[m] = dict(
            n=len(rs), seeds=sorted(by[m]), soft=soft,
            hard=sc.paired(hard, ALPHA) if hard else None,
            loss=sc.paired([r["test_loss"] for r in rs], ALPHA),
            moved=(float(np.mean(moved)), float(np.min(moved)), float(np.max(moved)))
            if moved else None,
            params_paper=rs[0]["params_paper"], macs_paper=rs[0]["macs_paper"],
            wall_s=float(np.mean([r["wall_s"] for r in rs])))
    return table


def analyse(rows):
    """The contrasts: primary, secondary (with Holm-adjusted p), positive control, attention
    controls; each a dict of contrast() plus role (and p_holm for the secondary ones)."""
    out = []
    prim = contrast(rows, *PRIMARY)
    if prim:
        out.append(dict(prim, role="primary"))
    sec = [c for c in (contrast(rows, a, b) for a, b in SECONDARY) if c]
    for c, ph in zip(sec, sc.holm([c["p"] for c in sec])):
        out.append(dict(c, role="secondary", p_holm=ph))
    pos = contrast(rows, *POSITIVE)
    if pos:
        out.append(dict(pos, role="positive control"))
    for a, b in CONTROLS:
        c = contrast(rows, a, b)
        if c:
            out.append(dict(c, role="attention control"))
    return out


def positive_verdict(c):
    if c is None:
        return "not evaluable (asl-e1 or sl-e1 missing)"
    if c["mean"] > 0 and c["p_greater"] < ALPHA:
        return "passed"
    if c["mean"] > 0:
        return "not shown"
    return "failed"


def report_text(rows, rounds=None):
    if not rows:
        return ("No rows at this code state yet: `python bench/study_reproduction.py` trains "
                "them.")
    table, cs = summarise(rows), analyse(rows)
    r0 = rows[0]
    cfg = r0["config"]
    lines = [f"ResNet-20 family at the e=1 budget; CIFAR-10 subset (JPEG-derived pixels) "
             f"{r0['train_images']} training / {r0['test_images']} test images, "
             f"{r0['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']} "
             f"{cfg['lr_schedule']}, momentum {cfg['momentum']} (Nesterov off), weight decay "
             f"{cfg['weight_decay']}, one thread per trial; code state `{r0['commit'][:12]}`."]
    if rounds:
        lines.append("Seed rounds: " + "; ".join(
            f"{len(r['seeds'])} seeds (primary interval "
            f"{'straddles 0' if r['straddles'] else 'excludes 0'})" for r in rounds) + ".")
    lines += ["", "| model | seeds | soft test acc, mean ± sd | 95 % interval | binarised | "
              "test loss | slices moved | params (paper) | MACs (paper) | wall s | "
              "published (full CIFAR-10) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, t in table.items():
        s, h = t["soft"], t["hard"]
        sd = lambda v: "" if v != v else f" ± {100 * v:.2f}"
        mv = "—" if t["moved"] is None else (
            f"{100 * t['moved'][0]:.1f} % [{100 * t['moved'][1]:.1f}, "
            f"{100 * t['moved'][2]:.1f}]")
        lines.append(
            f"| {m} | {t['n']} | {100 * s['mean']:.2f}{sd(s['sd'])} % | "
            f"[{sc.pct(s['lo'])}, {sc.pct(s['hi'])}] | "
            + ("—" if h is None else f"{100 * h['mean']:.2f}{sd(h['sd'])} %")
            + f" | {t['loss']['mean']:.4f} | {mv} | {t['params_paper']:,.0f} | "
            f"{t['macs_paper'] / 1e6:.2f} M | {t['wall_s']:.0f} | {PUBLISHED.get(m, '—')} |")
    lines += ["", "Paired differences of soft test accuracy (points; paired t over the seeds "
              "both models ran; Holm over the secondary family):", "",
              "| contrast | role | pairs | mean | sd | 95 % interval | p | p (Holm) | "
              "p (one-sided, > 0) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cs:
        lines.append(f"| {c['a']} − {c['b']} | {c['role']} | {c['n']} | "
                     f"{100 * c['mean']:+.2f} | {sc.pct(c['sd'])} | "
                     f"[{100 * c['lo']:+.2f}, {100 * c['hi']:+.2f}] | {sc.fmt_p(c['p'])} | "
                     f"{sc.fmt_p(c['p_holm']) if 'p_holm' in c else '—'} | "
                     f"{sc.fmt_p(c['p_greater'])} |")
    pos = next((c for c in cs if c["role"] == "positive control"), None)
    prim = next((c for c in cs if c["role"] == "primary"), None)
    verdict = positive_verdict(pos)
    lines.append("")
    if verdict == "passed":
        lines.append(f"**Positive control passed:** ASL − SL = {100 * pos['mean']:+.2f} points "
                     f"(one-sided p = {sc.fmt_p(pos['p_greater'])}; published +2.5 on the full "
                     "data): this scale separates two families the papers separate.")
    else:
        lines.append(f"**Positive control {verdict.upper()}:** ASL − SL = "
                     + (f"{100 * pos['mean']:+.2f} points (one-sided p = "
                        f"{sc.fmt_p(pos['p_greater'])}; published +2.5)" if pos else "—")
                     + ". The scale is too small to rank the families: train longer (more "
                     "epochs or images) before concluding anything from the contrasts below.")
    if prim is not None:
        excl = prim["lo"] > 0 or prim["hi"] < 0
        lines.append(f"**Primary (SAL − SL):** {100 * prim['mean']:+.2f} points, 95 % interval "
                     f"[{100 * prim['lo']:+.2f}, {100 * prim['hi']:+.2f}], p = "
                     f"{sc.fmt_p(prim['p'])} over {prim['n']} seeds: "
                     + ("the interval excludes zero" if excl else "the interval includes zero: "
                        "no difference shown at this scale")
                     + ("" if verdict == "passed" else " (and the positive control did not "
                        "pass, so this says little)") + ".")
    sal = [m for m in table if table[m]["moved"] is not None]
    if sal:
        lines.append("**Does the attention learn?** Share of SAL slices whose chosen shift "
                     "moved since initialisation: " + "; ".join(
                         f"{m} {100 * table[m]['moved'][0]:.1f} %" for m in sal)
                     + " (a slice re-drawn at random would move with probability 8/9 = 88.9 %).")
        fz = table.get("sal-w15-frozen")
        if fz is not None and fz["moved"][2] != 0:
            lines.append(f"**Warning:** the frozen model's slices moved "
                         f"({100 * fz['moved'][2]:.2f} %): freeze_attention is not honoured.")
    lines += ["", scope(rows)]
    return "\n".join(lines)


def scope(rows):
    """What the scale of the rows cannot show."""
    r0 = rows[0]
    return (f"What this scale cannot show: {r0['train_images']:,} JPEG-derived training images "
            f"and {r0['epochs']} epochs on one cosine schedule are not the papers' 50,000 images "
            "and 164-300 epochs with each family's own solver; the published accuracies beside "
            "the table are for the full setting.  A difference here ranks the families in this "
            "regime only, and a difference the interval does not exclude is not shown, in either "
            "direction.  The attention controls are exploratory (unadjusted p).")


def plot(rows, fig=None, path=None):
    """Figure-level: left, soft test accuracy per model (grey: one seed; black: mean with its
    95 % interval); right, the paired contrasts with their 95 % intervals against zero
    (blue: primary, green: secondary, orange: positive control, grey: attention controls).
    On fig (None: a new matplotlib Figure; no backend is chosen here); written to path when
    given.  Returns the figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained") if fig is None else fig
    ax, bx = fig.subplots(1, 2, width_ratios=(1, 1.2))
    table = summarise(rows)
    names = list(table)
    by = _by(rows)
    for i, m in enumerate(names):
        ys = [100 * by[m][s]["acc_soft"] for s in table[m]["seeds"]]
        ax.plot([i] * len(ys), ys, "o", color="0.6", ms=4)
        s = table[m]["soft"]
        err = [[100 * (s["mean"] - s["lo"])], [100 * (s["hi"] - s["mean"])]] \
            if s["lo"] == s["lo"] else None
        ax.errorbar(i + 0.15, 100 * s["mean"], yerr=err, fmt="s", color="k", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("soft test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title("per seed (grey), mean and 95 % interval (black)", fontsize=9)
    cs = analyse(rows)
    colour = {"primary": "C0", "secondary": "C2", "positive control": "C1",
              "attention control": "0.5"}
    for i, c in enumerate(cs):
        err = [[100 * (c["mean"] - c["lo"])], [100 * (c["hi"] - c["mean"])]] \
            if c["lo"] == c["lo"] else None
        bx.errorbar(100 * c["mean"], i, xerr=err, fmt="o", color=colour[c["role"]], capsize=4)
    bx.axvline(0, color="k", lw=0.8)
    bx.set_yticks(range(len(cs)), [f"{c['a']} − {c['b']}\n({c['role']})" for c in cs],
                  fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("paired difference of soft accuracy (points), 95 % interval")
    bx.grid(alpha=0.3)
    r0 = rows[0]
    fig.suptitle(f"e=1 budget: {r0['train_images']} / {r0['test_images']} images, "
                 f"{r0['epochs']} epochs, one cosine schedule", fontsize=10)
    if path:
        fig.savefig(path, dpi=110)
    return fig


def report(args):
    rows = sc.read_rows(args.rows, "model")
    rounds = None
    if rows:
        with open(args.rows) as fh:
            rounds = json.load(fh).get("seed_rounds")
    text = ("Generated by `python bench/study_reproduction.py --report` from "
            f"{os.path.relpath(args.rows, ROOT)}; do not edit by hand.\n\n"
            + report_text(rows, rounds))
    print(text)
    os.makedirs(args.write, exist_ok=True)
    with open(os.path.join(args.write, "reproduction.md"), "w") as fh:
        fh.write("# Reproduction study (generated)\n\n" + text + "\n")
    section = text
    if rows:
        png = os.path.join(args.write, "reproduction.png")
        plot(rows, path=png)
        rel = os.path.relpath(png, os.path.dirname(os.path.abspath(args.studies_md)))
        section += f"\n\n![accuracy and contrasts]({rel})"
    sc.replace_section(args.studies_md, "reproduction", section)
    return text


def parse_args(argv=None):
    """The command line's options as a Namespace (what run() and report() take)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "repro"),
                    help="work folder (the sweep; resumable)")
    ap.add_argument("--root", default=sc.CIFAR, help="the CIFAR-10 folder")
    ap.add_argument("--train", type=int, default=10000, help="training images (0: all)")
    ap.add_argument("--test", type=int, default=10000, help="test images (0: all)")
    ap.add_argument("--epochs", type=int, default=20, help="20; 30 if the machine allows")
    ap.add_argument("--seeds-min", type=int, default=3)
    ap.add_argument("--seeds-max", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--models", type=lambda s: [v.strip() for v in s.split(",")], default=None,
                    help=f"a comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--jobs", type=int, default=2, help="sweep worker processes (1 thread each)")
    ap.add_argument("--rows", default=os.path.join(STUDIES, "reproduction.json"))
    ap.add_argument("--write", default=STUDIES, help="folder of the table and figure")
    ap.add_argument("--studies-md", default=os.path.join(HERE, "STUDIES.md"),
                    help="the Markdown file whose generated section the report replaces")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run on a working tree with changes (commit recorded as <hash>+dirty)")
    ap.add_argument("--report", action="store_true", help="only the report, from the rows")
    args = ap.parse_args(argv)
    if args.models:
        bad = [m for m in args.models if m not in MODELS]
        if bad:
            ap.error(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    if args.seeds_min < 2 or args.seeds_max < args.seeds_min:
        ap.error("--seeds-min must be >= 2 and --seeds-max >= --seeds-min")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.report:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
