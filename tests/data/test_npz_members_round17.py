"""Round 17 (a review of the .npz header checks): a member without a .npy header reached the
image checks as bytes (raw AttributeError, "a bug in eqpdenet?"), and a header declaring a
negative dimension passed the new size check and the shape scan (raw TypeError in
dataset_shape). Both are now a DataFileError naming the file and the array."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from eqpdenet.data.datasets import dataset_shape, load_dataset
from eqpdenet.errors import DataFileError


def _npz(path, replace: dict[str, bytes]) -> None:
    """A valid 3-class data file with the members of ``replace`` (name -> raw bytes) instead."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (12, 6, 6), dtype=np.uint8),
              "y_train": np.arange(12) % 3,
              "x_test": rng.integers(0, 256, (6, 6, 6), dtype=np.uint8),
              "y_test": np.arange(6) % 3}
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            if key in replace:
                archive.writestr(f"{key}.npy", replace[key])
            else:
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue())


def _header(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def test_a_member_without_a_npy_header_is_named(tmp_path):
    path = tmp_path / "raw.npz"
    _npz(path, {"x_train": b"just some bytes, no array"})
    for load in (dataset_shape, load_dataset):  # round 18: dataset_shape was None, then
        with pytest.raises(DataFileError) as error:  # the sweep claimed its folder
            load(str(path))
        assert "x_train is not a NumPy array (its member holds no .npy header)" in str(error.value)


@pytest.mark.parametrize("load", [load_dataset, dataset_shape])
def test_a_negative_dimension_is_named(tmp_path, load):
    path = tmp_path / "neg.npz"
    _npz(path, {"x_test": _header((-4, 6, 6))})
    with pytest.raises(DataFileError) as error:
        load(str(path))
    assert ("x_test: its .npy header declares a negative dimension, shape (-4, 6, 6), in the "
            "archive's member x_test.npy") in str(error.value)
