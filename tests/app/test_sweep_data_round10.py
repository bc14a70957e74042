"""A data set registered anew under its name (a notebook's edited loader, ``replace=True``) is
loaded anew by the next sweep of the process: a registered name was the whole cache key, and
the second sweep trained and scored on the first loader's data without a word."""

from __future__ import annotations

import torch

from data_helpers import tiny_config
from eqpdenet.app.sweeps import run_sweep
from eqpdenet.app.training import run_experiment
from eqpdenet.data.datasets import DATASETS, ImageDataset
from helpers import registered


def _loader(shift: int):
    def load(data_dir=None, cache_dir=None, seed=0):
        images = torch.rand(80, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        labels = (torch.arange(80) + shift) % 2
        return ImageDataset("r10data", images[:60], labels[:60], images[60:], labels[60:],
                            classes=2)
    return load


def test_a_loader_registered_anew_is_loaded_anew(tmp_path):
    seen = []

    def runner(config, data, progress=True, checkpoint=None, **options):
        seen.append(data["test"].labels[:4].tolist())
        return run_experiment(config, data, progress=False, checkpoint=checkpoint, **options)

    config = tiny_config("data.dataset='r10data'", "data.validation=0")
    for shift in (0, 1):
        with registered(DATASETS, "r10data", _loader(shift), replace=True):
            run_sweep("s", {"r0": config}, tmp_path / f"sweep{shift}", base_fingerprint="x",
                      runner=runner, echo=lambda line: None, progress=False)
    assert seen == [[0, 1, 0, 1], [1, 0, 1, 0]]
