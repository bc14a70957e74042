"""Extension points (round 8): a checkpoint whose configuration does not rebuild its model is
refused when it is saved (a family's own options, a layer's T, the classes), the report of a
benchmark folder naming a plugin's model says so, and an InvariantSet object in a configuration
is named by its field path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from eqpdenet import EqPdeNet, PDELayer
from eqpdenet.app import benchmark as benchmark_module
from eqpdenet.app import report as report_module
from eqpdenet.app.checkpoints import rebuild_problem
from eqpdenet.app.cli import main
from eqpdenet.app.config import BenchmarkConfig, ExperimentConfig, apply_overrides, build_model, to_toml
from eqpdenet.app.report import Report
from eqpdenet.app.runfolder import write_marker
from eqpdenet.app.training import load_checkpoint, save_checkpoint
from eqpdenet.errors import CheckpointError, ConfigError
from eqpdenet.models import MODELS, check_model_input
from eqpdenet.models.inputs import family_options
from eqpdenet.pde.invariants import INVARIANT_SETS, InvariantSet, get_invariant_set
from eqpdenet.pde.layer import LayerConfig


@dataclasses.dataclass
class _R8Options:
    width: int = 4
    activation: str = "relu"  # changes no parameter's shape


class _R8Net(nn.Module):
    """A user's family whose own options no ModelConfig records."""

    min_image_size = 1

    def __init__(self, r8net=None, image_size=28, in_channels=1, classes=10):
        super().__init__()
        self.options = family_options(r8net, _R8Options, "r8net")
        self.image_size, self.in_channels = image_size, in_channels
        self.conv = nn.Conv2d(in_channels, self.options.width, 3, padding=1)
        self.act = nn.Tanh() if self.options.activation == "tanh" else nn.ReLU()
        self.head = nn.Linear(self.options.width, classes)

    def forward(self, images):
        x = check_model_input(self, images).images
        return self.head(self.act(self.conv(x)).mean(dim=(-2, -1)))


@pytest.fixture
def r8net(monkeypatch):
    """The family registered for one test only (MODELS as it was afterwards)."""
    monkeypatch.setitem(MODELS._items, "r8net", _R8Net)
    return apply_overrides(ExperimentConfig(), ["model.kind='r8net'", "model.image_size=8"])


def _probe(config) -> torch.Tensor:
    """The probe input rebuild_problem documents: 2 images, seed 0, uniform in [0, 1)."""
    size, channels = config.model.image_size, config.model.in_channels
    return torch.rand(2, channels, size, size, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0)).float()


def test_a_family_with_options_its_configuration_does_not_record_is_not_saved(r8net, tmp_path):
    torch.manual_seed(0)
    model = _R8Net({"activation": "tanh"}, image_size=8)
    model.train()
    rng = torch.random.get_rng_state()
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(tmp_path / "m.pt", model, r8net)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the rebuild drew nothing of it
    assert model.training and model.conv.training  # its mode as it was
    default = _R8Net(image_size=8)  # what load_checkpoint would build, with the same weights
    default.load_state_dict(model.state_dict())
    model.eval()
    default.eval()
    with torch.no_grad():
        difference = float((model(_probe(r8net)) - default(_probe(r8net))).abs().max())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"not saving {tmp_path / 'm.pt'}: its configuration does not "
                              f"describe the model")
    assert f"on a probe input the outputs differ by {difference:.3g}: an option the " \
           f"configuration does not record, such as a family's own options" in message
    assert "must take its options from ModelConfig's fields or keep its defaults" in message
    assert not (tmp_path / "m.pt").exists()


def test_a_family_at_its_defaults_saves_and_reloads_the_same_model(r8net, tmp_path):
    torch.manual_seed(0)
    model = _R8Net(image_size=8)
    model.train()
    model.conv.eval()  # a submodule's own mode is kept too
    rng = torch.random.get_rng_state()
    save_checkpoint(tmp_path / "m.pt", model, r8net)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training and model.head.training and not model.conv.training
    loaded, _, _ = load_checkpoint(tmp_path / "m.pt")
    loaded.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(_probe(r8net)), model(_probe(r8net)))


class _NoisyNet(_R8Net):
    """A family that draws noise in evaluation mode too."""

    def forward(self, images):
        return super().forward(images) + torch.randn(len(images), 1)


def test_a_family_that_draws_in_evaluation_mode_is_compared_on_the_same_draws(monkeypatch,
                                                                              tmp_path):
    monkeypatch.setitem(MODELS._items, "noisy", _NoisyNet)
    config = apply_overrides(ExperimentConfig(), ["model.kind='noisy'", "model.image_size=8"])
    torch.manual_seed(0)
    model = _NoisyNet(image_size=8)
    rng = torch.random.get_rng_state()
    save_checkpoint(tmp_path / "m.pt", model, config)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_a_layer_built_with_another_T_than_the_configuration_is_not_saved(tmp_path):
    torch.manual_seed(0)
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8"])
    statistics = {"input_mean": config.model.input_mean, "input_std": config.model.input_std}
    model = EqPdeNet(hidden=8, layer=PDELayer.paper(T=2.0), **statistics)  # 20 steps; config 10
    with pytest.raises(CheckpointError, match=r"outputs differ by 0\.0\d+: .*such as the layer's T"):
        save_checkpoint(tmp_path / "m.pt", model, config)
    assert not (tmp_path / "m.pt").exists()
    torch.manual_seed(0)
    model = EqPdeNet(hidden=8, layer=PDELayer.paper(T=1.0), **statistics)  # the configured one
    save_checkpoint(tmp_path / "m.pt", model, config)
    assert load_checkpoint(tmp_path / "m.pt")[0].pde_layer.pdes[0].steps == 10


def test_the_classes_and_the_type_are_checked_when_saving_not_when_loading(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    three = build_model(dataclasses.replace(config.model, classes=3))
    with pytest.raises(CheckpointError, match=r"model.classes is 10 in the configuration but 3 in "
                                              r"the weights"):
        save_checkpoint(tmp_path / "m.pt", three, config)
    other = apply_overrides(ExperimentConfig(), ["model.kind='cnn'"])
    with pytest.raises(CheckpointError, match=r"model.kind 'cnn' builds CNN, not the model's "
                                              r"type, FCNN"):
        save_checkpoint(tmp_path / "m.pt", build_model(config.model), other)
    assert not (tmp_path / "m.pt").exists()


def test_a_wrapped_model_is_saved_as_the_model_it_wraps(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    model = build_model(config.model)
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        save_checkpoint(tmp_path / "m.pt", wrapped, config)
        assert list(torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]) \
            == list(model.state_dict())  # no "module." or "_orig_mod." prefix
        loaded, _, _ = load_checkpoint(tmp_path / "m.pt")
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                     model.state_dict().values(), strict=True))


def test_a_model_that_fails_on_the_probe_as_its_rebuild_does_is_saved(tmp_path):
    """An untrained InvariantPDENet in evaluation mode blows up on any input (its batch norms'
    statistics are the initial ones): model and rebuild fail alike, the structure decides."""
    config = apply_overrides(ExperimentConfig(), ["model.kind='invariant_pde'"])
    model = build_model(config.model)
    model.eval()
    with pytest.raises(FloatingPointError), torch.no_grad():
        model(_probe(config))
    save_checkpoint(tmp_path / "m.pt", model, config)
    assert load_checkpoint(tmp_path / "m.pt")[1] == config
    assert not model.training  # its mode as it was


def test_a_double_model_is_compared_in_its_own_dtype(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4"])
    model = build_model(config.model).double()
    assert rebuild_problem(model, config.model) is None
    save_checkpoint(tmp_path / "m.pt", model, config)


# ----------------------------------------------------------------------------- report's warning


def _benchmark_folder(folder, monkeypatch, write):
    """A benchmark folder whose config.toml names the plugin family r8net (registered while it
    is written only), and ``write_benchmark_report`` replaced by one that writes a table."""
    with monkeypatch.context() as registered:
        registered.setitem(MODELS._items, "r8net", _R8Net)
        base = apply_overrides(ExperimentConfig(), ["model.kind='r8net'"])
        config = BenchmarkConfig(base=base, models={"mine": []}, seeds=[0])
        folder.mkdir()
        (folder / "config.toml").write_text(to_toml(config))
    write_marker(folder, "benchmark")

    def written(out_dir):
        (out_dir / "table.md").write_text("| table |\n")
        return Report(out_dir / "table.md", out_dir / "robustness.png", 1,
                      benchmark_module.missing_benchmark_runs(out_dir, [{"key": "mine-seed0"}]))

    monkeypatch.setattr(benchmark_module, write, written)


def test_report_names_why_a_benchmark_configuration_cannot_be_read(tmp_path, monkeypatch,
                                                                    capsys):
    folder = tmp_path / "b"
    _benchmark_folder(folder, monkeypatch, "write_benchmark_report")
    assert benchmark_module.described_benchmark_runs(folder) is None
    problem = benchmark_module.benchmark_config_problem(folder)
    assert problem.startswith(f"{folder / 'config.toml'} cannot be read as a benchmark "
                              f"configuration: invalid config: base.model.kind: unknown model "
                              f"'r8net'")
    assert "registered by a plugin? this process has not imported it" in problem
    assert main(["report", str(folder)]) == 0
    err = capsys.readouterr().err
    assert err == f"eqpdenet: warning: {problem}: whether every run of the sweep is here " \
                  f"cannot be told\n"
    assert "reproduce" not in err and "is missing" not in err
    with monkeypatch.context() as registered:  # with the plugin imported: the runs are told
        registered.setitem(MODELS._items, "r8net", _R8Net)
        assert benchmark_module.benchmark_config_problem(folder) is None
        assert benchmark_module.described_benchmark_runs(folder).keys == ["mine-seed0"]


def test_report_of_a_reproduce_folder_names_why_too(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.toml").write_text('[base.model]\nkind = "r8net"\n')

    def written(results_dir):
        (results_dir / "table.md").write_text("| table |\n")
        return Report(results_dir / "table.md", results_dir / "summary.png", 1, None)

    monkeypatch.setattr(report_module, "write_report", written)
    assert main(["report", str(folder)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"eqpdenet: warning: {folder / 'config.toml'} cannot be read as a "
                          f"reproduce configuration: invalid config: base.model.kind: unknown "
                          f"model 'r8net'")
    assert "registered by a plugin?" in err
    (folder / "config.toml").unlink()
    assert main(["report", str(folder)]) == 0
    assert capsys.readouterr().err == (f"eqpdenet: warning: {folder / 'config.toml'} is missing: "
                                       f"whether every run of the sweep is here cannot be told\n")


# ----------------------------------------------------------------------------- TOML


def _unregistered_set():
    se2 = get_invariant_set("se2")
    return InvariantSet("r8_unregistered", se2.group, se2.order, se2.invariants)


def test_an_invariant_set_object_is_named_by_its_field_path_and_the_fix():
    config = ExperimentConfig()
    config.model.layer = LayerConfig(invariants=["se2", _unregistered_set()])
    with pytest.raises(ConfigError) as caught:
        to_toml(config)
    message = str(caught.value)
    assert message.startswith("cannot write model.layer.invariants[1] to TOML: it is an "
                              "InvariantSet object ('r8_unregistered')")
    assert "compile_invariants(..., register=True)" in message and "register_invariant_set" in message
    assert "give its name, 'r8_unregistered'" in message
    registered = ExperimentConfig()
    registered.model.layer = LayerConfig(invariants=[INVARIANT_SETS.get("se2")])
    with pytest.raises(ConfigError, match=r"model.layer.invariants\[0\] .* give its registered "
                                          r"name, 'se2'$"):
        to_toml(registered)
    benchmark = BenchmarkConfig(base=config, models={"a": []}, seeds=[0])
    with pytest.raises(ConfigError, match=r"^cannot write base.model.layer.invariants\[1\] to TOML"):
        to_toml(benchmark)


def test_other_values_toml_cannot_hold_are_named_by_their_field_path():
    with pytest.raises(ConfigError, match=r"^cannot write a.b\[1\] to TOML: it is a set, which TOML "
                                          r"cannot hold"):
        to_toml({"a": {"b": [1, {2}]}})
    with pytest.raises(ConfigError, match=r"^cannot write x\[0\] to TOML: it is the non-finite "
                                          r"float nan"):
        to_toml({"x": [float("nan")]})
    with pytest.raises(ConfigError, match=r"^cannot write x\[0\] to TOML: TOML has no null"):
        to_toml({"x": [None]})


def test_save_refuses_a_configuration_it_cannot_record(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.hidden=8"])
    config.model.layer = LayerConfig(invariants=["se2", _unregistered_set()])
    model = build_model(config.model)
    with pytest.raises(CheckpointError, match=r"not saving .*m.pt: its configuration cannot be "
                                              r"recorded: cannot write model.layer.invariants\[1\]"):
        save_checkpoint(tmp_path / "m.pt", model, config)
    assert not (tmp_path / "m.pt").exists()
