"""Configuration files: TOML round trips, defaults, errors that name the field."""

from pathlib import Path

import pytest

from eqpdenet import ConfigError, LayerConfig
from eqpdenet.app.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ReproduceConfig,
    apply_overrides,
    build_model,
    from_dict,
    load_toml,
    to_dict,
    to_toml,
)
from eqpdenet.app.files import read_jsonl
from eqpdenet.app.training import fingerprint
from eqpdenet.models import count_parameters

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.parametrize("hidden, eqpdenet, fcnn", [(16, 13033, 13002), (256, 269353, 269322)])
def test_model_config_builds_the_papers_models(hidden, eqpdenet, fcnn):
    assert count_parameters(build_model(ModelConfig(kind="eqpdenet", hidden=hidden))) == eqpdenet
    assert count_parameters(build_model(ModelConfig(kind="fcnn", hidden=hidden))) == fcnn


def test_config_round_trip_through_toml(tmp_path):
    config = ModelConfig(kind="eqpdenet", hidden=64, input_mean=0.13,
                         layer=LayerConfig(invariants=["se2", "scaling"], dt=0.05, T=0.5,
                                           stencil="isotropic", init="heat", init_scale=0.2))
    path = tmp_path / "model.toml"
    path.write_text(to_toml(config))
    assert load_toml(ModelConfig, path) == config
    assert from_dict(ModelConfig, to_dict(config)) == config
    assert config.layer.steps == 10


def test_gaussian_sigma_round_trips_through_toml(tmp_path):
    config = ModelConfig(kind="eqpdenet", hidden=16,
                         layer=LayerConfig(invariants=["se2"], stencil="gaussian", sigma=1.5))
    path = tmp_path / "model.toml"
    path.write_text(to_toml(config))
    assert "sigma = 1.5" in path.read_text()
    assert load_toml(ModelConfig, path) == config
    assert "sigma" not in to_toml(LayerConfig())  # None is left out of TOML
    with pytest.raises(ConfigError, match="layer.sigma"):
        from_dict(LayerConfig, {"stencil": "gaussian"})


def test_new_layer_fields_keep_the_recorded_fingerprint():
    """Fields added since results/paper was recorded, at their defaults, do not change the base
    fingerprint recorded there (so `eqpdenet reproduce` still resumes it)."""
    import json
    from pathlib import Path

    from eqpdenet.app.config import ReproduceConfig
    from eqpdenet.app.training import fingerprint

    results = Path(__file__).resolve().parents[2] / "results" / "paper" / "results.jsonl"
    recorded = {json.loads(line)["base_fingerprint"] for line in results.read_text().splitlines()
                if line.strip()}
    assert recorded == {fingerprint(ReproduceConfig().base)}


def test_new_fields_keep_the_full_benchmark_resumable():
    """The full benchmark's folder (issue 18) resumes: its configuration, read with today's
    fields, has the base fingerprint its runs recorded (a field added to the experiment
    configuration without its LATER_FIELDS entry would change it and refuse the folder)."""
    import json
    from pathlib import Path

    from eqpdenet.app.benchmark import benchmark_fingerprint
    from eqpdenet.app.config import BenchmarkConfig, load_toml

    folder = Path(__file__).resolve().parents[2] / "results" / "benchmark-full"
    recorded = {json.loads(line)["base_fingerprint"]
                for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()}
    assert recorded == {benchmark_fingerprint(load_toml(BenchmarkConfig, folder / "config.toml"))}
    configs = Path(__file__).resolve().parents[2] / "configs" / "benchmark-full.toml"
    assert recorded == {benchmark_fingerprint(load_toml(BenchmarkConfig, configs))}


@pytest.mark.parametrize("folder, recipe", [("benchmark-full", "benchmark-full.toml"),
                                            ("benchmark", "benchmark-cpu.toml")])
def test_every_committed_benchmark_resumes_with_its_recorded_command(folder, recipe):
    """The fingerprints a benchmark accepts (:func:`benchmark_fingerprints`) include the one
    each committed folder recorded, read from its recipe and from its own config.toml, and no
    run of it counts as changed: its recorded command finds 0 runs to go. The reduced benchmark
    predates the lifted model's table (its earlier schema, BENCHMARK_SCHEMAS): it was refused as
    'made with another configuration', naming no field."""
    import json

    from eqpdenet.app.benchmark import benchmark_fingerprints
    from eqpdenet.app.config import BenchmarkConfig, load_toml
    from eqpdenet.app.sweeps import changed_runs

    recorded = {json.loads(line)["base_fingerprint"]
                for line in (RESULTS / folder / "results.jsonl").read_text().splitlines()
                if line.strip()}
    configs = Path(__file__).resolve().parents[2] / "configs"
    for source in (configs / recipe, RESULTS / folder / "config.toml"):
        config = load_toml(BenchmarkConfig, source)
        assert recorded <= set(benchmark_fingerprints(config)), source
        runs = {f"{name}-seed{seed}": config.experiment(name, seed)
                for name in config.models for seed in config.seeds}
        assert changed_runs(runs, RESULTS / folder,
                            base_fingerprint=benchmark_fingerprints(config)) == {}, source


@pytest.mark.parametrize("folder", ["benchmark-full", "benchmark"])
def test_new_fields_leave_every_recorded_benchmark_run_unchanged(folder):
    """Each (entry, seed) of a committed benchmark folder, built from the folder's configuration
    read with today's fields, is the configuration its run recorded
    (:func:`~eqpdenet.app.sweeps.changed_runs`): a new field whose default differs from its
    earlier behaviour where it cannot change the run (``invariant_pde.jet_floor`` of an se2
    model) must not make the recorded runs stale."""
    from eqpdenet.app.config import BenchmarkConfig, load_toml
    from eqpdenet.app.sweeps import changed_runs

    config = load_toml(BenchmarkConfig, RESULTS / folder / "config.toml")
    runs = {f"{name}-seed{seed}": config.experiment(name, seed)
            for name in config.models for seed in config.seeds}
    assert changed_runs(runs, RESULTS / folder) == {}


def test_the_jet_floor_counts_only_for_sim2_models():
    se2 = ExperimentConfig()
    se2.model.kind = "invariant_pde"
    sim2 = apply_overrides(se2, ["model.invariant_pde.group='sim2'"])
    for config in (se2, sim2):
        moved = apply_overrides(config, ["model.invariant_pde.jet_floor=0.5"])
        assert (fingerprint(moved) == fingerprint(config)) == (config is se2)
    with pytest.raises(ConfigError, match="invariant_pde.jet_floor: must be >= 0"):
        apply_overrides(sim2, ["model.invariant_pde.jet_floor=-1e-3"])
    with pytest.raises(ConfigError, match="invariant_pde.jet_floor: must be a finite number"):
        apply_overrides(sim2, ["model.invariant_pde.jet_floor=nan"])


def test_defaults_are_the_papers_layer():
    layer = LayerConfig()
    assert layer.invariants == ["se2", "se2", "scaling", "scaling"]
    assert layer.rhs == "linear" and layer.reduction == "linear"
    assert count_parameters(build_model(ModelConfig(hidden=16, layer=LayerConfig.preset(
        "se2_sim2")))) == 13002 + 2 * 6 + 2 * 5 + 5  # FCNN + two se2 F, two sim2 F, reduction


def test_invalid_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="layer.dt: must be positive"):
        LayerConfig(dt=-0.1)
    with pytest.raises(ConfigError, match="model.kind"):
        ModelConfig(kind="resnet")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['widht'\]"):
        from_dict(ModelConfig, {"widht": 3})
    bad = tmp_path / "bad.toml"
    bad.write_text("hidden = [1, \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(ModelConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(ModelConfig, tmp_path / "missing.toml")


def test_library_default_is_covariant_the_papers_layer_and_the_application_absolute():
    assert LayerConfig().ratio_regularisation == "covariant"
    paper = LayerConfig.paper()
    assert paper.ratio_regularisation == "absolute"
    assert paper == LayerConfig(ratio_regularisation="absolute")  # everything else as before
    assert ModelConfig().layer == paper
    assert ExperimentConfig().model.layer == paper and ReproduceConfig().base.model.layer == paper
    assert LayerConfig.paper(T=2.0).T == 2.0
    with pytest.raises(ConfigError, match="ratio_regularisation: unknown ratio regularisation"):
        LayerConfig(ratio_regularisation="relative")


def test_a_partial_layer_table_completes_from_the_papers_layer_and_presets_apply(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[model.layer]\nT = 2.0\n")
    config = load_toml(ExperimentConfig, path)
    assert config.model.layer == LayerConfig.paper(T=2.0)
    path.write_text('[model.layer]\npreset = "se2_sim2"\ndt = 0.05\n')
    layer = load_toml(ExperimentConfig, path).model.layer
    assert layer == LayerConfig.preset("se2_sim2", dt=0.05)
    assert layer.invariants == ["se2", "se2", "sim2", "sim2"]
    assert layer.ratio_regularisation == "covariant"
    overridden = apply_overrides(ReproduceConfig(), ["base.model.layer.preset=se2_sim2",
                                                     "base.model.layer.T=0.5"])
    assert overridden.base.model.layer == LayerConfig.preset("se2_sim2", T=0.5)
    with pytest.raises(ConfigError, match="unknown layer preset 'sim3'"):
        apply_overrides(ReproduceConfig(), ["base.model.layer.preset=sim3"])
    with pytest.raises(ConfigError, match="unknown field 'preset'"):
        apply_overrides(ReproduceConfig(), ["base.train.preset=se2_sim2"])


def test_the_papers_results_folder_stays_resumable():
    """results/paper records the fingerprint of its configuration; the default configuration,
    now with ratio_regularisation, must have the same one (LATER_FIELDS)."""
    records = read_jsonl(RESULTS / "paper" / "results.jsonl")
    assert {r["base_fingerprint"] for r in records} == {fingerprint(ReproduceConfig().base)}
    stored = from_dict(ExperimentConfig, records[0]["config"])  # written before the field
    assert stored.model.layer.ratio_regularisation == "absolute"
    covariant = ReproduceConfig()
    covariant.base.model.layer.ratio_regularisation = "covariant"
    assert fingerprint(covariant.base) != fingerprint(ReproduceConfig().base)


def test_a_configuration_never_records_a_horizon_that_would_not_run():
    """T = 0.25 with dt = 0.1 would run 2 steps (T = 0.2) while config.toml said 0.25: refused
    where the configuration is read, so no command starts with it."""
    for assignment in ("model.layer.T=0.25", "model.layer.T=0.05", "model.layer.dt=0.3"):
        with pytest.raises(ConfigError, match=r"model.layer.T / model.layer.dt: T = [\d.]+ is (not a whole "
                                              r"multiple of|smaller than) dt"):
            apply_overrides(ExperimentConfig(), [assignment])
    paper = apply_overrides(ExperimentConfig(), ["model.layer.T=2.0"])
    assert paper.model.layer.steps == 20 and ExperimentConfig().model.layer.steps == 10


@pytest.mark.parametrize("cls, fields", [
    ("eqpdenet.models.lifted_pde.LiftedPDEConfig", dict(channels=(8, 16, 24), blocks=(2, 2, 2),
                                                        stage_orientations=(8, 4, 4))),
    ("eqpdenet.models.invariant_pde.InvariantPDEConfig", dict(channels=(12, 24), blocks=(2, 2))),
    ("eqpdenet.models.gcnn.GCNNConfig", dict(channels=(7, 10), kernels=(5, 3), pool_after=(1,))),
    ("eqpdenet.app.config.CurvesConfig", dict(angles=(0.0, 90.0), shifts=range(3))),
    ("eqpdenet.app.config.ExperimentConfig", dict(scenarios=("test", "iso"))),
    ("eqpdenet.app.config.ReproduceConfig", dict(seeds=range(3), hidden_sizes=(16,))),
    ("eqpdenet.pde.layer.LayerConfig", dict(invariants=("se2", "scaling"))),
])
def test_sequences_in_list_fields_are_the_lists_a_file_would_give(cls, fields):
    # A tuple was rejected by some configurations with a message about something else (the
    # lifted model's "needs one entry per entry of lifted_pde.channels" for equal lengths) and
    # kept as a tuple by others (then unequal to the same configuration loaded from a file).
    import importlib

    module, name = cls.rsplit(".", 1)
    config_class = getattr(importlib.import_module(module), name)
    config = config_class(**fields)
    as_lists = config_class(**{key: list(value) for key, value in fields.items()})
    assert config == as_lists
    assert all(type(getattr(config, key)) is list for key in fields)


@pytest.mark.parametrize("cls, field, value, message", [
    ("eqpdenet.models.lifted_pde.LiftedPDEConfig", "channels", 8,
     "lifted_pde.channels: must be a list, got int 8"),
    ("eqpdenet.models.gcnn.GCNNConfig", "channels", "abc", "gcnn.channels: must be a list, got str"),
    ("eqpdenet.app.config.BenchmarkConfig", "seeds", 3, "seeds: must be a list, got int 3"),
])
def test_a_list_field_given_something_else_names_the_field(cls, field, value, message):
    import importlib
    import re

    module, name = cls.rsplit(".", 1)
    with pytest.raises(ConfigError, match=re.escape(message)):
        getattr(importlib.import_module(module), name)(**{field: value})


def test_a_relative_data_set_path_is_recorded_as_the_path_it_names(tmp_path, monkeypatch):
    """A checkpoint's configuration finds its data from any folder: a relative path that exists
    becomes absolute (through a constructor, an override and a file alike); a registered name
    stays a name even where a folder of that name lies here; a path that does not exist stays
    as given, for the loader's error to name."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.savez("digits.npz", x_train=np.zeros((2, 8, 8)), y_train=np.zeros(2, int),
             x_test=np.zeros((2, 8, 8)), y_test=np.zeros(2, int))
    (tmp_path / "mnist").mkdir()
    expected = str(tmp_path.resolve() / "digits.npz")
    assert DataConfig(dataset="digits.npz").dataset == expected
    assert apply_overrides(ExperimentConfig(), ["data.dataset='digits.npz'"]).data.dataset == expected
    (tmp_path / "run.toml").write_text('[data]\ndataset = "digits.npz"\n')
    assert load_toml(ExperimentConfig, tmp_path / "run.toml").data.dataset == expected
    assert DataConfig(dataset="mnist").dataset == "mnist"
    assert DataConfig(dataset="elsewhere.npz").dataset == "elsewhere.npz"
    monkeypatch.chdir(tmp_path / "mnist")  # the recorded path still names the file
    assert DataConfig(dataset=expected).dataset == expected


def test_keys_and_strings_that_toml_cannot_take_bare_round_trip():
    """A benchmark entry named ``fcnn.v2`` was written as a bare key (read back as a table
    ``fcnn``), a path with a newline or control character as a string TOML refuses: the
    recorded config.toml could not be read back."""
    import tomllib

    from eqpdenet.app.config import BenchmarkConfig, from_dict, to_toml

    config = BenchmarkConfig()
    config.models = {"fcnn.v2": ["model.kind='fcnn'"], "with space": ["model.kind='cnn'"]}
    config.base.data.dataset = '/tmp/a\nb\x01\x7f"c\\d.npz'
    back = from_dict(BenchmarkConfig, tomllib.loads(to_toml(config)))
    assert back.models == config.models and back.base.data.dataset == config.base.data.dataset


def test_a_benchmark_entry_that_cannot_name_a_run_file_is_refused_before_any_write(tmp_path):
    from eqpdenet.app.benchmark import benchmark
    from eqpdenet.app.config import BenchmarkConfig

    config = BenchmarkConfig()
    config.models = {"with space": ["model.kind='fcnn'"]}
    with pytest.raises(ValueError, match="run key 'with space-seed0' cannot name a file"):
        benchmark(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_nested_table_names_its_field_by_the_path_the_user_wrote():
    """The nested configurations name their fields from themselves (``layer.sigma``, as a
    library user of LayerConfig writes it); from a file or ``--set`` the error names the path
    given (``model.layer.sigma``, ``base.model.lifted_pde.stage_orientations``)."""
    from eqpdenet.app.config import ReproduceConfig

    cases = [(ExperimentConfig, ["model.layer.sigma=-1"], "invalid config: model.layer.sigma: "),
             (ExperimentConfig, ["model.lifted_pde.stage_orientations=[8, 3]"],
              "invalid config: model.lifted_pde.stage_orientations: "),
             (ReproduceConfig, ["base.model.layer.sigma=-1"],
              "invalid config: base.model.layer.sigma: "),
             (ExperimentConfig, ["model.layer.T=0.25"],
              "invalid config: model.layer.T / model.layer.dt: ")]
    for cls, overrides, start in cases:
        with pytest.raises(ValueError) as info:
            apply_overrides(cls(), overrides)
        assert str(info.value).startswith(start), str(info.value)
