"""The findings of the fault campaign designed from outside (issue 20), one test per kind: each
case gives one clear line, refuses before work, or is handled, and nothing of the user's is
replaced."""

from __future__ import annotations

import torch

from eqpdenet.app.batches import mini_batches
from eqpdenet.app.config import ExperimentConfig, apply_overrides
from eqpdenet.app.training import Split, train_model


def _tiny_data(n: int, size: int = 8, classes: int = 2):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=generator)
    labels = torch.arange(n) % classes
    return {"train": Split(images, labels), "validation": Split(images[:0], labels[:0]),
            "test": Split(images, labels)}


def test_a_last_batch_of_one_image_joins_the_batch_before():
    assert [(s.start, s.stop) for s in mini_batches(9, 4)] == [(0, 4), (4, 9)]
    assert [(s.start, s.stop) for s in mini_batches(1, 4)] == [(0, 1)]
    assert sum(s.stop - s.start for s in mini_batches(257, 128)) == 257
    # a model with batch normalisation trains on 9 images in batches of 4 (4 + 5, never a 1)
    config = apply_overrides(ExperimentConfig(), [
        "model.kind='invariant_pde'", "model.image_size=8", "model.classes=2",
        "model.invariant_pde.channels=[4]", "model.invariant_pde.blocks=[1]",
        "train.batch_size=4", "train.epochs=1"])
    _, history = train_model(config, _tiny_data(9), progress=False)
    assert len(history) == 1 and history[0]["loss"] > 0
