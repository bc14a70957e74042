"""Configuration and command-line faults (outside probe r17/w2, round 17).

F1: what ``benchmark --set base.X`` and ``--device`` (and ``--layer``) name wins over a model
entry that sets X too (the entry's value was used without a word); the saved configuration's
entries leave it out, and a warning names them. F2: ``--layer PRESET`` starts the ``--config``
file's layer table from the preset, as ``preset = ...`` written there does (the file's layer
fields were dropped); ``--set ...layer.preset=NAME`` still replaces the table. F3: ``study
--config PARTIAL`` fills the gaps from the study's own base (it took reproduce's defaults). F4: an
error in a ``--config`` file's values names the file. F5: the quoting hint of a list element
suggests a ``--set`` that ``--set`` takes. F6: the device ``train.device = "auto"`` ran on is
recorded, and a sweep resumed where ``"auto"`` is the other device is refused. F7: a ``sigma``
that ``--set`` cannot unset is told how to leave it out."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from eqpdenet.app import cli, sweeps
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    LayerConfig,
    ReproduceConfig,
    apply_overrides,
    from_dict,
    load_toml,
    to_dict,
    to_toml,
)
from eqpdenet.app.runstore import save_run
from eqpdenet.app.study import study_base
from eqpdenet.app.training import environment
from eqpdenet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_CPU = ROOT / "configs" / "benchmark-cpu.toml"


def _args(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def _benchmark(*options: str) -> tuple[BenchmarkConfig, list[str]]:
    """The benchmark's configuration of ``benchmark OPTIONS`` and the warnings building it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cli._sweep_config(_args("benchmark", *options), BenchmarkConfig,
                                   cli.quick_benchmark)
    return config, [str(w.message) for w in caught]


def _train(*options: str) -> ExperimentConfig:
    """The configuration ``train OPTIONS`` trains (nothing is run)."""
    return cli._experiment_config(_args("train", "--out", "unused", *options))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ F1: command line over entries

def test_set_base_wins_over_every_entry_that_sets_the_field():
    config, said = _benchmark("--config", str(BENCHMARK_CPU), "--set", "base.train.epochs=1",
                              "--set", "base.train.lr=0.01")
    for name in config.models:
        run = config.experiment(name, 0)
        assert (run.train.epochs, run.train.lr) == (1, 0.01), name
    # the entries' other fields stay: the CNN keeps its schedule and batch size
    cnn = config.experiment("cnn", 0)
    assert (cnn.model.kind, cnn.train.lr_schedule, cnn.train.batch_size) == ("cnn", "cosine", 64)
    assert config.models["cnn"] == ["model.kind='cnn'", "train.lr_schedule='cosine'",
                                    "train.batch_size=64"]
    assert said == [
        f"--set base.train.{field} replaces the train.{field} that the benchmark's model entries "
        f"cnn, gcnn, invariant-pde set (the command line wins over the entries; config.toml "
        f"records the entries as they run)" for field in ("epochs", "lr")]
    # the saved configuration reruns the same runs, without a warning
    saved = from_dict(BenchmarkConfig, tomllib.loads(to_toml(config)))
    assert all(saved.experiment(name, 0) == config.experiment(name, 0) for name in config.models)
    again, said = _benchmark("--config", str(BENCHMARK_CPU))
    assert said == []


def test_a_table_given_whole_under_base_wins_too():
    config, _ = _benchmark("--config", str(BENCHMARK_CPU), "--set", "base={train={epochs=2}}")
    assert {config.experiment(name, 0).train.epochs for name in config.models} == {2}


def test_without_command_line_fields_the_entries_are_as_written():
    config, said = _benchmark("--config", str(BENCHMARK_CPU))
    written = tomllib.loads(BENCHMARK_CPU.read_text(encoding="utf-8"))["models"]
    assert config.models == written and said == []
    assert config.experiment("invariant-pde", 0).train.epochs == 12


def test_device_wins_over_an_entry_that_sets_it(tmp_path):
    path = _write(tmp_path / "b.toml", '[models]\nfcnn = ["model.kind=\'fcnn\'", '
                                       '"train.device=\'cpu\'"]\neqpdenet = []\n')
    config, said = _benchmark("--config", str(path), "--device", "auto")
    assert [config.experiment(name, 0).train.device for name in config.models] == ["auto", "auto"]
    assert config.models["fcnn"] == ["model.kind='fcnn'"]
    assert said == ["--device replaces the train.device that the benchmark's model entries fcnn "
                    "set (the command line wins over the entries; config.toml records the "
                    "entries as they run)"]


def test_a_layer_field_outlives_an_entry_that_starts_the_layer_from_a_preset(tmp_path):
    path = _write(tmp_path / "b.toml",
                  '[models]\nsim = ["model.layer.preset=\'se2_sim2\'", '
                  '"model.layer.reduction=\'concat\'"]\neqpdenet = []\n')
    config, said = _benchmark("--config", str(path), "--set", "base.model.layer.T=2.0")
    assert config.experiment("sim", 0).model.layer == LayerConfig.preset(
        "se2_sim2", T=2.0, reduction="concat")
    assert config.experiment("eqpdenet", 0).model.layer.T == 2.0
    assert config.models["sim"][-1] == "model.layer.T=2.0"
    # --layer names the preset: the entry's own preset gives way to it, its reduction stays
    config, said = _benchmark("--config", str(path), "--layer", "paper")
    assert config.experiment("sim", 0).model.layer == LayerConfig.preset(
        "paper", reduction="concat")
    assert said == ["--layer replaces the model.layer.preset that the benchmark's model entries "
                    "sim set (the command line wins over the entries; config.toml records the "
                    "entries as they run)"]


# ------------------------------------------------------------------ F2: --layer and the file

def test_layer_replaces_the_files_layer_table_and_names_what_it_drops(tmp_path):
    # --layer is the preset's table, as before round 17 (a full file of eqpdenet's own, written
    # by every run, would otherwise keep its invariants under --layer se2_sim2: a review
    # probe); the file's fields the preset does not set and it gave other values are named
    path = _write(tmp_path / "t.toml", "[model.layer]\nT = 2.0\ninit_noise = 0.05\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = _train("--config", str(path), "--layer", "se2_sim2").model.layer
    assert layer == LayerConfig.preset("se2_sim2")
    assert [str(w.message) for w in caught] == [
        f"--layer se2_sim2 replaces the layer table of {path}, whose T = 2.0, init_noise = 0.05 "
        f"the preset does not keep (set them again after it: --set model.layer.FIELD=VALUE)"]
    # set again after it, as the warning says
    layer = _train("--config", str(path), "--layer", "se2_sim2", "--set", "model.layer.T=2.0",
                   "--set", "model.layer.init_noise=0.05").model.layer
    assert layer == LayerConfig.preset("se2_sim2", T=2.0, init_noise=0.05)


def test_layer_over_a_full_file_is_the_preset_without_a_word(tmp_path):
    # the paper's recorded configuration (every field written) under --layer se2_sim2: the
    # preset's invariants and ratios, what --layer is for; nothing else differs, nothing said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cli._sweep_config(_args("reproduce", "--config",
                                         str(ROOT / "results" / "paper" / "config.toml"),
                                         "--layer", "se2_sim2"), ReproduceConfig,
                                   cli.quick_profile)
    assert config.base.model.layer == LayerConfig.preset("se2_sim2")
    assert config.base.model.layer.invariants == ["se2", "se2", "sim2", "sim2"]
    assert not [w for w in caught if "--layer" in str(w.message)]


def test_an_unknown_layer_preset_is_the_command_lines_not_the_files(tmp_path):
    path = _write(tmp_path / "t.toml", "[model.layer]\nT = 2.0\n")
    with pytest.raises(ConfigError) as error:
        _train("--config", str(path), "--layer", "nope")
    assert str(error.value) == ("invalid config: model.layer.preset: unknown layer preset 'nope'; "
                                "available: paper, se2_sim2")


# ------------------------------------------------------------------ F3: study --config PARTIAL

def _study_base(monkeypatch, tmp_path, *options: str) -> ReproduceConfig:
    from eqpdenet.app import study

    given = {}

    def run_study(out, *, base, **kwargs):
        given["base"] = base
        return base

    monkeypatch.setattr(study, "run_study", run_study)
    assert cli.main(["study", "--out", str(tmp_path / "s"), *options]) == 0
    return given["base"]


def test_study_fills_a_partial_file_from_its_own_base(monkeypatch, tmp_path, capsys):
    path = _write(tmp_path / "p.toml", "[base.train]\nepochs = 3\n")
    base = _study_base(monkeypatch, tmp_path, "--config", str(path))
    assert to_dict(base) == to_dict(apply_overrides(study_base(), ["base.train.epochs=3"]))
    assert (base.hidden_sizes, base.seeds, base.base.train.pde_lr_scale) == ([256, 32], [0, 1],
                                                                             1.0)


@pytest.mark.parametrize("committed", ["results/study/chosen.toml",
                                       "results/study-refine/chosen.toml"])
def test_a_whole_file_gives_the_study_the_configuration_it_gave(committed, monkeypatch,
                                                                 tmp_path, capsys):
    """The committed second round's command (``--config results/study/chosen.toml``) starts
    from the same configuration as before."""
    base = _study_base(monkeypatch, tmp_path, "--config", str(ROOT / committed))
    assert to_dict(base) == to_dict(load_toml(ReproduceConfig, ROOT / committed))


# ------------------------------------------------------------------ F4: the file named

def test_a_bad_value_in_the_file_names_the_file(tmp_path, capsys):
    path = _write(tmp_path / "bad.toml", '[train]\nepochs = "3"\n')
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"eqpdenet: error: config file {path}: invalid config: train.epochs: must be an "
        f"integer, got '3' (EQPDENET_DEBUG=1 shows the traceback)\n")
    assert not (tmp_path / "o").exists()


def test_an_unregistered_name_in_the_file_names_the_file_and_the_plugin_once(tmp_path):
    path = _write(tmp_path / "k.toml", '[model]\nkind = "mynet"\n')
    with pytest.raises(ConfigError) as error:
        load_toml(ExperimentConfig, path)
    text = str(error.value)
    assert text.startswith(f"config file {path}: invalid config: model.kind: unknown model "
                           f"'mynet'; available: ")
    assert text.count("registered by a plugin?") == 1


# ------------------------------------------------------------------ F5: a list element's hint

def test_a_list_elements_hint_is_a_set_that_set_takes():
    with pytest.raises(ConfigError) as error:
        apply_overrides(ExperimentConfig(), ["scenarios=['test', 2, true]"])
    assert str(error.value) == (
        "invalid config: scenarios[1]: must be a string, got 2 (TOML reads an unquoted 2 as an "
        "integer: quote it, '2', as in --set \"scenarios=['test', '2', 'true']\")")
    # as the hint says: --set takes it (the scenario itself is then what is wrong)
    with pytest.raises(ConfigError) as error:
        apply_overrides(ExperimentConfig(), ["scenarios=['test', '2', 'true']"])
    assert "unknown field" not in str(error.value)
    assert "unknown scenario '2'" in str(error.value)


def test_in_a_file_the_hint_says_to_quote_it_there(tmp_path):
    path = _write(tmp_path / "s.toml", "[data]\ndataset = 123\n")
    with pytest.raises(ConfigError) as error:
        load_toml(ExperimentConfig, path)
    assert str(error.value) == (f"config file {path}: invalid config: data.dataset: must be a "
                                f"string, got 123 (TOML reads an unquoted 123 as an integer: "
                                f"quote it, '123')")
    path.write_text("scenarios = [1]\n")
    with pytest.raises(ConfigError) as error:
        load_toml(ExperimentConfig, path)
    assert str(error.value) == (f"config file {path}: invalid config: scenarios[0]: must be a "
                                f"string, got 1 (TOML reads an unquoted 1 as an integer: quote "
                                f"it, '1')")


# ------------------------------------------------------------------ F6: the device recorded

def _auto(*overrides: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), ["train.device='auto'", *overrides])


def test_the_device_auto_resolved_to_is_recorded(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    record = environment(_auto())
    assert record["device"] == "cpu" and "gpu" not in record
    assert environment(ExperimentConfig())["device"] == "cpu"
    assert "device" not in environment()  # no configuration, nothing to say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100")
    record = environment(_auto())
    assert (record["device"], record["gpu"]) == ("cuda", "NVIDIA H100")
    assert environment(ExperimentConfig())["device"] == "cpu"  # named: not resolved


def _saved(folder, key, config, device):
    record = {"key": key, "status": "ok", "accuracy": {"test": 1.0}, "config": to_dict(config),
              "environment": {"threads": 1}}
    if device is not None:
        record["environment"]["device"] = device
    save_run(folder, key, record)


def test_a_sweep_resumed_where_auto_is_another_device_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto, cpu = _auto(), ExperimentConfig()
    _saved(tmp_path, "gpu", auto, "cuda")
    _saved(tmp_path, "here", auto, "cpu")
    _saved(tmp_path, "old", auto, None)  # recorded before the device was: not compared
    _saved(tmp_path, "named", cpu, "cpu")
    runs = {"gpu": auto, "here": auto, "old": auto, "named": cpu}
    assert sweeps.changed_runs(runs, tmp_path) == {"gpu": [
        "the device: train.device 'auto' ran on 'cuda' (recorded), resolves to 'cpu' here now; "
        "CPU and GPU runs round differently"]}
    # runs Ray places resolve "auto" on its workers: not judged here
    assert sweeps.changed_runs(runs, tmp_path, device_here=False) == {}
    with pytest.raises(ConfigError, match="the device: train.device 'auto' ran on 'cuda'"):
        sweeps.run_sweep("reproduce", runs, tmp_path, base_fingerprint="f", progress=False,
                         runner=lambda *args, **kwargs: pytest.fail("nothing may run"),
                         echo=lambda line: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sorted(sweeps.changed_runs(runs, tmp_path)) == ["here"]


# ------------------------------------------------------------------ F7: sigma left out

def test_a_sigma_set_can_be_left_out_as_the_message_says(tmp_path):
    path = _write(tmp_path / "g.toml", '[model.layer]\nstencil = "gaussian"\nsigma = 1.0\n')
    config = load_toml(ExperimentConfig, path)
    with pytest.raises(ConfigError) as error:
        apply_overrides(config, ["model.layer.stencil=central"])
    assert str(error.value) == (
        "invalid config: model.layer.sigma: the 'central' stencil has no scale; leave sigma out "
        "(only gaussian take one); --set cannot unset it: take it out of the file, or start the "
        "layer table again from a preset with --set model.layer.preset=NAME (paper, se2_sim2; "
        "sigma unset) and set the table's other fields after it")
    # as the message says
    layer = apply_overrides(config, ["model.layer.preset=paper",
                                     "model.layer.stencil=central"]).model.layer
    assert layer == LayerConfig.preset("paper", stencil="central") and layer.sigma is None
