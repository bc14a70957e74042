"""The memory a fresh process adds once, in its first training run, beyond the preflight's estimate.

    OMP_NUM_THREADS=1 python benchmarks/first_step_memory.py

Trains an ``fcnn`` (whose estimate is a few hundred KiB) for one epoch on 32 random 28x28 images,
twice in one process, after the preflight, and prints the growth of the resident memory (VmRSS) of
each run: the first includes what PyTorch loads on first use (its first Adam step imports
``torch._dynamo``, sympy and triton), the second only what the run itself needs
(docs/reliability.md, "What is not covered").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from eqpdenet.app import preflight
from eqpdenet.app.config import ExperimentConfig
from eqpdenet.app.training import prepare_data, run_experiment


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.npz"
        rng = np.random.default_rng(0)
        np.savez(path, x_train=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
                 y_train=np.arange(32) % 10, x_test=rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
                 y_test=np.arange(16) % 10)
        config = ExperimentConfig()
        config.model.kind, config.data.dataset = "fcnn", str(path)
        config.train.batch_size, config.train.epochs, config.scenarios = 16, 1, ["test"]
        preflight.preflight([config], None, at_data=True)
        data = prepare_data(config.data)
        start = _rss_mib()
        run_experiment(config, data, progress=False)
        first = _rss_mib()
        run_experiment(config, data, progress=False)
        second = _rss_mib()
    print(f"resident memory after the preflight and the data: {start:.0f} MiB; first run +"
          f"{first - start:.0f} MiB, second run +{second - first:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
