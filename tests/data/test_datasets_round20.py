"""Round 20 (outside probe r20/a4: data sets of one's own).

F2: a dict of API splits whose test split holds a label above every training label (its class
count comes from the training and validation labels) was refused with a message that named no
split, no image of it and not where the class count came from; so were the siblings (a negative
training label of a dict, a label above a ``Data``'s declared classes, a label above a given
model's logits). F4: an IDX folder holding both ``X`` and ``X.gz`` read the ``.gz`` silently,
even where the raw file beside it differed. F1 (sweeps): a sweep's per-run line printed scenario
accuracies that count the images on which the model's PDE blew up as errors without saying so.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import tiny_config
from eqpdenet.analysis.predictions import check_classes
from eqpdenet.app.config import build_model
from eqpdenet.app.sweeps import run_sweep
from eqpdenet.app.training import (
    Data,
    Split,
    non_finite_notice,
    resolve_for_data,
    run_experiment,
    train_model,
)
from eqpdenet.data.datasets import IDX_NAMES, data_fingerprint, dataset_shape, load_dataset
from eqpdenet.errors import DataFileError, InputError


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _config():
    return tiny_config("data.validation=0", "model.standardize='train'")


# ----------------------------------------------------------------------------- F2: class labels

DICT_SOURCE = ("the model's classes come from the training and validation labels (their largest "
               "+ 1: a dict of splits declares no class count, and the test split does not "
               "shape the model); ")


def test_a_test_label_above_every_training_label_of_a_dict_names_the_split_and_the_source():
    # training labels 0 ... 2 give 3 classes; the test split holds 0 ... 4 (image 3: label 3)
    data = {"train": Split(_images(12), torch.arange(12) % 3),
            "test": Split(_images(10, 1), torch.arange(10) % 5)}
    expected = ("labels[3] = 3 is not a class of the model, which returns 3 logits per image "
                "(classes 0 ... 2): the test split's image 3; " + DICT_SOURCE +
                "pass a Data with classes = 5 (every split's labels), or give the training split "
                "every class")
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        run_experiment(_config(), data, progress=False)


def test_a_validation_label_of_a_data_above_its_declared_classes_names_the_split():
    data = Data(train=Split(_images(6), torch.tensor([0, 1, 0, 1, 0, 1])),
                validation=Split(_images(4, 1), torch.tensor([0, 1, 2, 1])),
                test=Split(_images(4, 2), torch.tensor([0, 1, 0, 1])), name="mine", classes=2)
    expected = ("labels[2] = 2 is not a class of the model, which returns 2 logits per image "
                "(classes 0 ... 1): the validation split's image 2; the model's classes are the "
                "data's declared count (Data.classes = 2); the labels and Data.classes must agree")
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        resolve_for_data(_config(), data)


def test_a_negative_training_label_of_a_dict_names_the_split_and_the_numbering():
    data = {"train": Split(_images(4), torch.tensor([0, 1, -1, 1])),
            "test": Split(_images(2, 1), torch.tensor([0, 1]))}
    expected = ("labels[2] = -1 is not a class of the model, which returns 2 logits per image "
                "(classes 0 ... 1): the training split's image 2; " + DICT_SOURCE +
                "number the classes 0 ... K - 1")
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        resolve_for_data(_config(), data)


def test_a_label_above_a_given_models_logits_names_the_split_and_the_model():
    config = _config()
    train = Split(_images(8), torch.arange(8) % 2)
    model = build_model(resolve_for_data(config, {"train": train}).model)  # 2 logits
    data = {"train": Split(train.images, torch.tensor([0, 1, 0, 1, 0, 1, 2, 1]))}
    expected = ("labels[6] = 2 is not a class of the model, which returns 2 logits per image "
                "(classes 0 ... 1): the training split's image 6; the model's classes are the "
                "logits it returns; the labels and they must agree")
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        train_model(config, data, model=model, progress=False)


def test_check_classes_without_a_split_says_what_it_always_said():
    with pytest.raises(InputError, match=re.escape(
            "labels[1] = 7 is not a class of the model, which returns 3 logits per image "
            "(classes 0 ... 2); the labels and the model's classes must agree") + "$"):
        check_classes(torch.tensor([0, 7, 1]), 3)


# ----------------------------------------------------------------------------- F4: IDX folders


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    return header + b"".join(struct.pack(">I", size) for size in array.shape) + array.tobytes()


ARRAYS = {"train_images": np.arange(6 * 16, dtype=np.uint8).reshape(6, 4, 4),
          "train_labels": np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8),
          "test_images": np.arange(3 * 16, dtype=np.uint8).reshape(3, 4, 4),
          "test_labels": np.array([0, 1, 2], dtype=np.uint8)}


def _folder(path: Path, raw_labels: np.ndarray | None = None) -> Path:
    """The four files gzipped, and a raw training-labels file beside its .gz where given."""
    path.mkdir()
    for key, name in IDX_NAMES.items():
        (path / f"{name}.gz").write_bytes(gzip.compress(_idx(ARRAYS[key]), mtime=0))
    if raw_labels is not None:
        (path / IDX_NAMES["train_labels"]).write_bytes(_idx(raw_labels))
    return path


def test_an_idx_folder_whose_raw_and_gz_files_differ_is_refused_naming_both(tmp_path):
    folder = _folder(tmp_path / "both", raw_labels=np.array([2, 1, 0, 2, 1, 0], dtype=np.uint8))
    name = "train-labels-idx1-ubyte"
    expected = (f"{folder}: holds both {name}.gz and {name}, and their contents differ "
                f"(compared uncompressed): one of them is stale; remove the one not meant (a "
                f"folder may hold both only where they agree)")
    for call in (load_dataset, dataset_shape, data_fingerprint):
        with pytest.raises(DataFileError, match=f"^{re.escape(expected)}$"):
            call(str(folder))


def test_an_idx_folder_whose_raw_and_gz_files_agree_reads_the_gz_as_before(tmp_path):
    gz_only = _folder(tmp_path / "gz")
    both = _folder(tmp_path / "both", raw_labels=ARRAYS["train_labels"])
    assert data_fingerprint(both) == data_fingerprint(gz_only)  # the .gz hashed, as before
    loaded = load_dataset(str(both))
    assert loaded.train_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert dataset_shape(str(both)) == dataset_shape(str(gz_only))


# ----------------------------------------------------------------------------- F1: sweep lines


def test_the_non_finite_notice_says_the_count_and_that_they_are_errors():
    assert non_finite_notice("iso", 3, 60) == ("iso: the model's PDE blew up (non-finite state) "
                                               "on 3 of the 60 test images; they are counted as "
                                               "errors")
    assert non_finite_notice("test", [1, 3], 5000) == (
        "test: the model's PDE blew up (non-finite state) on 1-3 (per instance) of the 5,000 "
        "test images; they are counted as errors")
    assert non_finite_notice("sca", [2, 2]) == ("sca: the model's PDE blew up (non-finite "
                                                "state) on 2 test images; they are counted as "
                                                "errors")


def test_a_sweeps_run_line_says_the_images_counted_as_errors(tmp_path):
    path = tmp_path / "d.npz"
    labels = np.arange(12) % 2
    np.savez(path, x_train=np.zeros((12, 8, 8), np.uint8), y_train=labels,
             x_test=np.zeros((4, 8, 8), np.uint8), y_test=labels[:4])
    config = tiny_config(f"data.dataset='{path}'", "data.validation=0", "scenarios=['test', 'iso']")

    def runner(config, data, progress=True, checkpoint=None, **options):
        return {"model": "fcnn", "hidden": 4, "seed": 0, "status": "ok", "params": 1,
                "accuracy": {"test": 50.0, "iso": 25.0}, "train_seconds": 0.0,
                "eval_seconds": 0.0, "non_finite_images": {"iso": 2}}

    lines = []
    run_sweep("s", {"r0": config}, tmp_path / "sweep", base_fingerprint="x", runner=runner,
              echo=lines.append, progress=False)
    key = " " * 22 + "r0"
    assert lines[1:] == [f"[1/1] {key}: test 50.00  iso 25.00  (0 s train, 0 s eval)",
                         f"      {key}: warning: iso: the model's PDE blew up (non-finite "
                         f"state) on 2 test images; they are counted as errors"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the small splits' own warnings
def test_a_data_without_a_class_count_takes_its_training_and_validation_labels():
    # classes=None read `name in data`, which a Data (no __contains__) answered with a raw
    # KeyError: 0 from __getitem__
    data = Data(train=Split(_images(6), torch.tensor([0, 1, 2, 0, 1, 2])),
                validation=Split(_images(3, 1), torch.tensor([0, 3, 1])),
                test=Split(_images(3, 2), torch.tensor([0, 1, 2])), name="mine", classes=None)
    assert resolve_for_data(_config(), data).model.classes == 4
