"""Round 11 (other data sets): a data set registered in code has no header to read, so the
checks before a sweep saw it as 28x28 MNIST: a model too deep for its 13x13 images stopped the
sweep after the runs before it had trained, and ``--quick``'s subsets were not capped to its
size. Its loader is now called once to learn its shape. Also: a checkpoint whose registered set
is not registered in this process is not "moved or deleted"; a ``Data`` of one's own is
standardised by its own name, not by ``data.dataset``; a NaN in the test split is refused
before training; a study on other data warns of no field the user never set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_helpers import tiny_config, write_npz
from eqpdenet.app import cli, preflight
from eqpdenet.app.config import ExperimentConfig, ReproduceConfig, apply_overrides
from eqpdenet.app.study import base_for_data
from eqpdenet.app.training import Data, Split, resolve_for_data, run_experiment
from eqpdenet.data.datasets import (
    DATASETS,
    DatasetShape,
    ImageDataset,
    dataset_shape,
    register_dataset,
)
from eqpdenet.errors import ConfigError, InputError

NAME = "round11-small"


@pytest.fixture
def small_set(tmp_path):
    """A registered set of 13x13 images (60 training, 20 test, 3 classes), loaded from a file
    by a loader that counts its calls."""
    arrays = write_npz(tmp_path / "small.npz", train=60, test=20, size=13, classes=3)
    calls = []

    def loader(data_dir=None, cache_dir=None, seed=0):
        calls.append((data_dir, cache_dir, seed))
        as_images = lambda a: torch.from_numpy(a).float().div(255)[:, None]  # noqa: E731
        return ImageDataset(NAME, as_images(arrays["x_train"]),
                            torch.from_numpy(arrays["y_train"]), as_images(arrays["x_test"]),
                            torch.from_numpy(arrays["y_test"]), classes=3)

    register_dataset(NAME, loader)
    yield calls
    DATASETS._items.pop(NAME, None)


def test_a_registered_sets_shape_is_its_loaders_and_is_loaded_once(small_set, tmp_path):
    assert dataset_shape(NAME, tmp_path, None) == DatasetShape((1, 13, 13), 60, 20, 3)
    assert dataset_shape(NAME, tmp_path, None) == DatasetShape((1, 13, 13), 60, 20, 3)
    assert small_set == [(tmp_path, None, 0)]  # once per process and folders
    # the built-in sets are still known without loading
    assert dataset_shape("mnist") == DatasetShape((1, 28, 28), 60000, 10000, 10)


def test_a_registered_loader_that_fails_is_refused_by_the_shape():
    def broken(data_dir=None, cache_dir=None, seed=0):
        raise FileNotFoundError("no such folder: /nowhere")

    register_dataset(NAME, broken)
    try:  # round 18: None (unknown shape) let a sweep claim its folder before loading said it
        with pytest.raises(ConfigError, match="raised FileNotFoundError: no such folder: /nowhere$"):
            dataset_shape(NAME)
    finally:
        DATASETS._items.pop(NAME, None)


def test_a_model_too_deep_for_a_registered_sets_images_is_refused_naming_its_run(small_set):
    runs = {"fcnn-seed0": tiny_config(f"data.dataset='{NAME}'"),
            "lifted-seed0": tiny_config(f"data.dataset='{NAME}'", "model.kind='lifted_pde'")}
    with pytest.raises(ConfigError, match=rf"^run lifted-seed0, on the 13x13 images of {NAME}: "
                                          r"invalid config: image_size: 13 pixels is too small"):
        preflight.preflight(runs, None, at_data=True)


def test_quick_subsets_are_capped_to_a_registered_sets_size(small_set):
    config = cli.quick_profile(ReproduceConfig())
    config.base.data.dataset = NAME
    config.base.data.validation = 0
    assert config.base.data.train_subset > 60 and config.base.data.test_subset > 20
    cli._quick_subsets_within_data(config, [])
    assert (config.base.data.train_subset, config.base.data.test_subset) == (0, 0)


def test_a_checkpoints_unregistered_set_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(f"data.dataset='{NAME}'")
    with pytest.raises(ConfigError, match=rf"trained on the data set '{NAME}', which is not "
                                          r"registered in this process .* name its module in "
                                          r"EQPDENET_PLUGINS"):
        cli._checkpoint_data("model.pt", config, None, None, "evaluate")
    config = tiny_config(f"data.dataset='{tmp_path / 'gone.npz'}'")  # a path: moved or deleted
    with pytest.raises(ConfigError, match=r"which is no longer there \(moved or deleted\?\)"):
        cli._checkpoint_data("model.pt", config, None, None, "evaluate")


def _own_data(name: str) -> Data:
    generator = torch.Generator().manual_seed(0)
    images = 0.5 + 0.1 * torch.rand(48, 3, 16, 16, generator=generator)
    labels = torch.arange(48) % 2
    return Data(train=Split(images[:32], labels[:32]), validation=Split(images[:0], labels[:0]),
                test=Split(images[32:], labels[32:]), name=name, classes=2)


def test_own_data_is_standardised_by_its_own_statistics():
    config = apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=8"])
    assert config.data.dataset == "rotmnist" and config.model.standardize == "auto"
    data = _own_data("my-rgb-set")
    resolved = resolve_for_data(config, data)
    pixels = data.train.images.double()
    assert resolved.model.input_mean == pytest.approx(float(pixels.mean()), rel=1e-12)
    assert resolved.model.input_std == pytest.approx(float(pixels.std()), rel=1e-12)
    # data that names itself MNIST (prepare_data's, rotated or not) keeps MNIST's statistics
    for name in ("mnist", "rotmnist", "mnist-rotated"):
        fixed = resolve_for_data(config, _own_data(name))
        assert (fixed.model.input_mean, fixed.model.input_std) == (
            config.model.input_mean, config.model.input_std)


def test_a_nan_in_the_test_split_is_refused_before_training():
    data = _own_data("mine")
    data.test.images[3, 0, 2, 2] = math.nan
    config = tiny_config("train.epochs=50")  # would take long: the error comes first
    with pytest.raises(InputError, match=r"^the test split's images hold 1 non-finite values"):
        run_experiment(config, data, progress=False)


def test_a_study_on_other_data_resets_the_statistics_train_replaces():
    base = ReproduceConfig()
    base.base.data.dataset = "mine.npz"
    base.base.model.input_mean, base.base.model.input_std = 0.0, 1.0  # the prototype's
    resolved = base_for_data(base)
    model = resolved.base.model
    defaults = type(model)()
    assert model.standardize == "train"
    assert (model.input_mean, model.input_std) == (defaults.input_mean, defaults.input_std)
    assert not np.isclose(defaults.input_mean, 0.0)  # the reset is visible
