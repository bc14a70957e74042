"""Round 21 (an outside probe, p3): a mistyped data folder was taken unsaid by ``load_rotmnist``
where its cache served the generated set (no file of the folder read), and ``data.source =
'auto'`` then chose the generated set over the official files the user meant. It is refused as
``load_mnist`` refuses it: its parent missing too, or a file."""

from __future__ import annotations

import os

import pytest

from eqpdenet.data.rotmnist import load_rotmnist
from eqpdenet.errors import DataFileError

DATA = os.environ.get("EQPDENET_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="needs EQPDENET_DATA (MNIST)")


def test_a_mistyped_data_folder_is_refused_though_the_cache_serves_the_set(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    made = load_rotmnist(DATA, cache, n_train=20, n_test=10, download=False)
    assert made.source == "generated"
    mistyped = tmp_path / "no-such" / "data"
    with pytest.raises(DataFileError) as caught:
        load_rotmnist(mistyped, cache, n_train=20, n_test=10, download=False)
    assert str(caught.value) == (
        f"{mistyped}: the data folder given by --data-dir / data_dir does not exist, nor does "
        f"its parent {mistyped.parent}: a mistyped path? Point --data-dir / data_dir at the "
        f"folder holding mnist/ (a download creates the data folder only inside an existing one)")
    a_file = tmp_path / "afile"
    a_file.write_text("")
    with pytest.raises(DataFileError) as caught:
        load_rotmnist(a_file, cache, n_train=20, n_test=10, download=False)
    assert str(caught.value) == (
        f"{a_file}: the data folder given by --data-dir / data_dir is a file, not a folder: Point "
        f"--data-dir / data_dir at the folder holding mnist/")
    # a new folder inside an existing one stays allowed (a download would make it): the cache
    again = load_rotmnist(tmp_path / "fresh", cache, n_train=20, n_test=10, download=False)
    assert (again.train_images == made.train_images).all()
