"""A mistyped data folder, and a download that fails offline (round 9 audit).

``EQPDENET_DATA`` (or ``--data-dir``) set to a folder that does not exist made the whole tree and
tried to download into it; offline, the error listed the mirrors' failures and nothing else.
Now a data folder given explicitly whose parent does not exist is refused in one line naming
where it came from (a new folder inside an existing one may still be made for a download), and a
failed download ends with how to supply the files by hand.
"""

from __future__ import annotations

import pytest

from eqpdenet.data.mnist import (
    DATA_ENV,
    MNIST_FILES,
    DataFileError,
    DownloadError,
    download_mnist,
    load_mnist,
)


def test_a_mistyped_data_folder_from_the_variable_is_refused_before_anything_is_made(
        tmp_path, monkeypatch, refused):
    typo = tmp_path / "shraed" / "data"
    monkeypatch.setenv(DATA_ENV, str(typo))
    for load in (lambda: load_mnist(mirrors=[refused], progress=False),
                 lambda: download_mnist(None, [refused], progress=False)):
        with pytest.raises(DataFileError) as caught:
            load()
        assert str(caught.value) == (
            f"{typo}: the data folder given by EQPDENET_DATA does not exist, nor does its parent "
            f"{typo.parent}: a mistyped path? Point EQPDENET_DATA at the folder holding mnist/ "
            f"(a download creates the data folder only inside an existing one)")
        assert not typo.parent.exists()


def test_a_mistyped_data_folder_given_as_an_argument_names_the_option(tmp_path, monkeypatch,
                                                                        refused):
    monkeypatch.delenv(DATA_ENV, raising=False)
    typo = tmp_path / "nowhere" / "data"
    with pytest.raises(DataFileError, match=r"given by --data-dir / data_dir does not exist"):
        load_mnist(typo, mirrors=[refused], progress=False)
    assert not typo.parent.exists()


def test_a_new_data_folder_inside_an_existing_one_is_made_and_a_failed_download_says_what_to_do(
        tmp_path, monkeypatch, refused):
    new = tmp_path / "data"  # its parent exists: a first download may make it
    monkeypatch.setenv(DATA_ENV, str(new))
    with pytest.raises(DownloadError) as caught:
        load_mnist(mirrors=[refused], progress=False)
    assert (new / "mnist").is_dir()
    message = str(caught.value)
    assert message.startswith(f"could not download a verified train-images-idx3-ubyte.gz into "
                              f"{new / 'mnist'}:\n  {refused}train-images-idx3-ubyte.gz: ")
    assert message.splitlines()[-1] == (
        f"To supply MNIST yourself, put the four files train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in "
        f"{new / 'mnist'}, or point EQPDENET_DATA / --data-dir at a folder holding mnist/ with "
        f"them")
    assert len(MNIST_FILES) == 4


def test_the_per_user_default_folder_is_still_made_with_its_parents(tmp_path, monkeypatch,
                                                                      refused):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-home" / ".cache"))
    with pytest.raises(DownloadError):
        download_mnist(None, [refused], keys=["test_labels"], progress=False)
    assert (tmp_path / "fresh-home" / ".cache" / "eqpdenet" / "data" / "mnist").is_dir()
