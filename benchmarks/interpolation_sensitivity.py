"""How much of a model's logit change under a rotation is the resampling, not the rotation.

For each checkpoint of a benchmark folder (``<folder>/checkpoints/*.pt``), on the first
``--images`` test digits: the relative logit change ``||l(g f) − l(f)|| / ||l(f)||`` under a
rotation by ``--degrees`` (as in the benchmark table), the same for a rotation by ``--degrees``
and back (bilinear resampling twice, no net rotation), and the mean logit norm per image. The
changes are the benchmark's (:func:`~eqpdenet.analysis.robustness.logit_change`,
:func:`~eqpdenet.analysis.robustness.round_trip_change`): an image on which the model's PDE blows
up has no logits (:func:`~eqpdenet.analysis.predictions.logits_by_image`) and is left out, of
the norm too; the norm's cell then says how many::

    EQPDENET_DATA=../shared/data python benchmarks/interpolation_sensitivity.py results/benchmark
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _args import positive_int, run

from eqpdenet.analysis.predictions import logits_by_image
from eqpdenet.analysis.robustness import logit_change, round_trip_change
from eqpdenet.app.config import DataConfig
from eqpdenet.app.training import load_checkpoint, prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=positive_int, default=500)
    parser.add_argument("--degrees", type=float, default=37.0)
    parser.add_argument("--data-dir", default=os.environ.get("EQPDENET_DATA"))
    args = parser.parse_args()
    checkpoints = sorted((args.folder / "checkpoints").glob("*.pt"))
    if not checkpoints:
        parser.error(f"no checkpoints in {args.folder / 'checkpoints'}")
    data = prepare_data(DataConfig(test_subset=args.images), args.data_dir, None)
    x = data["test"].images[:args.images]
    print(f"| model | change under {args.degrees:g}° | change under {args.degrees:g}° and back "
          f"| logit norm per image |\n|---|---:|---:|---:|")
    for path in checkpoints:
        model, _, _ = load_checkpoint(path)
        model.eval()
        logits, failed = logits_by_image(model, x, 250)
        lost = f" ({int(failed.sum())} images without logits)" if failed.any() else ""
        print(f"| {path.stem} | {logit_change(model, x, args.degrees, 250):.3f} "
              f"| {round_trip_change(model, x, args.degrees, 250):.3f} "
              f"| {float(logits[~failed].norm(dim=1).mean()):.1f}{lost} |", flush=True)


if __name__ == "__main__":
    run(main)
