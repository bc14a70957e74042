"""A data file whose name is not UTF-8 is refused before training (probe round 12: the whole run
trained, then failed writing its configuration, a TOML file, with "'utf-8' codec can't encode
character '\\udcff' ... surrogates not allowed", naming neither the field nor the path)."""

import os
import sys

import pytest
from tests.data_helpers import write_npz

from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, apply_overrides, to_toml
from eqpdenet.errors import ConfigError

pytestmark = pytest.mark.skipif(sys.platform == "win32" or sys.getfilesystemencoding() != "utf-8",
                                reason="a byte name only where file names are bytes, read as UTF-8")


def test_a_field_that_is_not_utf8_is_named_by_to_toml():
    config = apply_overrides(ExperimentConfig(), ["data.dataset='x.npz'"])
    config.data.dataset = os.fsdecode(b"bad\xff.npz")
    with pytest.raises(ConfigError, match=r"cannot write data\.dataset to TOML: 'bad\\udcff\.npz' "
                                          r"is not UTF-8 text"):
        to_toml(config)


def test_train_on_a_file_named_in_another_encoding_stops_before_training(tmp_path, capsys):
    path = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff.npz")
    write_npz(path)
    out = tmp_path / "run"
    assert main(["train", "--no-progress", "--model", "fcnn", "--hidden", "4", "--epochs", "1",
                 "--dataset", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "epoch" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("eqpdenet:")]
    assert "data.dataset" in line and "is not UTF-8 text" in line
    assert not out.exists()


@pytest.mark.parametrize("value, problem", [
    ("run\r", "it holds the control character '\\r' (a line end of a file written on Windows?)"),
    ("run ", "it begins or ends with whitespace"),
    ("r\nun", "it holds the control character '\\n'"),
])
def test_a_path_argument_follows_the_rule_of_the_path_variables(tmp_path, monkeypatch, capsys,
                                                                  value, problem):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--model", "fcnn", "--out", value])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"eqpdenet train: error: argument --out: {value!r} is not a usable path: {problem}"
    assert list(tmp_path.iterdir()) == []
