"""Configuration faults found by a probe (round 5), each refused or corrected before any work:

1. ``benchmark --quick --set base.train.epochs=2`` trained 1 epoch: the profile appended
   ``train.epochs=1`` to every model's own overrides, which apply after the base;
2. a ``reproduce`` base without a scenario the tables report trained every run, then refused
   "nothing to table"; an experiment with no scenarios and no validation scored nothing;
3. a benchmark's seeds were checked only inside the sweep (named ``train.seed``, after the folder
   was claimed), ``checkpoint_seeds`` not at all;
4. a learning rate of 1e38 overflowed in the optimiser ("unexpected RuntimeError");
5. a layer spacing of 1e300 or 1e-300 overflowed in the stencils ("unexpected OverflowError");
6. ``study --epochs 1 --set base.train.epochs=3`` ran 3 epochs (the flags came first);
7. augmentations that move every digit out of its frame trained on blank images;
8. messages naming ``hidden`` without its table, printing 300 digits, "warning: eqpdenet: ";
9. ``model.classes`` (and the image size, channels) replaced by the data's without a word;
10. help texts that left out commands and a default folder;
and the cheap ones of the probe's doubtful list (``cnn.pool_after`` beyond the layers, ``report``
of a missing folder, a data set name TOML reads as a date).
"""

import argparse
import math

import pytest
import torch

from eqpdenet.app import cli, study, training
from eqpdenet.app import config as configuration
from eqpdenet.app.cli import main
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    ReproduceConfig,
    TrainConfig,
    apply_overrides,
)
from eqpdenet.errors import ConfigError
from eqpdenet.models import CNNConfig, InvariantPDEConfig
from eqpdenet.pde.layer import LayerConfig
from eqpdenet.pde.stencils import jet, laplacian_max_eigenvalue, second_order_symbol_range


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------- 1. --quick


def test_set_epochs_wins_over_the_benchmark_quick_profile_in_every_model():
    args = cli.build_parser().parse_args(["benchmark", "--quick", "--set", "base.train.epochs=2"])
    config = cli._sweep_config(args, BenchmarkConfig, cli.quick_benchmark)
    assert {name: config.experiment(name, 0).train.epochs for name in config.models} == {
        name: 2 for name in config.models}
    # without --set: the profile's one epoch, also for an entry of --config with its own epochs
    own = apply_overrides(BenchmarkConfig(), ["models.cnn=[\"model.kind='cnn'\", 'train.epochs=30']"])
    quick = cli.quick_benchmark(own)
    assert {quick.experiment(name, 0).train.epochs for name in quick.models} == {1}


# ----------------------------------------------------------------------------- 2. scenarios


def test_reproduce_refuses_a_base_without_a_tabled_scenario():
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(ReproduceConfig(), ["base.scenarios=['rot']"])
    assert str(refusal.value).startswith(
        "invalid config: base.scenarios: ['rot'] holds none of the scenarios the paper's tables "
        "report (test, iso, sca) and base.data.validation is 0")
    # the study's runs: validation accuracy tabled
    config = apply_overrides(ReproduceConfig(), ["base.scenarios=['rot']", "base.data.validation=100"])
    assert config.base.scenarios == ["rot"]


@pytest.mark.parametrize("scenarios, message", [
    ("['rot']", "base.scenarios: ['rot'] holds none of the scenarios"),
    ("[]", "base.scenarios: is empty and base.data.validation is 0: the runs would be scored on "
           "nothing")])
def test_reproduce_refuses_a_base_without_a_tabled_scenario_before_its_folder(
        scenarios, message, tmp_path, capsys, no_data):
    out = tmp_path / "sweep"
    assert main(["reproduce", "--quick", "--out", str(out), "--no-progress",
                 "--set", f"base.scenarios={scenarios}"]) == 2
    assert f"eqpdenet: error: invalid config: {message}" in one_error(capsys)
    assert not out.exists()


def test_train_scored_on_nothing_is_refused(tmp_path, capsys, no_data):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--set", "scenarios=[]"]) == 2
    assert ("eqpdenet: error: invalid config: scenarios: is empty and data.validation is 0: the "
            "runs would be scored on nothing") in one_error(capsys)
    assert not out.exists()


def test_a_scenario_twice_is_refused():
    with pytest.raises(ConfigError, match=r"^invalid config: scenarios: must be distinct; iso "):
        ExperimentConfig(scenarios=["test", "iso", "iso"])
    with pytest.raises(ConfigError, match=r"^invalid config: base.scenarios: must be distinct"):
        apply_overrides(BenchmarkConfig(), ["base.scenarios=['rot', 'rot']"])


def test_evaluate_of_a_checkpoint_without_scenarios_asks_for_them(tmp_path, monkeypatch, capsys):
    config = ExperimentConfig(scenarios=[], data={"validation": 10})
    monkeypatch.setattr(training, "load_checkpoint", lambda *a, **k: (None, config, {}))
    assert main(["evaluate", str(tmp_path / "model.pt")]) == 2
    assert "no scenarios to evaluate (scenarios = []); name them: --scenarios test iso sca" in (
        one_error(capsys))


def test_train_prints_the_validation_accuracy():
    record = {"accuracy": {}, "validation_accuracy": 91.234}
    assert cli._scores(record) == "validation 91.23%"
    assert cli._scores({"accuracy": {"test": 90.0}}) == "test 90.00%"


# ----------------------------------------------------------------------------- 3. seeds


@pytest.mark.parametrize("overrides, message", [
    (["seeds=[-1]"], "seeds[0]: must be >= 0, got -1"),
    (["checkpoint_seeds=[-1]"], "checkpoint_seeds[0]: must be >= 0, got -1"),
    (["seeds=[0, 0]"], "seeds: must be distinct and non-empty, got [0, 0]"),
    (["seeds=[]"], "seeds: must be distinct and non-empty, got []"),
    (["checkpoint_seeds=[0, 0]"], "checkpoint_seeds: must be distinct, got [0, 0]"),
    (["seeds=[0, 1, 2]", "checkpoint_seeds=[5]"],
     "checkpoint_seeds: [5] is not among seeds [0, 1, 2]: no run has that seed, so no checkpoint "
     "would be saved"),
    (["models.fcnn=['train.lr=-1']"], "models.fcnn: train.lr: must be positive, got -1.0"),
])
@pytest.mark.parametrize("cls", [BenchmarkConfig, ReproduceConfig])
def test_sweep_seeds_and_entries_are_checked_by_the_configuration(cls, overrides, message):
    if cls is ReproduceConfig and overrides[0].startswith("models."):
        return
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(cls(), overrides)
    assert str(refusal.value) == f"invalid config: {message}"


def test_the_default_checkpoint_seed_outside_seeds_means_none():
    assert apply_overrides(BenchmarkConfig(), ["seeds=[3]"]).checkpoint_seeds == [0]


def test_benchmark_refuses_a_negative_seed_before_its_folder(tmp_path, capsys, no_data):
    out = tmp_path / "bench"
    assert main(["benchmark", "--quick", "--models", "fcnn", "--out", str(out), "--no-progress",
                 "--set", "seeds=[-1]"]) == 2
    assert one_error(capsys).startswith("eqpdenet: error: invalid config: seeds[0]: must be >= 0")
    assert not out.exists()


# ----------------------------------------------------------------------------- 4. learning rate


@pytest.mark.parametrize("overrides, field", [
    ({"lr": 1e38}, "train.lr"), ({"lr": 1e-35}, "train.lr"), ({"lr": 1e31, "optimizer": "sgd"}, "train.lr"),
    ({"lr": 1e29, "pde_lr_scale": 1e10}, "train.pde_lr_scale"),
    ({"lr": 1e20, "weight_decay": 1e20}, "train.weight_decay"),
])
def test_learning_rates_float32_cannot_take_are_refused(overrides, field):
    # the PDE layer's rate is the paper's model's (the default kind): checked with the model
    # kind since round 19, TrainConfig alone checking lr
    with pytest.raises(ConfigError, match=rf"^invalid config: {field}: .* is outside|more than"):
        ExperimentConfig(train=TrainConfig(**overrides))


def test_the_largest_learning_rate_accepted_trains_without_an_unexpected_error():
    """lr = 1e30 (the bound): Adam's first step is 10 lr, within float32 (1e38 overflowed)."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig(lr=1e30).lr)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()


# ----------------------------------------------------------------------------- 5. spacing


@pytest.mark.parametrize("spacing", ["1e300", "1e-300", "1e7", "1e-7"])
def test_a_spacing_the_stencils_cannot_scale_is_refused(spacing):
    with pytest.raises(ConfigError, match=r"^invalid config: model.layer.spacing: must be between "
                                          r"1e-06 and 1e\+06 .*, got 1e[-+]"):
        apply_overrides(ExperimentConfig(), [f"model.layer.spacing={spacing}"])
    with pytest.raises(ConfigError, match="spacing: must be between"):
        jet(torch.rand(1, 1, 8, 8), spacing=float(spacing))
    with pytest.raises(ConfigError, match="spacing: must be between"):
        second_order_symbol_range("central", float(spacing))
    with pytest.raises(ConfigError, match="spacing: must be between"):
        laplacian_max_eigenvalue("central", float(spacing))
    assert math.isfinite(laplacian_max_eigenvalue("central", 1e-6))


@pytest.mark.parametrize("options, field", [
    ({"stencil": "gaussian", "sigma": 1e300}, "layer.sigma: must be at most 100 pixels"),
    ({"init": "heat", "init_scale": 1e300}, "layer.init_scale: 1e\\+300 is beyond"),
    ({"init_noise": 1e30}, "layer.init_noise: 1e\\+30 is beyond"),
])
def test_layer_values_that_overflowed_are_refused(options, field):
    with pytest.raises(ConfigError, match=f"^invalid config: {field}"):
        LayerConfig(**options)


def test_invariant_pde_sigma_is_bounded():
    with pytest.raises(ConfigError, match=r"^invalid config: invariant_pde.sigma: must be at most "
                                          r"100 pixels"):
        InvariantPDEConfig(stencil="gaussian", sigma=1e300)


# ----------------------------------------------------------------------------- 6. study order


def test_study_flags_come_after_set(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(study, "run_study", lambda out, base, **kwargs: seen.append(base) or base)
    assert main(["study", "--out", str(tmp_path / "s"), "--no-progress", "--epochs", "1",
                 "--hidden", "8", "--set", "base.train.epochs=3",
                 "--set", "hidden_sizes=[16]"]) == 0
    assert (seen[-1].base.train.epochs, seen[-1].hidden_sizes) == (1, [8])
    assert main(["study", "--out", str(tmp_path / "s"), "--no-progress",
                 "--set", "base.train.epochs=3"]) == 0
    assert seen[-1].base.train.epochs == 3


def test_study_flags_are_validated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "run_study", lambda *a, **k: pytest.fail("the study ran"))
    assert main(["study", "--out", str(tmp_path / "s"), "--epochs", "0"]) == 2
    assert "train.epochs: must be >= 1, got 0" in one_error(capsys)


# ----------------------------------------------------------------------------- 7. augmentation


@pytest.mark.parametrize("override, message", [
    ("max_shift=1e9", "train.augment.max_shift: 1e\\+09 pixels is more than 1024"),
    ("max_scale=1e30", "train.augment.max_scale: 1e\\+30 is more than 10"),
    ("min_scale=1e-30", "train.augment.min_scale: 1e-30 is less than 0.1"),
])
def test_augmentations_that_blank_the_frame_are_refused(override, message):
    with pytest.raises(ConfigError, match=f"^invalid config: {message}"):
        apply_overrides(ExperimentConfig(), [f"train.augment.{override}"])


def test_a_shift_of_the_image_side_is_refused_once_the_side_is_known():
    config = apply_overrides(ExperimentConfig(), ["train.augment.max_shift=28"])
    with pytest.raises(ConfigError, match=r"^invalid config: train.augment.max_shift: 28 pixels "
                                          r"is not less than the images' side \(28 pixels\)"):
        configuration.check_augment_for_image(config.train, 28)
    configuration.check_augment_for_image(config.train, 29)


# ----------------------------------------------------------------------------- 8. messages


def test_invariant_pde_hidden_is_bounded_and_named_in_full():
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(ExperimentConfig(), ["model.kind='invariant_pde'",
                                             "model.invariant_pde.hidden=1e300"])
    assert str(refusal.value) == (
        "invalid config: model.invariant_pde.hidden: 1e+300 times 32 channels is a hidden layer "
        "of 3.2e+301 channels, more than the bound of 65,536")


@pytest.mark.parametrize("value", ["1e-30", "1e30"])
def test_input_std_is_bounded_up_front(value):
    with pytest.raises(ConfigError) as refusal:
        apply_overrides(ExperimentConfig(), [f"model.input_std={value}"])
    assert str(refusal.value).startswith(f"invalid config: model.input_std: {float(value):.3g} is "
                                         f"outside [1e-06, 1e+06]")
    assert len(str(refusal.value)) < 200


def test_a_library_warning_is_prefixed_once(capsys):
    cli._show_warning("eqpdenet: input values far away", RuntimeWarning, "f.py", 1)
    assert capsys.readouterr().err == "eqpdenet: warning: input values far away\n"


# ----------------------------------------------------------------------------- 9. data fields


def test_fields_the_data_replaces_are_named():
    given = apply_overrides(ExperimentConfig(), ["model.kind='cnn'", "model.classes=3",
                                                 "model.image_size=5", "model.in_channels=3"])
    resolved = apply_overrides(given, ["model.classes=10", "model.image_size=28",
                                       "model.in_channels=1"])
    assert configuration.fields_replaced_by_data(given, resolved) == [
        f"model.{name} = {mine} has no effect: training takes it from the data ({used}), and "
        f"the checkpoint records {used}"
        for name, mine, used in (("image_size", 5, 28), ("in_channels", 3, 1), ("classes", 3, 10))]
    assert configuration.fields_replaced_by_data(resolved, resolved) == []  # the data's own
    other = apply_overrides(resolved, ["model.image_size=32"])
    assert configuration.fields_replaced_by_data(ExperimentConfig(), other) == []  # a default


# ----------------------------------------------------------------------------- 10. help


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_description_names_every_command():
    described = cli.__doc__.split(".", 1)[0]
    missing = [name for name in _subcommands() if name not in described]
    assert not missing


@pytest.mark.parametrize("command", ["reproduce", "benchmark", "study"])
def test_out_help_names_the_folders_the_command_uses(command):
    text = " ".join(_subcommands()[command].format_help().split())
    for folder in cli.DEFAULT_OUT[command]:
        assert folder.format(stage="refine") in text


def test_the_default_folders_are_the_ones_used():
    assert (cli._default_out("benchmark", True), cli._default_out("reproduce", True),
            cli._default_out("study", True, "refine")) == (
        "runs/benchmark-quick", "runs/quick", "runs/study-refine")


# ----------------------------------------------------------------------------- doubtful list


def test_cnn_pool_after_beyond_its_layers_is_refused():
    with pytest.raises(ConfigError, match=r"^invalid config: cnn.pool_after: 8 is after the last "
                                          r"of the 7 layers; 0 for no pooling"):
        CNNConfig(pool_after=8)
    assert CNNConfig(pool_after=7).pool_after == 7


def test_report_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nonexist")]) == 2
    assert f"no results in {tmp_path / 'nonexist'}: there is no such folder" in one_error(capsys)


def test_a_value_toml_reads_as_a_date_stays_text():
    config = apply_overrides(ExperimentConfig(), ["data.dataset=2024-01-01"])
    assert config.data.dataset == "2024-01-01"
    with pytest.raises(ConfigError, match=r"data.dataset: must be a string, got datetime.date"
                                          r"\(2024, 1, 1\) \(TOML reads 2024-01-01 as a date: "
                                          r"quote it, \"2024-01-01\"\)"):
        ExperimentConfig(data={"dataset": __import__("datetime").date(2024, 1, 1)})



def test_gcnn_pool_sigma_is_bounded():
    from eqpdenet.models import GCNNConfig

    with pytest.raises(ConfigError, match=r"^invalid config: gcnn.pool_sigma: must be at most 16 "
                                          r"pixels \(e2cnn's default 0.6\), got 1e\+300"):
        GCNNConfig(pool="antialiased", pool_sigma=1e300)
