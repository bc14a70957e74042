"""A long epoch says how far it is in a log (seventh outside-in round, 2026-12-06): progress came
once per epoch, so an epoch of 60,000 images on the plain PyTorch path left a log silent for an
hour."""

from __future__ import annotations

import io

import torch

from eqpdenet.app import progress as progress_module
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.progress import HEARTBEAT_SECONDS, LineProgress, within
from eqpdenet.app.training import Split, train_model


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_within_an_item_at_most_once_per_heartbeat_with_the_time_left_in_it():
    clock, stream = Clock(), io.StringIO()
    bar = LineProgress(range(3), desc="train M", unit="epoch", stream=stream, clock=clock)
    epochs = iter(bar)
    next(epochs)  # epoch 1 starts at t = 100
    clock.now += HEARTBEAT_SECONDS - 1
    within(bar, 10, 40)
    assert stream.getvalue() == ""  # the last line (the start) is younger than a heartbeat
    clock.now += 1  # t = 100 + heartbeat: 20 of 40 batches took 60 s, 60 s are left
    within(bar, 20, 40)
    assert stream.getvalue() == "train M: epoch 1/3, batch 20/40 after 60 s, about 60 s left in it\n"
    clock.now += 1
    within(bar, 21, 40)
    assert stream.getvalue().count("\n") == 1  # once per heartbeat
    clock.now += 2 * HEARTBEAT_SECONDS
    within(bar, 40, 40)  # the item is done: its own line follows, not this one
    next(epochs)  # epoch 1 done: its line; epoch 2 starts now
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train M: epoch 1/3, ")
    clock.now += HEARTBEAT_SECONDS / 2
    within(bar, 5, 40)
    assert len(stream.getvalue().splitlines()) == 2  # the epoch's line counts as the last line
    clock.now += HEARTBEAT_SECONDS / 2  # 60 s for 6 of 40 batches since epoch 2 began
    within(bar, 6, 40)
    assert stream.getvalue().splitlines()[2] == ("train M: epoch 2/3, batch 6/40 after 60 s, "
                                                 "about 6 min left in it")  # 340 s


def test_within_a_plain_iterable_does_nothing():
    within(range(3), 1, 2)  # progress off: no bar to tell


def test_training_into_a_log_says_how_far_each_epoch_is(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "HEARTBEAT_SECONDS", 0.0)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(12, 1, 8, 8, generator=generator), torch.arange(12) % 2
    data = {"train": Split(images, labels), "validation": Split(images[:0], labels[:0]),
            "test": Split(images, labels)}
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='fcnn'", "model.image_size=8", "model.classes=2", "model.hidden=4",
        "train.batch_size=4", "train.epochs=2"])
    train_model(config, data, progress=True)
    lines = capsys.readouterr().err.splitlines()
    within_lines = [line for line in lines if ", batch " in line]
    # three batches per epoch: lines after the first and the second, none after the last
    assert [line.split(": ", 1)[1].split(" after")[0] for line in within_lines] == [
        "epoch 1/2, batch 1/3", "epoch 1/2, batch 2/3", "epoch 2/2, batch 1/3",
        "epoch 2/2, batch 2/3"]
