"""A run records what the C++ kernels its layers tried came to (round 13): a layer at
``backend = "auto"`` whose kernel does not build runs the plain PyTorch reference, which rounds
differently, and before only a warning said so."""

from __future__ import annotations

import warnings

import pytest
from tests.data_helpers import tiny_data

from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import run_experiment
from eqpdenet.kernels import cpu


@pytest.fixture(autouse=True)
def _no_backend_variable(monkeypatch):
    monkeypatch.delenv("EQPDENET_BACKEND", raising=False)


def _config() -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), [
        "model.hidden=4", "model.image_size=12", "train.epochs=1", "train.batch_size=32",
        "scenarios=['test']"])


def test_a_kernel_that_did_not_build_is_recorded_with_its_reason(monkeypatch):
    reason = "could not build the C++ extension fused_euler.cpp (no C++ compiler found: c++)"
    monkeypatch.setattr(cpu._FUSED, "module", None)
    monkeypatch.setattr(cpu._FUSED, "error", reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's own warning, said once per process
        record = run_experiment(_config(), tiny_data(), progress=False)
    assert record.get("status", "ok") == "ok" and "test" in record["accuracy"]
    assert record["environment"]["pde_backend"] == "auto"
    assert record["environment"]["pde_kernels"]["fused_euler.cpp"] == reason


@pytest.mark.skipif(not cpu.is_available(), reason="the C++ kernel does not build here")
def test_a_kernel_that_built_is_recorded_as_built():
    record = run_experiment(_config(), tiny_data(), progress=False)
    assert record["environment"]["pde_kernels"]["fused_euler.cpp"] == "built"


def test_a_model_without_pde_kernels_records_none():
    config = apply_overrides(_config(), ["model.kind='fcnn'"])
    record = run_experiment(config, tiny_data(), progress=False)
    assert "pde_kernels" not in record["environment"]
