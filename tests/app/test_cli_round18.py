"""Round 18 (outside probe r18/a6): F2, a study or benchmark on a data set that loading refuses
(a plugin's loader that raises, a path with nothing behind it) claimed its folder, and a study
wrote ``study.json`` that then refused the corrected command, before loading said why: the
preflight now refuses it first and nothing is written. F5: the benchmark's "the command line
wins" warning named entries that ``--models`` leaves out."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from eqpdenet.app import cli
from eqpdenet.app.config import BenchmarkConfig
from eqpdenet.data.datasets import DATASETS
from helpers import banded_loader, registered
from study_helpers import fake_study_reproduce

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_CPU = ROOT / "configs" / "benchmark-cpu.toml"
NAME = "r18-cli"
STUDY = ["study", "--hidden", "4", "--seeds", "0", "--epochs", "1", "--set",
         "base.data.validation=10", "--no-progress"]


def _raising(data_dir=None, cache_dir=None, seed=0):
    raise RuntimeError("disk on fire")


def _refusal(name: str) -> str:
    return (f"eqpdenet: error: data set '{name}': its loader (_raising, module {__name__}) "
            f"raised RuntimeError: disk on fire (EQPDENET_DEBUG=1 shows the traceback)")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)


# ----------------------------------------------------------------------------- F2

def test_a_study_whose_loader_raises_writes_nothing_and_the_corrected_one_runs(
        tmp_path, capsys, monkeypatch, quiet):
    trained = fake_study_reproduce(monkeypatch)
    out = tmp_path / "st"
    with registered(DATASETS, NAME, _raising):
        status = cli.main([*STUDY, "--set", f"base.data.dataset='{NAME}'", "--out", str(out)])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [_refusal(NAME)]
    assert not out.exists() and trained == []
    # the corrected command (the set's loader fixed) is not refused as "a study made with
    # another configuration"
    with registered(DATASETS, NAME, banded_loader(NAME, size=12)):
        status = cli.main([*STUDY, "--set", f"base.data.dataset='{NAME}'", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert (out / "study.json").is_file() and trained


def test_a_study_on_a_path_with_nothing_behind_it_writes_nothing(tmp_path, capsys, quiet):
    out, data = tmp_path / "st", tmp_path / "nothere.npz"
    assert cli.main([*STUDY, "--set", f"base.data.dataset='{data}'", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"eqpdenet: error: unknown data set '{data}': not a registered name "
        f"({', '.join(DATASETS.names())}) nor an existing .npz file or IDX folder "
        f"(EQPDENET_DEBUG=1 shows the traceback)"]
    assert not out.exists()


def test_a_benchmark_whose_loader_raises_writes_nothing(tmp_path, capsys, quiet):
    out = tmp_path / "bm"
    with registered(DATASETS, NAME, _raising):
        status = cli.main(["benchmark", "--config", str(BENCHMARK_CPU), "--set",
                           f"base.data.dataset='{NAME}'", "--models", "fcnn", "--out",
                           str(out), "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [_refusal(NAME)]
    assert not out.exists()


# ----------------------------------------------------------------------------- F5

def _benchmark(*options: str) -> tuple[BenchmarkConfig, list[str]]:
    """The benchmark's configuration of ``benchmark OPTIONS`` and the warnings building it gave."""
    args = cli.build_parser().parse_args(["benchmark", *options])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cli._sweep_config(args, BenchmarkConfig, cli.quick_benchmark)
    return config, [str(w.message) for w in caught]


def test_the_warning_names_only_the_entries_that_run_now():
    # fcnn sets no epochs: nothing that runs gave way, and nothing is said
    config, said = _benchmark("--config", str(BENCHMARK_CPU), "--set", "base.train.epochs=1",
                              "--models", "fcnn")
    assert said == []
    # config.toml still records every entry as it would run, the ones left out included
    assert config.models["cnn"] == ["model.kind='cnn'", "train.lr_schedule='cosine'",
                                    "train.lr=0.002", "train.batch_size=64"]
    assert {config.experiment(name, 0).train.epochs for name in config.models} == {1}
    _, said = _benchmark("--config", str(BENCHMARK_CPU), "--set", "base.train.epochs=1",
                         "--models", "fcnn", "gcnn", "cnn")
    assert said == [
        "--set base.train.epochs replaces the train.epochs that the benchmark's model entries "
        "cnn, gcnn set (the command line wins over the entries; config.toml records the "
        "entries as they run)"]


def test_an_entry_left_out_whose_preset_gives_way_is_not_named(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('seeds = [0]\n[models]\n'
                    'a = ["model.layer.preset=\'se2_sim2\'", "train.epochs=4"]\n'
                    'd = ["model.layer.preset=\'paper\'", "model.layer.T=3.0"]\n',
                    encoding="utf-8")
    config, said = _benchmark("--config", str(path), "--set", "base.model.layer.T=1.5",
                              "--models", "d")
    assert said == [
        "--set base.model.layer.T replaces the model.layer.T that the benchmark's model entries "
        "d set (the command line wins over the entries; config.toml records the entries as "
        "they run)"]
    assert [config.experiment(name, 0).model.layer.T for name in ("a", "d")] == [1.5, 1.5]
