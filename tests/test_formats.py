"""Packaging and table formats: CountReport.to_dataframe (pandas), the LICENSE, the
extras and project metadata in pyproject.toml."""
import sys
from pathlib import Path

import pytest

import salnp

tomllib = pytest.importorskip("tomllib")   # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent


def test_count_report_to_dataframe():
    pd = pytest.importorskip("pandas")
    net = salnp.models.resnet(8, 4, "sal", seed=0)
    net.beta = 30.0
    for mode in ("train", "inference"):
        r = salnp.count(net, (3, 32, 32), mode=mode)
        df = r.to_dataframe()
        assert isinstance(df, pd.DataFrame) and len(df) == len(r.rows)
        assert list(df["name"]) == [row["name"] for row in r.rows]
        assert int(df["macs"].sum()) == r.macs
        assert df["params"].sum() == pytest.approx(r.params)
        assert df.attrs["mode"] == mode and df.attrs["totals"]["macs"] == r.macs
        assert "multiply-adds" in df.attrs["units"]["macs"]
    df = salnp.export(net).count().to_dataframe()
    assert "sal_gather" in set(df["type"])


def test_to_dataframe_without_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    r = salnp.count(salnp.models.resnet(8, 4, "cl"))
    with pytest.raises(ImportError, match=r"salnp\[pandas\]"):
        r.to_dataframe()


def test_license_and_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the salnp developers" in text
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"}
    assert "License :: OSI Approved :: MIT License" in meta["classifiers"]
    assert meta["urls"]
    extras = meta["optional-dependencies"]
    assert any(r.startswith("ipywidgets") for r in extras["notebooks"])
    for name in ("onnx", "onnxruntime", "pandas", "ipywidgets"):
        assert any(r.startswith(name) for r in extras["test"]), name
    assert any(r.startswith("onnxruntime") for r in extras["onnx"])
    assert any(r.startswith("torch") for r in extras["torch"])


# module name -> the distribution that provides it, where the two differ
_DIST = {"distributed": "dask", "yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn"}


def _imports(path):
    import ast
    import json as _json

    if path.suffix == ".ipynb":
        nb = _json.loads(path.read_text())
        src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    else:
        src = path.read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.args[0].value.split(".")[0]


def test_every_import_is_declared():
    """Every third-party module that the tests, benches and notebooks import is in an extra
    of pyproject.toml (test, notebooks or bench), so that the clean environment of
    scripts/setup.sh fails where a user's machine would, not only where CI's does."""
    import re
    import sys

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower()
                for reqs in [meta["dependencies"], *meta["optional-dependencies"].values()]
                for r in reqs}
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("notebooks/*.ipynb"),
             *ROOT.glob("python/salnp/*.py")]
    local = {p.stem for p in files} | {"salnp", "_core"}
    missing = {}
    for f in files:
        for mod in _imports(f):
            if mod in sys.stdlib_module_names or mod in local:
                continue
            if _DIST.get(mod, mod).lower() not in declared:
                missing.setdefault(mod, str(f.relative_to(ROOT)))
    assert not missing, f"imported but declared in no extra of pyproject.toml: {missing}"
