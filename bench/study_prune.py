"""Ablation of the stepwise-pruning 2-position stage (salnp's extension, not the paper's).

    PYTHONPATH=python nice -n 10 python bench/study_prune.py --old-pkg DIR --out runs/prune

Two rules for a slice under a mask (libsal sal/shift.h, "Masks"):
- "all nine" (this salnp): s = std of all 9 logits, softmax over the allowed positions;
- "allowed only" (the earlier rule): mean and std over the allowed positions only; with
  two positions p is a constant of the sign of a1 - a2 and the logits get no gradient.
The earlier rule lives only in older builds: --old-pkg is a folder holding such a salnp
(e.g. a build of commit c35bae9: ``git worktree add /tmp/old c35bae9`` then
``SAL_PYTHON_OUTPUT_DIR`` as in scripts/asan-pytest.sh, or a copy of python/salnp made
before the change).  Each run is a process at one thread whose PYTHONPATH selects the
rule.

Schedule: SAL-ResNet-20, beta held at 20 (pure stepwise), prune before epochs 2, 3, 4
to 3, 2, 1 positions: epoch 3 is the 2-position stage, and the step before epoch 4 keeps
the more likely of the two.  Reported: test accuracy after the last epoch (one position
per slice: soft = binarised) and the fraction of slices whose final position differs
between the rules from the same seed.
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


def run_one(a, seed):
    import numpy as np

    import salnp

    salnp.set_num_threads(1)
    train = salnp.data.cifar10(a.root, train=True).subset(a.train, seed=0)
    test = salnp.data.cifar10(a.root, train=False).subset(a.test, seed=0)
    net = salnp.models.resnet(20, a.width, "sal", seed=seed)
    t0 = time.perf_counter()
    hist = salnp.fit(net, train, test, epochs=4, beta=(20.0, 20.0), prune_epochs=[2, 3, 4],
                     prune_keep=[3, 2, 1], seed=seed, progress=False, threads=1)
    choice = np.concatenate([(m.mask.reshape(-1, 9).argmax(1)) for _, m in
                             salnp.prune.sal_modules(net)])
    return dict(seed=seed, test_acc=hist[-1]["test_acc"], test_acc_hard=hist[-1]["test_acc_hard"],
                history=hist, choice=choice.tolist(), wall_s=time.perf_counter() - t0,
                salnp_file=salnp.__file__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-pkg", required=False, help="folder with a salnp of the earlier rule")
    ap.add_argument("--new-pkg", default=os.path.join(HERE, "..", "python"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--root", default=CIFAR)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    seeds = [int(v) for v in a.seeds.split(",")]
    if a.worker:
        rule, seed = a.worker.split(":")
        res = dict(run_one(a, int(seed)), rule=rule)
        path = os.path.join(a.out, f"{rule}-seed{seed}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(res, fh, default=float)
        os.replace(path + ".tmp", path)
        return
    os.makedirs(a.out, exist_ok=True)
    if not a.report:
        pkgs = {"all-nine": os.path.abspath(a.new_pkg)}
        if a.old_pkg:
            pkgs["allowed-only"] = os.path.abspath(a.old_pkg)
        todo = [(r, s) for s, r in itertools.product(seeds, pkgs)
                if not os.path.exists(os.path.join(a.out, f"{r}-seed{s}.json"))]
        running = []
        while todo or running:
            while todo and len(running) < a.jobs:
                r, s = todo.pop(0)
                env = dict(os.environ, PYTHONPATH=pkgs[r], OMP_NUM_THREADS="1")
                cmd = ["nice", "-n", "10", sys.executable, os.path.abspath(__file__), "--worker",
                       f"{r}:{s}", "--out", a.out, "--root", a.root, "--train", str(a.train),
                       "--test", str(a.test), "--width", str(a.width)]
                running.append(subprocess.Popen(cmd, env=env))
            time.sleep(2)
            running = [p for p in running if p.poll() is None]
    import numpy as np

    res = {}
    for f in sorted(os.listdir(a.out)):
        if f.endswith(".json"):
            r = json.load(open(os.path.join(a.out, f)))
            res.setdefault(r["rule"], {})[r["seed"]] = r
    lines = [f"SAL-ResNet-20 w={a.width}, CIFAR-10 subset {a.train} train / {a.test} test, "
             "4 epochs, beta 20 constant, prune to 3 / 2 / 1 positions before epochs 2 / 3 / 4",
             "", "| rule for masked slices | seeds | test acc after epoch 3 (2 positions) | "
             "final test acc (1 position) |", "|---|---|---|---|"]
    for rule, rs in res.items():
        e3 = np.array([r["history"][2]["test_acc"] for r in rs.values()])
        fin = np.array([r["test_acc"] for r in rs.values()])
        sd = lambda v: f" ± {100 * v.std(ddof=1):.2f}" if len(v) > 1 else ""
        lines.append(f"| {rule} | {len(rs)} | {100 * e3.mean():.2f}{sd(e3)} % | "
                     f"{100 * fin.mean():.2f}{sd(fin)} % |")
    if len(res) == 2:
        (ra, a_), (rb, b_) = res.items()
        for s in sorted(set(a_) & set(b_)):
            ca, cb = np.array(a_[s]["choice"]), np.array(b_[s]["choice"])
            lines.append(f"\nseed {s}: final positions differ between the rules in "
                         f"{100 * (ca != cb).mean():.1f} % of the slices")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "report.md"), "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
