"""The memory of evaluating a model against the preflight's estimate of it.

    OMP_NUM_THREADS=1 python benchmarks/evaluation_memory.py [--kinds cnn gcnn ...] [--sizes 28 64]

For each model family and image size: the growth of the peak resident memory (VmHWM, reset
through ``/proc/self/clear_refs``; Linux only) over one ``predict`` of
:data:`~eqpdenet.analysis.predictions.EVALUATION_BATCH` random images (the batch evaluation
takes whatever ``train.batch_size``; the batch norms' statistics first taken from 16 of the
images in training mode, then a warm-up pass), the model's ``backward_bytes`` at that
batch (what a training step on as many images keeps), their ratio (what
``preflight.EVALUATION_PEAK`` rounds up), and the preflight's estimate ``evaluation_bytes``,
which should not be below the measurement. docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from eqpdenet.analysis.predictions import EVALUATION_BATCH
from eqpdenet.app import preflight
from eqpdenet.app.config import ExperimentConfig, build_model
from eqpdenet.app.training import predict

KINDS = ("cnn", "gcnn", "invariant_pde", "lifted_pde", "eqpdenet")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def measure(kind: str, size: int) -> tuple[int, int | None, int]:
    """``(measured peak growth, backward_bytes at the evaluation batch or None, estimate)``."""
    config = ExperimentConfig()
    config.model.kind, config.model.image_size = kind, size
    model = build_model(config.model)
    own = getattr(model, "backward_bytes", None)
    kept = own(EVALUATION_BATCH) if own is not None else None
    estimate = preflight.evaluation_bytes(config, model)
    images = torch.rand(EVALUATION_BATCH, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # batch-norm statistics of the images (an untrained deep PDE model
        model.train()(images[:16])  # diverges on its initial ones in evaluation mode)
    predict(model, images[:2])  # first-use costs (kernels, allocator pools) out of the measure
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    predict(model, images)
    return _status_bytes("VmHWM") - before, kept, estimate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 64])
    args = parser.parse_args()
    mib = 2.0**20
    print(f"| model | size | evaluation peak growth, {EVALUATION_BATCH} images (MiB) | "
          f"backward_bytes({EVALUATION_BATCH}) (MiB) | ratio | preflight estimate (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in args.kinds:
        for size in args.sizes:
            peak, kept, estimate = measure(kind, size)
            ratio = f"{peak / kept:.2f}" if kept else "n/a"
            shown = f"{kept / mib:.0f}" if kept is not None else "n/a"
            print(f"| {kind} | {size} | {peak / mib:.0f} | {shown} | {ratio} | "
                  f"{estimate / mib:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
