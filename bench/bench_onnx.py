"""onnxruntime running salnp.export.to_onnx's graph, beside salnp's own exported runtime
(InferenceNet.forward) and PyTorch running the pruned form (salnp.torch.to_torch(inf)),
in one interleaved run: median ms per batch at batch 1 and 128, the same threads for
all three, every output checked against inf.forward before timing.

    PYTHONPATH=python python bench/bench_onnx.py [--models sal,sal-shared,sl,cl]
        [--threads 2] [--repeats 9] [--forms] [--write]

Networks: ResNet-20, w=16, 3x32x32, not trained: random BN (running statistics from 3
training-mode forwards), SAL logits at their U[0, 1) init with beta = 70 (the CIFAR
beta_final), so that binarisation keeps one position in most slices (the kept count is
printed); SL e=6 (the ShiftResNet-20 budget nearest the CL one).  Speed depends on the
kept-slice count only, not on the weights' values.

--forms also times the other exact graph forms of salnp._onnx (shift_form "slice" for
shifts, gather_form "slice" / "sum" for unshared SAL), which is how the defaults were
chosen.  --write records the table in bench/RESULTS.md ("## ONNX" section).
"""
import argparse
import datetime
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import salnp  # noqa: E402
from common import interleaved, table  # noqa: E402

MODELS = {"sal": dict(layer="sal"), "sal-shared": dict(layer="sal", shared=True),
          "sl": dict(layer="sl", expansion=6), "asl": dict(layer="asl", expansion=6),
          "cl": dict(layer="cl")}


def build(cfg, rng):
    net = salnp.models.resnet(20, 16, seed=0, **cfg)
    for name, p in net.named_parameters():
        if ".bn" in name or name.startswith("bn") or ".shortcut.1." in name:
            p[...] = rng.uniform(0.5, 1.5, p.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.shape)
    for _ in range(3):
        net.forward(rng.standard_normal((64, 3, 32, 32), dtype=np.float32), train=True)
    net.beta = 70.0
    return salnp.export(net)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sal")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9, help="batch 128; batch 1 uses 10x")
    ap.add_argument("--forms", action="store_true", help="also time the other graph forms")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import salnp.torch as st

    nt = args.threads
    salnp.set_num_threads(nt)
    torch.set_num_threads(nt)
    load0 = os.getloadavg()
    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.intra_op_num_threads = nt
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL

    rows, notes = [], []
    for key in args.models.split(","):
        cfg = MODELS[key]
        inf = build(cfg, rng)
        lay = inf.info["sal_layers"]
        if lay:
            kept, slices = sum(d["kept"] for d in lay), sum(d["slices"] for d in lay)
            notes.append(f"{key}: kept slices {kept:,} / {slices:,} ({100 * kept / slices:.1f} %)")
        forms = [("default", {})]
        if args.forms:
            if cfg["layer"] == "sal" and not cfg.get("shared"):
                forms += [("gather_form=slice", dict(gather_form="slice")),
                          ("gather_form=sum", dict(gather_form="sum"))]
            elif cfg["layer"] != "cl":
                forms += [("shift_form=slice", dict(shift_form="slice"))]
        sessions = [(f"onnxruntime {n}", ort.InferenceSession(
            salnp.export.to_onnx(inf, None, (3, 32, 32), **kw).SerializeToString(), so,
            providers=["CPUExecutionProvider"])) for n, kw in forms]
        tmod = st.to_torch(inf)
        for N, reps in ((1, 10 * args.repeats), (128, args.repeats)):
            x = rng.standard_normal((N, 3, 32, 32), dtype=np.float32)
            xt = torch.from_numpy(x)
            ref = inf.forward(x)
            scale = float(np.abs(ref).max())

            def run_torch():
                with torch.inference_mode():
                    return tmod(xt).numpy()

            names = ["salnp export"] + [n for n, _ in sessions] + ["PyTorch pruned form"]
            fns = [lambda: inf.forward(x)] + \
                  [(lambda s=s: s.run(None, {"input": x})[0]) for _, s in sessions] + [run_torch]
            for n, f in zip(names[1:], fns[1:]):
                err = float(np.abs(f() - ref).max())
                assert err <= 1e-4 * scale + 1e-6, (key, N, n, err)
            times = interleaved(fns, repeats=reps, warmup=3)
            for n, t in zip(names, times):
                rows.append([key, N, n, f"{1e3 * t:.3f}", f"{N / t:,.0f}",
                             f"{t / times[0]:.2f}x"])
    load1 = os.getloadavg()
    result = table(["model", "batch", "runtime", "ms / batch", "images/s", "time vs salnp"], rows)
    env = (f"{platform.processor() or platform.machine()}, {nt} threads each, onnxruntime "
           f"{ort.__version__}, torch {torch.__version__}, salnp {salnp.__version__} (BLIS "
           f"{salnp.config()['arch']}), {datetime.date.today().isoformat()}, load average "
           f"(1, 5, 15 min) {tuple(round(v, 1) for v in load0)} before and "
           f"{tuple(round(v, 1) for v in load1)} after, {os.cpu_count()} CPUs")
    print(env)
    print("\n".join(notes))
    print(result)
    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
        cmd = (f"PYTHONPATH=python python bench/bench_onnx.py --models {args.models} --threads "
               f"{nt} --repeats {args.repeats}" + (" --forms" if args.forms else "") + " --write")
        section = ("## ONNX\n\n" f"`{cmd}`  ({env})\n\n" + "  \n".join(notes) + "\n\n"
                   "Median of interleaved repeats; every output checked against "
                   "InferenceNet.forward first (<= 1e-4 of the largest logit).\n\n"
                   "```\n" + result + "\n```\n")
        start = text.find("## ONNX\n")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        with open(path, "w") as f:
            f.write(text)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
