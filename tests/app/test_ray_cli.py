"""``eqpdenet reproduce --executor ray`` as a user runs it: the command starts its own Ray instance
on this machine, runs the sweep there, stops Ray, and gets the numbers of the local executor."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import data_dir_or_skip
from eqpdenet.app.cli import main
from eqpdenet.app.files import read_jsonl
from helpers import torch_threads

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = ["--set", "base.data.dataset='mnist'", "--set", "base.data.train_subset=300",
        "--set", "base.data.test_subset=200", "--set", "base.train.epochs=1",
        "--set", "hidden_sizes=[8]", "--set", "seeds=[0]", "--set", "models=['fcnn']",
        "--no-progress"]


def test_the_command_starts_and_stops_its_own_ray(tmp_path):
    pytest.importorskip("ray")
    data_dir = data_dir_or_skip()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "eqpdenet", "reproduce", "--out", str(tmp_path / "ray"),
               "--data-dir", str(data_dir), "--executor", "ray", *TINY]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    with torch_threads(1):
        assert main(["reproduce", "--out", str(tmp_path / "local"), "--data-dir", str(data_dir),
                     *TINY]) == 0
    ray, local = (read_jsonl(tmp_path / name / "results.jsonl") for name in ("ray", "local"))
    assert [r["key"] for r in ray] == ["fcnn-h8-seed0"]
    assert ray[0]["accuracy"] == local[0]["accuracy"]
