"""bench/run.py, bench/ab_builds.py and bench/bench_cold.py run end to end with --quick (tiny
sizes: they prove the commands work; the numbers they print are not claims)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_run_quick():
    pytest.importorskip("torch")
    env = dict(os.environ)
    import salnp   # the salnp under test: the workers must import the same one
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(salnp.__file__)),
                                         env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--quick"],
                       env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    for part in ("Training step", "Exported inference", "Peak RSS", "Two processes"):
        assert part in p.stdout, p.stdout
    import shutil
    if (shutil.which("cc") or shutil.which("gcc")) and len(os.sched_getaffinity(0)) >= 2:
        assert "Core-to-core round trip" in p.stdout, p.stdout


@pytest.mark.slow
def test_ab_builds_quick():
    import salnp   # the salnp under test, as both builds: the ratio is 1 within noise
    tree = os.path.dirname(os.path.dirname(salnp.__file__))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab_builds.py"), tree, tree,
                        "--quick", "--pairs", "1", "--reps", "2", "--models", "cl,sal",
                        "--what", "step"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pair 0 (warm-up)" in p.stdout and "pair 1:" in p.stdout, p.stdout
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("median B/A over the pairs: cl ") and " sal " in last, p.stdout
    # a checkout without salnp fails naming it, rather than timing whichever salnp imports
    q = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab_builds.py"), "/nonexistent",
                        tree, "--quick", "--pairs", "0", "--reps", "1", "--models", "cl"],
                       capture_output=True, text=True, timeout=600)
    assert q.returncode != 0 and q.stderr.startswith("/nonexistent: the worker"), q.stderr


@pytest.mark.slow
def test_bench_cold_quick():
    env = dict(os.environ)
    import salnp
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(salnp.__file__)),
                                         env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_cold.py"), "--quick",
                        "--models", "cl", "--batches", "1"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| CL | 1 | ")]
    assert rows and rows[0].startswith("| CL | 1 | salnp export | "), p.stdout
