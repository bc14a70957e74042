"""The committed benchmark configurations load, and every entry's model builds within its limits."""

from pathlib import Path

import pytest

from eqpdenet import count_parameters
from eqpdenet.app.config import BenchmarkConfig, build_model, load_toml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))

#: The issue's cap for the models compared at equal size (the G-CNN and the deep PDE models).
MAX_PARAMETERS = {"gcnn": 30_000, "invariant-pde": 30_000, "lifted": 30_000,
                  "lifted-multiscale": 30_000}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_benchmark_configs_build_every_model(path):
    if any(name == "gcnn" for name in load_toml(BenchmarkConfig, path).models):
        pytest.importorskip("e2cnn")
    config = load_toml(BenchmarkConfig, path)
    for name in config.models:
        experiment = config.experiment(name, config.seeds[0])  # a bad override raises here
        model = build_model(experiment.model)
        if name in MAX_PARAMETERS:
            assert count_parameters(model) <= MAX_PARAMETERS[name], name


def test_full_benchmark_is_the_issues_protocol():
    config = load_toml(BenchmarkConfig, CONFIGS[0].parent / "benchmark-full.toml")
    assert config.seeds == [0, 1, 2] and config.checkpoint_seeds == [0]
    assert config.base.scenarios == ["test", "iso", "sca", "rot", "shift"]
    assert config.base.data.test_subset == 10_000 and config.curves.images == 2_000
