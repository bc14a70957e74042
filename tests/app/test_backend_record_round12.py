"""The PDE backend a run's layers resolved ``"auto"`` to is recorded, and a sweep resumed under
another ``EQPDENET_BACKEND`` is refused instead of mixing backends in one table (probe round
12: the fused operators and the reference differ in their last digits, and nothing recorded
which one ran); parallel workers honour ``OMP_NUM_THREADS``."""

from __future__ import annotations

import os

import pytest
from tests.data_helpers import tiny_data

from eqpdenet.app import sweeps
from eqpdenet.app.config import ExperimentConfig, apply_overrides, to_dict
from eqpdenet.app.runstore import save_run
from eqpdenet.app.training import environment, pde_backend, run_experiment
from eqpdenet.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_backend_variable(monkeypatch):
    monkeypatch.delenv("EQPDENET_BACKEND", raising=False)


def _config(*overrides: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), list(overrides))


@pytest.mark.parametrize("kind, follows", [
    ("eqpdenet", True), ("lifted_pde", True),
    ("fcnn", False), ("cnn", False), ("gcnn", False), ("invariant_pde", False)])
def test_the_backend_is_recorded_where_the_model_follows_it(kind, follows, monkeypatch):
    config = _config(f"model.kind='{kind}'")
    assert environment(config).get("pde_backend") == ("auto" if follows else None)
    monkeypatch.setenv("EQPDENET_BACKEND", "reference")
    assert environment(config).get("pde_backend") == ("reference" if follows else None)
    assert "pde_backend" not in environment()  # no configuration, nothing to say


def test_a_backend_set_in_the_configuration_is_recorded_there_not_again(monkeypatch):
    monkeypatch.setenv("EQPDENET_BACKEND", "reference")
    assert pde_backend(_config("model.layer.backend='fused'")) is None
    assert pde_backend(_config("model.kind='lifted_pde'",
                               "model.lifted_pde.backend='reference'")) is None


def test_a_run_records_the_backend_it_ran_with(monkeypatch):
    monkeypatch.setenv("EQPDENET_BACKEND", "reference")
    config = _config("model.hidden=4", "model.image_size=12", "train.epochs=1",
                     "train.batch_size=32", "scenarios=['test']")
    record = run_experiment(config, tiny_data(), progress=False)
    assert record["environment"]["pde_backend"] == "reference"


def _saved(folder, key, config, backend):
    record = {"key": key, "status": "ok", "accuracy": {"test": 1.0}, "config": to_dict(config),
              "environment": {"threads": 1}}
    if backend is not None:
        record["environment"]["pde_backend"] = backend
    save_run(folder, key, record)


def test_a_sweep_resumed_under_another_backend_names_it(tmp_path, monkeypatch):
    pde, fcnn = _config(), _config("model.kind='fcnn'")
    _saved(tmp_path, "pde", pde, "reference")
    _saved(tmp_path, "old", pde, None)  # recorded before the backend was: not compared
    _saved(tmp_path, "fcnn", fcnn, None)
    runs = {"pde": pde, "old": pde, "fcnn": fcnn}
    assert sweeps.changed_runs(runs, tmp_path) == {"pde": [
        "the PDE backend: 'reference' recorded, 'auto' now (EQPDENET_BACKEND unset); the fused "
        "operators and the reference round differently"]}
    with pytest.raises(ConfigError, match="the PDE backend: 'reference' recorded"):
        sweeps.run_sweep("reproduce", runs, tmp_path, base_fingerprint="f", progress=False,
                         runner=lambda *args, **kwargs: pytest.fail("nothing may run"),
                         echo=lambda line: None)
    monkeypatch.setenv("EQPDENET_BACKEND", "reference")
    assert sweeps.changed_runs(runs, tmp_path) == {}
    monkeypatch.setenv("EQPDENET_BACKEND", "fused")
    assert sweeps.changed_runs(runs, tmp_path)["pde"][0].startswith(
        "the PDE backend: 'reference' recorded, 'fused' now (EQPDENET_BACKEND 'fused')")


@pytest.mark.parametrize("variable, jobs, expected", [
    (None, 1, 4), (None, 2, 2), (None, 3, 1), (None, 8, 1),
    ("1", 2, 1), ("1", 1, 1), ("3", 1, 3), ("8", 2, 2), ("0", 2, 2), ("two", 2, 2)])
def test_parallel_workers_share_the_allowed_cpus_and_honour_omp_num_threads(
        variable, jobs, expected, monkeypatch):
    monkeypatch.setattr(sweeps.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(sweeps.os, "cpu_count", lambda: 64)  # the host's, not ours
    if variable is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", variable)
    assert sweeps.threads_per_job(jobs) == expected
    assert os.environ.get("OMP_NUM_THREADS") == variable
