"""Wall time of one sweep run several ways: a local pool of 2 workers x 1 thread, 1 worker x
2 threads, 1 x 1, a Dask LocalCluster of 2 processes x 1 thread, and the hand-written
loop it replaces (salnp.runs.train_run for each config in this process, 2 threads).

    PYTHONPATH=python python bench/bench_sweep.py --modes pool2x1,loop --repeats 1

Every mode trains the same configs from scratch into a fresh folder; the load average
(`uptime`) is printed before and after each mode, since other processes share the cores.
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

import salnp
import salnp.runs


def configs(args):
    return salnp.sweep.grid({"layer": args.layers.split(",")}, seeds=args.seeds, depth=args.depth,
                            width=args.width, epochs=args.epochs, subset=args.subset,
                            test_subset=args.test_subset)


def run(mode, cfgs, out):
    if mode.startswith("pool"):
        w, t = (int(v) for v in mode[4:].split("x"))
        return salnp.sweep(cfgs, out=out, workers=w, threads_per_trial=t, progress=False)
    if mode == "dask2x1":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            res = salnp.sweep(cfgs, client=client, out=out, progress=False)
            res.wall_without_startup = time.perf_counter() - t0
            return res
    if mode == "loop":
        salnp.set_num_threads(2)
        rows = []
        for i, c in enumerate(cfgs):
            s = salnp.runs.train_run(salnp.runs.normalize(c), os.path.join(out, str(i)))
            rows.append(dict(test_acc=s["test_acc"], wall_s=s["train_eval_s"]))
        return rows
    raise SystemExit(f"unknown mode {mode}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="pool2x1,pool1x2,pool1x1,dask2x1,loop")
    ap.add_argument("--layers", default="cl,sl,sal")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--test-subset", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    cfgs = configs(args)
    print(f"{len(cfgs)} trials: ResNet-{args.depth} w{args.width} {args.layers} x {args.seeds} "
          f"seeds, Fashion-MNIST {args.subset} train / {args.test_subset} test images, "
          f"{args.epochs} epoch(s); {os.cpu_count()} cores")
    results = {}
    for rep in range(args.repeats):
        for mode in args.modes.split(","):
            out = tempfile.mkdtemp(prefix=f"bench-sweep-{mode}-")
            load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            t0 = time.perf_counter()
            res = run(mode, cfgs, out)
            wall = time.perf_counter() - t0
            load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            trial_s = sum(r["wall_s"] for r in res)
            results.setdefault(mode, []).append(wall)
            extra = (f", {res.wall_without_startup:.1f} s without the cluster start"
                     if hasattr(res, "wall_without_startup") else "")
            print(f"rep {rep} {mode:8s} wall {wall:7.1f} s{extra}; sum of trial train+eval "
                  f"{trial_s:7.1f} s; accuracies {[round(r['test_acc'], 4) for r in res]}")
            print(f"    before: {load0}\n    after:  {load1}")
            shutil.rmtree(out, ignore_errors=True)
    print("\nmode      median wall (s)")
    for mode, ws in results.items():
        print(f"{mode:8s}  {sorted(ws)[len(ws) // 2]:.1f}")


if __name__ == "__main__":
    main()
