"""Benchmark helpers: interleaved repeats and medians (the host sometimes steals a core)."""
import statistics
import time


def interleave(fns, repeats=15, warmup=2, clock=time.perf_counter, pause=0.0):
    """Time each callable in fns, round-robin, `repeats` times after `warmup` calls each;
    returns times[i][r], the seconds of callable i in round r.  pause: seconds slept, untimed,
    after every call (onnxruntime's threads spin for a while after a call returns)."""
    for f in fns:
        for _ in range(warmup):
            f()
            if pause:
                time.sleep(pause)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
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
