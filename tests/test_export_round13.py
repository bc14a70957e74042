"""The export's check and loading (probe round 13): non-finite logits from the runtime fail the
check wherever they appear (Python's ``max`` dropped a NaN that did not come first: a file giving
NaN at the batch of one passed with a difference of 0); a ``.onnx`` file loads with onnxruntime
alone; a ``torch.compile`` or ``nn.DataParallel`` wrapper is exported as the model it wraps."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch
from torch import nn

import eqpdenet.export as export
from eqpdenet.errors import ExportError, MissingDependencyError
from eqpdenet.export import _largest, export_model, load_exported, unwrapped
from eqpdenet.models import FCNN


def _model() -> nn.Module:
    torch.manual_seed(0)
    return FCNN(hidden=4).eval()


def _images(count: int = 12) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_the_largest_difference_is_inf_where_any_is_nan():
    nan, small = torch.tensor([float("nan")]), torch.tensor([0.1, -0.2])
    assert _largest(small, nan) == float("inf")
    assert _largest(nan, small) == float("inf")
    assert _largest(small, torch.tensor([0.05])) == pytest.approx(0.2)


@pytest.mark.parametrize("where", ["batch of one", "one image"])
def test_a_runtime_giving_non_finite_logits_fails_the_check(where, tmp_path, monkeypatch):
    real = export._load_program

    def load(path):
        run, shape = real(path)

        def faulty(images):
            logits = run(images)
            if where == "batch of one" and len(images) == 1:
                return torch.full_like(logits, float("nan"))
            if where == "one image" and len(images) > 1:
                logits = logits.clone()
                logits[-1, 0] = float("inf")
            return logits
        return faulty, shape

    chosen = dataclasses.replace(export.FORMATS.get("exported-program"), load=load)
    monkeypatch.setitem(export.FORMATS._items, "exported-program", chosen)
    out = tmp_path / "m.pt2"
    with pytest.raises(ExportError, match=r"torch.export.load gives non-finite logits \(NaN or "
                                          r"inf\) for FCNN as exported-program on 1 of the 13 "
                                          r"images run"):
        export_model(_model(), out, "exported-program", images=_images())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None
                    or importlib.util.find_spec("onnxscript") is None,
                    reason="the export extra is not installed")
def test_an_onnx_file_loads_without_the_packages_that_write_one(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    export_model(_model(), out, "onnx", images=_images())
    expected = _model()(_images(3))
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    original = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in ("onnx", "onnxscript") else original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    torch.testing.assert_close(load_exported(out)(_images(3)), expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "onnxruntime" else original(name))
    with pytest.raises(MissingDependencyError, match="running onnx needs onnxruntime: pip "
                                                     "install onnxruntime"):
        load_exported(out)


def test_wrappers_are_exported_as_the_model_they_wrap(tmp_path):
    model = _model()
    assert unwrapped(torch.compile(model)) is model
    assert unwrapped(nn.DataParallel(model)) is model
    assert unwrapped(nn.DataParallel(torch.compile(model))) is model
    assert unwrapped(model) is model
    for name, wrapped in [("compiled", torch.compile(model)), ("parallel", nn.DataParallel(model))]:
        out = tmp_path / f"{name}.pt2"
        report = export_model(wrapped, out, "exported-program", images=_images())
        assert report.family == "FCNN"
        torch.testing.assert_close(load_exported(out)(_images(3)), model(_images(3)),
                                   rtol=1e-5, atol=1e-6)
