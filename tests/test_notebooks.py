"""The notebooks in notebooks/ execute headless (nbclient, kernel python3) with the small
budget (SALNP_NB_SMALL=1); any cell error fails the test.  They are committed without
outputs.  The kernel keeps its own matplotlib backend (inline, which needs no display), so
every cell that draws must show its figure: a backend chosen by library code (Agg) would
leave the notebook without figures."""
import json
import os
import time

import pytest

import salnp

nbformat = pytest.importorskip("nbformat", reason="nbformat missing: pip install 'salnp[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient missing: pip install 'salnp[test]'")
pytest.importorskip("ipykernel", reason="ipykernel missing: pip install 'salnp[test]'")
pytest.importorskip("matplotlib", reason="matplotlib missing: pip install 'salnp[test]'")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
CIFAR = os.environ.get("SALNP_CIFAR", os.path.join(ROOT, "..", "shared", "data", "cifar10-subset"))
FASHION = salnp.data.FASHION_MNIST_DEFAULT_ROOT
NEEDS = {"quickstart": ("Fashion-MNIST", FASHION), "ablation": ("the CIFAR-10 subset", CIFAR),
         "attention_gallery": ("the CIFAR-10 subset", CIFAR),
         "reproduction": ("the CIFAR-10 subset", CIFAR)}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_executes(name, monkeypatch):
    what, path = NEEDS[name]
    if not os.path.isdir(path):
        pytest.skip(f"{name}.ipynb needs {what} at {path}")
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    # committed without outputs
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), f"{name}.ipynb has outputs"
    monkeypatch.setenv("SALNP_NB_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)     # the kernel's default: inline
    monkeypatch.setenv("SALNP_CIFAR", os.path.abspath(CIFAR))
    # the kernel imports the salnp this test imported (an in-place build or an install)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:   # names the cell and the traceback
        pytest.fail(f"{name}.ipynb: a cell failed:\n{e}")
    print(f"{name}.ipynb executed in {time.perf_counter() - t0:.1f} s (small mode)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, json.dumps(errors)[:2000]
    drawing = [c for c in nb.cells if c.cell_type == "code"
               and any(k in c.source for k in ("viz.", "plt.subplots", "study.plot"))
               and "import" not in c.source.split("\n")[0]]
    assert drawing, f"{name}.ipynb draws nothing"
    blank = [c.source.split("\n")[0] for c in drawing
             if not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert not blank, f"{name}.ipynb: cells that draw but show no figure: {blank}"
    if os.environ.get("SALNP_NB_KEEP"):          # a folder: the executed notebooks, to look at
        os.makedirs(os.environ["SALNP_NB_KEEP"], exist_ok=True)
        nbformat.write(nb, os.path.join(os.environ["SALNP_NB_KEEP"], f"{name}.ipynb"))
