"""Round 19 (an outside probe of the training options):

* ``train_model`` runs the checks of building its configuration again: a field set after the
  configuration was built skipped them, and a negative ``grad_clip`` reversed every gradient
  (the loss rose from 0.7 to 153 in five steps, recorded as an ordinary run); ``epochs = 0``,
  ``batch_size = 0`` or ``weight_average = 1`` raised raw errors.
* The PDE layer's rate ``train.lr * train.pde_lr_scale`` is checked only for a kind that has a
  PDE layer's group: an fcnn at ``lr = 1e-29`` (in range) was refused for it.
"""

from __future__ import annotations

import pytest
import torch

from eqpdenet.app.config import ExperimentConfig, TrainConfig, apply_overrides
from eqpdenet.app.training import Split, train_model
from eqpdenet.errors import ConfigError


def _data() -> dict:
    images = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 2
    return {"train": Split(images[:30], labels[:30]),
            "validation": Split(images[30:], labels[30:])}


@pytest.mark.parametrize("field, value, message", [
    ("grad_clip", -1.0, "train.grad_clip: must be >= 0, got -1.0"),
    ("epochs", 0, "train.epochs: must be >= 1, got 0"),
    ("batch_size", 0, "train.batch_size: must be >= 1, got 0"),
    ("weight_average", 1.0, "train.weight_average: 1.0 is not below 1 (a decay of 1 would "
                            "never move the average)"),
    ("lr", -1.0, "train.lr: must be positive, got -1.0"),
])
def test_a_training_field_set_after_the_config_was_built_is_checked(field, value, message):
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                  "train.epochs=1", "data.validation=10"])
    setattr(config.train, field, value)
    with pytest.raises(ConfigError) as caught:
        train_model(config, _data(), progress=False)
    assert str(caught.value) == f"invalid config: {message}"


def test_the_checks_across_sections_run_again_too():
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                  "train.epochs=1"])
    config.train.select_on_validation = True  # without data.validation
    with pytest.raises(ConfigError, match="train.select_on_validation: needs data.validation"):
        train_model(config, _data(), progress=False)


def test_a_valid_config_trains_as_before():
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                  "train.epochs=2", "data.validation=10",
                                                  "train.grad_clip=1.0"])
    _, history = train_model(config, _data(), progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_the_pde_rate_is_checked_only_where_a_pde_layer_has_it():
    # an fcnn has no PDE layer's group: its rate is lr alone, in range at 1e-29
    fcnn = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "train.lr=1e-29"])
    assert fcnn.train.lr == 1e-29
    assert TrainConfig(lr=1e29, optimizer="sgd", pde_lr_scale=100.0).lr == 1e29
    # the paper's model steps its PDE layer at lr * pde_lr_scale: 1e-31 is out of range
    with pytest.raises(ConfigError) as caught:
        apply_overrides(ExperimentConfig(), ["model.kind='eqpdenet'", "train.lr=1e-29"])
    assert str(caught.value) == (
        "invalid config: train.pde_lr_scale: the PDE layer's rate train.lr * "
        "train.pde_lr_scale = 1e-31 is outside [1e-30, 1e+30] (float32 steps would round to "
        "nothing or overflow)")
    # lr alone out of range is refused for every kind, naming train.lr
    with pytest.raises(ConfigError, match=r"train.lr: 1e-31 is outside \[1e-30, 1e\+30\]"):
        TrainConfig(lr=1e-31)
