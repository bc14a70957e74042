"""Per-image logit changes under a rotation and back, beside the batch-wide number the benchmark
records: does one image dominate ``||l(g^-1 g f) - l(f)|| / ||l(f)||``?

Run by hand (not in CI; under a minute a checkpoint on one thread)::

    EQPDENET_DATA=../shared/data python benchmarks/logit_outliers.py \
        results/benchmark-full/checkpoints/invariant-pde-seed0.pt --images 2000 --degrees 37

For each checkpoint, on the first ``--images`` digits of its own test split: the median and
largest logit norm, the batch-wide relative change (the benchmark's ``round_trip_change``), the
per-image relative change (median and 90th percentile), and the predictions kept. An image on
which the model's PDE blows up, before or after the round trip, has no logits
(:func:`~eqpdenet.analysis.predictions.logits_by_image`): it is left out of every column (as the
benchmark's logit changes leave it out), and the last cell says how many were left out; a
checkpoint without a single image to compare gets ``–`` in every cell.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from _args import existing_files, finite_float, positive_int, run  # noqa: E402

from eqpdenet.analysis.predictions import logits_by_image  # noqa: E402
from eqpdenet.app.training import load_checkpoint, prepare_data  # noqa: E402
from eqpdenet.errors import NonFiniteStateError  # noqa: E402
from eqpdenet.geometry import rotate  # noqa: E402


def logits_of(model: torch.nn.Module, images: torch.Tensor,
              batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` and the mask ``(N,)`` of the images without logits
    (:func:`~eqpdenet.analysis.predictions.logits_by_image`); a model that blows up on every
    image has no logits at all: ``(N, 0)``, every image masked."""
    try:
        return logits_by_image(model, images, batch)
    except NonFiniteStateError:
        return torch.zeros(len(images), 0), torch.ones(len(images), dtype=torch.bool)


def row(path: str, logits: torch.Tensor, moved: torch.Tensor, left_out: int) -> str:
    """The table's row of ``path``: the columns over the images compared (``logits`` and
    ``moved`` both finite), ``left_out`` the images without logits before or after."""
    lost = f" ({left_out} images without logits, left out)" if left_out else ""
    if not len(logits):
        return f"| {path} | – | – | – | – | – | –{lost} |"
    norms = logits.norm(dim=1)
    per_image = (moved - logits).norm(dim=1) / norms
    # the benchmark's round_trip_change, from the logits already computed
    batch_wide = ((moved - logits).norm() / logits.norm()).item()
    kept = (moved.argmax(1) == logits.argmax(1)).double().mean().item()
    return (f"| {path} | {norms.median().item():.3g} | {norms.max().item():.3g} | "
            f"{batch_wide:.3g} | {per_image.median().item():.3g} | "
            f"{per_image.quantile(0.9).item():.3g} | {100 * kept:.1f} %{lost} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=positive_int, default=2000)
    parser.add_argument("--degrees", type=finite_float, default=37.0)
    args = parser.parse_args()
    existing_files(parser, args.checkpoints)
    print("| checkpoint | logit norm: median | largest | batch-wide change | per-image change: "
          "median | 90th percentile | predictions kept |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in args.checkpoints:
        model, config, _ = load_checkpoint(Path(path))
        model.eval()
        images = prepare_data(config.data).test.images[:args.images]
        angle = math.radians(args.degrees)
        back = rotate(rotate(images, angle), -angle)
        (logits, failed), (moved, moved_failed) = logits_of(model, images), logits_of(model, back)
        both = ~(failed | moved_failed)
        print(row(path, logits[both], moved[both], int((~both).sum())), flush=True)


if __name__ == "__main__":
    run(main)
