"""bench/run.py --quick runs end to end (tiny sizes: it proves the command works; the
numbers it prints are not claims)."""
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
