"""How much of a model's logit change under a rotation is the resampling, not the rotation.

For each checkpoint of a benchmark folder (``<folder>/checkpoints/*.pt``), on the first
``--images`` test digits: the relative logit change ``||l(g f) − l(f)|| / ||l(f)||`` under a
rotation by ``--degrees`` (as in the benchmark table), the same for a rotation by ``--degrees``
and back (bilinear resampling twice, no net rotation), and the mean logit norm per image::

    EQPDENET_DATA=../shared/data python benchmarks/interpolation_sensitivity.py results/benchmark
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from eqpdenet.analysis.robustness import _logits, _rotation
from eqpdenet.app.config import DataConfig
from eqpdenet.app.training import load_checkpoint, prepare_data


def _change(model, logits: torch.Tensor, images: torch.Tensor) -> float:
    moved = _logits(model, images, 250)
    return float(torch.linalg.vector_norm(moved - logits) / torch.linalg.vector_norm(logits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--degrees", type=float, default=37.0)
    parser.add_argument("--data-dir", default=os.environ.get("EQPDENET_DATA"))
    args = parser.parse_args()
    data = prepare_data(DataConfig(test_subset=args.images), args.data_dir, None)
    x = data["test"].images[:args.images]
    print(f"| model | change under {args.degrees:g}° | change under {args.degrees:g}° and back "
          f"| logit norm per image |\n|---|---:|---:|---:|")
    for path in sorted((args.folder / "checkpoints").glob("*.pt")):
        model, _, _ = load_checkpoint(path)
        model.eval()
        logits = _logits(model, x, 250)

        turned = _rotation(args.degrees)(x)
        back = _rotation(-args.degrees)(turned)
        print(f"| {path.stem} | {_change(model, logits, turned):.3f} "
              f"| {_change(model, logits, back):.3f} "
              f"| {float(logits.norm(dim=1).mean()):.1f} |")


if __name__ == "__main__":
    main()
