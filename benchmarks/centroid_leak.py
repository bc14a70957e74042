"""How much a ROTMNIST digit's place in its frame says about the angle it was turned by.

MNIST centres each digit by its centre of mass on the pixel (14, 14) (row, column; in whole
pixels, so the centre of mass lies within half a pixel of it), and our ROTMNIST generator
(docs/data.md) turns each digit about the frame's centre (13.5, 13.5). The centre of mass of a
turned digit therefore sits about 0.7 pixel from the frame's centre, in a direction that turns
with the digit: a model that is invariant to rotations about the frame's centre can still read
the digit's angle from it, and so tell a 6 from a 9 turned by 180 degrees. This measures it:

* MNIST's centre of mass (mean, std, range) on the training and test digits;
* on ROTMNIST, the direction of the offset ``m - (13.5, 13.5)`` as an estimate of the angle the
  generator drew (the MNIST offset turned by it), and the fraction of digits whose estimate is
  within 90 degrees of the truth (it says which way is up; chance: 50 %);
* the same after the whole-pixel centring of ``lifted_pde.center`` / ``gcnn.center``
  (:mod:`eqpdenet.models.centering`), which moves the centre of mass to within half a pixel of
  the frame's centre and so removes only part of the offset;
* the same on the set generated with ``data.rotation_centre = "mass"`` (each digit turned about
  its own centre of mass; generated and cached on the first call, about a minute).

::

    EQPDENET_DATA=../shared/data python benchmarks/centroid_leak.py --out results/centroid-leak
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from _args import check_output, nonnegative_int, run

from eqpdenet.app.files import atomic_write
from eqpdenet.data.mnist import load_mnist
from eqpdenet.data.rotmnist import load_rotmnist
from eqpdenet.models.centering import center_of_mass, recenter


def centre_of_mass_stats(images: np.ndarray) -> dict:
    """Mean, std, min, max of the (row, column) centre of mass of ``(n, 28, 28)`` images."""
    m = center_of_mass(torch.from_numpy(images.astype(np.float32))[:, None]).numpy()
    return {axis: {"mean": float(m[:, i].mean()), "std": float(m[:, i].std()),
                   "min": float(m[:, i].min()), "max": float(m[:, i].max())}
            for i, axis in enumerate(("row", "column"))}


def angle_from_offset(images: torch.Tensor, mnist_offset: tuple[float, float]) -> np.ndarray:
    """The angle (radians, counterclockwise as displayed) that turns ``mnist_offset`` (row,
    column) onto each image's offset of its centre of mass from the frame's centre."""
    size = images.shape[-1]
    m = center_of_mass(images).numpy() - (size - 1) / 2
    # (row, column) -> (x right, y up)
    angle = np.arctan2(-m[:, 0], m[:, 1])
    reference = math.atan2(-mnist_offset[0], mnist_offset[1])
    return angle - reference


def says_which_way_is_up(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Percentage of estimates within 90 degrees of the truth (chance: 50)."""
    error = np.angle(np.exp(1j * (estimate - truth)))
    return 100.0 * float((np.abs(error) < math.pi / 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="the ROTMNIST generator's seed")
    parser.add_argument("--out", type=Path, help="write leak.json and leak.md here")
    args = parser.parse_args()
    check_output(parser, "--out", args.out, folder=True)
    start = time.perf_counter()
    mnist = load_mnist(args.data_dir)
    stats = {"train": centre_of_mass_stats(mnist.train_images),
             "test": centre_of_mass_stats(mnist.test_images)}
    offset = tuple(stats["train"][axis]["mean"] - 13.5 for axis in ("row", "column"))
    rot = load_rotmnist(args.data_dir, args.cache_dir, seed=args.seed, source="generated")
    mass = load_rotmnist(args.data_dir, args.cache_dir, seed=args.seed, source="generated",
                         rotation_centre="mass")
    record = {"mnist_centre_of_mass": stats, "mnist_offset": offset, "seed": args.seed}
    for split, images, angles, about_mass in (
            ("train", rot.train_images, rot.train_angles, mass.train_images),
            ("test", rot.test_images, rot.test_angles, mass.test_images)):
        images = images[:, None] if images.dim() == 3 else images
        truth = angles.numpy()
        record[split] = {
            "digits": len(images),
            "offset_px": float(np.linalg.norm(center_of_mass(images).numpy() - 13.5, axis=1)
                               .mean()),
            "which_way_up": says_which_way_is_up(angle_from_offset(images, offset), truth),
            "which_way_up_centred": says_which_way_is_up(
                angle_from_offset(recenter(images), offset), truth),
            "which_way_up_about_mass": says_which_way_is_up(
                angle_from_offset(about_mass, offset), truth),
        }
    record["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "leak.json", (json.dumps(record, indent=1) + "\n").encode())
        s = stats["train"]
        lines = [
            "MNIST's centre of mass (row, column) on its 60,000 training digits: "
            f"{s['row']['mean']:.3f} ± {s['row']['std']:.3f} (range {s['row']['min']:.2f}-"
            f"{s['row']['max']:.2f}), {s['column']['mean']:.3f} ± {s['column']['std']:.3f} "
            f"(range {s['column']['min']:.2f}-{s['column']['max']:.2f}); the ROTMNIST generator "
            f"(seed {args.seed}) turns about (13.5, 13.5). `python benchmarks/centroid_leak.py`.",
            "", "| split | digits | mean offset of the centre of mass (px) | angle's half-plane "
            "read from the offset | the same after whole-pixel centring | the same, "
            "`rotation_centre = \"mass\"` |", "|---|---:|---:|---:|---:|---:|"]
        for split in ("train", "test"):
            r = record[split]
            lines.append(f"| {split} | {r['digits']:,} | {r['offset_px']:.3f} | "
                         f"{r['which_way_up']:.1f} % | {r['which_way_up_centred']:.1f} % | "
                         f"{r['which_way_up_about_mass']:.1f} % |")
        atomic_write(args.out / "leak.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    run(main)
