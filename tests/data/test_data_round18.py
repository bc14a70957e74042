"""Round 18 (outside probe r18/a6, F2 and F4): ``dataset_shape``, the check before a command
claims its folder, refuses what loading refuses, in loading's words.

F2: it took a registered set whose loader raised (and a path with no data set behind it, a
damaged archive) for an unknown shape, so a study wrote its folder and ``study.json`` before
loading said why, and then refused the corrected command. F4: it read a ``.npz`` label member
without a .npy header as bytes, and said "labels must be a 1-D integer array, got |S11 ()"
where loading says the member is not a NumPy array."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from eqpdenet.data import datasets
from eqpdenet.data.datasets import DATASETS, DatasetShape, dataset_shape, load_dataset
from eqpdenet.errors import ConfigError, DataFileError
from helpers import banded_loader, registered

NAME = "r18-data"
ARRAYS = {"x_train": np.arange(12 * 36, dtype=np.uint8).reshape(12, 6, 6),
          "y_train": np.arange(12) % 3,
          "x_test": np.arange(6 * 36, dtype=np.uint8).reshape(6, 6, 6),
          "y_test": np.arange(6) % 3}
SHAPE = DatasetShape((1, 6, 6), 12, 6, 3)


def _raising(data_dir=None, cache_dir=None, seed=0):
    raise RuntimeError("disk on fire")


def _tuple(data_dir=None, cache_dir=None, seed=0):
    return (1, 2)


def _both_refuse(spec: str, error_type: type[Exception]) -> str:
    """The message with which ``dataset_shape`` and ``load_dataset`` both refuse ``spec``: the
    same error type and text."""
    with pytest.raises(error_type) as shaped:
        dataset_shape(spec)
    with pytest.raises(error_type) as loaded:
        load_dataset(spec)
    assert type(shaped.value) is type(loaded.value)
    assert str(shaped.value) == str(loaded.value)
    return str(shaped.value)


def _npz_with(path, raw: dict[str, bytes]):
    """A .npz file of :data:`ARRAYS` whose members ``raw`` names hold those bytes instead."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in ARRAYS.items():
            if key in raw:
                archive.writestr(f"{key}.npy", raw[key])
            else:
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue())
    return path


# ----------------------------------------------------------------------------- F2

def test_a_registered_loaders_error_is_raised_by_the_shape_naming_the_loader():
    with registered(DATASETS, NAME, _raising):
        message = _both_refuse(NAME, ConfigError)
    assert message == (f"data set '{NAME}': its loader (_raising, module {__name__}) raised "
                       f"RuntimeError: disk on fire")


def test_a_loader_that_returns_no_image_dataset_is_refused_by_the_shape():
    with registered(DATASETS, NAME, _tuple):
        message = _both_refuse(NAME, ConfigError)
    assert message == (f"data set '{NAME}': its loader returned a tuple of 2 items, not an "
                       f"ImageDataset (name, train_images, train_labels, test_images, "
                       f"test_labels, classes)")


def test_a_refused_loader_is_not_kept_and_its_fixed_one_gives_the_shape():
    with registered(DATASETS, NAME, _raising), pytest.raises(ConfigError):
        dataset_shape(NAME)
    with registered(DATASETS, NAME, banded_loader(NAME, size=9)):
        assert dataset_shape(NAME) == DatasetShape((1, 9, 9), 60, 30, 3)


def test_a_path_with_no_data_set_behind_it_is_refused_by_the_shape(tmp_path):
    missing = str(tmp_path / "nothere.npz")
    assert _both_refuse(missing, ConfigError) == (
        f"unknown data set '{missing}': not a registered name ({', '.join(DATASETS.names())}) "
        f"nor an existing .npz file or IDX folder")
    other = tmp_path / "notes.txt"
    other.write_text("not data", encoding="utf-8")
    assert _both_refuse(str(other), ConfigError) == (
        f"data set '{other}': a file must be a NumPy .npz archive with x_train, y_train, "
        f"x_test, y_test (or give a folder of IDX files)")


def test_an_archive_the_headers_cannot_be_read_from_gets_loadings_refusal(tmp_path):
    path = tmp_path / "three.npz"
    np.savez(path, **{key: ARRAYS[key] for key in ("x_train", "y_train", "x_test")})
    assert _both_refuse(str(path), DataFileError) == (
        f"{path}: missing array(s) ['y_test']; a data set file holds x_train, y_train, x_test, "
        f"y_test")
    good = tmp_path / "good.npz"
    np.savez(good, **ARRAYS)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])  # a zip archive without its directory
    assert _both_refuse(str(cut), DataFileError) == (
        f"{cut}: not a readable .npz file (BadZipFile: File is not a zip file)")


def test_data_the_headers_cannot_read_but_loading_can_give_the_loaded_shape(tmp_path,
                                                                             monkeypatch):
    path = tmp_path / "extra.npz"
    np.savez(path, **ARRAYS, x_val=ARRAYS["x_test"])

    def unreadable(path):
        raise ValueError("a header this reader does not know")

    monkeypatch.setattr(datasets, "_npz_shape", unreadable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused x_val is said when the run loads it, once
        assert dataset_shape(str(path)) == SHAPE


# ----------------------------------------------------------------------------- F4

@pytest.mark.parametrize("key", ["y_train", "y_test", "x_train", "x_test"])
def test_a_member_without_a_npy_header_gets_one_message_on_both_paths(tmp_path, key):
    path = _npz_with(tmp_path / "raw.npz", {key: b"hello world"})
    assert _both_refuse(str(path), DataFileError) == (
        f"{path}: {key} is not a NumPy array (its member holds no .npy header)")
