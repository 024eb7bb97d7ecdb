"""Fidelity study: does salnp train a SAL network as PyTorch does?  Two stages, one command.

    PYTHONPATH=python nice -n 5 python bench/study_fidelity.py --out runs/fidelity
    PYTHONPATH=python python bench/study_fidelity.py --report     # tables, figures from the rows

Stage A, trajectory (``--stage A``): SAL-ResNet-20 w=16, batch 128, constant lr 0.1, SGD
momentum 0.9, weight decay 5e-4 on every parameter, beta 20 -> 70 geometric over 300 steps,
on IDENTICAL batches (salnp.data's shuffle, crop, flip and normalisation, seed 0).  Four
runs advance in lockstep in one process: salnp (float32; salnp.train.SGD and the network's
forward and backward, the calls salnp.fit makes per step), the PyTorch twin
(salnp.torch.to_torch, torch.optim.SGD) in float32, the twin in float64 (the reference),
and the float32 twin with every initial parameter nudged by one ulp (towards +inf; the
chaos baseline: how far a 1-ulp difference carries).  Every step logs each run's loss and
its relative distance from the reference, ||theta - theta_ref|| / ||theta_ref||, per
parameter group: weights (convolutions), logits (SAL attention), BN (scale and shift) and
linear (the classifier).  Criteria, stated before the runs: per group, the median over
steps >= 10 of salnp's distance divided by the float32 twin's is at most TRAJ_RATIO (4),
and the growth rates (least-squares slopes of log10 distance per step over the growth
phase: from step 1 while the nudged twin is less than 1 % away from the reference in the
weights, at least 3 steps) differ by at most a factor TRAJ_RATE (2).  (Float32 rounding
alone changes the first gradients by about 1e-3 relative in either engine, through the
cancellations of batch normalisation, and at lr 0.1 the runs decorrelate within about ten
steps: the report gives this chaos horizon; after it, every float32 run sits at the
nudged twin's distance.)

Stage B, outcome (``--stage B``): all 10,000 training and 10,000 test images of the CIFAR-10
subset (JPEG-derived pixels, ../shared/data/cifar10-subset), 15 epochs, the lab recipe
(batch 128, lr 0.1 x 0.1 at 1/2 and 3/4 of the run, momentum 0.9, weight decay 5e-4 on every
parameter, beta 20 -> 70 geometric per step), seeds 0-7 (>= 8 pairs), three arms per seed:
- ``salnp``: salnp.fit;
- ``torch``: the PyTorch twin loaded with salnp's initial weights of that seed, trained on
  salnp's batches of that seed (the same shuffle, crops, flips): only the engine differs;
- ``torch-native``: PyTorch's own initialisation (torch.manual_seed(seed)) and a
  PyTorch-native pipeline (torch.randperm shuffle, zero-padded random crop 32 from 40 and
  flip with a torch.Generator, then ToTensor / Normalize arithmetic, as torchvision's
  RandomCrop(32, padding=4) + RandomHorizontalFlip; torchvision is not installed, so the
  same operations are written with torch tensors): it separates an engine effect from a
  pipeline or initialisation effect.
Each run is its own process at one thread, ``--jobs`` (2) at a time; a finished run is never
repeated (OUT/outcome/<arm>-seed<seed>.json), so more seeds can be added with the same
command.

Primary endpoint, stated before the runs: soft-attention test accuracy, salnp - torch,
paired by seed, judged by TOST (two one-sided paired t-tests) with a margin of +-1 point
(MARGIN = 0.01) at alpha = 0.05: equivalence is shown when p < 0.05 (the 90 % interval of
the mean paired difference inside (-1, +1) points).  Secondary: salnp - torch-native and
torch - torch-native (the same TOST, Welch's form: those arms share no randomness but the
seed's number), binarised accuracy, and the test loss (95 % intervals only: no margin was
stated for it, so no equivalence is claimed).

Rows: bench/studies/fidelity.json ({"trials": [...]}, one per run: arm, seed, train_images,
test_images, epochs, acc_soft, acc_hard, test_loss, wall_s, commit, config, ...); stage A's
log: bench/studies/fidelity_trajectory.json.  The report (``--report``, also written after
the runs): bench/studies/fidelity.md, the generated section of bench/STUDIES.md,
bench/studies/fidelity_outcome.png and fidelity_trajectory.png.  The tree must be clean
(the rows record its commit) unless --allow-dirty.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time

import study_common as sc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = sc.ROOT
STUDIES = os.path.join(HERE, "studies")
ARMS = ("salnp", "torch", "torch-native")
GROUPS = ("weights", "logits", "BN", "linear")
TRAJ_RUNS = ("salnp", "torch", "torch-f64", "torch-nudged")

# stated before the runs (see the module docstring)
MARGIN = 0.01            # +-1 point of accuracy
ALPHA = 0.05
PRIMARY = ("salnp", "torch")
TRAJ_RATIO = 4.0
TRAJ_RATE = 2.0
GROWTH_END = 0.01        # the growth phase ends when the chaos baseline is 1 % away


def _threads(n):
    import torch

    import salnp

    salnp.set_num_threads(n)
    torch.set_num_threads(n)


def load_data(root, train_n, test_n):
    """(train, test) Datasets: the first train_n / test_n class-balanced images of the
    subset chosen by seed 0 (all of them when the number is 0 or the set's size)."""
    import salnp

    out = []
    for split, n in ((True, train_n), (False, test_n)):
        d = salnp.data.cifar10(root, train=split)
        out.append(d.subset(n, seed=0) if 0 < n < len(d) else d)
    return out


def group_of(name, shape):
    """The parameter group of a parameter: logits, linear, BN (1-D) or weights."""
    if name.endswith(".logits"):
        return "logits"
    if name.startswith("linear."):
        return "linear"
    return "BN" if len(shape) == 1 else "weights"


# ---------------------------------------------------------------- stage A: trajectory
def _params(model):
    """{name: float64 array} of a salnp network or a torch module."""
    import numpy as np

    if hasattr(model, "arena"):
        return {n: np.array(p, dtype=np.float64) for n, p in model.named_parameters()}
    return {n: np.array(p.detach().numpy(), dtype=np.float64)
            for n, p in model.named_parameters()}


def _distances(run, ref):
    """{group: ||run - ref|| / ||ref||} over the parameters of each group."""
    import numpy as np

    num = dict.fromkeys(GROUPS, 0.0)
    den = dict.fromkeys(GROUPS, 0.0)
    for n, r in ref.items():
        g = group_of(n, r.shape)
        num[g] += float(np.sum((run[n] - r) ** 2))
        den[g] += float(np.sum(r ** 2))
    return {g: math.sqrt(num[g] / den[g]) if den[g] > 0 else float("nan") for g in GROUPS}


def trajectory(args, commit):
    """Stage A: the four runs in lockstep; returns the log (also written to
    OUT/trajectory.json and to args.write/fidelity_trajectory.json)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import salnp
    from salnp import ops
    from salnp.train import beta_at

    _threads(args.threads)
    train, _ = load_data(args.root, args.train, args.test)
    net = salnp.models.resnet(20, args.width, "sal", seed=args.traj_seed)
    net.beta = args.beta0
    net.train()
    twin = salnp.torch.to_torch(net, args.beta0).train()
    ref = copy.deepcopy(twin).double()
    nudged = copy.deepcopy(twin)
    with torch.no_grad():
        for p in nudged.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
    opt = salnp.train.SGD(net, args.lr, 0.9, 5e-4, False)
    topts = {k: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
             for k, m in (("torch", twin), ("torch-f64", ref), ("torch-nudged", nudged))}
    tmods = {"torch": twin, "torch-f64": ref, "torch-nudged": nudged}

    def batches():
        for epoch in itertools.count():
            for x, y in train.batches(args.batch, shuffle=True, augment=True,
                                      seed=args.traj_seed, epoch=epoch):
                yield x, y

    init = _params(net)
    if not all(np.array_equal(init[n], v) for n, v in _params(twin).items()):
        raise SystemExit("trajectory: the twin does not start from salnp's weights")
    log = []
    t0 = time.perf_counter()
    wall = dict.fromkeys(TRAJ_RUNS, 0.0)
    cpu = dict.fromkeys(TRAJ_RUNS, 0.0)
    for step, (x, y) in zip(range(1, args.steps + 1), batches()):
        y32 = y.astype(np.int32)
        losses = {}
        t, c = time.perf_counter(), time.process_time()
        logits = net.forward(x, train=True)
        losses["salnp"] = float(ops.cross_entropy(logits, y32))
        net.zero_grad()
        net.backward(ops.cross_entropy_backward(logits, y32))
        opt.step(args.lr)
        beta = beta_at(step, args.steps, args.beta0, args.beta1)
        net.beta = beta
        wall["salnp"] += time.perf_counter() - t
        cpu["salnp"] += time.process_time() - c
        yt = torch.from_numpy(y)
        for k, m in tmods.items():
            t, c = time.perf_counter(), time.process_time()
            xt = torch.from_numpy(x).to(torch.float64 if k == "torch-f64" else torch.float32)
            loss = F.cross_entropy(m(xt), yt)
            topts[k].zero_grad()
            loss.backward()
            topts[k].step()
            m.set_beta(beta)
            losses[k] = loss.item()
            wall[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
        p_ref = _params(ref)
        p_tw = _params(twin)
        p_np = _params(net)
        p_nu = _params(nudged)
        rec = dict(step=step, beta=beta, loss=losses,
                   dist={"salnp": _distances(p_np, p_ref), "torch": _distances(p_tw, p_ref),
                         "torch-nudged": _distances(p_nu, p_ref)},
                   dist_to_torch={"salnp": _distances(p_np, p_tw),
                                  "torch-nudged": _distances(p_nu, p_tw)})
        if not all(math.isfinite(v) for v in losses.values()):
            raise SystemExit(f"trajectory: a loss is not finite at step {step}: {losses}")
        log.append(rec)
        if step % 25 == 0 or step == args.steps:
            d = rec["dist"]
            print(f"step {step}: loss " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                  + "; weights distance: salnp {:.2e}, torch {:.2e}, nudged {:.2e} ({:.0f} s)"
                  .format(d["salnp"]["weights"], d["torch"]["weights"],
                          d["torch-nudged"]["weights"], time.perf_counter() - t0), flush=True)
    config = dict(model="SAL-ResNet-20", width=args.width, seed=args.traj_seed,
                  batch_size=args.batch, steps=args.steps, lr=args.lr, lr_schedule="constant",
                  momentum=0.9, nesterov=False, weight_decay=5e-4, weight_decay_on="all",
                  beta0=args.beta0, beta1=args.beta1, beta_schedule="geometric per step",
                  train_images=len(train), augment="crop 32 (zero padding 4) + flip, salnp.data",
                  nudge="every initial parameter of torch-nudged: nextafter towards +inf",
                  threads=args.threads, versions=_versions())
    out = dict(commit=commit, config=config, wall_s=wall, cpu_s=cpu, log=log)
    sc.write_json(os.path.join(args.out, "trajectory.json"), out, indent=None)
    os.makedirs(args.write, exist_ok=True)
    sc.write_json(os.path.join(args.write, "fidelity_trajectory.json"), out, indent=None)
    return out


# ---------------------------------------------------------------- stage B: outcome
def _versions():
    import numpy as np
    import torch

    import salnp

    return dict(salnp=salnp.__version__, torch=torch.__version__, numpy=np.__version__,
                python=sys.version.split()[0])


class NativePipeline:
    """The PyTorch-native data pipeline of the torch-native arm, on the same uint8 images:
    torch.randperm shuffle, a random 32 x 32 crop of the image zero-padded by pad (torchvision
    RandomCrop(32, padding=4) pads the raw image with 0), a horizontal flip with p = 0.5, then
    x / 255, minus mean, over std in float32 (ToTensor, Normalize).  Randomness from one
    torch.Generator seeded by the run's seed."""

    def __init__(self, data, seed, pad=4):
        import torch

        self.images = torch.from_numpy(data.images)                  # (N, C, H, W) uint8
        self.labels = torch.from_numpy(data.labels)
        self.padded = torch.nn.functional.pad(self.images, (pad, pad, pad, pad))
        self.pad = pad
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.gen = torch.Generator().manual_seed(int(seed))

    def _norm(self, u8):
        import torch

        return (u8.to(torch.float32) / 255.0 - self.mean) / self.std

    def train_batches(self, batch):
        import torch

        n, _, h, w = self.images.shape
        perm = torch.randperm(n, generator=self.gen)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            corner = torch.randint(0, 2 * self.pad + 1, (len(idx), 2), generator=self.gen)
            flip = torch.rand(len(idx), generator=self.gen) < 0.5
            crops = torch.stack([self.padded[i, :, dy:dy + h, dx:dx + w]
                                 for i, (dy, dx) in zip(idx.tolist(), corner.tolist())])
            crops[flip] = crops[flip].flip(-1)
            yield self._norm(crops), self.labels[idx]

    def test_batches(self, batch):
        for start in range(0, len(self.labels), batch):
            yield (self._norm(self.images[start:start + batch]),
                   self.labels[start:start + batch])


def _torch_eval(tnet, batches):
    """(loss, soft accuracy, binarised accuracy) of a twin in eval mode."""
    import torch
    import torch.nn.functional as F

    tnet.eval()
    res = []
    for hard in (False, True):
        tnet.set_hard(hard)
        loss = correct = n = 0
        with torch.no_grad():
            for x, y in batches():
                out = tnet(x)
                loss += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        res.append((loss / n, correct / n))
    tnet.set_hard(False)
    return res[0][0], res[0][1], res[1][1]


def run_one(spec):
    """Stage B: train one (arm, seed) in this process at one thread; returns its row."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import salnp
    from salnp.train import beta_at, lr_at

    _threads(1)
    seed, arm = spec["seed"], spec["arm"]
    train, test = load_data(spec["root"], spec["train"], spec["test"])
    milestones = (0.5, 0.75)
    lr, epochs, batch = spec["lr"], spec["epochs"], spec["batch"]
    b0, b1 = spec["beta0"], spec["beta1"]
    t0, c0 = time.perf_counter(), time.process_time()
    if arm == "salnp":
        net = salnp.models.resnet(20, spec["width"], "sal", seed=seed)
        hist = salnp.fit(net, train, None, epochs=epochs, batch_size=batch, lr=lr, momentum=0.9,
                         weight_decay=5e-4, nesterov=False, lr_schedule="step",
                         milestones=milestones, beta=(b0, b1), seed=seed, progress=False,
                         threads=1)
        wall = time.perf_counter() - t0
        test_loss, soft = salnp.evaluate(net, test)
        hard = salnp.evaluate(net, test, hard=True)[1]
        train_loss = hist[-1]["train_loss"]
    else:
        if arm == "torch":
            net = salnp.models.resnet(20, spec["width"], "sal", seed=seed)
            tnet = salnp.torch.to_torch(net, b0).train()

            def train_batches(epoch):
                for x, y in train.batches(batch, shuffle=True, augment=True, seed=seed,
                                          epoch=epoch):
                    yield torch.from_numpy(x), torch.from_numpy(y)

            def test_batches():
                for x, y in test.batches(500):
                    yield torch.from_numpy(x), torch.from_numpy(y)
        else:
            torch.manual_seed(seed)
            tnet = salnp.torch.ResNet(20, spec["width"], "sal", beta=b0).train()
            pipe, tpipe = NativePipeline(train, seed), NativePipeline(test, seed)

            def train_batches(epoch):
                return pipe.train_batches(batch)

            def test_batches():
                return tpipe.test_batches(500)

        opt = torch.optim.SGD(tnet.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        total = epochs * train.num_batches(batch)
        step = 0
        for epoch in range(epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch, epochs, lr, "step", milestones)
            loss_sum = seen = 0.0
            tnet.train()
            for x, y in train_batches(epoch):
                loss = F.cross_entropy(tnet(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                tnet.set_beta(beta_at(step, total, b0, b1))
                loss_sum += loss.item() * len(y)
                seen += len(y)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"{arm} seed {seed}: loss not finite in epoch {epoch + 1}")
        wall = time.perf_counter() - t0
        train_loss = loss_sum / seen
        test_loss, soft, hard = _torch_eval(tnet, test_batches)
    config = dict(model="SAL-ResNet-20", depth=20, width=spec["width"], layer="sal",
                  shared=False, batch_size=batch, lr=lr, lr_schedule="step",
                  milestones=list(milestones), lr_gamma=0.1, momentum=0.9, nesterov=False,
                  weight_decay=5e-4, weight_decay_on="all parameters", beta0=b0, beta1=b1,
                  beta_schedule="geometric per step", augment="crop 32, zero padding 4, flip",
                  pipeline="torch-native" if arm == "torch-native" else "salnp.data",
                  init="PyTorch (torch.manual_seed(seed))" if arm == "torch-native"
                  else "salnp.models.resnet(seed=seed)",
                  engine="salnp" if arm == "salnp" else "PyTorch (salnp.torch twin)",
                  dtype="float32", threads=1, data=os.path.basename(os.path.abspath(spec["root"])),
                  data_subset_seed=0, versions=_versions())
    return dict(arm=arm, seed=seed, train_images=len(train), test_images=len(test),
                epochs=epochs, acc_soft=soft, acc_hard=hard, test_loss=float(test_loss),
                train_loss=float(train_loss), wall_s=wall,
                cpu_s=time.process_time() - c0, commit=spec["commit"], config=config)


def _run_path(out, arm, seed):
    return os.path.join(out, "outcome", f"{arm}-seed{seed}.json")


def outcome(args, commit):
    """Stage B: every (seed, arm) not yet finished, --jobs processes at a time; returns the
    rows of the requested seeds."""
    os.makedirs(os.path.join(args.out, "outcome"), exist_ok=True)
    spec0 = dict(root=os.path.abspath(args.root), train=args.train, test=args.test,
                 epochs=args.epochs, batch=args.batch, lr=args.lr, width=args.width,
                 beta0=args.beta0, beta1=args.beta1, commit=commit)
    todo = [(s, a) for s, a in itertools.product(args.seeds, ARMS)
            if not os.path.exists(_run_path(args.out, a, s))]
    env = dict(os.environ, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS", "BLIS_NUM_THREADS")})
    # the workers import the salnp this process would (an installed one in CI, where the
    # source tree's python/ has no compiled _core), the source tree's only without one
    spec = importlib.util.find_spec("salnp")
    pkg = os.path.dirname(os.path.dirname(spec.origin)) if spec else os.path.join(ROOT, "python")
    env["PYTHONPATH"] = os.pathsep.join([pkg, HERE]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                           if p])
    running, t0 = [], time.perf_counter()
    while todo or running:
        while todo and len(running) < args.jobs:
            s, a = todo.pop(0)
            spec = dict(spec0, seed=s, arm=a)
            cmd = ["nice", "-n", str(args.nice), sys.executable, os.path.abspath(__file__),
                   "--worker", json.dumps(spec), "--out", args.out]
            running.append(((s, a), subprocess.Popen(cmd, env=env)))
        time.sleep(1)
        for item in list(running):
            (s, a), p = item
            if p.poll() is not None:
                running.remove(item)
                if p.returncode != 0:
                    for _, q in running:
                        q.kill()
                    raise SystemExit(f"run {a} seed {s} failed (exit {p.returncode})")
                with open(_run_path(args.out, a, s)) as fh:
                    r = json.load(fh)
                print(f"{a} seed {s}: soft {100 * r['acc_soft']:.2f} %, binarised "
                      f"{100 * r['acc_hard']:.2f} %, test loss {r['test_loss']:.4f}, "
                      f"{r['wall_s']:.0f} s (study {time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for s, a in itertools.product(args.seeds, ARMS):
        with open(_run_path(args.out, a, s)) as fh:
            rows.append(json.load(fh))
    return rows


# ---------------------------------------------------------------- report
def _slope(steps, d):
    import numpy as np

    steps, d = np.asarray(steps, float), np.asarray(d, float)
    ok = d > 0
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(steps[ok], np.log10(d[ok]), 1)[0])


def growth_window(traj):
    """The steps of the growth phase: from step 1 while the chaos baseline (the nudged twin)
    is less than GROWTH_END (1 %) away from the reference in the weights, at least 3 steps."""
    log = traj["log"]
    k = sum(1 for r in log if r["dist"]["torch-nudged"]["weights"] < GROWTH_END)
    first = next((i for i, r in enumerate(log)
                  if r["dist"]["torch-nudged"]["weights"] >= GROWTH_END), len(log))
    return [r["step"] for r in log[:max(3, min(k, first))]]


def trajectory_summary(traj):
    """Per group: distances at a few steps, the median and largest salnp / torch-f32 ratio
    over steps >= 10, the growth rates (slope of log10 distance per step over the growth
    window) and their ratio, and whether the stated criteria are met."""
    import numpy as np

    log = traj["log"]
    steps = np.array([r["step"] for r in log])
    S = int(steps[-1])
    window = np.isin(steps, growth_window(traj))
    out = {}
    for g in GROUPS:
        d = {k: np.array([r["dist"][k][g] for r in log]) for k in ("salnp", "torch",
                                                                   "torch-nudged")}
        late = steps >= min(10, S)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = d["salnp"][late] / d["torch"][late]
        ratio = ratio[np.isfinite(ratio)]
        rates = {k: _slope(steps[window], v[window]) for k, v in d.items()}
        rate_ratio = rates["salnp"] / rates["torch"] if rates["torch"] else float("nan")
        med = float(np.median(ratio)) if ratio.size else float("nan")
        at = {s: {k: float(v[list(steps).index(s)]) for k, v in d.items()}
              for s in sorted({1, 3, 10, 30, 100, S}) if s in steps}
        out[g] = dict(at=at, ratio_median=med, ratio_max=float(ratio.max()) if ratio.size
                      else float("nan"), rates=rates, rate_ratio=rate_ratio,
                      passed=bool(med <= TRAJ_RATIO and 1 / TRAJ_RATE <= rate_ratio <= TRAJ_RATE))
    return out


def chaos_horizon(traj, level):
    """The first step at which the nudged twin's weights are `level` (relative) away from
    the reference, None if never."""
    return next((r["step"] for r in traj["log"]
                 if r["dist"]["torch-nudged"]["weights"] >= level), None)


def outcome_summary(rows):
    """Per arm statistics and the contrasts of the rows (seeds present in every arm)."""
    import numpy as np

    by = {a: {r["seed"]: r for r in rows if r["arm"] == a} for a in ARMS}
    seeds = sorted(set.intersection(*(set(v) for v in by.values())))
    if not seeds:
        return dict(seeds=[], arms={}, contrasts=[], per_seed={})
    arms = {}
    for a in ARMS:
        arms[a] = {}
        for k in ("acc_soft", "acc_hard", "test_loss", "wall_s"):
            v = np.array([by[a][s][k] for s in seeds], float)
            arms[a][k] = dict(mean=float(v.mean()), sd=float(v.std(ddof=1)) if v.size > 1
                              else float("nan"), min=float(v.min()), max=float(v.max()))
    contrasts = []
    for (a, b), role in (((PRIMARY), "primary"), (("salnp", "torch-native"), "secondary"),
                         (("torch", "torch-native"), "secondary")):
        va = {k: np.array([by[a][s][k] for s in seeds], float) for k in ("acc_soft", "acc_hard",
                                                                         "test_loss")}
        vb = {k: np.array([by[b][s][k] for s in seeds], float) for k in ("acc_soft", "acc_hard",
                                                                         "test_loss")}
        paired_design = role == "primary"
        c = dict(a=a, b=b, role=role, design="paired" if paired_design else "Welch", n=len(seeds))
        for k in ("acc_soft", "acc_hard"):
            if len(seeds) >= 2:
                c[k] = (sc.tost_paired(va[k] - vb[k], MARGIN, ALPHA) if paired_design
                        else sc.tost_welch(va[k], vb[k], MARGIN, ALPHA))
            else:
                c[k] = None
        c["test_loss"] = sc.paired(va["test_loss"] - vb["test_loss"]) if seeds else None
        contrasts.append(c)
    return dict(seeds=seeds, arms=arms, contrasts=contrasts, per_seed={
        s: {a: (by[a][s]["acc_soft"], by[a][s]["acc_hard"], by[a][s]["test_loss"])
            for a in ARMS} for s in seeds})


def _trajectory_md(traj):
    if traj is None:
        return ["Stage A (trajectory) has not been run at this code state: "
                "`python bench/study_fidelity.py --stage A` writes it."]
    cfg, summ = traj["config"], trajectory_summary(traj)
    S = traj["log"][-1]["step"]
    lines = [f"Stage A, trajectory: SAL-ResNet-20 w={cfg['width']}, batch {cfg['batch_size']}, "
             f"constant lr {cfg['lr']}, beta {cfg['beta0']:g} -> {cfg['beta1']:g} over {S} "
             f"steps on identical batches ({cfg['train_images']} training images), "
             f"{cfg['threads']} thread(s); code state `{traj['commit'][:12]}`.  Relative "
             "distance ||theta - theta_f64|| / ||theta_f64|| from the float64 twin, per group:",
             "", "| group | step | salnp | torch f32 | torch f32, 1 ulp nudge |",
             "|---|---|---|---|---|"]
    for g in GROUPS:
        for s, v in summ[g]["at"].items():
            lines.append(f"| {g} | {s} | {v['salnp']:.2e} | {v['torch']:.2e} | "
                         f"{v['torch-nudged']:.2e} |")
    win = growth_window(traj)
    h1, h10 = chaos_horizon(traj, 0.01), chaos_horizon(traj, 0.1)
    lines += ["", f"Chaos horizon: the twin nudged by one ulp is 1 % away from the reference "
              f"(weights) at step {h1 or '—'} and 10 % away at step {h10 or '—'}; after that "
              "every float32 run is as far from the float64 one as a 1-ulp change of the start "
              "carries, so the steps before it are where engines can be told apart.", "",
              f"Criteria (stated before the run): median over steps >= 10 of salnp's "
              f"distance / the f32 twin's <= {TRAJ_RATIO:g}, and growth rates (slope of log10 "
              f"distance per step over the growth phase, steps {win[0]}-{win[-1]}: while the "
              f"nudged twin is < {100 * GROWTH_END:g} % away, at least 3 steps) within a factor "
              f"{TRAJ_RATE:g}.", "",
              "| group | median ratio | max ratio | rate salnp | rate torch f32 | rate nudged "
              "| rate ratio | criteria |", "|---|---|---|---|---|---|---|---|"]
    for g in GROUPS:
        s = summ[g]
        lines.append(f"| {g} | {s['ratio_median']:.2f} | {s['ratio_max']:.2f} | "
                     f"{s['rates']['salnp']:.4f} | {s['rates']['torch']:.4f} | "
                     f"{s['rates']['torch-nudged']:.4f} | {s['rate_ratio']:.2f} | "
                     f"{'met' if s['passed'] else 'NOT met'} |")
    w, c = traj.get("wall_s", {}), traj.get("cpu_s", {})
    lines += ["", "Loss at the last step: " + ", ".join(
        f"{k} {v:.4f}" for k, v in traj["log"][-1]["loss"].items())
        + ("; wall (CPU) seconds per run: " + ", ".join(
            f"{k} {v:.0f} ({c.get(k, float('nan')):.0f})" for k, v in w.items()) if w else "")
        + "."]
    return lines


def _outcome_md(rows):
    if not rows:
        return ["Stage B (outcome) has no rows at this code state: `python "
                "bench/study_fidelity.py --stage B` trains them."]
    summ = outcome_summary(rows)
    r0 = rows[0]
    seeds = summ["seeds"]
    if not seeds:
        return ["Stage B (outcome): no seed has finished in all three arms yet."]
    lines = [f"Stage B, outcome: SAL-ResNet-20 w={r0['config']['width']}, CIFAR-10 subset "
             f"(JPEG-derived pixels) {r0['train_images']} training / {r0['test_images']} test "
             f"images, {r0['epochs']} epochs, batch {r0['config']['batch_size']}, lr "
             f"{r0['config']['lr']} x 0.1 at 1/2 and 3/4, beta {r0['config']['beta0']:g} -> "
             f"{r0['config']['beta1']:g}, {len(seeds)} seeds ({', '.join(map(str, seeds))}), one "
             f"thread per run; code state `{r0['commit'][:12]}`; torch "
             f"{r0['config']['versions']['torch']}.", "",
             "| arm | soft test acc, mean ± sd [min, max] | binarised | test loss | wall s |",
             "|---|---|---|---|---|"]
    for a in ARMS:
        s = summ["arms"][a]
        f = lambda m: (f"{100 * m['mean']:.2f} ± {100 * m['sd']:.2f} [{100 * m['min']:.2f}, "
                       f"{100 * m['max']:.2f}] %")
        lines.append(f"| {a} | {f(s['acc_soft'])} | {f(s['acc_hard'])} | "
                     f"{s['test_loss']['mean']:.4f} ± {s['test_loss']['sd']:.4f} | "
                     f"{s['wall_s']['mean']:.0f} |")
    lines += ["", f"Equivalence (TOST, margin ±{100 * MARGIN:g} point, alpha {ALPHA}; stated "
              "before the runs: the primary endpoint is the soft accuracy of salnp − torch):", "",
              "| contrast | role | design | metric | mean diff (points) | 90 % interval | "
              "p (TOST) | equivalent within ±1 |", "|---|---|---|---|---|---|---|---|"]
    for c in summ["contrasts"]:
        for k, label in (("acc_soft", "soft acc"), ("acc_hard", "binarised acc")):
            t = c[k]
            if t is None:
                lines.append(f"| {c['a']} − {c['b']} | {c['role']} | {c['design']} | {label} | "
                             "— | — | — | needs >= 2 seeds |")
                continue
            lines.append(f"| {c['a']} − {c['b']} | {c['role'] if k == 'acc_soft' else 'secondary'}"
                         f" | {c['design']} | {label} | {100 * t['mean']:+.2f} | "
                         f"[{100 * t['lo']:+.2f}, {100 * t['hi']:+.2f}] | {sc.fmt_p(t['p'])} | "
                         f"{'yes' if t['equivalent'] else 'not shown'} |")
    lines += ["", "Test loss differences (secondary; 95 % paired t intervals, no margin stated, "
              "so no equivalence claim):", ""]
    for c in summ["contrasts"]:
        t = c["test_loss"]
        if t is not None:
            lines.append(f"- {c['a']} − {c['b']}: {t['mean']:+.4f} "
                         f"[{t['lo']:+.4f}, {t['hi']:+.4f}] (paired t p = {sc.fmt_p(t['p'])})")
    prim = summ["contrasts"][0]["acc_soft"]
    lines.append("")
    if prim is None:
        lines.append("**Primary endpoint:** not evaluable (fewer than 2 paired seeds).")
    elif prim["equivalent"]:
        lines.append(f"**Primary endpoint: equivalence shown.** salnp − torch soft accuracy "
                     f"{100 * prim['mean']:+.2f} points, 90 % interval [{100 * prim['lo']:+.2f}, "
                     f"{100 * prim['hi']:+.2f}] inside ±{100 * MARGIN:g}, TOST p = "
                     f"{sc.fmt_p(prim['p'])} over {prim['n']} pairs.")
    else:
        lines.append(f"**Primary endpoint: equivalence NOT shown.** salnp − torch soft accuracy "
                     f"{100 * prim['mean']:+.2f} points, 90 % interval [{100 * prim['lo']:+.2f}, "
                     f"{100 * prim['hi']:+.2f}], TOST p = {sc.fmt_p(prim['p'])} over "
                     f"{prim['n']} pairs: look for the defect (stage A's trajectory says whether "
                     "the engines part early; the torch-native arm whether the pipeline or the "
                     "initialisation differs).")
    if len(seeds) < 8:
        lines.append(f"Only {len(seeds)} paired seeds: the study asks for >= 8.")
    lines += ["", "Per seed (soft / binarised accuracy %, test loss):", ""]
    for s in seeds:
        v = summ["per_seed"][s]
        lines.append(f"- seed {s}: " + "; ".join(
            f"{a} {100 * v[a][0]:.2f} / {100 * v[a][1]:.2f}, {v[a][2]:.4f}" for a in ARMS))
    return lines


def scope(rows):
    """What the scale of the rows cannot show."""
    if not rows:
        return ""
    r0 = rows[0]
    return (f"What this scale cannot show: {r0['train_images']:,} JPEG-derived CIFAR-10 "
            f"training images and {r0['epochs']} epochs are not 50,000 images and 300 epochs; "
            "equivalence here says that salnp and PyTorch train this network alike in this "
            "regime (within the margin), not that a full-length run ends within a point.  TOST "
            "is about the mean over seeds: a single run of either engine still varies by the "
            "seed-to-seed spread in the table.")


def report(args):
    rows = sc.read_rows(args.rows, "arm")
    traj_path = os.path.join(args.write, "fidelity_trajectory.json")
    traj = None
    if os.path.exists(traj_path):
        with open(traj_path) as fh:
            traj = json.load(fh)
    commits = {r["commit"] for r in rows} | ({traj["commit"]} if traj else set())
    lines = ["Generated by `python bench/study_fidelity.py --report` from "
             f"{os.path.relpath(args.rows, ROOT)} and "
             f"{os.path.relpath(traj_path, ROOT)}; do not edit by hand.", ""]
    if len(commits) > 1:
        lines += [f"**Warning:** stage A and stage B ran on different code states "
                  f"({', '.join(sorted(c[:12] for c in commits))}).", ""]
    lines += _trajectory_md(traj) + [""] + _outcome_md(rows) + ["", scope(rows)]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.write, exist_ok=True)
    with open(os.path.join(args.write, "fidelity.md"), "w") as fh:
        fh.write("# Fidelity study (generated)\n\n" + text + "\n")
    figs = []
    if traj is not None:
        figs.append(os.path.join(args.write, "fidelity_trajectory.png"))
        plot_trajectory(traj, path=figs[-1])
    if rows and outcome_summary(rows)["seeds"]:
        figs.append(os.path.join(args.write, "fidelity_outcome.png"))
        plot_outcome(rows, path=figs[-1])
    md_dir = os.path.dirname(os.path.abspath(args.studies_md))
    pics = [f"![{os.path.basename(p)}]({os.path.relpath(p, md_dir)})" for p in figs if p]
    sc.replace_section(args.studies_md, "fidelity", text + ("\n\n" + "\n".join(pics) if pics
                                                            else ""))
    return text


def plot_trajectory(traj, fig=None, path=None):
    """Loss and the per-group distances from the float64 reference against the step (log
    scale; the 1-ulp-nudged twin is the chaos level), on fig (None: a new Figure; no
    backend is chosen here); written to path when given.  Returns the figure."""
    from matplotlib.figure import Figure

    log = traj["log"]
    steps = [r["step"] for r in log]
    fig = Figure(figsize=(11, 6), layout="constrained") if fig is None else fig
    axes = fig.subplots(2, 3).ravel()
    style = {"salnp": ("C0", "-"), "torch": ("C1", "--"), "torch-nudged": ("0.5", ":"),
             "torch-f64": ("k", "-")}
    for k in TRAJ_RUNS:
        axes[0].plot(steps, [r["loss"][k] for r in log], color=style[k][0], ls=style[k][1],
                     label=k, lw=1)
    axes[0].set_title("training loss")
    axes[0].legend(fontsize=7)
    for ax, g in zip(axes[1:], GROUPS):
        for k, lab in (("salnp", "salnp f32"), ("torch", "torch f32"),
                       ("torch-nudged", "torch f32, 1 ulp nudge")):
            ax.plot(steps, [max(r["dist"][k][g], 1e-17) for r in log], color=style[k][0],
                    ls=style[k][1], label=lab, lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{g}: distance from the f64 twin", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    axes[-1].axis("off")
    axes[-1].text(0, 0.5, "relative distance\n||θ − θ_f64|| / ||θ_f64||\nper parameter group;\n"
                  "the nudged twin starts 1 ulp\naway: its curve is the chaos\nlevel any f32 "
                  "engine reaches", fontsize=9, va="center")
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_outcome(rows, fig=None, path=None):
    """Left: soft test accuracy per seed and arm (lines join a seed's runs); right: the
    contrasts' mean differences with their 90 % intervals against the ±1 point margin.
    On fig (None: a new Figure); written to path when given.  Returns the figure."""
    from matplotlib.figure import Figure

    summ = outcome_summary(rows)
    fig = Figure(figsize=(10, 4), layout="constrained") if fig is None else fig
    ax, bx = fig.subplots(1, 2)
    for s in summ["seeds"]:
        ax.plot(range(len(ARMS)), [100 * summ["per_seed"][s][a][0] for a in ARMS], "o-",
                color="0.6", lw=0.8, ms=3)
    for i, a in enumerate(ARMS):
        m = summ["arms"][a]["acc_soft"]
        ax.errorbar(i + 0.1, 100 * m["mean"], yerr=100 * m["sd"] if m["sd"] == m["sd"] else 0,
                    fmt="s", color="C3", capsize=4)
    ax.set_xticks(range(len(ARMS)), ARMS)
    ax.set_ylabel("soft test accuracy (%)")
    ax.set_title("per seed (grey), mean ± sd (red)", fontsize=9)
    ax.grid(alpha=0.3)
    cs = [c for c in summ["contrasts"] if c["acc_soft"] is not None]
    for i, c in enumerate(cs):
        t = c["acc_soft"]
        bx.errorbar(100 * t["mean"], i, xerr=[[100 * (t["mean"] - t["lo"])],
                                              [100 * (t["hi"] - t["mean"])]],
                    fmt="o", color="C0" if c["role"] == "primary" else "C2", capsize=4)
    bx.invert_yaxis()
    bx.axvspan(-100 * MARGIN, 100 * MARGIN, color="C2", alpha=0.12, label="±1 point margin")
    bx.axvline(0, color="k", lw=0.8)
    bx.set_yticks(range(len(cs)), [f"{c['a']} − {c['b']}\n({c['role']}, {c['design']})"
                                   for c in cs], fontsize=8)
    bx.set_xlabel("soft accuracy difference (points), 90 % interval (TOST)")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    if path:
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------- command line
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("A", "B", "all"), default="all",
                    help="A: trajectory, B: outcome, all: both (then the report)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "fidelity"),
                    help="work folder (per-run results; resumable)")
    ap.add_argument("--root", default=sc.CIFAR, help="the CIFAR-10 folder")
    ap.add_argument("--train", type=int, default=10000, help="training images (0: all)")
    ap.add_argument("--test", type=int, default=10000, help="test images (0: all)")
    ap.add_argument("--epochs", type=int, default=15, help="stage B epochs")
    ap.add_argument("--seeds", type=sc.seeds_arg, default=sc.seeds_arg("0-8"),
                    help="stage B seeds, e.g. 0-8 (end excluded) or 0,3,7")
    ap.add_argument("--steps", type=int, default=300, help="stage A steps")
    ap.add_argument("--traj-seed", type=int, default=0, help="stage A seed")
    ap.add_argument("--threads", type=int, default=1,
                    help="stage A threads (2 only on an otherwise idle machine: under load, "
                         "PyTorch's OpenMP at 2 threads ran 5-8x slower than at 1)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--beta0", type=float, default=20.0)
    ap.add_argument("--beta1", type=float, default=70.0)
    ap.add_argument("--jobs", type=int, default=2, help="stage B runs at a time (1 thread each)")
    ap.add_argument("--nice", type=int, default=5)
    ap.add_argument("--rows", default=os.path.join(STUDIES, "fidelity.json"))
    ap.add_argument("--write", default=STUDIES, help="folder of the tables and figures")
    ap.add_argument("--studies-md", default=os.path.join(HERE, "STUDIES.md"),
                    help="the Markdown file whose generated section the report replaces")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run on a working tree with changes (commit recorded as <hash>+dirty)")
    ap.add_argument("--report", action="store_true", help="only the report, from the rows")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        row = run_one(spec)
        sc.write_json(_run_path(args.out, spec["arm"], spec["seed"]), row)
        return
    if not args.report:
        commit = sc.code_state(args.allow_dirty)
        sc.pin_code_state(args.out, commit)
        if args.stage in ("A", "all"):
            trajectory(args, commit)
        if args.stage in ("B", "all"):
            rows = outcome(args, commit)
            sc.write_rows(args.rows, rows, "arm", study="fidelity", commit=commit)
    report(args)


if __name__ == "__main__":
    main()
