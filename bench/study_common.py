"""What the studies (bench/study_fidelity.py, bench/study_reproduction.py) share: the
statistics (paired t intervals, TOST equivalence tests, Holm's correction), the code state a
run records (git commit, refusal of a dirty tree), the rows' schema, and the writing of a
generated section into a Markdown file.

Statistics, all on paired differences d_i = a_i - b_i over seeds unless named otherwise:
- ``paired(d)``: mean, sample standard deviation, standard error, the (1 - alpha) t interval
  and the two-sided paired t-test p (n - 1 degrees of freedom);
- ``tost_paired(d, margin)``: two one-sided t-tests of H0 mean <= -margin and of H0
  mean >= +margin; p = the larger of the two; equivalence at level alpha when p < alpha,
  which is the same as the (1 - 2 alpha) interval lying inside (-margin, +margin);
- ``tost_welch(a, b, margin)``: the same for two independent samples (Welch's standard error
  and Welch-Satterthwaite degrees of freedom), for arms that share no randomness;
- ``holm(p)``: Holm's step-down adjusted p-values (family-wise error rate).
Plain NumPy and scipy.stats (t distribution only); no salnp import, no matplotlib.
"""
from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")

# outputs of the studies themselves: rewriting them does not make the code state dirty
OUTPUT_PATHS = ("bench/studies", "bench/STUDIES.md")

# every row of bench/studies/{fidelity,reproduction}.json carries these keys
ROW_KEYS = ("seed", "train_images", "test_images", "epochs", "acc_soft", "acc_hard",
            "test_loss", "wall_s", "commit", "config")


# ---------------------------------------------------------------- statistics
def _t():
    from scipy import stats

    return stats.t


def paired(d, alpha=0.05) -> dict:
    """Summary of paired differences d: n, mean, sd (n - 1), se, the (1 - alpha) t interval
    (lo, hi) and the two-sided t-test p of mean = 0.  sd, se, lo, hi and p are NaN for n < 2
    (and the interval is (mean, mean), p NaN, when all differences are equal)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    nan = float("nan")
    if n == 0:
        raise ValueError("paired: no differences")
    m = float(d.mean())
    if n < 2:
        return dict(n=n, mean=m, sd=nan, se=nan, lo=nan, hi=nan, p=nan, df=0)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t = _t()
    if se == 0:
        return dict(n=n, mean=m, sd=sd, se=se, lo=m, hi=m, p=nan if m == 0 else 0.0, df=n - 1)
    q = float(t.ppf(1 - alpha / 2, n - 1))
    p = float(2 * t.sf(abs(m) / se, n - 1))
    return dict(n=n, mean=m, sd=sd, se=se, lo=m - q * se, hi=m + q * se, p=p, df=n - 1)


def _tost(mean, se, df, margin, alpha):
    t = _t()
    if not margin > 0:
        raise ValueError(f"tost: margin={margin!r}: must be > 0")
    if not (se > 0 and df > 0):
        nan = float("nan")
        return dict(p_lower=nan, p_upper=nan, p=nan, lo=nan, hi=nan, equivalent=False)
    p_lower = float(t.sf((mean + margin) / se, df))     # H0: mean <= -margin
    p_upper = float(t.cdf((mean - margin) / se, df))    # H0: mean >= +margin
    q = float(t.ppf(1 - alpha, df))
    p = max(p_lower, p_upper)
    return dict(p_lower=p_lower, p_upper=p_upper, p=p, lo=mean - q * se, hi=mean + q * se,
                equivalent=bool(p < alpha))


def tost_paired(d, margin, alpha=0.05) -> dict:
    """Two one-sided paired t-tests of the mean of d against -margin and +margin: n, mean,
    sd, se, df, p_lower (H0 mean <= -margin), p_upper (H0 mean >= +margin), p = max,
    the (1 - 2 alpha) interval (lo, hi), margin, alpha and equivalent (p < alpha)."""
    s = paired(d)
    out = dict(n=s["n"], mean=s["mean"], sd=s["sd"], se=s["se"], df=s["df"], margin=margin,
               alpha=alpha)
    out.update(_tost(s["mean"], s["se"], s["df"], margin, alpha))
    return out


def tost_welch(a, b, margin, alpha=0.05) -> dict:
    """TOST of mean(a) - mean(b) for two independent samples: Welch's standard error and
    Welch-Satterthwaite degrees of freedom; the keys of tost_paired (n = (len a, len b))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"tost_welch: needs >= 2 values per sample, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se > 0 else 0.0
    mean = float(a.mean() - b.mean())
    out = dict(n=(int(a.size), int(b.size)), mean=mean, sd=float("nan"), se=se, df=float(df),
               margin=margin, alpha=alpha)
    out.update(_tost(mean, se, df, margin, alpha))
    return out


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values, in the order given: with p sorted ascending,
    p_adj(i) = max over j <= i of min(1, (m - j + 1) p(j)).  NaN stays NaN (and is left
    out of m)."""
    p = [float(v) for v in pvalues]
    idx = [i for i, v in enumerate(p) if v == v]
    m = len(idx)
    order = sorted(idx, key=lambda i: p[i])
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------- code state
def git(*args) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def code_state(allow_dirty=False) -> str:
    """The git commit of the code that runs (40 hex digits).  A working tree with changes
    outside the studies' own outputs (OUTPUT_PATHS; untracked files under python/, libsal/
    and bench/ count) is refused with SystemExit, unless allow_dirty: then the commit gets
    the suffix "+dirty".  Outside a git checkout: SystemExit, or "unknown" with
    allow_dirty."""
    try:
        commit = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=all", "--", ".",
                      *[f":(exclude){p}" for p in OUTPUT_PATHS])
    except (OSError, subprocess.CalledProcessError) as e:
        if allow_dirty:
            return "unknown"
        raise SystemExit(f"{ROOT}: not a git checkout ({e}); a study records the commit of "
                         "its code (--allow-dirty runs without one)") from None
    lines = [ln for ln in changes.splitlines()
             if not ln.startswith("??") or ln[3:].startswith(("python/", "libsal/", "bench/"))]
    if lines:
        if not allow_dirty:
            raise SystemExit("the working tree has changes (" + "; ".join(lines[:5])
                             + (" ..." if len(lines) > 5 else "") + "): commit them, or run "
                             "with --allow-dirty (rows then record the commit as <hash>+dirty)")
        return commit + "+dirty"
    return commit


def pin_code_state(out, commit):
    """Record the code state of a work folder on its first use (OUT/provenance.json) and
    refuse (SystemExit) to add runs of another code state to it: every row of a study then
    comes from one recorded code state."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "provenance.json")
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)["commit"]
        if old != commit:
            raise SystemExit(f"{out}: holds runs of code state {old}, this code is {commit}: use "
                             "a new --out (or delete the folder) so that no study mixes code "
                             "states")
        return
    write_json(path, dict(commit=commit))


def write_json(path, obj, indent=1):
    """Atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=indent, default=float)
        fh.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- rows
def check_rows(rows, kind):
    """ValueError naming the row and the key unless every row has ROW_KEYS, the key kind
    ("arm" or "model") with a known value, numbers where numbers belong, one code state
    throughout, and one (train_images, test_images, epochs) scale."""
    known = dict(arm=("salnp", "torch", "torch-native"),
                 model=("sal-w15", "sal-shared-w16", "sl-e1", "asl-e1", "sal-w15-frozen",
                        "sal-w15-beta0.15"))[kind]
    if not isinstance(rows, list):
        raise ValueError(f"rows: must be a list, got {type(rows).__name__}")
    scale = commit = None
    for i, r in enumerate(rows):
        missing = [k for k in ROW_KEYS + (kind,) if k not in r]
        if missing:
            raise ValueError(f"row {i}: missing keys {missing}")
        if r[kind] not in known:
            raise ValueError(f"row {i}: {kind}={r[kind]!r}: must be one of {', '.join(known)}")
        for k in ("seed", "train_images", "test_images", "epochs"):
            if isinstance(r[k], bool) or not isinstance(r[k], int) or r[k] < 0:
                raise ValueError(f"row {i}: {k}={r[k]!r}: must be an integer >= 0")
        for k in ("acc_soft", "test_loss", "wall_s") + (("acc_hard",) if r["acc_hard"] is not None
                                                         else ()):
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"row {i}: {k}={v!r}: must be a finite number")
        for k in ("acc_soft", "acc_hard"):
            if r[k] is not None and not 0 <= r[k] <= 1:
                raise ValueError(f"row {i}: {k}={r[k]!r}: must be in [0, 1]")
        if not isinstance(r["config"], dict) or not r["config"]:
            raise ValueError(f"row {i}: config: must be the run's configuration (a dict)")
        if not isinstance(r["commit"], str) or not r["commit"]:
            raise ValueError(f"row {i}: commit={r['commit']!r}: must be the code state")
        s = (r["train_images"], r["test_images"], r["epochs"])
        if scale is None:
            scale, commit = s, r["commit"]
        elif s != scale:
            raise ValueError(f"row {i}: scale {s} (train images, test images, epochs) differs "
                             f"from the first row's {scale}: rows of two scales never mix")
        elif r["commit"] != commit:
            raise ValueError(f"row {i}: commit {r['commit']} differs from the first row's "
                             f"{commit}: rows of two code states never mix")
    return rows


def read_rows(path, kind):
    """The checked rows of a study file {"trials": [...]}; [] when the file is absent."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "trials" not in data:
        raise ValueError(f"{path}: must hold {{\"trials\": [...]}}")
    return check_rows(data["trials"], kind)


def write_rows(path, rows, kind, **extra):
    check_rows(rows, kind)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, dict(extra, trials=rows))


# ---------------------------------------------------------------- generated Markdown
def replace_section(path, name, text):
    """Put text between the lines <!-- begin generated: name --> and <!-- end generated:
    name --> of the Markdown file at path (appended at the end, with the markers, when the
    file has none; the file is created when absent)."""
    begin, end = f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
        new = head + block + tail
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(new)
    os.replace(tmp, path)


def pct(v, digits=2):
    return "—" if v is None or v != v else f"{100 * v:.{digits}f}"


def fmt_p(p):
    if p is None or p != p:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def seeds_arg(text):
    """"0-8" -> [0, ..., 7] (end excluded); "0,3,7" -> [0, 3, 7]."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b)))
    return [int(v) for v in text.split(",")]
