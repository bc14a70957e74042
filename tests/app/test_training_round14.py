"""Round 14 (probes r14/p5 and r14/p7): training on data given through the API and on awkward
data. Labels of any integer dtype, one-class and gapped label sets given as splits, training
statistics a checkpoint must read back, weight decay that amplifies, the advice for sparse
images, logits of the wrong shape from any model, and a checkpoint naming a plugin's model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from eqpdenet.app import training
from eqpdenet.app.benchmark import unregistered_hint as hint_from_benchmark
from eqpdenet.app.config import ExperimentConfig, TrainConfig, from_dict, to_dict
from eqpdenet.app.plugins import PLUGIN_HINT, unregistered_hint
from eqpdenet.app.training import (
    Split,
    _check_first_logits,
    _divergence_remedy,
    load_checkpoint,
    resolve_for_data,
    save_checkpoint,
    train_model,
)
from eqpdenet.errors import CheckpointError, ConfigError, InputError, InputTypeError
from eqpdenet.models.perceptron import Standardize


def _config(**train) -> ExperimentConfig:
    """fcnn; standardised by the training split ('auto' took MNIST's for data naming no set)."""
    return from_dict(ExperimentConfig, {"model": {"kind": "fcnn", "hidden": 4,
                                                  "standardize": "train"},
                                        "train": {"epochs": 1, "batch_size": 8, **train},
                                        "scenarios": ["test"]})


def _images(n: int, size: int = 4) -> torch.Tensor:
    return torch.linspace(0, 1, n * size * size).reshape(n, 1, size, size)


def _data(labels, test_labels=(0, 1), images=None) -> dict:
    labels = torch.tensor(labels)
    images = _images(len(labels)) if images is None else images
    tests = torch.tensor(test_labels)
    return {"train": Split(images, labels),
            "test": Split(_images(len(tests)), tests)}


# ----------------------------------------------------------------------------- F2: label dtypes


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_labels_of_any_dtype_become_int64(dtype):
    split = Split(_images(3), torch.tensor([0, 2, 1], dtype=dtype))
    assert split.labels.dtype == torch.int64
    assert split.labels.tolist() == [0, 2, 1]


def test_int32_labels_train():
    data = _data([0, 1, 2, 0, 1, 2, 0, 1])
    data["train"] = Split(data["train"].images, data["train"].labels.to(torch.int32))
    _, history = train_model(_config(), data, progress=False)
    assert len(history) == 1


def test_images_without_a_channel_or_pixel_are_refused():
    with pytest.raises(InputError, match=r"^a split's images must have at least one channel and "
                                         r"one pixel, got shape \(2, 0, 4, 4\) \(N, C, H, W\)$"):
        Split(torch.zeros(2, 0, 4, 4), torch.tensor([0, 1]))


def test_float_labels_stay_refused():
    with pytest.raises(InputTypeError, match="must be integer classes, got torch.float32"):
        Split(_images(2), torch.tensor([0.0, 1.0]))


# ----------------------------------------------------------------------------- F3: classes


def test_one_class_given_as_splits_is_refused():
    with pytest.raises(InputError, match=r"^the training split of the data given holds class 0 "
                                         r"only, and a classifier needs two \(is the data sorted "
                                         r"by class\? shuffle it\)$"):
        resolve_for_data(_config(), _data([0, 0, 0, 0]))


def test_one_class_with_a_given_model_is_refused_before_training():
    with pytest.raises(InputError, match="holds class 1 only"):
        train_model(_config(), _data([1, 1, 1]), model=nn.Sequential(nn.Flatten(),
                                                                     nn.Linear(16, 2)),
                    progress=False)


def test_missing_classes_of_a_dict_are_warned_about_once():
    data = _data([3, 7, 3, 7], test_labels=(3, 7))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = resolve_for_data(_config(), data)
        resolve_for_data(config, data)  # run_experiment resolves, then train_model again
    lines = [str(w.message) for w in caught if "lacks class" in str(w.message)]
    assert config.model.classes == 8
    assert lines == ["the training split of the data given lacks class(es) 0, 1, 2, 4, 5, 6 of "
                     "its 8: the model will not learn them (is the data sorted by class? shuffle "
                     "it; without Data.classes the model's classes are the largest label + 1: "
                     "number the classes 0 ... K - 1)"]


def test_a_one_class_test_split_given_is_warned_about():
    with pytest.warns(RuntimeWarning, match=r"^the test split of the data given holds class 0 "
                                            r"only: accuracies measure that class alone"):
        resolve_for_data(_config(), _data([0, 1, 0, 1], test_labels=(0, 0)))


def test_a_negative_label_given_is_refused_before_the_model_is_shaped():
    with pytest.raises(InputError, match=r"^labels\[0\] = -1 is not a class of the model"):
        resolve_for_data(_config(), _data([-1, 1, 0, 1]))


# ----------------------------------------------------------------------------- F1: statistics


def test_nearly_constant_images_fall_back_to_std_one_and_the_config_reads_back():
    images = torch.zeros(4, 1, 4, 4)
    images[0, 0, 0, 0] = 1e-7  # of 64 pixels: sample std 1e-7 / 8, below MIN_INPUT_STD
    data = _data([0, 1, 0, 1], images=images)
    with pytest.warns(RuntimeWarning, match=r"^the training images of the data given are nearly "
                                            r"constant \(pixel std 1\.25e-08, below the 1e-06 "
                                            r"model\.input_std takes\): standardised with "
                                            r"input_std = 1"):
        config = resolve_for_data(_config(), data)
    assert config.model.input_std == 1.0
    assert config.model.input_mean == pytest.approx(1e-7 / 64, rel=1e-6)
    assert from_dict(ExperimentConfig, to_dict(config)) == config  # what load_checkpoint does


def test_constant_images_fall_back_silently_as_before():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = resolve_for_data(_config(), _data([0, 1, 0, 1], images=torch.zeros(4, 1, 4, 4)))
    assert (config.model.input_mean, config.model.input_std) == (0.0, 1.0)


def test_pixels_far_beyond_the_bounds_are_refused_naming_the_data():
    images = torch.full((4, 1, 4, 4), 2e6)
    images[0] = 0.0  # mean 1.5e6; sample std sqrt((16 (1.5e6)^2 + 48 (0.5e6)^2) / 63) = 8.73e5
    with pytest.raises(InputError, match=r"^the training images of the data given have pixel "
                                         r"mean 1\.5e\+06 and std 8\.73e\+05, beyond what "
                                         r"model\.input_mean and input_std take"):
        resolve_for_data(_config(), _data([0, 1, 0, 1], images=images))


def test_a_data_class_count_the_config_refuses_is_refused_before_training():
    data = training.Data(train=Split(_images(2), torch.tensor([0, 1])),
                         validation=Split(_images(0), torch.tensor([], dtype=torch.long)),
                         test=Split(_images(2), torch.tensor([0, 1])), name="mine", classes=0)
    with pytest.raises(InputError, match=r"^labels\[0\] = 0 is not a class of the model"):
        resolve_for_data(_config(), data)


# ----------------------------------------------------------------------------- F4: weight decay


@pytest.mark.parametrize("train, message", [
    ({"weight_decay": 1000.0},
     "train.weight_decay: 1000 with train.lr = 0.001 gives lr * weight_decay = 1, not below 1: "
     "AdamW multiplies each weight by 1 - lr * weight_decay every step"),
    ({"weight_decay": 1e6},
     "train.weight_decay: 1e+06 with train.lr = 0.001 gives lr * weight_decay = 1e+03"),
    ({"weight_decay": 100.0, "pde_lr_scale": 10.0},
     "train.weight_decay: 100 with the PDE layer's rate train.lr * train.pde_lr_scale = 0.01 "
     "gives lr * weight_decay = 1, not below 1"),
    ({"optimizer": "sgd", "lr": 1.0, "weight_decay": 3.8},
     "train.weight_decay: 3.8 with train.lr = 1 gives lr * weight_decay = 3.8, not below 3.8: "
     "SGD with momentum 0.9"),
])
def test_a_decay_that_amplifies_is_refused(train, message):
    # the PDE layer's rate is checked with the model kind, which has the layer (round 17)
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig(train=TrainConfig(**train))
    assert str(caught.value).startswith(f"invalid config: {message}")


@pytest.mark.parametrize("train", [{"weight_decay": 999.0}, {"weight_decay": 0.2, "lr": 2e-3},
                                   {"optimizer": "sgd", "lr": 1.0, "weight_decay": 3.7},
                                   {"weight_decay": 500.0, "pde_lr_scale": 1.0}])
def test_a_decay_that_shrinks_is_accepted(train):
    assert TrainConfig(**train).weight_decay == train["weight_decay"]


def test_the_divergence_remedy_names_weight_decay_where_it_is_on():
    assert _divergence_remedy(TrainConfig()) == (
        "training diverged (a smaller train.lr, or train.grad_clip, may keep it finite)")
    assert _divergence_remedy(TrainConfig(weight_decay=0.5)) == (
        "training diverged (a smaller train.lr, or train.grad_clip, or a smaller "
        "train.weight_decay (now 0.5, at train.lr = 0.001), may keep it finite)")


# ----------------------------------------------------------------------------- F5: the advice


def test_sparse_images_with_their_own_statistics_are_not_told_to_use_them():
    standardize = Standardize(8.51e-7, 5.78e-5)
    with pytest.warns(Warning) as caught:
        standardize.check_range(0.0, 0.003922)
    message = str(caught[0].message)
    assert "input_std = 5.78e-05 is small: the statistics of nearly constant or sparse images" \
        in message
    assert "statistics set by hand (model.standardize = 'fixed')" in message


def test_statistics_that_fit_no_image_in_0_1_keep_the_advice():
    standardize = Standardize(30.0, 1.0)
    assert standardize.explain(0.0, 1.0).endswith(
        "(the images lie in [0, 1] but input_mean/input_std do not describe them: "
        "model.standardize = 'train' takes the training split's).")


# ----------------------------------------------------------------------------- p7 F2: logits


class _Returns(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(16, 3)

    def forward(self, images):
        logits = self.fc(images.flatten(1))
        if self.kind == "spatial":
            return logits[:, :, None, None]
        if self.kind == "tuple":
            return logits, images
        if self.kind == "flat":
            return logits[:, 0]
        return logits[:, :2]  # too few


@pytest.mark.parametrize("kind, message", [
    ("spatial", r"^model 'fcnn' returned logits of shape \(6, 3, 1, 1\) for a batch of 6 image"),
    ("tuple", r"^model 'fcnn' returned a tuple of 2 items for a batch of 6 image\(s\), not a"),
    ("flat", r"^model 'fcnn' returned logits of shape \(6,\) for a batch of 6 image\(s\)"),
    ("few", r"^model 'fcnn' returns 2 logits per image, but the data given has 3 classes"),
])
def test_logits_of_a_config_built_model_are_checked(monkeypatch, kind, message):
    monkeypatch.setattr(training, "build_model", lambda config: _Returns(kind))
    with pytest.raises((InputError, InputTypeError), match=message):
        train_model(_config(), _data([0, 1, 2, 0, 1, 2]), progress=False)


def test_logits_of_a_given_model_are_checked():
    with pytest.raises(InputError, match=r"^the model returned logits of shape \(6,\)"):
        train_model(_config(), _data([0, 1, 2, 0, 1, 2]), model=_Returns("flat"),
                    progress=False)


def test_first_batch_check_counts_the_whole_batch():
    data = _data([0, 1, 2])
    _check_first_logits(torch.zeros(5, 3), 5, data, ("train",))  # 3 images and 2 blurred copies
    with pytest.raises(InputError, match=r"shape \(3, 3\) for a batch of 5 image"):
        _check_first_logits(torch.zeros(3, 3), 5, data, ("train",))


# ----------------------------------------------------------------------------- p7 F6: plugins


def test_a_checkpoint_naming_an_unknown_model_gives_the_plugin_hint(tmp_path):
    config = resolve_for_data(_config(), _data([0, 1, 0, 1]))
    model = training.build_model(config.model)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["kind"] = "r14_plugin_net"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the saved configuration names what this process does "
                              f"not know: invalid config: model.kind: unknown model "
                              f"'r14_plugin_net'; available: ")
    assert message.endswith(PLUGIN_HINT)


def test_the_hint_is_for_registered_names_only():
    assert hint_from_benchmark is unregistered_hint  # report's and the checkpoints' one helper
    unknown = ConfigError("invalid config: scenarios[1]: unknown scenario 'myrot'; available: iso")
    assert unregistered_hint(unknown) == f"{unknown} {PLUGIN_HINT}"
    field = ConfigError("--set model.x: unknown field 'x'; known: ['a']")
    assert unregistered_hint(field) == str(field)


def test_a_sweep_configuration_naming_an_unknown_scenario_gives_the_hint_once(tmp_path):
    from eqpdenet.app.benchmark import benchmark_config_problem
    from eqpdenet.app.config import BenchmarkConfig, load_toml

    path = tmp_path / "config.toml"
    path.write_text('[base]\nscenarios = ["test", "r14_plugin_rot"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_toml(BenchmarkConfig, path)
    assert str(caught.value).startswith(f"config file {path}: invalid config: base.scenarios[1]: "
                                        f"unknown scenario 'r14_plugin_rot'; available: ")
    assert str(caught.value).endswith(PLUGIN_HINT)
    assert benchmark_config_problem(tmp_path).count("registered by a plugin?") == 1


def test_a_training_split_checked_once_is_checked_again_with_other_splits():
    """Round 14 (review): a flag on the training split, set by a first call, hid the warnings
    of a later call with another test split."""
    config = from_dict(ExperimentConfig, {"model": {"kind": "fcnn"}})
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.rand(40, 1, 8, 8, generator=generator), torch.arange(40) % 10)
    good = Split(torch.rand(20, 1, 8, 8, generator=generator), torch.arange(20) % 10)
    one_class = Split(torch.rand(20, 1, 8, 8, generator=generator),
                      torch.zeros(20, dtype=torch.long))
    resolve_for_data(config, {"train": train, "test": good})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_for_data(config, {"train": train, "test": one_class})
    assert any("the test split of the data given holds class 0 only" in str(w.message)
               for w in caught)
