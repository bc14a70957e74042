"""The path variables and folders that name the wrong place (round 12 audit).

* ``EQPDENET_DATA`` / ``--data-dir`` pointed at ``mnist/`` itself (or ``rotmnist/``): a download
  made ``mnist/mnist/`` and failed offline, saying to put the files there. Now refused, naming
  the variable and the parent to point at, before anything is made.
* A mistyped ``EQPDENET_CACHE`` / ``--cache-dir`` made the whole missing chain and wrote the
  196 MB cache there. Now refused as a mistyped data folder is, before any data is read.
* Whitespace or a control character in a path variable (a CRLF ``.env`` file's ``\\r``) was taken
  literally: a sibling folder ``data\\r`` or a folder named ``" "`` was made. Now one error naming
  the variable and showing the value with ``repr``; ``EQPDENET_BUILD_DIR`` says it as a build
  folder that cannot be used (the layers take the reference).
* ``EQPDENET_DATA`` set to a file failed with ``Not a directory`` without naming the variable.
* A relative ``XDG_CACHE_HOME`` was used as is; the XDG spec says to ignore it.

Every refusal is checked to leave nothing behind. No network: the only mirror is a port nothing
listens on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eqpdenet.app import cli
from eqpdenet.data import mnist
from eqpdenet.data.mnist import (
    CACHE_ENV,
    DATA_ENV,
    MNIST_FILES,
    DataFileError,
    check_cache_dir,
    download_mnist,
    load_mnist,
    resolve_cache_dir,
    resolve_data_dir,
)
from eqpdenet.data.rotmnist import OFFICIAL_ZIP, load_official_rotmnist, load_rotmnist
from eqpdenet.errors import ConfigError, KernelUnavailableError
from eqpdenet.kernels import cpu

MNIST_NAMES = [f"{spec.name}.gz" for spec in MNIST_FILES.values()]
FOUND = ", ".join(MNIST_NAMES)
#: The end of every line the command line prints for an error.
DEBUG_HINT = f" ({cli.DEBUG_VARIABLE}=1 shows the traceback)"
TRAIN = ["train", "--model", "fcnn", "--hidden", "4", "--epochs", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path, refused):
    """No path variable of the caller's; the per-user default and the working folder inside
    ``tmp_path``, so that nothing a test does lands outside it; no mirror but ``refused``, so
    that a download reached all the same (a regression) fails at once, offline."""
    for name in (DATA_ENV, CACHE_ENV, cpu.ENV_BUILD_DIR, cli.DEBUG_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mnist, "DEFAULT_MIRRORS", (refused,))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def tree(root: Path) -> list[str]:
    """Everything under ``root``, as sorted relative paths."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def mnist_folder(tmp_path: Path) -> Path:
    """``tmp_path/data/mnist`` holding files of MNIST's names (refused before any is read)."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in MNIST_NAMES:
        (folder / name).write_bytes(b"")
    return folder


# ----------------------------------------------------------------------- the mnist/ folder itself


def test_the_variable_pointed_at_mnist_itself_is_refused_and_no_mnist_mnist_is_made(
        tmp_path, monkeypatch, refused):
    folder = mnist_folder(tmp_path)
    before = tree(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(folder))
    expected = (f"{folder}: this data folder, given by EQPDENET_DATA, holds MNIST's files itself "
                f"({FOUND}), not in a mnist/ subfolder: point EQPDENET_DATA at its parent "
                f"{folder.parent}, the folder holding mnist/")
    for load in (lambda: load_mnist(mirrors=[refused], progress=False),
                 lambda: load_mnist(download=False),
                 lambda: download_mnist(None, [refused], progress=False)):
        with pytest.raises(DataFileError) as caught:
            load()
        assert str(caught.value) == expected
    assert tree(tmp_path) == before  # no mnist/mnist


def test_the_argument_pointed_at_mnist_itself_names_the_option(tmp_path, refused):
    folder = mnist_folder(tmp_path)
    with pytest.raises(DataFileError) as caught:
        load_mnist(folder, mirrors=[refused], progress=False)
    assert str(caught.value) == (
        f"{folder}: this data folder, given by --data-dir / data_dir, holds MNIST's files itself "
        f"({FOUND}), not in a mnist/ subfolder: point --data-dir / data_dir at its parent "
        f"{folder.parent}, the folder holding mnist/")
    assert not (folder / "mnist").exists()


def test_the_command_line_pointed_at_mnist_prints_one_line_and_makes_nothing(
        tmp_path, monkeypatch, capsys):
    folder = mnist_folder(tmp_path)
    (tmp_path / "cache").mkdir()
    before = tree(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(folder))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    status, err = run_cli(TRAIN + ["--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert err.splitlines()[-1] == (
        f"eqpdenet: error: {folder}: this data folder, given by EQPDENET_DATA, holds MNIST's files "
        f"itself ({FOUND}), not in a mnist/ subfolder: point EQPDENET_DATA at its parent "
        f"{folder.parent}, the folder holding mnist/{DEBUG_HINT}")
    assert tree(tmp_path) == before  # no mnist/mnist, no run folder


def test_the_variable_pointed_at_rotmnist_itself_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "rotmnist"
    folder.mkdir(parents=True)
    (folder / OFFICIAL_ZIP).write_bytes(b"")
    (tmp_path / "cache").mkdir()
    before = tree(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(folder))
    expected = (f"{folder}: this data folder, given by EQPDENET_DATA, holds official ROTMNIST "
                f"files itself ({OFFICIAL_ZIP}), not in a rotmnist/ subfolder: point "
                f"EQPDENET_DATA at its parent {folder.parent}, the folder holding rotmnist/")
    for load in (lambda: load_rotmnist(cache_dir=tmp_path / "cache", download=False),
                 lambda: load_official_rotmnist()):
        with pytest.raises(DataFileError) as caught:
            load()
        assert str(caught.value) == expected
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------- a mistyped cache folder


def test_a_mistyped_cache_variable_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    typo = tmp_path / "ca" / "che"
    monkeypatch.setenv(CACHE_ENV, str(typo))
    (tmp_path / "empty").mkdir()  # no MNIST: reading it would be another error
    with pytest.raises(DataFileError) as caught:
        load_rotmnist(data_dir=tmp_path / "empty", download=False)
    assert str(caught.value) == (
        f"{typo}: the cache folder given by EQPDENET_CACHE does not exist, nor does its parent "
        f"{typo.parent}: a mistyped path? Point EQPDENET_CACHE at an existing folder, or at a new "
        f"one inside an existing folder")
    assert tree(tmp_path) == ["empty"]


def test_a_mistyped_cache_argument_names_the_option_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    typo = tmp_path / "nowhere" / "cache"
    with pytest.raises(DataFileError, match=r"^.*: the cache folder given by --cache-dir / "
                                            r"cache_dir does not exist, nor does its parent"):
        load_rotmnist(data_dir=tmp_path / "empty", cache_dir=typo, download=False)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataFileError) as caught:
        load_rotmnist(data_dir=tmp_path / "empty", cache_dir=tmp_path / "afile", download=False)
    assert str(caught.value) == (
        f"{tmp_path / 'afile'}: the cache folder given by --cache-dir / cache_dir is a file, not "
        f"a folder: Point --cache-dir / cache_dir at an existing folder, or at a new one inside "
        f"an existing folder")
    assert tree(tmp_path) == ["afile", "empty"]


def test_a_new_cache_folder_in_an_existing_one_and_the_default_are_allowed(tmp_path,
                                                                            monkeypatch):
    assert check_cache_dir(tmp_path / "new") == tmp_path / "new"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh-home" / ".cache"))
    assert check_cache_dir() == tmp_path / "fresh-home" / ".cache" / "eqpdenet"
    # without the cache, a mistyped cache folder is not in the way: MNIST's absence is said
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "ca" / "che"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="missing MNIST file"):
        load_rotmnist(data_dir=tmp_path / "empty", download=False, use_cache=False)
    assert tree(tmp_path) == ["empty"]


def test_the_command_line_with_a_mistyped_cache_prints_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    typo = tmp_path / "p4-typo" / "ca" / "che"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(CACHE_ENV, str(typo))
    status, err = run_cli(TRAIN + ["--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert err.splitlines()[-1] == (
        f"eqpdenet: error: {typo}: the cache folder given by EQPDENET_CACHE does not exist, nor "
        f"does its parent {typo.parent}: a mistyped path? Point EQPDENET_CACHE at an existing "
        f"folder, or at a new one inside an existing folder{DEBUG_HINT}")
    assert tree(tmp_path) == ["data"]  # no folder chain, no data/mnist, no run folder


# ----------------------------------------------------------------------- whitespace, control characters


def bad_values(tmp_path: Path) -> list[tuple[str, str]]:
    good = str(tmp_path / "data")
    return [(" ", "it is only whitespace"),
            ("\t\n", "it is only whitespace"),
            (good + "\r", "it holds the control character '\\r' (a line end of a file written "
                          "on Windows?)"),
            (good[:5] + "\x1b" + good[5:], "it holds the control character '\\x1b'"),
            (" " + good, "it begins or ends with whitespace"),
            (good + " ", "it begins or ends with whitespace")]


@pytest.mark.parametrize("name", [DATA_ENV, CACHE_ENV])
def test_a_path_variable_with_whitespace_or_a_control_character_is_refused(
        tmp_path, monkeypatch, name, refused):
    (tmp_path / "data").mkdir()
    for value, problem in bad_values(tmp_path):
        monkeypatch.setenv(name, value)
        expected = (f"{name}={value!r} is not a usable path: {problem}; set it to the folder's "
                    f"path exactly as it is, or leave it empty for the default")
        resolve = resolve_data_dir if name == DATA_ENV else resolve_cache_dir
        with pytest.raises(ConfigError) as caught:
            resolve()
        assert str(caught.value) == expected
        with pytest.raises(ConfigError) as caught:
            if name == DATA_ENV:
                load_mnist(mirrors=[refused], progress=False)
            else:
                load_rotmnist(data_dir=tmp_path / "data", download=False)
        assert str(caught.value) == expected
        assert tree(tmp_path) == ["data"]  # no "data\r", no " ", no "data/mnist"


def test_an_empty_variable_is_unset_and_inner_spaces_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, "")
    monkeypatch.setenv(CACHE_ENV, "")
    assert resolve_data_dir() == tmp_path / "xdg" / "eqpdenet" / "data"
    assert resolve_cache_dir() == tmp_path / "xdg" / "eqpdenet"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "my data"))
    assert resolve_data_dir() == tmp_path / "my data"


def test_the_command_line_with_a_carriage_return_in_the_variable_prints_one_line(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    value = str(tmp_path / "data") + "\r"
    monkeypatch.setenv(DATA_ENV, value)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    status, err = run_cli(TRAIN + ["--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert err.splitlines()[-1] == (
        f"eqpdenet: error: EQPDENET_DATA={value!r} is not a usable path: it holds the control "
        f"character '\\r' (a line end of a file written on Windows?); set it to the folder's "
        f"path exactly as it is, or leave it empty for the default{DEBUG_HINT}")
    assert tree(tmp_path) == ["data"]  # no "data\r", no cache, no run folder


def test_a_build_folder_variable_with_a_carriage_return_is_unavailable_and_nothing_made(
        tmp_path, monkeypatch):
    value = str(tmp_path / "build") + "\r"
    monkeypatch.setenv(cpu.ENV_BUILD_DIR, value)
    # were the value taken as written, no compiler would run: the failure would be quick
    monkeypatch.setattr(cpu, "_missing_build_tool", lambda: "no compiler (test)")
    extension = cpu._Extension(cpu.SOURCE, "eqpdenet_fused_")
    with pytest.raises(KernelUnavailableError) as caught:
        extension.load()
    assert str(caught.value) == (
        f"could not build the C++ extension fused_euler.cpp (EQPDENET_BUILD_DIR={value!r} is not "
        f"a usable path: it holds the control character '\\r' (a line end of a file written on "
        f"Windows?); set it to the folder's path exactly as it is, or leave it empty for the "
        f"default)")
    assert tree(tmp_path) == []


# ----------------------------------------------------------------------- a file as the data folder


def test_a_file_as_the_data_folder_is_refused_naming_the_variable(tmp_path, monkeypatch,
                                                                   refused):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv(DATA_ENV, str(afile))
    for load in (lambda: load_mnist(mirrors=[refused], progress=False),
                 lambda: download_mnist(None, [refused], progress=False)):
        with pytest.raises(DataFileError) as caught:
            load()
        assert str(caught.value) == (
            f"{afile}: the data folder given by EQPDENET_DATA is a file, not a folder: Point "
            f"EQPDENET_DATA at the folder holding mnist/")
    assert tree(tmp_path) == ["afile"] and afile.read_text() == "x"


def test_a_file_named_mnist_in_the_data_folder_is_refused(tmp_path, refused):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist").write_text("")
    with pytest.raises(DataFileError) as caught:
        load_mnist(data, mirrors=[refused], progress=False)
    assert str(caught.value) == (
        f"{data / 'mnist'}: a file, where the data folder given by --data-dir / data_dir ({data}) "
        f"needs a folder: Point --data-dir / data_dir at the folder holding mnist/")
    assert tree(tmp_path) == ["data", os.path.join("data", "mnist")]


# ----------------------------------------------------------------------- XDG_CACHE_HOME


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "eqpdenet"
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "eqpdenet" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # an absolute one is used
    assert resolve_cache_dir() == tmp_path / "xdg" / "eqpdenet"
