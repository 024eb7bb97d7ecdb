"""salnp against PyTorch at its best on this machine: one command.

    PYTHONPATH=python python bench/run.py            # full run, writes bench/RESULTS.md
    PYTHONPATH=python python bench/run.py --quick    # tiny sizes, proves it runs (CI); no claims

What is measured (2 threads each unless --threads, warm, medians of interleaved repeats
with their range, every rival's result checked against salnp before it is timed):
- training step, batch 128, 32x32 CIFAR-sized inputs, ResNet-20 w=16: CL, SAL unshared,
  SAL shared, SL e=6, ASL e=6.  salnp: forward, cross-entropy, zero_grad, backward, SGD
  (what salnp.fit does per step).  PyTorch (bench/torch_fast.py: no instrumentation,
  in-place ReLU, SL shift as channel-grouped slabs or a one-hot depthwise conv, whichever
  is faster): zero_grad(set_to_none), forward, cross_entropy, backward, SGD (fused when
  available), in NCHW and channels_last; the faster counts.  torch.compile: an extra row
  for CL and SAL where it compiles;
- inference, batch 128 and batch 1: salnp.export of SAL unshared / shared, CL, SL against
  PyTorch eval mode under inference_mode with every BN folded into its conv (SAL: a dense
  3x3 conv of the binarised weights), NCHW and channels_last, the faster counted;
- peak RSS growth of a training step (fresh process per framework, VmHWM reset after
  setup);
- two processes at once, each with 2 threads on the 2 cores, against one alone;
- the allocator: PyTorch's CPU guide recommends jemalloc or tcmalloc; each is tried on a
  PyTorch training step in a child process and the fastest (or none) is preloaded for the
  whole run (both libraries share the process, so both run with it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import interleave  # noqa: E402  (bench/common.py)
try:                      # the installed salnp, or the one on PYTHONPATH
    import salnp as _salnp
except ImportError:       # else the development tree (bash scripts/dev-build.sh)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import salnp as _salnp
SALNP_PATH = os.path.dirname(os.path.dirname(os.path.abspath(_salnp.__file__)))

# seconds after each timed inference call at 2+ threads (worker_infer): onnxruntime's pool
# thread spins 30-50 ms after a run (measured: busy 30 ms of the 100 ms that start 20 ms
# after a run, idle from 50 ms on), and with 10 ms it still held a core during salnp's next
# call (exported shared SAL, batch 128: 19.8 ms against 9.7 ms alone, process CPU 40 ms)
INFER_PAUSE = 0.1
INFER_BLOCK = (2, 10)   # calls in a row per runtime and round at 2+ threads: batch 128, batch 1
TRAIN_PAUSE = 0.05   # seconds after each timed training step (worker_train)

ALLOCATORS = {
    "none": None,
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}

TRAIN_MODELS = [  # (key, label, layer, kwargs)
    ("cl", "CL", "cl", {}),
    ("sal", "SAL unshared", "sal", {}),
    ("sal_shared", "SAL shared", "sal", {"shared": True}),
    ("sl", "SL (ShiftResNet) e=6", "sl", {"expansion": 6}),
    ("asl", "ASL e=6 (Jeon & Kim's ASNet)", "asl", {"expansion": 6}),
]
INFER_MODELS = [
    ("sal", "SAL unshared", "sal", {}),
    ("sal_shared", "SAL shared", "sal", {"shared": True}),
    ("cl", "CL", "cl", {}),
    ("sl", "SL e=6", "sl", {"expansion": 6}),
    ("asl", "ASL e=6 (ASNet)", "asl", {"expansion": 6}),
]


# ---------------------------------------------------------------- machine facts
def machine():
    info = {"cpus": len(os.sched_getaffinity(0)), "model": platform.machine()}
    try:
        txt = open("/proc/cpuinfo").read()
        for line in txt.splitlines():
            if line.startswith("model name") and "cpu" not in info:
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and "mhz" not in info:
                info["mhz"] = float(line.split(":", 1)[1])
            if line.startswith("flags") and "flags" not in info:
                info["flags"] = line.split(":", 1)[1].split()
    except OSError:
        pass
    flags = info.pop("flags", [])
    info["isa"] = "avx512f" if "avx512f" in flags else ("avx2+fma" if "avx2" in flags else "sse")
    # FP32 FLOPs per cycle per core if 2 FMA pipes are as wide as the vectors (Zen 4 runs
    # AVX-512 double-pumped: half of it); a virtual machine reports its base clock
    per_cycle = {"avx512f": 64, "avx2+fma": 32, "sse": 16}[info["isa"]]
    info["nominal_peak_gflops"] = info["cpus"] * info.get("mhz", 0) / 1e3 * per_cycle
    # measured: independent FMA chains at the widest vector the CPU has (bench/fma_peak.c)
    info["measured_peak_gflops"] = fma_peak(info["cpus"], info["isa"]) if info["isa"] != "sse" else None
    if info["measured_peak_gflops"]:
        info["peak_gflops"] = info["measured_peak_gflops"]
        info["peak_source"] = "measured (bench/fma_peak.c, best of 3, the widest FMA)"
    else:
        info["peak_gflops"] = info["nominal_peak_gflops"]
        info["peak_source"] = "nominal clock (no C compiler to measure it)"
    return info


def fma_peak(threads, isa):
    """GFLOP/s of independent FMA chains on `threads` cores (bench/fma_peak.c, AVX2 and,
    where the CPU has it, AVX-512: the faster), or None when no C compiler is at hand."""
    import shutil
    import tempfile
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    best = None
    with tempfile.TemporaryDirectory() as d:
        for flags in (["-mavx2", "-mfma"], ["-mavx512f"]):
            if "-mavx512f" in flags and isa != "avx512f":
                continue
            exe = os.path.join(d, "fma_peak" + flags[0])
            try:
                subprocess.run([cc, "-O3", *flags, "-pthread", os.path.join(HERE, "fma_peak.c"),
                                "-o", exe], check=True, capture_output=True, timeout=120)
                runs = [subprocess.run([exe, str(threads)], check=True, capture_output=True,
                                       text=True, timeout=120).stdout for _ in range(3)]
                got = max(float(r) for r in runs)
                best = got if best is None else max(best, got)
            except (OSError, subprocess.SubprocessError, ValueError):
                continue
    return best


class CoreLatency:
    """The cache-line round trip between two threads (bench/core_latency.c), in ns: on a
    virtual machine the host may move its vCPUs between cores that share an L3 and cores
    that do not, and a 2-thread result depends on which (see the C file); measured before
    and after each timed worker.  None when there is no C compiler or only one CPU."""

    def __init__(self):
        import shutil
        import tempfile
        self.exe, self.dir = None, tempfile.TemporaryDirectory()
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc or len(os.sched_getaffinity(0)) < 2:
            return
        exe = os.path.join(self.dir.name, "core_latency")
        try:
            subprocess.run([cc, "-O2", "-pthread", os.path.join(HERE, "core_latency.c"), "-o",
                            exe], check=True, capture_output=True, timeout=120)
            self.exe = exe
        except (OSError, subprocess.SubprocessError):
            pass

    def __call__(self):
        """the median of 3 runs, ns"""
        if not self.exe:
            return None
        try:
            runs = [float(subprocess.run([self.exe], check=True, capture_output=True, text=True,
                                         timeout=20).stdout) for _ in range(3)]
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        return statistics.median(runs)


# ---------------------------------------------------------------- helpers
def stats(times, n_images):
    rates = sorted(n_images / t for t in times)
    return {"median": statistics.median(rates), "lo": rates[0], "hi": rates[-1],
            "ms": 1e3 * statistics.median(times)}



def sizes(quick):
    if quick:
        # width 8, not 4: torch 2.13 corrupts its heap training a width-4 net in channels_last
        return dict(depth=8, width=8, batch=8, hw=16, repeats=1, warmup=0, steps=2)
    return dict(depth=20, width=16, batch=128, hw=32, repeats=5, warmup=2, steps=8)


def make_net(layer, kw, sz, seed=0):
    import salnp
    net = salnp.models.resnet(sz["depth"], sz["width"], layer, seed=seed, **kw)
    net.beta = 20.0
    return net


def salnp_step(net, opt, x, y):
    from salnp import ops
    logits = net.forward(x, train=True)
    ops.cross_entropy(logits, y)
    net.zero_grad()
    net.backward(ops.cross_entropy_backward(logits, y))
    opt.step(0.05)


def torch_trainer(model, channels_last, x, y):
    import torch
    import torch.nn.functional as F
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    else:
        xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype("int64"))
    # foreach, not fused=True: torch 2.13's fused CPU SGD corrupted the heap here with
    # channels_last conv weights ("double free or corruption" in the next backward)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          foreach=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return step, model, xt


# ---------------------------------------------------------------- workers
def worker_train(args, sz, out):
    import numpy as np
    import torch
    import salnp
    from salnp.train import SGD
    import torch_fast
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    rows = []
    for key, label, layer, kw in TRAIN_MODELS:
        if args.models and key not in args.models.split(","):
            continue
        net = make_net(layer, kw, sz)
        cnt = salnp.count(net, input_shape=(3, sz["hw"], sz["hw"]), mode="train")
        # results first: the first training-mode forward of every rival equals salnp's
        ref = np.array(net.forward(x, train=True))
        names, fns = [], []
        hows = ["slab", "onehot"] if layer == "sl" else ["slab"]
        for how in hows:
            for cl in (False, True):
                t = torch_fast.build(net, 20.0, how).train()
                step, t, xt = torch_trainer(t, cl, x, y)
                with torch.no_grad():
                    got = t(xt).numpy()
                err = float(np.abs(got - ref).max())
                assert err <= 1e-3 * max(1.0, float(np.abs(ref).max())), (key, how, cl, err)
                names.append(f"torch {'channels_last' if cl else 'NCHW'}"
                             + (f" ({how} shift)" if layer == "sl" else ""))
                fns.append(step)
        if args.compile and key in ("cl", "sal"):
            try:
                t = torch_fast.build(net, 20.0).train()
                step, t, xt = torch_trainer(t, True, x, y)
                cm = torch.compile(t)
                tc = time.perf_counter()
                step_c, _, _ = torch_trainer(cm, True, x, y)
                step_c()
                step_c()
                names.append(f"torch.compile channels_last (compiled in {time.perf_counter() - tc:.0f} s)")
                fns.append(step_c)
            except Exception as e:  # noqa: BLE001 - a row that does not work here
                print(f"torch.compile failed for {key}: {type(e).__name__}: {e}", file=sys.stderr)
        opt = SGD(net, lr=0.05)
        names.insert(0, "salnp")
        fns.insert(0, lambda net=net, opt=opt: salnp_step(net, opt, x, y))
        # a pause after every step: a torch.compile contender's threads took CPU from the
        # next contender of the round (salnp CL 883 -> 759 images/s with it in the round)
        times = interleave(fns, sz["repeats"], sz["warmup"], pause=TRAIN_PAUSE)
        res = {n: stats(t, sz["batch"]) for n, t in zip(names, times)}
        rows.append({"key": key, "label": label, "train_flops": 2 * cnt.train_macs,
                     "results": res})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out["train"] = rows


SPARSE_BETAS = (20.0, 35.0, 70.0)


def worker_sparse(args, sz, out):
    """SAL training steps at beta 20 / 35 / 70: salnp with its default tap threshold (sparse
    taps), salnp with tap_threshold=0 (the dense path), and PyTorch (NCHW and channels_last)
    running the authors' dense SAL, whose cost does not depend on beta: one interleaved run
    per model, every rival's first forward checked against salnp's."""
    import numpy as np
    import salnp
    from salnp.train import SGD
    import torch_fast
    rng = np.random.default_rng(5)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    rows = []
    for key, label, layer, kw in TRAIN_MODELS:
        if layer != "sal" or (args.models and key not in args.models.split(",")):
            continue
        names, fns, kept = [], [], {}
        for beta in SPARSE_BETAS:
            for t in (None, 0.0):
                net = make_net(layer, kw, sz)
                net.beta = beta
                if t is not None:
                    net.tap_threshold = t
                else:
                    kept[f"{beta:g}"] = float(np.mean(list(salnp.attention.kept_taps(net).values())))
                opt = SGD(net, lr=0.05)
                names.append(f"salnp{' dense' if t is not None else ''} beta={beta:g}")
                fns.append(lambda net=net, opt=opt: salnp_step(net, opt, x, y))
        net = make_net(layer, kw, sz)
        ref = np.array(net.forward(x, train=True))
        for cl in (False, True):
            tm = torch_fast.build(net, 20.0).train()
            step, tm, xt = torch_trainer(tm, cl, x, y)
            import torch
            with torch.no_grad():
                err = float(np.abs(tm(xt).numpy() - ref).max())
            assert err <= 1e-3 * max(1.0, float(np.abs(ref).max())), (key, cl, err)
            names.append(f"torch {'channels_last' if cl else 'NCHW'}")
            fns.append(step)
        times = interleave(fns, sz["repeats"], sz["warmup"])
        rows.append({"key": key, "label": label, "kept": kept,
                     "results": {n: stats(t, sz["batch"]) for n, t in zip(names, times)}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out["sparse"] = rows


def binarised_torch(net, fold=True):
    """PyTorch eval twin of an exported network: SAL as dense convs of the binarised
    weights, every BN folded into its conv."""
    import torch
    import torch.nn as tnn
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    import salnp
    import torch_fast
    t = torch_fast.build(net, net.beta).eval()
    with torch.no_grad():
        for mod in list(t.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, torch_fast.SALConv):
                    p = salnp.ops.sal_probs(child.logits.numpy(), net.beta, hard=True)
                    w = child.weight * torch.tensor(p.reshape(p.shape[0], p.shape[1], 3, 3))
                    conv = tnn.Conv2d(w.shape[1], w.shape[0], 3, child.stride, 1, bias=False)
                    conv.weight.copy_(w)
                    setattr(mod, name, conv)
        t.eval()
        if fold:
            for mod in list(t.modules()):
                if hasattr(mod, "shortcut"):
                    mod.shortcut[0] = fuse_conv_bn_eval(mod.shortcut[0], mod.shortcut[1])
                    mod.shortcut[1] = tnn.Identity()
                for c, b in (("conv1", "bn1"), ("conv2", "bn2")):
                    if isinstance(getattr(mod, c, None), tnn.Conv2d) and \
                            isinstance(getattr(mod, b, None), tnn.BatchNorm2d):
                        setattr(mod, c, fuse_conv_bn_eval(getattr(mod, c), getattr(mod, b)))
                        setattr(mod, b, tnn.Identity())
    return t.eval()


def exported_net(layer, kw, sz, rng):
    """(net, salnp.export(net)) of an INFER_MODELS entry: BN not the identity (random affine,
    running statistics from 3 training forwards), so that folding matters; ASL offsets
    integers (they export exactly); beta 70, the CIFAR beta_final."""
    import numpy as np
    import salnp
    net = make_net(layer, kw, sz)
    for name, p in net.named_parameters():
        if ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
        if name.endswith(".shift"):
            p[...] = np.rint(p * 2)
    for _ in range(3):
        net.forward(rng.standard_normal((32, 3, sz["hw"], sz["hw"]), dtype=np.float32),
                    train=True)
    net.beta = 70.0
    return net, salnp.export(net)


def ort_session(inf, sz, threads):
    """onnxruntime on salnp's own ONNX export of inf (the file a user would export), with
    the thread budget of the run and every graph optimisation; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import salnp
    model = salnp.export.to_onnx(inf, None, (3, sz["hw"], sz["hw"]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def worker_infer(args, sz, out):
    """Exported networks: salnp's runtime against onnxruntime on salnp's ONNX export of the
    same network and against PyTorch eval (BN folded), every output checked first."""
    import numpy as np
    import torch
    import salnp
    rng = np.random.default_rng(1)
    rows = []
    for key, label, layer, kw in INFER_MODELS:
        if args.models and key not in args.models.split(","):
            continue
        net, inf = exported_net(layer, kw, sz, rng)
        cnt = inf.count()
        torch_models = [] if layer == "asl" else [
            ("torch NCHW", binarised_torch(net), None),
            ("torch channels_last", binarised_torch(net).to(memory_format=torch.channels_last),
             torch.channels_last)]
        sess = ort_session(inf, sz, args.threads)
        for batch in (sz["batch"], 1):
            x = rng.standard_normal((batch, 3, sz["hw"], sz["hw"])).astype(np.float32)
            ref = np.array(net.forward(x, train=False, hard=True))
            scale = float(np.abs(ref).max())
            err = float(np.abs(inf.forward(x) - ref).max())
            assert err <= 1e-4 * scale + 1e-5, (key, batch, "salnp export", err)
            names, fns = ["salnp export"], [lambda x=x: inf.forward(x)]
            for name, m, fmt in torch_models:
                xt = torch.from_numpy(x)
                xt = xt.contiguous(memory_format=fmt) if fmt is not None else xt
                with torch.inference_mode():
                    e = float(np.abs(m(xt).numpy() - ref).max())
                assert e <= 1e-4 * scale + 1e-5, (key, batch, name, e)

                def tf(m=m, xx=xt):
                    with torch.inference_mode():
                        m(xx)
                names.append(name)
                fns.append(tf)
            ort_err = None
            if sess is not None:
                ort_err = float(np.abs(sess.run(None, {"input": x})[0] - inf.forward(x)).max())
                assert ort_err <= 1e-4 * scale, (key, batch, "onnxruntime", ort_err)
                names.append("onnxruntime")
                fns.append(lambda x=x: sess.run(None, {"input": x}))
            reps = sz["repeats"] * (10 if batch == 1 else 2)
            # at 2+ threads each runtime makes a block of calls in a row (each timed), then an
            # untimed pause: onnxruntime's pool threads (and PyTorch's OpenMP ones) spin-wait
            # after a call and took a core from the next runtime (INFER_PAUSE); within a
            # block every runtime runs back to back, as a serving loop does
            block = 1 if args.threads == 1 else INFER_BLOCK[batch == 1]
            pause = INFER_PAUSE if args.threads > 1 else 0.0
            times = interleave(fns, max(1, reps // block), sz["warmup"] * 3, pause=pause,
                               block=block)
            res = {n: stats(tt, batch) for n, tt in zip(names, times)}
            rows.append({"key": key, "label": label, "batch": batch, "threads": args.threads,
                         "flops": 2 * cnt.macs, "ort_max_abs_diff": ort_err,
                         "max_abs_logit": scale, "results": res})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out["infer"] = rows


def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0   # MiB
    return float("nan")


def worker_step(args, sz, seed):
    """(step, RSS in MiB after building the network) for one training step of args.model
    in framework args.fw (salnp, torch NCHW or torch_cl = channels_last) on a fixed batch."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    layer, kw = dict((k, (l, kw)) for k, _, l, kw in TRAIN_MODELS)[args.model]
    net = make_net(layer, kw, sz)
    if args.fw == "salnp" and args.checkpointing:
        net.checkpointing = args.checkpointing
    rss = vm("VmRSS")
    if args.fw == "salnp":
        from salnp.train import SGD
        opt = SGD(net, lr=0.05)

        def step():
            salnp_step(net, opt, x, y)
        return step, rss
    import torch
    import torch_fast
    torch.set_num_threads(args.threads)
    t = torch_fast.build(net, 20.0).train()
    step, _, _ = torch_trainer(t, args.fw == "torch_cl", x, y)
    return step, rss


def worker_rss(args, sz, out):
    """Peak RSS growth of training steps in this fresh process: setup, reset the
    high-water mark, then 3 steps; growth = VmHWM - RSS before them."""
    step, base0 = worker_step(args, sz, seed=2)
    import gc
    gc.collect()
    before = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                      # VmHWM := current RSS
    for _ in range(3):
        step()
    out["rss"] = {"fw": args.fw, "model": args.model, "before_MiB": before,
                  "hwm_MiB": vm("VmHWM"), "growth_MiB": vm("VmHWM") - before,
                  "steps": 3, "first_step_included": True, "setup_MiB": before - base0}


def worker_steps(args, sz, out):
    """Images/s of `steps` training steps (after warm-up) in this process."""
    step, _ = worker_step(args, sz, seed=3)
    for _ in range(2):
        step()
    if args.start_at:
        while time.time() < args.start_at:
            time.sleep(0.005)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    out["steps"] = {"fw": args.fw, "model": args.model, "images_per_s": args.steps * sz["batch"] / dt,
                    "seconds": dt}


def worker_probe(args, sz, out):
    """PyTorch CL training step under this process's allocator: images/s median."""
    import numpy as np
    import torch
    import torch_fast
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((sz["batch"], 3, sz["hw"], sz["hw"])).astype(np.float32)
    y = (np.arange(sz["batch"]) % 10).astype(np.int32)
    net = make_net("cl", {}, sz)
    step, _, _ = torch_trainer(torch_fast.build(net).train(), True, x, y)
    times = interleave([step], sz["repeats"] + 2, sz["warmup"])[0]
    out["probe"] = stats(times, sz["batch"])


# ---------------------------------------------------------------- orchestration
def spawn(args, worker, extra=(), preload=None, wait=True):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + list(extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SALNP_PATH, env.get("PYTHONPATH", "")])  # the same salnp
    if preload:
        env["LD_PRELOAD"] = preload
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if not wait:
        return p
    return collect(p, worker)


def collect(p, worker):
    stdout, _ = p.communicate(timeout=7200)
    if p.returncode != 0:
        raise RuntimeError(f"worker {worker} failed with status {p.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def fmt_rate(r):
    return f"{r['median']:,.0f} ({r['lo']:,.0f}–{r['hi']:,.0f})"


def best_torch(res):
    k = max((n for n in res if n.startswith("torch") and "compile" not in n),
            key=lambda n: res[n]["median"])
    return k, res[k]


def report(args, data, mach, sz):
    import salnp
    import torch
    cfg = salnp.config()
    peak = mach["peak_gflops"]
    lines = []
    cmd = "PYTHONPATH=python python bench/run.py " + " ".join(sys.argv[1:])
    lines.append(f"Command: `{cmd}`  ")
    lines.append(f"Date: {data['date']} UTC; load average before / after: "
                 f"{data['load_before']} / {data['load_after']}  ")
    lines.append(f"Machine: {mach.get('cpu', '?')}, {mach['cpus']} CPUs usable, {mach['isa']}, "
                 f"{mach.get('mhz', 0):.0f} MHz reported.  FP32 peak used for % peak: "
                 f"**{peak:.0f} GFLOP/s, {mach['peak_source']}** (nominal: "
                 f"{mach['nominal_peak_gflops']:.0f} = {mach['cpus']} cores x "
                 f"{mach.get('mhz', 0) / 1e3:.2f} GHz reported x 2 full-width FMA pipes; a VM "
                 f"reports its base clock, and Zen 4 runs AVX-512 at half that width)  ")
    lines.append(f"salnp {cfg['salnp']}: BLIS {cfg['blis_version']} {cfg['flavour']} flavour, "
                 f"sub-configuration {cfg['arch']} ({cfg['arch_source']}); libsal pthread pool, "
                 f"{args.threads} threads. torch {torch.__version__}, {args.threads} threads "
                 f"(torch.set_num_threads). numpy {cfg['numpy']}, python {cfg['python']}  ")
    lines.append(f"Allocator preloaded for the run: **{data['allocator']}** "
                 f"(PyTorch CL channels_last step, images/s: "
                 + ", ".join(f"{k} {v['median']:,.0f}" for k, v in data["probe"].items()) + ")  ")
    if any(v is not None for pair in data.get("rtt", {}).values() for v in pair):
        lines.append("Core-to-core round trip (bench/core_latency.c, ns, before / after each "
                     "worker; 50-160 ns: the two vCPUs share an L3, 320-580: they do not, and "
                     "2-thread figures run slower): " + "; ".join(
                         f"{k} {' / '.join('–' if v is None else f'{v:.0f}' for v in pair)}"
                         for k, pair in data["rtt"].items()) + "  ")
    lines.append("")
    lines.append("Medians of interleaved repeats with (min–max); ratio = salnp / the faster "
                 "PyTorch layout.  GFLOP/s counts 2 x MACs (salnp.count: training = forward + "
                 "backward MACs; inference = the exported network's MACs) at the median rate.  "
                 f"Training steps are followed by an untimed pause of {TRAIN_PAUSE * 1e3:.0f} ms "
                 "(a torch.compile contender's threads slowed the next contender of the round: "
                 "salnp's CL step 883 images/s without it in the round, 759 with it, 804 with "
                 "it and the pause).")
    lines.append("")
    lines.append(f"### Training step, ResNet-{sz['depth']} w={sz['width']}, batch {sz['batch']}, "
                 f"{sz['hw']}x{sz['hw']}, images/s")
    lines.append("")
    lines.append("| model | salnp | PyTorch NCHW | PyTorch channels_last | torch.compile | salnp / best PyTorch | salnp GFLOP/s (% peak) |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in data["train"]:
        res = r["results"]
        s = res["salnp"]
        bk, b = best_torch(res)
        nchw = [n for n in res if n.startswith("torch NCHW")]
        cl = [n for n in res if n.startswith("torch channels_last")]
        comp = [n for n in res if "compile" in n]
        pick = lambda ns: max(ns, key=lambda n: res[n]["median"]) if ns else None
        cell = lambda n: (fmt_rate(res[n]) + (f" [{n.split('(')[1][:-1]}]" if "shift)" in n else "")) if n else "–"
        gf = r["train_flops"] * s["median"] / 1e9
        lines.append(f"| {r['label']} | {fmt_rate(s)} | {cell(pick(nchw))} | {cell(pick(cl))} | "
                     f"{fmt_rate(res[comp[0]]) if comp else '–'} | **{s['median'] / b['median']:.2f}x** | "
                     f"{gf:.1f} ({100 * gf / peak:.1f} %) |")
    lines.append("")
    lines.append(f"### SAL training step against beta: sparse taps (the default tap threshold) "
                 f"and the dense path (tap_threshold=0), batch {sz['batch']}, images/s")
    lines.append("")
    lines.append("PyTorch runs the authors' dense SAL (every tap at every beta), so one figure "
                 "serves every beta.  The kept taps are those of a fresh network's logits (normalised "
                 "per slice, DESIGN 1.2) at that beta; the reduced-run table gives a trained "
                 "network's at beta 70.")
    lines.append("")
    lines.append("| model | beta | kept taps / 9 | salnp | salnp dense | best PyTorch | "
                 "salnp / best PyTorch | salnp / dense |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in data.get("sparse", []):
        res = r["results"]
        _, b = best_torch(res)
        for beta in SPARSE_BETAS:
            sp, de = res[f"salnp beta={beta:g}"], res[f"salnp dense beta={beta:g}"]
            lines.append(f"| {r['label']} | {beta:g} | {r['kept'][f'{beta:g}']:.2f} | "
                         f"{fmt_rate(sp)} | {fmt_rate(de)} | {fmt_rate(b)} | "
                         f"**{sp['median'] / b['median']:.2f}x** | {sp['median'] / de['median']:.2f}x |")
    lines.append("")
    if data.get("reduced_run"):
        import reduced_run
        lines.append("### A whole reduced SAL run: SAL-ResNet-20 w=16, the 10,000-image CIFAR-10 "
                     "subset, beta 20 -> 70 geometric per step, batch 128, wall seconds of the "
                     "training steps (`PYTHONPATH=python python bench/reduced_run.py "
                     f"{data['reduced_run_cmd']}`)")
        lines.append("")
        lines.append(reduced_run.table(data["reduced_run"]))
    lines.append(f"### Exported inference, ResNet-{sz['depth']} w={sz['width']}, {sz['hw']}x{sz['hw']}, "
                 f"images/s")
    lines.append("")
    lines.append("onnxruntime runs salnp's own ONNX export of the same exported network "
                 "(salnp.export.to_onnx, the file a user would export; outputs checked to agree "
                 "within 1e-4 of the largest logit), with the same threads, every graph "
                 "optimisation on.  PyTorch: eval mode, BN folded, SAL as dense convolutions of "
                 "the binarised weights (no ASNet twin).  At 2 threads each runtime makes "
                 f"{INFER_BLOCK[1]} calls in a row at batch 1 ({INFER_BLOCK[0]} at batch 128), each "
                 f"timed, then an untimed pause of {INFER_PAUSE * 1e3:.0f} ms, for every runtime "
                 "alike: onnxruntime's pool thread spins 30-50 ms after a run (PyTorch's "
                 "OpenMP threads spin too) and would take a core from the next runtime.  % peak: of the whole machine's measured peak, at 1 "
                 "thread too.")
    lines.append("")
    lines.append("| network | threads | batch | salnp export | onnxruntime | salnp / onnxruntime | best PyTorch | salnp / PyTorch | salnp GFLOP/s (% peak) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in data["infer"]:
        res = r["results"]
        s = res["salnp export"]
        o = res.get("onnxruntime")
        tk = [n for n in res if n.startswith("torch")]
        b = max((res[n] for n in tk), key=lambda v: v["median"]) if tk else None
        gf = r["flops"] * s["median"] / 1e9
        cells = [r["label"], str(r.get("threads", args.threads)), str(r["batch"]), fmt_rate(s)]
        cells += [fmt_rate(o), f"**{s['median'] / o['median']:.2f}x**"] if o else ["–", "–"]
        cells += [fmt_rate(b), f"{s['median'] / b['median']:.2f}x"] if b else ["–", "–"]
        cells.append(f"{gf:.1f} ({100 * gf / peak:.1f} %)")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if data.get("conv3x3"):
        lines.append("### The convolutions of a CL ResNet-20, layer by layer "
                     f"(`PYTHONPATH=python python bench/bench_conv3x3.py --threads {args.threads} "
                     f"--repeats {sz['repeats']}`, in the same run)")
        lines.append("")
        lines.append(data["conv3x3"].strip().replace("\n### ", "\n#### "))
        lines.append("")
    lines.append("### Peak RSS growth of training steps (MiB; a fresh process each: network, "
                 "batch and optimiser built, VmHWM reset, then the first 3 steps; growth = peak "
                 "- RSS before them, so salnp's buffers allocated once are counted)")
    lines.append("")
    lines.append("| model | salnp | salnp, net.checkpointing = \"blocks\" | PyTorch NCHW | "
                 "PyTorch channels_last | salnp / best PyTorch | checkpointed / best PyTorch |")
    lines.append("|---|---|---|---|---|---|---|")
    for m, d in data["rss"].items():
        tb = min(d["torch"], d["torch_cl"])
        lines.append(f"| {m} | {d['salnp']:.0f} | {d['salnp_blocks']:.0f} | {d['torch']:.0f} | "
                     f"{d['torch_cl']:.0f} | {d['salnp'] / tb:.2f}x | {d['salnp_blocks'] / tb:.2f}x |")
    lines.append("")
    lines.append(f"### Two processes at once (each {args.threads} threads, both on the "
                 f"{mach['cpus']} CPUs), SAL training images/s per process over {sz['steps']} "
                 f"steps started together")
    lines.append("")
    lines.append("| framework, model | alone | each of two at once | kept |")
    lines.append("|---|---|---|---|")
    for k, d in data["pair"].items():
        each = " / ".join(f"{v:,.0f}" for v in d["pair"])
        kept = min(d["pair"]) / d["solo"]
        lines.append(f"| {k} | {d['solo']:,.0f} | {each} | {100 * kept:.0f} % |")
    return "\n".join(lines) + "\n"


def write_results(text):
    path = os.path.join(HERE, "RESULTS.md")
    old = open(path).read() if os.path.exists(path) else "# Recorded results\n"
    head = "## Speed: salnp against PyTorch at its best (bench/run.py)\n"
    section = head + "\n" + text
    start = old.find(head)
    if start >= 0:
        end = old.find("\n## ", start + 1)
        new = old[:start] + section + (old[end + 1:] if end >= 0 else "")
    else:                                   # first section after the title
        nl = old.find("\n## ")
        new = (old[:nl + 1] + "\n" + section + "\n" + old[nl + 1:]) if nl >= 0 else old + "\n" + section
    with open(path, "w") as f:
        f.write(new)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: proves the command runs")
    ap.add_argument("--threads", type=int, default=None, help="default 2 (--quick: 1)")
    ap.add_argument("--models", default="", help="subset of model keys, comma-separated")
    ap.add_argument("--infer-threads", default=None,
                    help="thread counts of the inference rows, e.g. 1,2 (default: 1 and --threads)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--allocator", default="auto", choices=["auto", *ALLOCATORS])
    ap.add_argument("--repeats", type=int, default=0, help="interleaved repeats (default 5)")
    ap.add_argument("--steps-timed", type=int, default=0,
                    help="steps timed per process in the two-process test (default 8)")
    ap.add_argument("--reduced-run", action="store_true",
                    help="also time whole reduced SAL runs (bench/reduced_run.py; ~25 min)")
    ap.add_argument("--reduced-epochs", type=int, default=5)
    ap.add_argument("--reduced-seeds", default="0,1,2")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fw", default="salnp", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="sal", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sz = sizes(args.quick)
    if args.repeats:
        sz["repeats"] = args.repeats
    if args.steps_timed:
        sz["steps"] = args.steps_timed
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    args.infer_threads = ([int(t) for t in args.infer_threads.split(",")] if args.infer_threads
                          else sorted({1, args.threads}))
    if args.quick:
        args.compile = False
    if args.worker:
        import salnp
        salnp.set_num_threads(args.threads)
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
        out = {}
        {"train": worker_train, "infer": worker_infer, "rss": worker_rss,
         "steps": worker_steps, "probe": worker_probe,
         "sparse": worker_sparse}[args.worker](args, sz, out)
        print(json.dumps(out), flush=True)
        return

    mach = machine()
    data = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
            "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg())}
    # 1. the allocator PyTorch does best with here
    data["probe"] = {}
    choices = [a for a in ALLOCATORS if ALLOCATORS[a] is None or os.path.exists(ALLOCATORS[a])]
    if args.allocator == "auto" and not args.quick:
        for a in choices:
            data["probe"][a] = spawn(args, "probe", preload=ALLOCATORS[a])["probe"]
        alloc = max(data["probe"], key=lambda a: data["probe"][a]["median"])
    else:
        alloc = "none" if args.allocator == "auto" else args.allocator
        data["probe"][alloc] = {"median": float("nan")}
    data["allocator"] = alloc
    pre = ALLOCATORS[alloc]
    print(f"allocator: {alloc}", file=sys.stderr)
    extra = (["--models", args.models] if args.models else []) + ([] if args.compile else ["--no-compile"])
    over = ((["--repeats", str(args.repeats)] if args.repeats else [])
            + (["--steps-timed", str(args.steps_timed)] if args.steps_timed else []))
    extra += over
    # 2. training and inference, interleaved within one process each; the core-to-core
    # round trip before and after each (CoreLatency)
    rtt = CoreLatency()
    data["rtt"] = {}

    def timed(name, a, worker):
        before = rtt()
        got = spawn(a, worker, extra, preload=pre)[worker]
        data["rtt"][name] = [before, rtt()]
        return got

    data["train"] = timed("training", args, "train")
    data["sparse"] = timed("training against beta", args, "sparse")
    data["infer"] = []
    for th in args.infer_threads:
        a = argparse.Namespace(**{**vars(args), "threads": th})
        data["infer"] += timed(f"inference, {th} thread{'s' if th > 1 else ''}", a, "infer")
    # 2b. the convolutions of a CL ResNet-20 layer by layer (bench/bench_conv3x3.py)
    if not args.quick:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SALNP_PATH, os.environ.get("PYTHONPATH", "")]))
        if pre:
            env["LD_PRELOAD"] = pre
        data["conv3x3"] = subprocess.run(
            [sys.executable, os.path.join(HERE, "bench_conv3x3.py"), "--threads",
             str(args.threads), "--repeats", str(sz["repeats"])], env=env, check=True,
            stdout=subprocess.PIPE, text=True, timeout=7200).stdout
    # 3. peak RSS growth
    data["rss"] = {}
    for key in ("cl", "sal"):
        d = {}
        for fw in ("salnp", "torch", "torch_cl"):
            d[fw] = spawn(args, "rss", ["--fw", fw, "--model", key] + over, preload=pre)["rss"]["growth_MiB"]
        d["salnp_blocks"] = spawn(args, "rss", ["--fw", "salnp", "--model", key,
                                                "--checkpointing", "blocks"] + over,
                                  preload=pre)["rss"]["growth_MiB"]
        data["rss"][dict((k, l) for k, l, _, _ in TRAIN_MODELS)[key]] = d
    # 4. two processes at once
    data["pair"] = {}
    steps = str(sz["steps"])
    for fw, label in (("salnp", "salnp"), ("torch_cl", "PyTorch channels_last")):
        solo = spawn(args, "steps", ["--fw", fw, "--model", "sal", "--steps", steps] + over,
                     preload=pre)["steps"]["images_per_s"]
        start = time.time() + (20 if not args.quick else 5)   # both start timing together
        ps = [spawn(args, "steps", ["--fw", fw, "--model", "sal", "--steps", steps,
                                    "--start-at", str(start)] + over, preload=pre, wait=False)
              for _ in range(2)]
        pair = [collect(p, "steps")["steps"]["images_per_s"] for p in ps]
        data["pair"][f"{label}, SAL unshared"] = {"solo": solo, "pair": pair}
    # 5. a whole reduced run on the paper's schedule (bench/reduced_run.py)
    if args.reduced_run:
        import reduced_run
        rr = argparse.Namespace(epochs=args.reduced_epochs, seeds=args.reduced_seeds,
                                threads=args.threads, shared=False, root=reduced_run.DATA,
                                no_torch=False)
        data["reduced_run"] = reduced_run.run_all(rr, preload=pre)
        data["reduced_run_cmd"] = (f"--epochs {rr.epochs} --seeds {rr.seeds} "
                                   f"--threads {rr.threads}")
    data["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    text = report(args, data, mach, sz)
    print(text)
    if args.quick:
        print("(--quick: tiny sizes, nothing written, no timing claims)")
        return
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, **data}, f, indent=1)
    if args.write:
        print(f"written to {write_results(text)}")


if __name__ == "__main__":
    main()
