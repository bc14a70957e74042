"""Round 15: the ``config.toml`` of a ``train`` folder showed MNIST's 28x28, one channel and ten
classes for a model trained on other data (the configuration as given); it now says, in a comment
above it, what training took from the data, and still reruns as given."""

from __future__ import annotations

import json
import tomllib

import numpy as np

from eqpdenet.app.cli import main
from eqpdenet.app.config import ExperimentConfig, from_dict


def _data(path):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((40, 3, 10, 10)).astype("float32"),
             y_train=np.arange(40) % 4, x_test=rng.random((12, 3, 10, 10)).astype("float32"),
             y_test=np.arange(12) % 4)


def test_a_train_folders_config_names_what_the_data_set(tmp_path):
    _data(tmp_path / "c3.npz")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "c3.npz"), "--model", "fcnn", "--hidden",
                 "4", "--epochs", "1", "--out", str(out), "--no-progress",
                 "--set", "scenarios=['test']"]) == 0
    text = (out / "config.toml").read_text()
    used = json.loads((out / "result.json").read_text())["config"]["model"]
    comment = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    assert comment[0].startswith("The configuration as given. Training took from the data")
    assert comment[1:] == [f"  model.{name} = {used[name]!r}" for name in
                           ("image_size", "in_channels", "classes", "input_mean", "input_std")]
    assert (used["image_size"], used["in_channels"], used["classes"]) == (10, 3, 4)
    # the file itself is the configuration as given: MNIST's defaults, rerun as given
    given = from_dict(ExperimentConfig, tomllib.loads(text))
    assert (given.model.image_size, given.model.in_channels, given.model.classes) == (28, 1, 10)


def test_nothing_is_said_where_the_data_agree_with_the_configuration(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "m.npz", x_train=rng.random((40, 28, 28)).astype("float32"),
             y_train=np.arange(40) % 10, x_test=rng.random((20, 28, 28)).astype("float32"),
             y_test=np.arange(20) % 10)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "m.npz"), "--model", "fcnn", "--hidden",
                 "4", "--epochs", "1", "--out", str(out), "--no-progress", "--set",
                 "scenarios=['test']", "--set", "model.standardize='fixed'"]) == 0
    assert not (out / "config.toml").read_text().startswith("#")
