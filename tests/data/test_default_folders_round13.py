"""The per-user default folders (round 13): a file where ``~/.cache/eqpdenet`` (or a folder
above it) should be is refused before any work, naming the file and the variable that moves the
folder; before, the default was made with its parents and ``mkdir`` failed after the work."""

from __future__ import annotations

import pytest

from eqpdenet.data.mnist import check_cache_dir, download_mnist
from eqpdenet.errors import DataFileError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("EQPDENET_CACHE", raising=False)
    monkeypatch.delenv("EQPDENET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("blocked", ["cache", "cache/eqpdenet"])
def test_a_file_in_the_default_cache_folder_s_way_is_refused(home, blocked):
    (home / blocked).parent.mkdir(parents=True, exist_ok=True)
    (home / blocked).write_text("not a folder")
    with pytest.raises(DataFileError, match=r"a file, where the per-user cache folder .*"
                                            r"cache/eqpdenet needs a folder: remove it, or set "
                                            r"EQPDENET_CACHE to a folder") as caught:
        check_cache_dir()
    assert str(home / blocked) in str(caught.value)


def test_the_default_cache_folder_is_returned_where_it_can_be_made(home):
    assert check_cache_dir() == home / "cache" / "eqpdenet"
    (home / "cache" / "eqpdenet").mkdir(parents=True)
    assert check_cache_dir() == home / "cache" / "eqpdenet"


def test_a_file_in_the_default_data_folder_s_way_is_refused_before_any_download(home):
    (home / "cache" / "eqpdenet").mkdir(parents=True)
    (home / "cache" / "eqpdenet" / "data").write_text("not a folder")
    with pytest.raises(DataFileError, match=r"a file, where the per-user data folder .* needs a "
                                            r"folder: remove it, or set EQPDENET_DATA"):
        download_mnist(mirrors=["http://127.0.0.1:9/"], progress=False)
