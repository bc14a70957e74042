"""Every run on a registered data set records which loader made its data (``dataset.loader``),
and a sweep resumed after a plugin registers another loader under the name (or removes its
own, leaving the built-in one) refuses the other data's runs instead of counting them as its
own (round 19: a sweep on the built-in ``mnist`` resumed after a plugin replaced it reused the
built-in digits' runs)."""

from __future__ import annotations

import functools

import pytest
import torch

from data_helpers import tiny_config
from eqpdenet.app.sweeps import run_sweep
from eqpdenet.app.training import prepare_data, run_experiment
from eqpdenet.data.datasets import DATASETS, ImageDataset, loader_name
from eqpdenet.errors import ConfigError
from helpers import registered


def _load(data_dir=None, cache_dir=None, seed=0, labels_shift=0):
    images = torch.rand(80, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    labels = (torch.arange(80) + labels_shift) % 2
    return ImageDataset("r19data", images[:60], labels[:60], images[60:], labels[60:],
                        classes=2)


def _load_other(data_dir=None, cache_dir=None, seed=0):
    return _load(labels_shift=1)


class _Loader:
    def __call__(self, data_dir=None, cache_dir=None, seed=0):
        return _load()


def test_the_loader_is_named_by_its_function_through_partials_and_objects():
    here = __name__
    assert loader_name("mnist") == "built-in"
    assert loader_name("rotmnist") == "built-in"
    assert loader_name("no-such-set") is None
    with registered(DATASETS, "r19data", _load):
        assert loader_name("r19data") == f"{here}._load"
    with registered(DATASETS, "r19data", functools.partial(_load, labels_shift=1)):
        assert loader_name("r19data") == f"{here}._load"
    with registered(DATASETS, "r19data", _Loader()):
        assert loader_name("r19data") == f"{here}._Loader"
    with registered(DATASETS, "mnist", _load_other, replace=True):
        assert loader_name("mnist") == f"{here}._load_other"
    assert loader_name("mnist") == "built-in"


def test_the_data_and_its_record_name_the_loader(tmp_path):
    with registered(DATASETS, "r19data", _load):
        data = prepare_data(tiny_config("data.dataset='r19data'", "data.validation=0").data)
        assert data.info == {"loader": f"{__name__}._load"}
        record = run_experiment(tiny_config("data.dataset='r19data'", "data.validation=0"),
                                data, progress=False)
    assert record["dataset"] == {"loader": f"{__name__}._load"}


def _sweep(out, config):
    run_sweep("s", {"r0": config}, out, base_fingerprint="x", echo=lambda line: None,
              progress=False)


def test_a_sweep_resumed_under_another_loader_refuses_the_other_datas_runs(tmp_path):
    config = tiny_config("data.dataset='r19data'", "data.validation=0")
    out = tmp_path / "sweep"
    with registered(DATASETS, "r19data", _load):
        _sweep(out, config)
        _sweep(out, config)  # the same loader: the run is done, nothing to go
    with registered(DATASETS, "r19data", _load_other):
        with pytest.raises(ConfigError) as caught:
            _sweep(out, config)
    assert (f"data set 'r19data': loaded by {__name__}._load recorded, by "
            f"{__name__}._load_other now") in str(caught.value)


def test_a_built_in_sets_runs_are_not_a_plugins(tmp_path):
    """The record of a run on the built-in set says so; a plugin's set under its name is
    another loader (the message says which is eqpdenet's)."""
    from eqpdenet.app.sweeps import _loader_differences

    config = tiny_config("data.dataset='mnist'")
    built_in = {"dataset": {"loader": "built-in"}}
    assert _loader_differences(built_in, config) == []
    with registered(DATASETS, "mnist", _load_other, replace=True):
        assert _loader_differences(built_in, config) == [
            f"data set 'mnist': loaded by eqpdenet's built-in loader recorded, by "
            f"{__name__}._load_other now"]
    # records from before the loader was recorded, and data files, are not compared
    assert _loader_differences({"dataset": {"source": "x"}}, config) == []
    assert _loader_differences({}, config) == []


def test_evaluate_warns_when_another_loader_holds_the_name(tmp_path, capsys):
    """``evaluate`` (and ``export``, through the same check) of a checkpoint trained on a
    registered set that another loader holds now says so, naming both (it scored the other
    data without a word; a review's find)."""
    from eqpdenet.app.cli import main

    checkpoint = str(tmp_path / "run" / "model.pt")
    with registered(DATASETS, "r19data", _load):
        assert main(["train", "--no-progress", "--model", "fcnn", "--hidden", "4", "--epochs",
                     "1", "--dataset", "r19data", "--set", "scenarios=['test']",
                     "--set", "data.validation=0", "--out", str(tmp_path / "run")]) == 0
        capsys.readouterr()
        assert main(["evaluate", checkpoint]) == 0
        assert [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("eqpdenet:")] == []  # the same loader: no word
    with registered(DATASETS, "r19data", _load_other):
        assert main(["evaluate", checkpoint]) == 0
    captured = capsys.readouterr()
    assert "test:" in captured.out and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("eqpdenet:")] == [
        f"eqpdenet: warning: data set 'r19data' is not the one {checkpoint} was trained on: "
        f"loaded by {__name__}._load_other now, by {__name__}._load when it was trained (a "
        f"plugin registered or removed since); the scores are on the data as it is now"]
