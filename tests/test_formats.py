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
