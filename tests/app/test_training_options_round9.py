"""Training options that changed a result without a word (round 9): a study selecting each run's
epoch on the split it scores on; a resumed sweep mixing the official and the generated ROTMNIST;
an explicit ``input_mean, input_std`` replaced by ``model.standardize = 'train'``; a weight
average spanning more steps than the run has."""

from __future__ import annotations

import warnings

import pytest
import torch

from data_helpers import tiny_config, tiny_data
from eqpdenet.app import sweeps
from eqpdenet.app.cli import main
from eqpdenet.app.config import ReproduceConfig, apply_overrides, to_dict
from eqpdenet.app.runstore import save_run
from eqpdenet.app.study import Stage, run_study, study_base
from eqpdenet.app.training import (
    fingerprint,
    resolve_for_data,
    run_experiment,
    train_model,
)
from eqpdenet.data.rotmnist import OFFICIAL_TEST_FILE, OFFICIAL_TRAIN_FILE
from eqpdenet.errors import ConfigError


def said(call, *args, **kwargs) -> list[str]:
    """The warnings of ``call(*args, **kwargs)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(*args, **kwargs)
    return [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- 1: study


def test_a_study_selecting_on_its_scoring_split_is_refused_before_any_work(tmp_path, capsys,
                                                                           no_data):
    """It scored every candidate by its best epoch on the split it selects on: a candidate with
    more epochs could never lose."""
    out = tmp_path / "s"
    assert main(["study", "--out", str(out), "--no-progress",
                 "--set", "base.train.select_on_validation=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("eqpdenet: error: invalid config: base.train.select_on_validation: "
                             "the study scores every candidate on the validation split")
    assert "could never lose" in err[0]
    assert not out.exists()


def test_a_study_candidate_turning_selection_on_is_refused_before_any_work(tmp_path, no_data):
    stage = Stage("select", "shared", "Select on validation?",
                  {"select": ["base.train.select_on_validation=true"]})
    with pytest.raises(ConfigError, match=r"stage select, candidate select: "
                                          r"base.train.select_on_validation"):
        run_study(tmp_path / "s", base=study_base(hidden_sizes=(16,), seeds=(0,)),
                  stages=[stage], echo=lambda line: None)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- 2: source


def _official_files(folder):
    (folder / "rotmnist").mkdir(parents=True)
    for name in (OFFICIAL_TRAIN_FILE, OFFICIAL_TEST_FILE):
        (folder / "rotmnist" / name).write_text("")
    return folder


def _sweep_with_a_run_on(out, source: str | None):
    """A reproduce folder holding one finished ROTMNIST run (data.source = 'auto') made on the
    ``source`` set (None: a record from before the source was recorded)."""
    config = apply_overrides(ReproduceConfig(), ["models=['fcnn']", "hidden_sizes=[256]",
                                                 "seeds=[0]", "checkpoint_seeds=[]",
                                                 "base.train.epochs=1"])
    (run,) = sweeps.grid(config)
    key = sweeps.run_key("fcnn", 256, 0)
    record = {"key": key, "model": "fcnn", "hidden": 256, "seed": 0, "status": "ok",
              "config": to_dict(run), "accuracy": {"test": 90.0},
              "base_fingerprint": fingerprint(config.base)}
    if source is not None:
        record["dataset"] = {"source": source}
    (out / "runs").mkdir(parents=True)
    save_run(out, key, record)
    return config, {key: run}, key


def test_a_run_made_on_the_other_rotmnist_source_counts_as_changed(tmp_path, monkeypatch):
    """With data.source = 'auto', a finished run on the official files and a new run on the
    generated set (the files since removed) were mixed in one folder as one configuration."""
    empty, official = tmp_path / "empty", _official_files(tmp_path / "official")
    empty.mkdir()
    _, runs, key = _sweep_with_a_run_on(tmp_path / "sweep", "official")
    assert sweeps.changed_runs(runs, tmp_path / "sweep", data_dir=official) == {}
    assert sweeps.changed_runs(runs, tmp_path / "sweep", data_dir=empty) == {key: [
        "data.source 'auto': the official ROTMNIST recorded, the generated one now"]}
    monkeypatch.setenv("EQPDENET_DATA", str(empty))  # no data_dir: as loading resolves it
    assert list(sweeps.changed_runs(runs, tmp_path / "sweep")) == [key]
    monkeypatch.setenv("EQPDENET_DATA", str(official))
    assert sweeps.changed_runs(runs, tmp_path / "sweep") == {}
    _, runs, key = _sweep_with_a_run_on(tmp_path / "generated", "generated")
    assert list(sweeps.changed_runs(runs, tmp_path / "generated", data_dir=official)) == [key]
    assert sweeps.changed_runs(runs, tmp_path / "generated", data_dir=empty) == {}


def test_a_record_without_its_source_is_judged_as_before(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _, runs, _ = _sweep_with_a_run_on(tmp_path / "sweep", None)
    assert sweeps.changed_runs(runs, tmp_path / "sweep", data_dir=empty) == {}


def test_reproduce_refuses_to_resume_on_the_other_source_naming_the_run(tmp_path, no_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    config, _, key = _sweep_with_a_run_on(tmp_path / "sweep", "official")
    with pytest.raises(ConfigError) as refused:
        sweeps.reproduce(config, tmp_path / "sweep", data_dir=empty, progress=False,
                         echo=lambda line: None)
    message = str(refused.value)
    assert key in message and "the official ROTMNIST recorded, the generated one now" in message
    assert "--rerun-changed" in message


# ----------------------------------------------------------------------------- 3: standardize


@pytest.mark.parametrize("how", ["train", "auto"])
def test_an_explicit_mean_and_std_replaced_by_the_training_split_is_a_warning(how):
    """model.standardize = 'train' (or 'auto' outside MNIST's family) replaced them silently,
    and the run's config.toml kept the discarded values."""
    config = tiny_config(f"model.standardize='{how}'", "model.input_mean=0.5",
                         "model.input_std=0.2", "data.dataset='my-digits.npz'")
    data = tiny_data()
    lines = said(train_model, config, data, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said above
        resolved = resolve_for_data(config, data)
    for name, value, used in (("input_mean", 0.5, resolved.model.input_mean),
                              ("input_std", 0.2, resolved.model.input_std)):
        line = next(line for line in lines if line.startswith(f"model.{name} = {value}"))
        assert f"has no effect with model.standardize = '{how}'" in line
        assert f"({used:.4g})" in line and "model.standardize = 'fixed'" in line
    # once, whether run_experiment resolves first (the commands) or train_model alone does
    lines = said(run_experiment, config, data, progress=False)
    assert sum(line.startswith("model.input_mean = 0.5") for line in lines) == 1
    assert sum(line.startswith("model.input_std = 0.2") for line in lines) == 1


def test_the_data_fields_are_named_under_run_experiment_too():
    lines = said(run_experiment, tiny_config("model.image_size=5"), tiny_data(),
                 progress=False)
    assert sum(line.startswith("model.image_size = 5 has no effect") for line in lines) == 1


def test_no_standardize_warning_where_nothing_the_user_set_is_replaced():
    data = tiny_data()
    for overrides in (["model.standardize='train'"],  # the defaults: never named
                      ["model.standardize='fixed'", "model.input_mean=0.5"],
                      ["model.standardize='auto'", "model.input_mean=0.5"]):  # MNIST's family
        lines = said(train_model, tiny_config(*overrides), data, progress=False)
        assert not [line for line in lines if "model.input_" in line], overrides


# ----------------------------------------------------------------------------- 4: average


def test_a_weight_average_spanning_more_steps_than_the_run_is_a_warning():
    """0.999 on a 10-step run returned, in effect, the first step's weights, without a word."""
    data = tiny_data(n_train=160)  # 10 steps of 16
    lines = said(train_model, tiny_config("train.weight_average=0.999"), data,
                 progress=False)
    (line,) = [line for line in lines if line.startswith("train.weight_average")]
    assert line == ("train.weight_average = 0.999 averages over about 1000 steps (1 / (1 - d)), "
                    "more than the run's 10 optimiser steps (1 epochs of 10): the average stays "
                    "close to the first steps' weights; choose a smaller d (at most 1 - 1/10 = "
                    "0.9)")


def test_a_weight_average_within_the_run_is_not_warned_about_and_results_are_unchanged():
    data = tiny_data(n_train=160)
    for decay in ("0.0", "0.5", "0.9"):  # 0.9 spans 10 steps (1 / 0.1 rounds above 10)
        lines = said(train_model, tiny_config(f"train.weight_average={decay}"), data,
                     progress=False)
        assert not [line for line in lines if line.startswith("train.weight_average")], decay
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, _ = train_model(tiny_config("train.weight_average=0.999"), data, progress=False)
        again, _ = train_model(tiny_config("train.weight_average=0.999"), data, progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
