"""Data-parallel training (DistributedDataParallel over gloo, as under torchrun) matches training
in one process.

Tolerance: each process takes one part of every batch and DDP averages the gradients, with the
loss scaled so that the average is the gradient of the whole batch's mean loss (even when the 101
images leave a last batch of 5, split 3 + 2). The updates are therefore those of one process up
to the order of float32 summation (per-part sums, then the all-reduce), a relative error of about
1e-7 per step that Adam carries forward without amplifying over the 8 steps here. We require the
parameters and the losses to agree to 1e-5 relative to their size (100 times that rounding, and
far below the change training makes: checked too), and the training accuracy, a count of correct
predictions, exactly.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_helpers import data_dir_or_skip
from distributed_helpers import data_parallel_worker, synthetic_data, tiny_config
from eqpdenet.app.cli import main
from eqpdenet.app.config import build_model
from eqpdenet.app.training import data_parallel, resolve_for_data, train_model
from helpers import torch_threads

TOLERANCE = 1e-5
SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("overrides", [(), ("train.augment.max_shift=1.5",
                                             "train.augment.max_angle_degrees=20.0"),
                                         ("train.blur_consistency.weight=2.0",
                                          "train.blur_consistency.fraction=0.6")],
                         ids=["plain", "augmented", "blur-penalty"])
def test_two_gloo_processes_train_as_one(tmp_path, overrides):
    """Augmented too: every process draws the whole batch's warps from the same stream and takes
    its part, so the two processes see the images one process sees. With the blur penalty, the
    copies of a batch of 32 (19 of them) fall 16 to the first process and 3 to the second, those
    of the last batch of 5 (3) all to the first: the penalty is still the whole batch's mean."""
    out = tmp_path / "ddp.pt"
    began = time.perf_counter()
    torch.multiprocessing.spawn(data_parallel_worker, args=(2, free_port(), str(out), overrides),
                                nprocs=2, join=True)
    elapsed = time.perf_counter() - began
    parallel = torch.load(out, weights_only=True)
    assert data_parallel() is None  # this process is not in a group
    with torch_threads(1):
        model, history = train_model(tiny_config(*overrides), synthetic_data(), progress=False)
    torch.manual_seed(5)
    initial = build_model(resolve_for_data(tiny_config(), synthetic_data()).model).state_dict()
    for name, value in model.state_dict().items():
        scale = float(value.abs().max())
        difference = float((parallel["state"][name] - value).abs().max())
        assert difference <= TOLERANCE * scale, (name, difference, scale)
        moved = float((value - initial[name]).abs().max())
        assert moved > 1000 * TOLERANCE * scale, (name, moved)  # training did change it
    for one, two in zip(history, parallel["history"], strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=TOLERANCE)
        assert two["train_accuracy"] == one["train_accuracy"]
        assert 0 < two["seconds"] < elapsed  # an epoch's own time, not a clock read against another
        assert ("blur_consistency" in one) == ("blur_consistency" in two)
        if "blur_consistency" in one:
            assert two["blur_consistency"] == pytest.approx(one["blur_consistency"], rel=TOLERANCE)


def test_two_processes_never_normalise_a_part_of_one_image(tmp_path):
    """35 images in batches of 32 leave 3: split 2 + 1, the second process would normalise one
    image (a CNN's batch norm refused it mid-epoch). The remainder joins the batch before when
    it holds fewer than two images per process: one batch of 35."""
    from eqpdenet.app.batches import mini_batches

    assert [(s.start, s.stop) for s in mini_batches(35, 32, processes=2)] == [(0, 35)]
    assert [(s.start, s.stop) for s in mini_batches(36, 32, processes=2)] == [(0, 32), (32, 36)]
    assert [(s.start, s.stop) for s in mini_batches(35, 32)] == [(0, 32), (32, 35)]
    out = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(data_parallel_worker,
                                args=(2, free_port(), str(out), ("model.kind='cnn'",), 35),
                                nprocs=2, join=True)
    parallel = torch.load(out, weights_only=True)
    assert len(parallel["history"]) == 2
    assert all(torch.isfinite(value).all() for value in parallel["state"].values()
               if value.is_floating_point())


def test_distributed_without_torchrun_is_one_clear_line(tmp_path, capsys, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["train", "--distributed", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "torchrun --nproc-per-node" in error
    assert not (tmp_path / "run").exists()


TRAIN = ["--model", "fcnn", "--hidden", "8", "--epochs", "1", "--seed", "3", "--no-progress",
         "--set", "data.dataset='mnist'", "--set", "data.train_subset=300",
         "--set", "data.test_subset=200", "--set", "train.batch_size=64"]


def test_torchrun_trains_one_model_with_two_processes_and_rank_0_writes(tmp_path):
    """The real command under torchrun (2 gloo processes on this machine) against one process:
    the same training loss (1e-5 relative, as above), accuracies within one test image (200
    images: a logit margin below the float32 rounding could flip one prediction), and the
    files written once, by rank 0."""
    data_dir = data_dir_or_skip()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "eqpdenet", "train", "--distributed",
               "--out", str(tmp_path / "ddp"), "--data-dir", str(data_dir), *TRAIN]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count("2 processes") == 1  # rank 0 alone reports
    assert finished.stdout.startswith("fcnn h=8 seed=3: ")  # the width the perceptron used
    with torch_threads(1):
        assert main(["train", "--out", str(tmp_path / "one"), "--data-dir", str(data_dir),
                     *TRAIN]) == 0
    ddp, one = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("ddp", "one"))
    assert ddp["processes"] == 2 and ddp["status"] == "ok"
    assert ddp["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=TOLERANCE)
    for scenario, value in one["accuracy"].items():
        assert abs(ddp["accuracy"][scenario] - value) <= 100 / 200, scenario
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")) \
        == ["config.toml", "model.pt", "result.json"]
