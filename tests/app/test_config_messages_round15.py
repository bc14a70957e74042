"""Configuration messages and tables given whole (outside probe r15c/s2, round 15).

A ``--set`` list or table that is not valid TOML is said to be so (it was "must be a list, got
'[test,iso]'"); a TOML file with a byte-order mark is read; ``train.device`` and ``data.source``
name their allowed values; a layer preset's error names its field; unknown fields get a "did you
mean"; a number or bool given for a string field is told to quote it. A table given whole
through ``--set`` (``train={lr=0.01}``) is merged into the table as it stands, not rebuilt from
the defaults; a benchmark entry cannot pass its ``train.seed`` check by writing the table whole,
nor ``--quick``'s ``train.epochs`` by the same route."""

from __future__ import annotations

import pytest

from eqpdenet.app.cli import main, quick_benchmark
from eqpdenet.app.config import (
    BenchmarkConfig,
    ExperimentConfig,
    LayerConfig,
    ReproduceConfig,
    apply_overrides,
    from_dict,
    load_toml,
)
from eqpdenet.errors import ConfigError

TRAIN_FIELDS = ("['augment', 'batch_size', 'blur_consistency', 'compile', 'device', 'epochs', "
                "'grad_clip', 'lr', 'lr_schedule', 'optimizer', 'pde_lr_scale', 'seed', "
                "'select_on_validation', 'weight_average', 'weight_decay']")
MODEL_FIELDS = ("['classes', 'cnn', 'gcnn', 'head', 'hidden', 'image_size', 'in_channels', "
                "'input_mean', 'input_std', 'invariant_pde', 'kind', 'layer', 'lifted_pde', "
                "'standardize']")


def _message(config, assignments) -> str:
    with pytest.raises(ConfigError) as error:
        apply_overrides(config, assignments)
    return str(error.value)


# ------------------------------------------------------------------ F1: --set text TOML rejects

@pytest.mark.parametrize("assignment, message", [
    ("scenarios=[test,iso]",
     "invalid config: scenarios: [test,iso] is not valid TOML (Invalid value at character 2 of "
     "the value); strings in a list need quotes, which the shell keeps where the whole "
     "assignment is quoted: --set \"scenarios=['a', 'b']\""),
    ("model.layer.invariants=[se2]",
     "invalid config: model.layer.invariants: [se2] is not valid TOML (Invalid value at "
     "character 2 of the value); strings in a list need quotes, which the shell keeps where the "
     "whole assignment is quoted: --set \"model.layer.invariants=['a', 'b']\""),
    ("model.layer={preset=se2_sim2}",
     "invalid config: model.layer: {preset=se2_sim2} is not valid TOML (Invalid value at "
     "character 9 of the value); strings in a table need quotes, which the shell keeps where "
     "the whole assignment is quoted: --set \"model.layer={name = 'a'}\""),
    ("model.layer={T=2.0,T=3.0}",  # not a quoting problem: no quoting hint
     "invalid config: model.layer: {T=2.0,T=3.0} is not valid TOML (Duplicate inline table key "
     "'T' at character 13 of the value)"),
    ("data.dataset='abc",
     "invalid config: data.dataset: 'abc is not valid TOML (Expected \"'\" at the end of the "
     "value); a quoted string must end with its opening quote (in double quotes a backslash "
     "starts an escape: use single quotes for a Windows path)"),
])
def test_a_set_value_that_starts_as_toml_but_is_not_says_so(assignment, message):
    assert _message(ExperimentConfig(), [assignment]) == message


def test_a_bare_word_is_still_a_string():
    config = apply_overrides(ExperimentConfig(), ["model.kind=fcnn", "data.dataset=mnist"])
    assert (config.model.kind, config.data.dataset) == ("fcnn", "mnist")
    assert apply_overrides(ExperimentConfig(), ["scenarios=['test', 'iso']"]).scenarios == \
        ["test", "iso"]


def test_the_command_line_says_it_in_one_line_before_any_work(tmp_path, capsys, no_data):
    out = tmp_path / "o"
    assert main(["train", "--out", str(out), "--no-progress", "--set", "scenarios=[test,iso]"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eqpdenet: error: invalid config: scenarios: [test,iso] is not valid TOML (Invalid value "
        "at character 2 of the value); strings in a list need quotes, which the shell keeps "
        "where the whole assignment is quoted: --set \"scenarios=['a', 'b']\" (EQPDENET_DEBUG=1 "
        "shows the traceback)"]
    assert not out.exists()


# ------------------------------------------------------------------ F2: a byte-order mark

def test_a_toml_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[train]\r\nlr = 0.01\r\nepochs = 3\r\n")
    config = load_toml(ExperimentConfig, path)
    assert (config.train.lr, config.train.epochs) == (0.01, 3)
    assert config == apply_overrides(ExperimentConfig(), ["train.lr=0.01", "train.epochs=3"])


# ------------------------------------------------------------------ F3: allowed values

@pytest.mark.parametrize("assignment, message", [
    ("train.device=gpu", "invalid config: train.device: 'gpu' is not 'cpu', 'cuda' or 'auto'"),
    ("data.source=amat",
     "invalid config: data.source: 'amat' is not 'auto', 'generated' or 'official'"),
])
def test_choice_fields_name_their_values(assignment, message):
    assert _message(ExperimentConfig(), [assignment]) == message


# ------------------------------------------------------------------ F4: a preset's field

AVAILABLE = "available: paper, se2_sim2"


@pytest.mark.parametrize("assignments, message", [
    (["model.layer.preset=nope"],
     f"invalid config: model.layer.preset: unknown layer preset 'nope'; {AVAILABLE}"),
    (["model.layer.preset=3"],
     f"invalid config: model.layer.preset: a layer preset is named by a string, got int 3; "
     f"{AVAILABLE}"),
    (["model.layer={preset='nope', T=2.0}"],
     f"invalid config: model.layer.preset: unknown layer preset 'nope'; {AVAILABLE}"),
])
def test_a_preset_set_on_the_command_line_names_its_field(assignments, message):
    assert _message(ExperimentConfig(), assignments) == message


def test_a_preset_in_a_file_names_its_field(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[base.model.layer]\npreset = 3\n')
    with pytest.raises(ConfigError) as error:
        load_toml(ReproduceConfig, path)
    assert str(error.value) == (f"config file {path}: invalid config: base.model.layer.preset: "
                                f"a layer preset is named by a string, got int 3; {AVAILABLE}")
    with pytest.raises(ConfigError) as error:
        from_dict(ReproduceConfig, {"base": {"model": {"layer": {"preset": "nope"}}}})
    assert str(error.value) == ("invalid config: base.model.layer.preset: unknown layer preset "
                                f"'nope'; {AVAILABLE}")


# ------------------------------------------------------------------ F5: tables given whole

def test_a_table_given_whole_is_merged_into_the_table_as_it_stands():
    config = apply_overrides(ExperimentConfig(), ["train.epochs=3", "train={lr=0.01}"])
    assert (config.train.epochs, config.train.lr) == (3, 0.01)
    config = apply_overrides(ExperimentConfig(), ["model.layer.preset=se2_sim2",
                                                  "model.layer={T=2.0}"])
    assert config.model.layer == LayerConfig.preset("se2_sim2", T=2.0)
    # a preset in the table applies first, whatever its place
    config = apply_overrides(ExperimentConfig(), ["model.layer={T=2.0, preset='se2_sim2'}"])
    assert config.model.layer == LayerConfig.preset("se2_sim2", T=2.0)
    # nested tables merge too, and a sweep's base is one
    config = apply_overrides(ReproduceConfig(), ["base.train.epochs=3",
                                                 "base={train={augment={max_shift=2.0}}}"])
    assert (config.base.train.epochs, config.base.train.augment.max_shift) == (3, 2.0)
    assert config.base.scenarios == ReproduceConfig().base.scenarios


def test_an_unknown_key_of_a_table_given_whole_is_named_by_its_path():
    assert _message(ExperimentConfig(), ["train={lrr=0.1}"]) == (
        f"--set train.lrr: unknown field 'lrr' (did you mean 'train.lr'?); known: {TRAIN_FIELDS}")


def test_a_mapping_that_is_not_a_table_of_fields_is_replaced_whole():
    config = apply_overrides(BenchmarkConfig(), ["models={fcnn=[\"model.kind='fcnn'\"]}"])
    assert config.models == {"fcnn": ["model.kind='fcnn'"]}


def test_a_partial_table_in_a_file_still_takes_the_defaults(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[train]\nlr = 0.01\n")
    config = apply_overrides(load_toml(ExperimentConfig, path), [])
    assert (config.train.lr, config.train.epochs) == (0.01, 20)


SEED_REFUSED = ("invalid config: models.a: sets train.seed, which the benchmark sets for each run "
                "from seeds; set seeds instead")


@pytest.mark.parametrize("entry", ["train={seed=5}", "train={seed=5, lr=0.01}", "train.seed=5"])
def test_a_benchmark_entry_setting_the_seed_is_refused_however_written(entry):
    with pytest.raises(ConfigError) as error:
        BenchmarkConfig(models={"a": ["model.kind='fcnn'", entry]})
    assert str(error.value) == SEED_REFUSED


def test_the_fields_an_assignment_sets():
    from eqpdenet.app.config import assigned_fields, without_field

    assert assigned_fields("train={seed=5, lr=0.01}") == ["train.seed", "train.lr"]
    assert assigned_fields(" train.seed = 4") == ["train.seed"]
    assert assigned_fields("model.layer={T=2.0, preset='paper'}") == ["model.layer.preset",
                                                                      "model.layer.T"]
    assert assigned_fields("scenarios=[test") == ["scenarios"]  # apply_overrides says why
    assert without_field(["model.kind='fcnn'", "train={epochs=5, lr=0.01, optimizer='sgd'}",
                          "train.epochs=3", "train={epochs=2}"], "train.epochs") == \
        ["model.kind='fcnn'", "train.lr=0.01", "train.optimizer=\"sgd\""]


def test_quick_benchmark_takes_the_epochs_out_of_a_table_given_whole():
    config = quick_benchmark(BenchmarkConfig(
        models={"a": ["model.kind='fcnn'", "train={epochs=5, lr=0.01}"]}, seeds=[0]))
    assert config.models == {"a": ["model.kind='fcnn'", "train.lr=0.01"]}
    run = config.experiment("a", 0)
    assert (run.train.epochs, run.train.lr) == (1, 0.01)


# ------------------------------------------------------------------ F6: did you mean, quoting

@pytest.mark.parametrize("assignment, message", [
    ("train.lrr=0.1",
     f"--set train.lrr: unknown field 'lrr' (did you mean 'train.lr'?); known: {TRAIN_FIELDS}"),
    ("model.T=2.0",
     f"--set model.T: unknown field 'T' (did you mean 'model.layer.T'?); known: {MODEL_FIELDS}"),
    ("train.learning_rate=0.1",  # nothing close: no guess
     f"--set train.learning_rate: unknown field 'learning_rate'; known: {TRAIN_FIELDS}"),
    ("model.layer.TT=2.0",
     "--set model.layer.TT: unknown field 'TT' (did you mean 'model.layer.T'?); known: ['T', "
     "'backend', 'boundary', 'check_finite', 'degree', 'dt', 'init', 'init_noise', 'init_scale', "
     "'invariants', 'ratio_eps', 'ratio_regularisation', 'recompute', 'reduction', 'rhs', "
     "'sigma', 'spacing', 'stencil']"),
    ("extra=1",  # 'train' is as close as difflib's default cutoff: no guess
     "--set extra: unknown field 'extra'; known: ['data', 'model', 'scenarios', 'train']"),
])
def test_an_unknown_field_on_the_command_line_gets_the_field_meant(assignment, message):
    assert _message(ExperimentConfig(), [assignment]) == message


def test_an_unknown_field_in_a_file_gets_the_field_meant(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nT = 2.0\n")
    with pytest.raises(ConfigError) as error:
        load_toml(ExperimentConfig, path)
    assert str(error.value) == (f"config file {path}: invalid config: unknown field(s) "
                                f"['model.T'] for ModelConfig (did you mean 'model.layer.T'?); "
                                f"known: {MODEL_FIELDS}")
    # an experiment's file given to a sweep: its tables belong under [base]
    path.write_text("scenarios = ['iso']\n[train]\nepochs = 2\n[model]\nhidden = 16\n")
    with pytest.raises(ConfigError) as error:
        load_toml(ReproduceConfig, path)
    assert str(error.value) == (
        f"config file {path}: "
        "invalid config: unknown field(s) ['model', 'scenarios', 'train'] for ReproduceConfig "
        "(did you mean 'base.model' for 'model', 'base.scenarios' for 'scenarios', 'base.train' "
        "for 'train'?); known: ['base', 'checkpoint_seeds', 'hidden_sizes', 'models', 'seeds']")
    with pytest.raises(ConfigError) as error:
        from_dict(ReproduceConfig, {"modls": ["fcnn"]})
    assert str(error.value) == (
        "invalid config: unknown field(s) ['modls'] for ReproduceConfig (did you mean "
        "'models'?); known: ['base', 'checkpoint_seeds', 'hidden_sizes', 'models', 'seeds']")


@pytest.mark.parametrize("assignment, message", [
    ("data.dataset=123",
     "invalid config: data.dataset: must be a string, got 123 (TOML reads an unquoted 123 as an "
     "integer: quote it, '123', as in --set \"data.dataset='123'\")"),
    ("data.dataset=true",
     "invalid config: data.dataset: must be a string, got True (TOML reads an unquoted true as "
     "a bool: quote it, 'true', as in --set \"data.dataset='true'\")"),
    ("data.dataset=inf",
     "invalid config: data.dataset: must be a string, got inf (TOML reads the unquoted value as "
     "a number: quote it as written, as in --set \"data.dataset='...'\")"),
])
def test_a_number_or_bool_for_a_string_field_is_told_to_quote_it(assignment, message):
    assert _message(ExperimentConfig(), [assignment]) == message
    # as the hint says: quoted, it is the string
    assert apply_overrides(ExperimentConfig(), ["data.dataset='123'"]).data.dataset == "123"


@pytest.mark.parametrize("name", ["[v2] digits.npz", "{x}.npz", "[2024] digits.npz"])
def test_a_string_field_takes_text_that_only_looks_like_toml_as_it_is(name, tmp_path,
                                                                       monkeypatch):
    """Round 15 review: a file name starting with [ or { was refused as broken TOML (and told to
    become a list); a string field takes the text as written, as before."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"")
    config = apply_overrides(ExperimentConfig(), [f"data.dataset={name}"])
    assert config.data.dataset == str(tmp_path / name)
    # a list field still says what is wrong with its text
    with pytest.raises(ConfigError, match="is not valid TOML"):
        apply_overrides(ExperimentConfig(), [f"scenarios={name}"])
