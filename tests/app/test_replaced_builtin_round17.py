"""Round 17 (the siblings of a built-in name replaced by a plugin): ``register_dataset("mnist",
loader, replace=True)`` makes the name the user's data set (docs/data.md), yet some places went
by the name alone and treated it as the built-in one: training loaded the built-in ROTMNIST for a
plugin's ``rotmnist``, ``DataConfig`` refused ``rotated`` on it, the sweeps compared its
recorded ``source`` with ROTMNIST's files, the study kept MNIST's ``standardize`` stage and
counted ROTMNIST's 12,000 digits, the reports named it MNIST (ROTMNIST: set against the paper's
numbers) and called its images digits, and the preflight counted MNIST's 60,000 training images
for a set of 60. Each now follows ``datasets.is_built_in`` / ``mnist_family``, as a registered
name of one's own (``r17own``) is treated; the built-in names behave as before.

Everything is registered in this process for the test only (``helpers.registered``)."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.app.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ReproduceConfig,
    apply_overrides,
    fields_without_effect,
)
from eqpdenet.data.datasets import DATASETS
from eqpdenet.errors import ConfigError
from helpers import banded_loader, registered

SIZE, CLASSES = 8, 3


_own = banded_loader("r17own", SIZE, CLASSES)  # 60 + 30 images of 8x8, 3 classes


@pytest.fixture
def no_builtin_rotmnist(monkeypatch):
    """Loading the built-in ROTMNIST fails the test (it is what a plugin's 'rotmnist' replaced;
    generating it would take minutes)."""
    def refuse(**_):
        raise AssertionError("the built-in ROTMNIST was loaded")
    monkeypatch.setattr("eqpdenet.app.training.load_rotmnist", refuse)


# ----------------------------------------------------------------------------- training


def test_prepare_data_loads_a_plugins_rotmnist_not_the_built_in_one(no_builtin_rotmnist):
    from eqpdenet.app.training import prepare_data

    with registered(DATASETS, "rotmnist", _own, replace=True):
        data = prepare_data(DataConfig(dataset="rotmnist", validation=10))
    own = _own()
    assert (data.name, data.classes) == ("r17own", CLASSES)
    assert torch.equal(data.train.images, own.train_images[:50])
    assert torch.equal(data.validation.images, own.train_images[50:])
    assert torch.equal(data.test.images, own.test_images)


def test_a_plugins_rotmnist_may_be_rotated_about_its_centre_of_mass(no_builtin_rotmnist):
    """``rotated`` and ``rotation_centre = 'mass'`` apply to the user's set under the name as to
    any other; the built-in ROTMNIST still refuses ``rotated``."""
    from eqpdenet.app.training import prepare_data
    from eqpdenet.data.datasets import load_dataset

    with pytest.raises(ConfigError) as refused:
        DataConfig(dataset="rotmnist", rotated=True)
    assert str(refused.value) == ("invalid config: data.rotated: ROTMNIST is rotated already; "
                                  "rotated applies to another data set (e.g. 'mnist')")
    with registered(DATASETS, "rotmnist", _own, replace=True):
        config = DataConfig(dataset="rotmnist", rotated=True, rotation_centre="mass",
                            rotmnist_seed=3)
        data = prepare_data(config)
        with registered(DATASETS, "r17own", _own):
            expected = load_dataset("r17own", seed=3, rotated=True, rotation_centre="mass")
    assert data.name == "r17own-rotated"
    assert torch.equal(data.train.images, expected.train_images)
    assert torch.equal(data.test.images, expected.test_images)


def test_mass_centre_on_an_unrotated_plugins_rotmnist_says_the_name_is_replaced():
    with registered(DATASETS, "rotmnist", _own, replace=True), \
            pytest.raises(ConfigError) as refused:
        DataConfig(dataset="rotmnist", rotation_centre="mass")
    assert str(refused.value) == (
        "invalid config: data.rotation_centre: 'mass' applies to rotated data: data.dataset = "
        "'rotmnist' or data.rotated = true ('rotmnist' is registered anew here, by a plugin: that "
        "data set is not ROTMNIST)")
    # the built-in ROTMNIST turns its digits about their centre of mass
    assert DataConfig(dataset="rotmnist", rotation_centre="mass").rotation_centre == "mass"


def test_data_source_has_no_effect_on_a_plugins_rotmnist():
    """Its loader is not given ``data.source``: the field is said to have no effect, as it is
    for any other set; on the built-in ROTMNIST it chooses the files."""
    config = apply_overrides(ExperimentConfig(), ["data.source='official'"])
    assert fields_without_effect(config) == []
    with registered(DATASETS, "rotmnist", _own, replace=True):
        assert fields_without_effect(config) == [
            "data.source = 'official' has no effect with data.dataset = 'rotmnist': only "
            "ROTMNIST has a source to choose"]


# ----------------------------------------------------------------------------- sweeps


def test_the_sweeps_compare_no_rotmnist_source_for_a_plugins_rotmnist(tmp_path):
    """A plugin's record may say ``source`` of its own (its ``info``); it is no ROTMNIST source
    to compare with the official files of the data folder (an empty one here: 'generated')."""
    from eqpdenet.app.sweeps import _source_differences

    run = apply_overrides(ExperimentConfig(), ["data.validation=0"])
    record = {"dataset": {"source": "official"}}
    assert _source_differences(record, run, tmp_path, {}) == [
        "data.source 'auto': the official ROTMNIST recorded, the generated one now"]
    with registered(DATASETS, "rotmnist", _own, replace=True):
        assert _source_differences(record, run, tmp_path, {}) == []


# ----------------------------------------------------------------------------- study


def test_the_study_treats_a_plugins_mnist_as_data_of_ones_own():
    from eqpdenet.app.study import (
        OWN_DATA_STANDARDIZE,
        STAGES,
        _dataset_name,
        base_for_data,
        stages_for_data,
    )

    data = DataConfig(dataset="mnist")
    base = ReproduceConfig(base=apply_overrides(ExperimentConfig(), ["data.dataset='mnist'"]))
    assert stages_for_data(STAGES, data) == list(STAGES)
    assert base_for_data(base).base.model.standardize == "auto"
    assert _dataset_name(data) == "MNIST"
    with registered(DATASETS, "mnist", _own, replace=True):
        stages = stages_for_data(STAGES, data)
        resolved = base_for_data(base).base.model
        name = _dataset_name(data)
    assert OWN_DATA_STANDARDIZE in stages and len(stages) == len(STAGES)
    defaults = ModelConfig()  # the fields 'train' replaces, left at their defaults
    assert (resolved.standardize, resolved.input_mean, resolved.input_std) == (
        "train", defaults.input_mean, defaults.input_std)
    assert name == "mnist"


def test_the_study_protocol_counts_no_rotmnist_digits_for_a_plugins_rotmnist():
    from eqpdenet.app.study import PROTOTYPE, _protocol, base_for_data

    config = ReproduceConfig(base=PROTOTYPE, seeds=[0], hidden_sizes=[16])
    assert _protocol(base_for_data(config), 0.25).startswith(
        "Greedy search on the validation split (train 10,000 / validate 2,000 of ROTMNIST's "
        "12,000 training digits; the test set is never used).")
    with registered(DATASETS, "rotmnist", _own, replace=True):
        text = _protocol(base_for_data(config), 0.25)
    assert text.startswith("Greedy search on the validation split (validate on the last 2,000 "
                           "of rotmnist's training images, train on the others; the test set "
                           "is never used).")
    assert text.endswith(" The input starts standardised with the training split's own pixel "
                         "mean and std (`model.standardize = 'train'`).")


# ----------------------------------------------------------------------------- reports


def _record(dataset: str) -> dict:
    return {"config": {"data": {"dataset": dataset, "rotated": False,
                                "rotation_centre": "frame"}}}


def test_the_reports_name_a_plugins_set_as_the_configuration_does():
    from eqpdenet.app.benchmark import _image_word
    from eqpdenet.app.report import dataset_name, on_paper_data

    mnist, rotmnist = [_record("mnist")], [_record("rotmnist")]
    assert (dataset_name(mnist), _image_word(mnist)) == ("MNIST", "digits")
    assert (dataset_name(rotmnist), on_paper_data(rotmnist)) == ("ROTMNIST", True)
    with registered(DATASETS, "mnist", _own, replace=True):
        # a benchmark's table said "the whole test set of MNIST" of the plugin's images
        assert (dataset_name(mnist), _image_word(mnist)) == ("mnist", "images")
    with registered(DATASETS, "rotmnist", _own, replace=True):
        # set against the paper's ROTMNIST numbers, and its data set left unnamed
        assert (dataset_name(rotmnist), on_paper_data(rotmnist)) == ("rotmnist", False)
        assert _image_word(rotmnist) == "images"


# ----------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("name", ["mnist", "rotmnist"])
def test_the_preflight_counts_no_fixed_images_for_a_plugins_set(name):
    """A plugin's set under a built-in name is of any size, as one of one's own (``r17own``):
    unknown before it is loaded, and a ``train_subset`` is not capped at the built-in count."""
    from eqpdenet.app.preflight import FIXED_TRAINING_IMAGES, training_images

    def images(dataset: str, *overrides: str) -> int | None:
        return training_images(apply_overrides(ExperimentConfig(), [
            f"data.dataset='{dataset}'", "data.validation=40", *overrides]))

    fixed = FIXED_TRAINING_IMAGES[name]
    assert (images(name), images(name, f"data.train_subset={fixed}")) == (fixed - 40,
                                                                           fixed - 40)
    with registered(DATASETS, name, _own, replace=True), registered(DATASETS, "r17own", _own):
        assert images(name) is None and images("r17own") is None
        assert images(name, f"data.train_subset={fixed}") == fixed
        assert images("r17own", f"data.train_subset={fixed}") == fixed
