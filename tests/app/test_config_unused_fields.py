"""Fields a model kind does not use, set away from their default, are warned about (one line per
field, naming the field and the kind), as ``train.pde_lr_scale`` was alone: ``train --model fcnn
--layer se2_sim2``, ``--model cnn --hidden 64``, ``--model fcnn --set model.head=invariant`` and
``--model cnn --set model.layer.T=2.0`` trained with no word. Defaults are never named."""

import warnings

import pytest
import torch

from eqpdenet.app.config import (
    BENCHMARK_MODELS,
    BenchmarkConfig,
    ExperimentConfig,
    apply_overrides,
    fields_without_effect,
    from_dict,
    to_dict,
)
from eqpdenet.app.training import Split, train_model


def lines(*overrides: str) -> list[str]:
    return fields_without_effect(apply_overrides(ExperimentConfig(), list(overrides)))


def test_each_unused_field_set_away_from_its_default_is_one_line():
    assert lines("model.kind='fcnn'", "model.layer.preset=se2_sim2") == [
        "model.layer.invariants = ['se2', 'se2', 'sim2', 'sim2'] has no effect on "
        "model.kind = 'fcnn', which does not use it",
        "model.layer.ratio_regularisation = 'covariant' has no effect on model.kind = 'fcnn', "
        "which does not use it"]
    assert lines("model.kind='cnn'", "model.hidden=64") == [
        "model.hidden = 64 has no effect on model.kind = 'cnn', which does not use it"]
    assert lines("model.kind='fcnn'", "model.head='invariant'") == [
        "model.head = 'invariant' has no effect on model.kind = 'fcnn', which does not use it"]
    assert lines("model.kind='cnn'", "model.layer.T=2.0") == [
        "model.layer.T = 2.0 has no effect on model.kind = 'cnn', which does not use it"]
    assert lines("model.kind='eqpdenet'", "model.cnn.channels=8", "model.gcnn.center=true") == [
        "model.cnn.channels = 8 has no effect on model.kind = 'eqpdenet', which does not use it",
        "model.gcnn.center = True has no effect on model.kind = 'eqpdenet', which does not use it"]
    assert lines("model.kind='gcnn'", "train.pde_lr_scale=1.0") == [
        "train.pde_lr_scale = 1 has no effect on model.kind = 'gcnn': only the paper's PDE layer "
        "(model.kind = 'eqpdenet') trains at its own rate"]


def test_fields_the_kind_uses_and_defaults_are_never_named():
    assert lines("model.kind='eqpdenet'", "model.hidden=64", "model.layer.T=2.0",
                 "model.head='invariant'", "train.pde_lr_scale=1.0") == []
    assert lines("model.kind='cnn'", "model.cnn.channels=8", "model.input_mean=0.5",
                 "model.standardize='train'") == []
    for kind in ("fcnn", "cnn", "gcnn", "invariant_pde", "lifted_pde"):
        assert lines(f"model.kind='{kind}'") == [], kind
        # the hidden size the kind was given explicitly at its default is no setting either
        assert lines(f"model.kind='{kind}'", "model.hidden=256", "model.layer.preset=paper") == []
    # what a recorded configuration reads back as (TOML and back) is the same
    config = apply_overrides(ExperimentConfig(), ["model.kind='lifted_pde'"])
    assert fields_without_effect(from_dict(ExperimentConfig, to_dict(config))) == []
    # the benchmark's own entries set nothing their kind leaves unused
    benchmark = BenchmarkConfig()
    for name in BENCHMARK_MODELS:
        assert fields_without_effect(benchmark.experiment(name, 0)) == [], name


def tiny_data() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"train": Split(torch.rand(32, 1, 28, 28, generator=generator), torch.arange(32) % 10),
            "test": Split(torch.rand(8, 1, 28, 28, generator=generator), torch.arange(8) % 10),
            "validation": Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))}


@pytest.mark.parametrize("overrides, expected", [
    (["model.kind='fcnn'", "model.hidden=8", "model.layer.T=2.0"],
     ["model.layer.T = 2.0 has no effect on model.kind = 'fcnn', which does not use it"]),
    (["model.kind='fcnn'", "model.hidden=8", "train.pde_lr_scale=0.5"],
     ["train.pde_lr_scale = 0.5 has no effect on model.kind = 'fcnn': only the paper's PDE "
      "layer (model.kind = 'eqpdenet') trains at its own rate"]),
    (["model.kind='fcnn'", "model.hidden=8"], []),
])
def test_training_warns_with_each_line(overrides, expected):
    config = apply_overrides(ExperimentConfig(), [*overrides, "train.epochs=1", "train.batch_size=16"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_model(config, tiny_data(), progress=False)
    assert [str(w.message) for w in caught if "has no effect" in str(w.message)] == expected
    assert all(w.category is RuntimeWarning for w in caught if "has no effect" in str(w.message))
