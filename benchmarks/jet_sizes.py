"""How large the SIM(2) normaliser ``N = |∇u|⁴ + |H|²`` is on MNIST digits, against the jet floor
of the joint maps (``invariant_pde.jet_floor``, :mod:`eqpdenet.pde.joint`): where
``N >> jet_floor²`` the maps ``T / (N + jet_floor²)`` are scale invariant, where ``N << jet_floor²``
they are the polynomial ``T / jet_floor²``.

The first 500 training digits of the benchmark's data set (rotmnist), standardised as the
models do (mean 0.1307, std 0.3081), the InvariantPDENet's default jet (isotropic stencils, zero
boundary), float64; "near ink": within 2 pixels of a pixel above 0.1::

    EQPDENET_DATA=../shared/data python benchmarks/jet_sizes.py     # a few seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _args import run  # noqa: E402

from eqpdenet.data.datasets import load_dataset  # noqa: E402
from eqpdenet.pde import jet  # noqa: E402

FLOORS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    images = load_dataset("rotmnist").train_images[:500].double()
    u = (images - 0.1307) / 0.3081
    _, ux, uy, uxx, uxy, uyy = jet(u, stencil="isotropic", boundary="zeros")[:, 0].unbind(1)
    n = (ux**2 + uy**2) ** 2 + uxx**2 + 2 * uxy**2 + uyy**2
    ink = images[:, 0] > 0.1
    near = torch.nn.functional.max_pool2d(ink[:, None].double(), 5, 1, 2)[:, 0] > 0
    print(f"N near ink: median {n[near].median():.3g}, 90th percentile {n[near].quantile(0.9):.3g}")
    print("| jet_floor | N > 10 floor², near ink | N > floor², near ink | N > floor², all pixels |")
    print("|---:|---:|---:|---:|")
    for floor in FLOORS:
        print(f"| {floor:g} | {(n[near] > 10 * floor**2).double().mean():.1%} | "
              f"{(n[near] > floor**2).double().mean():.1%} | {(n > floor**2).double().mean():.1%} |")


if __name__ == "__main__":
    run(main)
