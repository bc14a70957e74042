"""Evaluation time against the number of images per forward pass, side by side in one process.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/evaluation_batch.py CHECKPOINT [CHECKPOINT ...] \
        [--images 1000] [--batches 1000 256 128] [--rounds 2] [--threads 1]

For each checkpoint: the logits of ``--images`` random images in evaluation mode
(:func:`eqpdenet.analysis.predictions.logits_by_image`) at each batch size of ``--batches``,
interleaved over ``--rounds``; the median user and system CPU seconds of each, their sum as a
ratio to the first batch size's, and the largest difference of the logits from the first batch
size's (over the images with finite logits at both) and whether every prediction agrees. Why
:data:`~eqpdenet.analysis.predictions.EVALUATION_BATCH` is what it is (docs/performance.md).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys

import torch
from _args import existing_files, positive_int, run

from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.app.training import load_checkpoint


def _seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=positive_int, default=1000)
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1000, 256, 128])
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args()
    existing_files(parser, args.checkpoints)
    torch.set_num_threads(args.threads)
    print(f"{args.images} random images, {args.threads} thread(s), median of {args.rounds} "
          f"interleaved rounds\n")
    print("| checkpoint | batch | user s | system s | CPU s against the first | largest logit "
          "difference | same predictions |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for path in args.checkpoints:
        model, config, _ = load_checkpoint(path)
        channels, size = config.model.in_channels, config.model.image_size
        images = torch.rand(args.images, channels, size, size,
                            generator=torch.Generator().manual_seed(0))
        times = {batch: [] for batch in args.batches}
        logits = {}
        for _ in range(args.rounds):
            for batch in args.batches:
                user, system = _seconds()
                logits[batch] = logits_by_image(model, images, batch_size=batch)[0]
                after = _seconds()
                times[batch].append((after[0] - user, after[1] - system))
        first = args.batches[0]
        base = sum(statistics.median(t[i] for t in times[first]) for i in (0, 1))
        for batch in args.batches:
            user = statistics.median(t[0] for t in times[batch])
            system = statistics.median(t[1] for t in times[batch])
            finite = torch.isfinite(logits[first]).all(1) & torch.isfinite(logits[batch]).all(1)
            difference = float((logits[batch] - logits[first])[finite].abs().max()) \
                if finite.any() else float("nan")
            same = bool((logits[batch].argmax(1) == logits[first].argmax(1)).all())
            print(f"| {path} | {batch} | {user:.2f} | {system:.2f} | "
                  f"{(user + system) / base:.2f} | {difference:.3g} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
