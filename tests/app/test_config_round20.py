"""Configuration faults found by an outside probe (round 20, b1: F1-F4).

F1: a ``config.toml`` saved before ``model.invariant_pde.jet_floor`` existed was read by
``--config`` with today's default (0.1), not with the behaviour from before the field (0) that a
checkpoint or a sweep's record of the same run gets (``with_legacy_fields``); a table that
writes every other field is read so now, with a warning where the field acts, and a partial or
missing table keeps the default. F2: a ``--set`` value spanning lines was cut at its first line.
F3: a configuration's table given as ``None`` (or a dict to ``TrainConfig``) passed
construction and failed later as a raw ``AttributeError``. F4: a sweep's configuration given to
``train --config`` got no hint that its experiment is under ``base``."""

from __future__ import annotations

import tomllib
import warnings

import pytest

from eqpdenet.app.cli import main
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    ModelConfig,
    ReproduceConfig,
    TrainConfig,
    apply_overrides,
    assigned_paths,
    from_dict,
    load_toml,
    to_dict,
    to_toml,
)
from eqpdenet.app.training import LATER_FIELDS, with_legacy_fields
from eqpdenet.data.augment import AffineAugmentation, BlurConsistency
from eqpdenet.errors import ConfigError

SIM2 = ["model.kind='invariant_pde'", "model.invariant_pde.group='sim2'"]


def _saved_before_the_floor(config) -> str:
    """``config`` as ``to_toml`` wrote it before ``jet_floor`` existed: without that line."""
    text = to_toml(config)
    assert text.count("jet_floor = 0.1\n") == 1
    return text.replace("jet_floor = 0.1\n", "")


def _load(cls, path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_toml(cls, path)
    return config, [str(w.message) for w in caught]


def _floor_warning(path, where: str) -> str:
    table = where.rpartition(".")[0]
    return (f"config file {path}: {where} is not written in [{table}], which writes every other "
            f"field, as a configuration saved before the field existed does: read as 0.0, its "
            f"behaviour then (as a checkpoint or a sweep's record of that run reads it); the "
            f"default is now 0.1 (write jet_floor = 0.1 in [{table}] to use it)")


# ----------------------------------------------------------------------------------------- F1


def test_a_saved_sim2_configuration_without_the_floor_reads_as_its_checkpoint_does(tmp_path):
    assert LATER_FIELDS[("model", "invariant_pde", "jet_floor")] == 0.0
    text = _saved_before_the_floor(apply_overrides(ExperimentConfig(), SIM2))
    path = tmp_path / "config.toml"
    path.write_text(text)
    config, said = _load(ExperimentConfig, path)
    assert config.model.invariant_pde.jet_floor == 0.0
    # the same run as a checkpoint or a sweep's record of it describes
    recorded = from_dict(ExperimentConfig, with_legacy_fields(tomllib.loads(text)))
    assert to_dict(config) == to_dict(recorded)
    assert said == [_floor_warning(path, "model.invariant_pde.jet_floor")]


def test_a_written_floor_and_a_hand_written_table_keep_their_values(tmp_path):
    written = tmp_path / "written.toml"
    written.write_text(to_toml(apply_overrides(ExperimentConfig(), SIM2)))
    partial = tmp_path / "partial.toml"
    partial.write_text('[model]\nkind = "invariant_pde"\n\n[model.invariant_pde]\n'
                       'group = "sim2"\n')
    missing = tmp_path / "missing.toml"
    missing.write_text('[model]\nkind = "invariant_pde"\n')
    for path in (written, partial, missing):
        config, said = _load(ExperimentConfig, path)
        assert (config.model.invariant_pde.jet_floor, said) == (0.1, []), path.name


def test_a_saved_floor_that_acts_nowhere_is_read_as_before_without_a_word(tmp_path):
    # se2 (the floor is inert) and an eqpdenet model (the table is unused): as a checkpoint,
    # without a warning about a value that changes nothing
    for assignments in (["model.kind='invariant_pde'"], []):
        path = tmp_path / "config.toml"
        path.write_text(_saved_before_the_floor(apply_overrides(ExperimentConfig(), assignments)))
        config, said = _load(ExperimentConfig, path)
        assert (config.model.invariant_pde.jet_floor, said) == (0.0, []), assignments


def test_a_benchmark_folder_warns_where_an_entry_runs_the_floor(tmp_path):
    base_sim2 = ["model.invariant_pde.group='sim2'"]
    acting = BenchmarkConfig(base=apply_overrides(BenchmarkConfig().base, base_sim2),
                             models={"fcnn": ["model.kind='fcnn'"],
                                     "sim2": ["model.kind='invariant_pde'"]})
    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(acting))
    config, said = _load(BenchmarkConfig, path)
    assert config.base.model.invariant_pde.jet_floor == 0.0
    assert config.experiment("sim2", 0).model.invariant_pde.jet_floor == 0.0
    assert said == [_floor_warning(path, "base.model.invariant_pde.jet_floor")]
    # no entry runs an invariant_pde model: read as before, nothing said
    inert = BenchmarkConfig(base=acting.base, models={"fcnn": ["model.kind='fcnn'"]})
    path.write_text(_saved_before_the_floor(inert))
    config, said = _load(BenchmarkConfig, path)
    assert (config.base.model.invariant_pde.jet_floor, said) == (0.0, [])


def test_a_reproduce_base_is_read_as_before_too(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(ReproduceConfig()))
    config, said = _load(ReproduceConfig, path)
    assert (config.base.model.invariant_pde.jet_floor, said) == (0.0, [])


# ----------------------------------------------------------------------------------------- F2


@pytest.mark.parametrize("assignment, value, extra", [
    ("train.lr=0.01\ntrain.epochs=3", "0.01\\ntrain.epochs=3", "'train'"),
    ("train.epochs=3\n[model]\nhidden=16", "3\\n[model]\\nhidden=16", "'model'"),
    ("scenarios=['test']\nscenarios=['iso']", "\"['test']\\nscenarios=['iso']\"", "'scenarios'"),
])
def test_a_set_value_spanning_lines_is_refused(assignment, value, extra):
    field = assignment.partition("=")[0]
    shown = value if value.startswith('"') else f"'{value}'"
    with pytest.raises(ConfigError) as error:
        apply_overrides(ExperimentConfig(), [assignment])
    assert str(error.value) == (
        f"invalid config: {field}: {shown} is more than one value: TOML reads the lines after "
        f"its first as keys or tables of their own ({extra}), which nothing reads; give the "
        f"value alone (each field its own --set)")


def test_one_value_on_several_lines_is_still_one_value():
    config = apply_overrides(ExperimentConfig(), ["scenarios=['test',\n'iso']", "train.lr=0.01\n"])
    assert (config.scenarios, config.train.lr) == (["test", "iso"], 0.01)


def test_the_command_line_refuses_it_before_any_work(tmp_path, capsys, no_data):
    out = tmp_path / "o"
    assert main(["train", "--out", str(out), "--no-progress",
                 "--set", "train.epochs=3\ntrain.lr=5"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eqpdenet: error: invalid config: train.epochs: '3\\ntrain.lr=5' is more than one value: "
        "TOML reads the lines after its first as keys or tables of their own ('train'), which "
        "nothing reads; give the value alone (each field its own --set) (EQPDENET_DEBUG=1 shows "
        "the traceback)"]
    assert not out.exists()


# ----------------------------------------------------------------------------------------- F3


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(augment=None),
     "train.augment: must be an AffineAugmentation or a dict of its fields, got None"),
    (lambda: TrainConfig(blur_consistency=3),
     "train.blur_consistency: must be a BlurConsistency or a dict of its fields, got 3"),
    (lambda: TrainConfig(augment=BlurConsistency()),
     "train.augment: must be an AffineAugmentation or a dict of its fields, got "
     "BlurConsistency(weight=0.0, max_sigma=0.71, fraction=0.25)"),
    (lambda: ExperimentConfig(model=None),
     "model: must be a ModelConfig or a dict of its fields, got None"),
    (lambda: ExperimentConfig(data=None),
     "data: must be a DataConfig or a dict of its fields, got None"),
    (lambda: ExperimentConfig(train=None),
     "train: must be a TrainConfig or a dict of its fields, got None"),
    (lambda: ModelConfig(layer=None),
     "model.layer: must be a LayerConfig or a dict of its fields, got None"),
    (lambda: ModelConfig(invariant_pde="sim2"),
     "model.invariant_pde: must be an InvariantPDEConfig or a dict of its fields, got 'sim2'"),
    (lambda: ReproduceConfig(base=None),
     "base: must be an ExperimentConfig or a dict of its fields, got None"),
    (lambda: BenchmarkConfig(base=None),
     "base: must be an ExperimentConfig or a dict of its fields, got None"),
    (lambda: BenchmarkConfig(curves=None),
     "curves: must be a CurvesConfig or a dict of its fields, got None"),
])
def test_a_table_that_is_not_one_is_refused_on_construction(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value) == f"invalid config: {message}"


def test_a_dict_for_a_training_table_is_converted_as_a_file_table_is():
    train = TrainConfig(augment={"max_shift": 2.0}, blur_consistency={"weight": 0.5})
    assert train.augment == AffineAugmentation(max_shift=2.0)
    assert train.blur_consistency == BlurConsistency(weight=0.5)
    assert train == from_dict(TrainConfig, {"augment": {"max_shift": 2.0},
                                            "blur_consistency": {"weight": 0.5}})
    with pytest.raises(ConfigError) as error:
        TrainConfig(augment={"max_shift": -1.0})
    assert str(error.value) == "invalid config: train.augment.max_shift: must be >= 0, got -1.0"
    with pytest.raises(ConfigError) as error:
        TrainConfig(augment={"max_scale": 20.0})
    assert str(error.value) == ("invalid config: train.augment.max_scale: 20 is more than 10: "
                                "the digits would be mostly outside the frame")


# ----------------------------------------------------------------------------------------- F4


def test_a_sweeps_configuration_given_as_an_experiment_says_where_its_experiment_is(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text("[base.train]\nepochs = 3\n\n[base.model]\nhidden = 16\n")
    with pytest.raises(ConfigError) as error:
        load_toml(ExperimentConfig, path)
    assert str(error.value) == (
        f"config file {path}: invalid config: unknown field(s) ['base'] for ExperimentConfig; "
        f"this configuration is one experiment, without base (a sweep's, with base, is for "
        f"reproduce, benchmark or study): write base.train as train, base.model as model; "
        f"known: ['data', 'model', 'scenarios', 'train']")
    # a base that is no table gets no such hint
    with pytest.raises(ConfigError) as error:
        from_dict(ExperimentConfig, {"base": 3})
    assert str(error.value) == ("invalid config: unknown field(s) ['base'] for ExperimentConfig; "
                                "known: ['data', 'model', 'scenarios', 'train']")


# ----------------------------------------------------------------------------- a review (r3)


def _command_config(argv):
    """The configuration ``train`` would run for ``argv``, and the warnings making it gave."""
    from eqpdenet.app.cli import _experiment_config, build_parser

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = _experiment_config(args)
    return config, [str(w.message) for w in caught]


def test_the_floors_warning_is_judged_after_the_command_lines_options(tmp_path):
    # it was given from the file alone: --set ...jet_floor=0.1 was told to write jet_floor = 0.1,
    # and --model cnn (on which the floor has no effect) was warned too
    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(apply_overrides(ExperimentConfig(), SIM2)))
    where = "model.invariant_pde.jet_floor"
    config, said = _command_config(["train", "--config", str(path), "--out", "x"])
    assert config.model.invariant_pde.jet_floor == 0.0
    assert said == [_floor_warning(path, where)]
    config, said = _command_config(["train", "--config", str(path), "--out", "x", "--set",
                                    f"{where}=0.1"])
    assert config.model.invariant_pde.jet_floor == 0.1 and said == []
    config, said = _command_config(["train", "--config", str(path), "--out", "x", "--model",
                                    "fcnn"])
    assert not any("is not written in" in line for line in said)


def test_a_sweeps_file_given_to_train_gets_no_did_you_mean_and_names_its_own_fields(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(to_toml(BenchmarkConfig()))
    with pytest.raises(ConfigError) as caught:
        load_toml(ExperimentConfig, path)
    message = str(caught.value)
    assert "did you mean" not in message
    assert ", and leave out the sweep's own checkpoint_seeds, curves, models, seeds;" in message


def test_a_subclass_of_the_experiment_reads_a_saved_file_as_the_experiment_does(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Mine(ExperimentConfig):
        pass

    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(apply_overrides(ExperimentConfig(), SIM2)))
    mine, _ = _load(Mine, path)
    theirs, _ = _load(ExperimentConfig, path)
    assert mine.model.invariant_pde.jet_floor == theirs.model.invariant_pde.jet_floor == 0.0


@pytest.mark.parametrize("assignment", [
    "model.invariant_pde.jet_floor=0",          # the earlier value, chosen on the command line
    "model.invariant_pde.jet_floor = 0.0",
    "model.invariant_pde={jet_floor=0.0}",      # a table given whole names its keys
])
def test_a_field_the_command_line_names_is_not_warned_whatever_its_value(tmp_path, assignment):
    """Review r5: --set ...jet_floor=0 chose the earlier value and was still told to write
    jet_floor = 0.1; a field another --set names still is."""
    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(apply_overrides(ExperimentConfig(), SIM2)))
    config, said = _command_config(["train", "--config", str(path), "--out", "x", "--set",
                                    assignment])
    assert config.model.invariant_pde.jet_floor == 0.0 and said == []
    config, said = _command_config(["train", "--config", str(path), "--out", "x", "--set",
                                    "model.invariant_pde.ratio_eps=0.5"])
    assert said == [_floor_warning(path, "model.invariant_pde.jet_floor")]


def test_the_paths_an_assignment_names():
    assert assigned_paths(["a.b=1", "c = {d=1, e={f=2}}", "g.layer.preset=x", "oops",
                           "h={preset='x', T=2.0}"]) == {
        ("a", "b"), ("c", "d"), ("c", "e", "f"), ("g", "layer"), ("h",), ("h", "T")}


def test_a_table_given_whole_hides_no_warning_of_a_field_it_does_not_name(tmp_path):
    """Review r1: --set 'model.invariant_pde={channels=[4], blocks=[1]}' merges the table and
    keeps the file's jet_floor read as 0, but named the whole table and hid its warning."""
    path = tmp_path / "config.toml"
    path.write_text(_saved_before_the_floor(apply_overrides(ExperimentConfig(), SIM2)))
    for assignment in ("model.invariant_pde={channels=[4], blocks=[1]}", "model={hidden=16}"):
        config, said = _command_config(["train", "--config", str(path), "--out", "x", "--set",
                                        assignment])
        assert config.model.invariant_pde.jet_floor == 0.0
        assert said == [_floor_warning(path, "model.invariant_pde.jet_floor")], assignment
