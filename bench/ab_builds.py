"""Two builds of salnp against each other: alternating processes, one per build per pair, so
that both see the same machine state (on this VM the vCPUs' placement moves 2-thread
figures by 10-20 % from minute to minute, more than most single changes).

    python bench/ab_builds.py A B [--threads 1] [--models cl,sal] [--what step|fwd]
                              [--pairs 4] [--reps 12] [--pin CPU]

A and B are checkouts with salnp built in place (`cmake --build build/dev` writes
python/salnp/_core*.so), e.g. this tree and `git worktree add ../wt-ab <commit>`, or
directories that hold an installed salnp package.  --quick: run.py's tiny sizes (a check
that the command works, not a measurement).  Each
process builds run.py's training models (ResNet-20 w=16, batch 128, 32x32), warms up with
two calls, then times --reps training steps (run.salnp_step: forward, loss, backward, SGD)
or training-mode forwards.  Prints per pair the median (best) of each build and B's time
over A's, then the median ratio per model; pair 0 is a warm-up, printed and not counted (the
machine's first process after a pause ran 10-30 % slow here); --pin runs both under
`taskset -c CPU`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args):
    sys.path.insert(0, HERE)
    import numpy as np
    import run
    import salnp
    from salnp.train import SGD
    salnp.set_num_threads(args.threads)
    sz = run.sizes(args.quick)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    out = {"salnp": os.path.realpath(salnp.__file__)}
    for key, _label, layer, kw in run.TRAIN_MODELS:
        if key not in args.models.split(","):
            continue
        net = run.make_net(layer, kw, sz)
        net.train()
        opt = SGD(net, lr=0.05)
        call = (lambda: run.salnp_step(net, opt, x, y)) if args.what == "step" else (lambda: net(x))
        for _ in range(2):
            call()
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        out[key] = [statistics.median(ts), min(ts)]
    print(json.dumps(out))


def one(tree, args):
    src = os.path.join(tree, "python")
    env = dict(os.environ, PYTHONPATH=src if os.path.isdir(os.path.join(src, "salnp")) else tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(args.threads),
           "--models", args.models, "--what", args.what, "--reps", str(args.reps)]
    if args.quick:
        cmd.append("--quick")
    if args.pin is not None:
        cmd = ["taskset", "-c", str(args.pin)] + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"{tree}: the worker failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    got, want = out.pop("salnp"), os.path.realpath(env["PYTHONPATH"]) + os.sep
    if not got.startswith(want):   # another salnp (an installed one) would compare itself
        sys.exit(f"{tree}: the worker imported salnp from {got}, not from {want}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a", nargs="?")
    ap.add_argument("b", nargs="?")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="cl,sal")
    ap.add_argument("--what", choices=["step", "fwd"], default="step")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--pin", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not (args.a and args.b):
        ap.error("give the two checkouts A and B")
    unit = "ms per " + ("step" if args.what == "step" else "forward")
    print(f"A = {args.a}, B = {args.b}; {args.threads} thread(s), {unit}, median (best) of "
          f"{args.reps}; pin {args.pin}")
    ratios = {}
    for p in range(args.pairs + 1):
        ra, rb = one(args.a, args), one(args.b, args)
        cells = [f"{k}: A {1e3 * ra[k][0]:.1f} ({1e3 * ra[k][1]:.1f}), B {1e3 * rb[k][0]:.1f} "
                 f"({1e3 * rb[k][1]:.1f}), B/A {rb[k][0] / ra[k][0]:.2f}" for k in ra]
        print(f"pair {p}{' (warm-up)' if p == 0 else ''}: " + " | ".join(cells), flush=True)
        for k in ra:
            if p:
                ratios.setdefault(k, []).append(rb[k][0] / ra[k][0])
    print("median B/A over the pairs: " + ", ".join(
        f"{k} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
