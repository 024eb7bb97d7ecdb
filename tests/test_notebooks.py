"""The notebooks in notebooks/ execute headless (nbclient, kernel python3) with the small
budget (SALNP_NB_SMALL=1, MPLBACKEND=Agg); any cell error fails the test.  They are
committed without outputs."""
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
    monkeypatch.setenv("MPLBACKEND", "Agg")
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
