"""The extension compiles against the NumPy that CMake found (pip's build environment:
numpy>=2), never against a numpy/ directory inside Python's own include directory.

Debian's python3-numpy installs /usr/include/python3.X/numpy -> the system NumPy's headers
(1.24 on bookworm).  With python3-dev present too, the binding once compiled against those
headers: a warning only (implicit declaration of PyArray_ImportNumPyAPI), and then
`import salnp` failed with "undefined symbol: PyArray_ImportNumPyAPI" on a fresh Debian 12
with python3-numpy installed.  Here a copy of Python's include directory gets a numpy/
whose every header is an #error, and the binding's module.c must still compile."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _shadowing_include_dir(tmp_path):
    """Python's include directory, entry by entry, plus a numpy/ that breaks any build."""
    real = Path(sysconfig.get_paths()["include"])
    inc = tmp_path / "include"
    inc.mkdir()
    for entry in real.iterdir():
        if entry.name != "numpy":
            (inc / entry.name).symlink_to(entry)
    (inc / "numpy").mkdir()
    headers = sorted(p.name for p in (Path(np.get_include()) / "numpy").glob("*.h"))
    assert "arrayobject.h" in headers, headers
    for name in headers:
        (inc / "numpy" / name).write_text(
            '#error "numpy header from Python\'s include directory: it must not shadow the '
            'NumPy that CMake found"\n')
    return inc


def _compile_module_c(tmp_path, include_dir):
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed to build the extension (scripts/setup.sh installs it)")
    build = tmp_path / "build"
    cfg = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
         "-DSAL_BUILD_PYTHON_INPLACE=ON", "-DSAL_BUILD_TESTS=OFF",
         f"-DSAL_PYTHON_OUTPUT_DIR={tmp_path / 'out'}",
         f"-DPython_EXECUTABLE={sys.executable}", f"-DPython_INCLUDE_DIR={include_dir}"],
        capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    # the include directories really are the ones under test
    ninja = (build / "build.ninja").read_text()
    assert str(include_dir) in ninja
    obj = "CMakeFiles/_core.dir/python/salnp/_core_src/module.c.o"
    return subprocess.run(["cmake", "--build", str(build), "--target", obj],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                    reason="the binding needs NumPy >= 2 headers (CMakeLists.txt refuses less)")
def test_numpy_in_pythons_include_dir_does_not_shadow_the_build_numpy(tmp_path):
    inc = _shadowing_include_dir(tmp_path)
    r = _compile_module_c(tmp_path, inc)
    assert r.returncode == 0, (
        "module.c compiled against the numpy/ inside Python's include directory instead of "
        f"{np.get_include()}:\n" + r.stdout[-3000:] + r.stderr[-3000:])


def test_the_shadowing_headers_do_break_a_build_that_reads_them(tmp_path):
    """The poisoned numpy/ is not a no-op: a compiler that looks there first fails."""
    inc = _shadowing_include_dir(tmp_path)
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("a C compiler is needed (scripts/setup.sh installs build-essential)")
    src = tmp_path / "t.c"
    src.write_text("#include <Python.h>\n#include <numpy/arrayobject.h>\nint main(void){return 0;}\n")
    r = subprocess.run([cc, "-c", "-isystem", str(inc), "-isystem", np.get_include(),
                        str(src), "-o", str(tmp_path / "t.o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "must not shadow" in r.stderr, r.stderr[-2000:]
