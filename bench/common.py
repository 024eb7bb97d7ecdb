"""Benchmark helpers: interleaved repeats and medians (the host sometimes steals a core)."""
import statistics
import time


def interleave(fns, repeats=15, warmup=2, clock=time.perf_counter, pause=0.0, block=1):
    """Time each callable in fns, round-robin, `repeats` rounds after `warmup` calls each;
    returns times[i][k], the seconds of the k-th timed call of callable i.  block: calls of
    one callable in a row per round, each timed; pause: seconds slept, untimed, after every
    block (onnxruntime's pool thread spins 30-50 ms after a run, PyTorch's OpenMP threads
    for a while too: the next callable must not share its cores with them)."""
    for f in fns:
        for _ in range(warmup):
            f()
        if pause:
            time.sleep(pause)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            for _ in range(block):
                t = clock()
                f()
                times[i].append(clock() - t)
            if pause:
                time.sleep(pause)
    return times


def interleaved(fns, repeats=15, warmup=2):
    """Time each callable in fns, round-robin, `repeats` times; returns median seconds each."""
    return [statistics.median(t) for t in interleave(fns, repeats, warmup)]


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) for v, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
