"""The README's code runs as written: every ```python block as its own script and every
```sh block as a bash script, each in a fresh temporary folder, with the Python that runs
these tests first on PATH.  A block preceded by the HTML comment
``<!-- not run by tests: REASON -->`` is skipped (the two top-level commands: they install
and run everything, including these tests).  The blocks are written complete (real data,
defined names) and small, so that a reader can paste any one of them."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"<!--\s*not run by tests:")


def blocks():
    """(language, code, line) of every fenced block of the README that runs."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M):
        before = text[:m.start()].rstrip().splitlines()[-1:] or [""]
        if m.group(1) in ("python", "sh") and not SKIP.search(before[0]):
            out.append((m.group(1), m.group(2), text[:m.start()].count("\n") + 1))
    return out


BLOCKS = blocks()


def test_the_readme_has_runnable_blocks():
    langs = [b[0] for b in BLOCKS]
    assert langs.count("python") >= 3 and langs.count("sh") >= 1, langs


@pytest.mark.slow
@pytest.mark.parametrize("lang,code,line", BLOCKS, ids=[f"line{b[2]}-{b[0]}" for b in BLOCKS])
def test_readme_block_runs(lang, code, line, tmp_path):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"          # no display here: what a notebook's inline backend does
    env["SALNP_README_TEST"] = "1"
    # the salnp these tests import (an in-place build or the installed one)
    import salnp
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    script = tmp_path / ("block.py" if lang == "python" else "block.sh")
    script.write_text(code if lang == "python" else "set -euo pipefail\n" + code)
    cmd = [sys.executable, str(script)] if lang == "python" else ["bash", str(script)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (f"README.md line {line} ({lang}) failed:\n{code}\n--- stdout\n"
                               f"{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
