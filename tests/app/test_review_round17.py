"""Round 17's review of the day's configuration changes: the benchmark's warning named an entry
twice and called an entry whose layer preset would have reset a field one that "set" it; the
sigma hint said "take it out of the file" where the sigma came from the user's own ``--set``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from eqpdenet.app import cli
from eqpdenet.app.config import BenchmarkConfig
from eqpdenet.errors import ConfigError


def test_entries_giving_way_are_named_once_and_a_presets_reset_as_such(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('seeds = [0]\n[base.model.layer]\nT = 2.0\n[models]\n'
                    'a = ["model.layer.preset=\'se2_sim2\'", "train.epochs=4"]\n'
                    'b = ["model={kind=\'cnn\', hidden=8}"]\n'
                    'd = ["model.layer.preset=\'paper\'", "model.layer.T=3.0"]\n')
    args = cli.build_parser().parse_args(["benchmark", "--config", str(path), "--set",
                                          "base.model.layer.T=1.5"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cli._sweep_config(args, BenchmarkConfig, cli.quick_benchmark)
    assert [config.experiment(name, 0).model.layer.T for name in ("a", "d")] == [1.5, 1.5]
    assert [str(w.message) for w in caught] == [
        "--set base.model.layer.T replaces the model.layer.T that the benchmark's model entries "
        "a (its layer preset: set again after it), d set (the command line wins over the "
        "entries; config.toml records the entries as they run)"]


def test_a_sigma_the_command_line_set_is_dropped_from_the_command_line():
    args = cli.build_parser().parse_args([
        "train", "--out", "unused", "--set", "model.layer.stencil=gaussian", "--set",
        "model.layer.sigma=1.0", "--set", "model.layer.stencil=central"])
    with pytest.raises(ConfigError) as error:
        cli._experiment_config(args)
    assert str(error.value).endswith("leave sigma out (only gaussian take one); drop --set "
                                     "model.layer.sigma=1.0")


def test_a_sigma_from_the_file_names_the_file_and_the_preset(tmp_path: Path):
    path = tmp_path / "g.toml"
    path.write_text('[model.layer]\nstencil = "gaussian"\nsigma = 1.0\n')
    args = cli.build_parser().parse_args(["train", "--out", "unused", "--config", str(path),
                                          "--set", "model.layer.stencil=central"])
    with pytest.raises(ConfigError) as error:
        cli._experiment_config(args)
    assert "--set cannot unset it: take it out of the file, or start the layer table again " \
           "from a preset with --set model.layer.preset=NAME" in str(error.value)


def test_a_preset_giving_the_base_value_gives_nothing_way(tmp_path):
    # se2_sim2's T is 1.0, the base's: the entry stays as written, no warning (a regression
    # probe: "replaces ... (its layer preset)" where nothing changed)
    path = tmp_path / "b.toml"
    path.write_text('seeds = [0]\n[models]\nsim2 = ["model.layer.preset=\'se2_sim2\'"]\n')
    args = cli.build_parser().parse_args(["benchmark", "--config", str(path), "--set",
                                          "base.model.layer.T=1.0"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cli._sweep_config(args, BenchmarkConfig, cli.quick_benchmark)
    assert config.models["sim2"] == ["model.layer.preset='se2_sim2'"]
    assert not [w for w in caught if "replaces" in str(w.message)]


def test_the_environment_of_a_gpu_configuration_on_a_cpu_machine(monkeypatch):
    # save_checkpoint of a configuration trained on a GPU, on a machine without CUDA: the GPU's
    # name was read unconditionally (raw AssertionError "Torch not compiled with CUDA enabled")
    import torch

    from eqpdenet.app.config import ExperimentConfig
    from eqpdenet.app.training import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = ExperimentConfig()
    config.train.device = "cuda"
    record = environment(config)
    assert record["device"] == "cuda" and "gpu" not in record


def test_an_unknown_model_kind_on_the_command_line_hints_at_a_plugin(capsys):
    # as an unknown kind read from a file or a checkpoint does (argparse's "invalid choice"
    # named no plugin); other choices stay argparse's own
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "unused", "--model", "mynet"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "eqpdenet train: error: argument --model: invalid choice: 'mynet' (choose from 'cnn', "
        "'eqpdenet', 'fcnn', 'gcnn', 'invariant_pde', 'lifted_pde') (registered by a plugin? "
        "this process has not imported it: name the module that registers it in "
        "EQPDENET_PLUGINS)")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["study", "--out", "unused", "--stages", "all"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "eqpdenet study: error: argument --stages: invalid choice: 'all' (choose from 'main', "
        "'refine')")
