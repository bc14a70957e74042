"""Configuration files: TOML round trips, defaults, errors that name the field."""

import pytest

from eqpdenet import ConfigError, LayerConfig
from eqpdenet.app.config import ModelConfig, build_model, from_dict, load_toml, to_dict, to_toml
from eqpdenet.models import count_parameters


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
    assert "sigma" not in to_toml(ModelConfig())  # None is left out of TOML
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


def test_defaults_are_the_papers_layer():
    layer = LayerConfig()
    assert layer.invariants == ["se2", "se2", "scaling", "scaling"]
    assert layer.rhs == "linear" and layer.reduction == "linear"


def test_invalid_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="layer.dt: must be positive"):
        LayerConfig(dt=-0.1)
    with pytest.raises(ConfigError, match="model.kind"):
        ModelConfig(kind="cnn")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['widht'\]"):
        from_dict(ModelConfig, {"widht": 3})
    bad = tmp_path / "bad.toml"
    bad.write_text("hidden = [1, \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(ModelConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(ModelConfig, tmp_path / "missing.toml")
