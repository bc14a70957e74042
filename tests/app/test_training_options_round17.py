"""Round 17 (an outside probe of the training options): a blur-consistency weight beyond float32
was accepted and its inf loss reported as a divergence that a smaller lr would cure; the weight
decay's bound at the PDE layer's rate refused models without a PDE layer; select_on_validation
with data lacking a validation split asked for data.validation > 0, which was set."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import Split, train_model
from eqpdenet.errors import ConfigError


def test_a_blur_weight_beyond_float32_is_refused():
    config = apply_overrides(ExperimentConfig(), ["train.blur_consistency.weight=1e30"])
    assert config.train.blur_consistency.weight == 1e30
    with pytest.raises(ConfigError) as error:
        apply_overrides(ExperimentConfig(), ["train.blur_consistency.weight=1e39"])
    assert str(error.value) == ("invalid config: train.blur_consistency.weight: must be at most "
                                "1e30 (the penalty's weight in a float32 loss), got 1e+39")


def test_the_pde_layers_decay_bound_applies_to_models_with_a_pde_layer():
    recipe = ["train.lr=0.1", "train.pde_lr_scale=20", "train.weight_decay=0.6"]
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", *recipe])
    assert config.train.weight_decay == 0.6  # fcnn trains every parameter at lr: 0.06
    with pytest.raises(ConfigError) as error:
        apply_overrides(ExperimentConfig(), ["model.kind='eqpdenet'", *recipe])
    assert str(error.value).startswith(
        "invalid config: train.weight_decay: 0.6 with the PDE layer's rate train.lr * "
        "train.pde_lr_scale = 2 gives lr * weight_decay = 1.2, not below 1")
    with pytest.raises(ConfigError):  # the train section alone still bounds the rate lr
        apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "train.lr=0.1",
                                             "train.weight_decay=10"])


def test_select_on_validation_names_the_missing_split_of_the_data_given():
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.hidden=4", "train.epochs=1", "data.validation=50",
        "train.select_on_validation=true"])
    images = torch.rand(8, 1, 28, 28)
    data = {"train": Split(images, torch.arange(8) % 2), "test": Split(images, torch.arange(8) % 2)}
    with pytest.raises(ConfigError) as error:
        train_model(config, data, progress=False)
    assert str(error.value) == (
        "invalid config: train.select_on_validation: the data given hold no validation split "
        "(data['validation'] is missing), though data.validation = 50: pass one, or let "
        "prepare_data split it")
