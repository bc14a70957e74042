"""Splits a user makes are checked where they are made, and their values before training.

Before: ``train_model`` on ``Split(images, labels[:, None])`` failed in ``torch.cat`` ("Tensors
must have same number of dimensions"), float labels in ``cross_entropy``, a label of 10 for 10
classes or of -1 as "Target 10 is out of bounds", 3-D images as "not enough values to unpack",
and fewer labels than images trained on the labelled images only, without a word.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from data_helpers import tiny_config, tiny_data
from eqpdenet.app.config import build_model
from eqpdenet.app.training import Split, resolve_for_data, train_model
from eqpdenet.errors import InputError, InputTypeError

IMAGES = torch.rand(6, 1, 12, 12)
LABELS = torch.arange(6) % 3


@pytest.mark.parametrize(("images", "labels", "error", "message"), [
    (IMAGES, LABELS[:, None], InputError, r"labels must have shape \(6,\), one class per image, "
                                          r"got \(6, 1\)"),
    (IMAGES, LABELS[:5], InputError, r"labels must have shape \(6,\).*got \(5,\)"),
    (IMAGES, LABELS.float(), InputTypeError, "labels must be integer classes, got torch.float32"),
    (IMAGES, LABELS.bool(), InputTypeError, "labels must be integer classes, got torch.bool"),
    (IMAGES[:, 0], LABELS, InputError, r"images must be \(N, C, H, W\), got shape \(6, 12, 12\)"),
    ((IMAGES * 255).to(torch.uint8), LABELS, InputTypeError,
     r"images must be floating point in \[0, 1\], got torch.uint8 .*images.float\(\) / 255"),
    (IMAGES.numpy(), LABELS, InputTypeError, "must be tensors, got ndarray and Tensor"),
])
def test_a_split_of_the_wrong_shape_or_kind_is_refused_where_it_is_made(images, labels, error,
                                                                        message):
    with pytest.raises(error, match=message):
        Split(images, labels)


def test_an_empty_split_is_a_split():  # data.validation = 0 makes one
    assert len(Split(IMAGES[:0], LABELS[:0])) == 0


def _train(data, model=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_model(tiny_config(), data, model=model, progress=False)


@pytest.mark.parametrize(("split", "shift", "index", "value"), [
    ("train", 1, 9, 10), ("train", -1, 0, -1), ("validation", 1, 5, 10)])
def test_labels_outside_the_classes_are_refused_before_training(split, shift, index, value):
    data = tiny_data()
    setattr(data, split, Split(data[split].images, data[split].labels + shift))
    with pytest.raises(InputError, match=rf"labels\[{index}\] = {value} is not a class of the "
                                         r"model, which returns 10 logits"):
        _train(data)


def test_labels_outside_a_given_models_classes_are_refused_at_its_first_batch():
    data = tiny_data()
    model = build_model(resolve_for_data(tiny_config(), data).model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data.train = Split(data.train.images, data.train.labels + 1)
    with pytest.raises(InputError, match=r"labels\[9\] = 10 is not a class of the model"):
        _train(data, model)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # no step


def test_non_finite_training_images_are_refused_before_training():
    data = tiny_data()
    data.train.images[3, 0, 2, 2] = float("inf")
    with pytest.raises(InputError, match="the train split's images hold 1 non-finite values"):
        _train(data)


def test_a_validation_split_of_another_image_shape_is_refused():
    data = tiny_data()
    data.validation = Split(data.validation.images[..., :10, :10], data.validation.labels)
    with pytest.raises(InputError, match=r"the validation split's images are \(1, 10, 10\) "
                                         r"\(C, H, W\), the training split's \(1, 12, 12\)"):
        _train(data)


def test_well_formed_splits_train_as_before():
    model, history = _train(tiny_data())
    assert len(history) == 1 and 0 <= history[0]["train_accuracy"] <= 100
