"""Shared, cached data for the data tests (MNIST is read once per test session).

Tests that need MNIST read the data directory from ``EQPDENET_DATA`` (CI sets it to
``../shared/data``) and are skipped, with the reason, only when it is unset.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from eqpdenet.data.mnist import MNIST, load_mnist
from eqpdenet.data.rotmnist import RotMNIST, generate_rotmnist

SKIP_REASON = "EQPDENET_DATA is not set (CI sets it to ../shared/data, the folder containing mnist/)"


def data_dir_or_skip() -> Path:
    value = os.environ.get("EQPDENET_DATA")
    if not value:
        pytest.skip(SKIP_REASON)
    return Path(value)


@functools.lru_cache(maxsize=2)
def _mnist(data_dir: str) -> MNIST:
    return load_mnist(data_dir, download=False)


@functools.lru_cache(maxsize=2)
def _rotmnist(data_dir: str, seed: int) -> RotMNIST:
    return generate_rotmnist(_mnist(data_dir), seed=seed)


def mnist_or_skip() -> MNIST:
    """The 70,000 MNIST digits from ``$EQPDENET_DATA/mnist`` (read and verified once)."""
    return _mnist(str(data_dir_or_skip()))


def rotmnist_or_skip(seed: int = 0) -> RotMNIST:
    """The full generated ROTMNIST for ``seed`` (generated once per session)."""
    return _rotmnist(str(data_dir_or_skip()), seed)


def write_npz(path, train=60, test=20, size=12, classes=3, seed=0, **overrides):
    """A small ``.npz`` data set at ``path``: uint8 square images, labels cycling through
    ``classes``; ``overrides`` replace arrays. Returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (train, size, size), dtype=np.uint8),
              "y_train": np.arange(train) % classes,
              "x_test": rng.integers(0, 256, (test, size, size), dtype=np.uint8),
              "y_test": np.arange(test) % classes}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return arrays


def tiny_data(n_train: int = 64, side: int = 12):
    """A small fixed synthetic data set (``Data``: train, validation of 16, test of 16; 10
    classes), the same in every process."""
    import torch

    from eqpdenet.app.training import Data, Split

    generator = torch.Generator().manual_seed(0)
    n = n_train + 32
    images = torch.rand(n, 1, side, side, generator=generator)
    labels = torch.arange(n) % 10
    return Data(train=Split(images[:n_train], labels[:n_train]),
                validation=Split(images[n_train:n_train + 16], labels[n_train:n_train + 16]),
                test=Split(images[-16:], labels[-16:]), name="synthetic", classes=10)


def tiny_config(*overrides: str):
    """An ``ExperimentConfig`` of a tiny FCNN trained one epoch, scored on ``test``."""
    from eqpdenet.app.config import ExperimentConfig, apply_overrides

    return apply_overrides(ExperimentConfig(), ["model.kind='fcnn'", "model.hidden=4",
                                                "train.epochs=1", "train.batch_size=16",
                                                "scenarios=['test']", *overrides])
