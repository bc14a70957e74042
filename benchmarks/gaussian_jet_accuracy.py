"""Where the ``gaussian`` stencil's error comes from: the truncation at ``GAUSSIAN_TRUNCATE = 4``
standard deviations, measured under refinement; the numbers docs/symbolic.md states ("Accuracy,
and what the moment correction costs" and "The floor is the truncation at 4 sigma").

Printed, in float64 (a few seconds):

1. the largest error of ``u_xx`` on a Gaussian blob of width ``2 sigma`` (the same picture
   sampled ever more finely as sigma grows), relative to the largest ``|u_xx|``, against the
   exact ``(G_sigma * blob)''``: the library's stencil (``gaussian_derivative_weights``, truncated
   at 4 sigma, moments corrected), the same correction truncated at 6 sigma, and the plain
   sampled Gaussian derivative at 4 and 6 sigma; then the 2-D ``gaussian_jet`` (the lifted
   model's jet) on the 2-D blob;
2. the scale-normalisation promise: the normalised ``sigma^2 u_xx`` of the blob at ``sigma = 1``
   against that of its copy magnified by ``lambda`` at ``sigma = lambda`` (the same continuous
   value), largest difference over the largest value, at both truncations; then the same at
   ``lambda = 2`` from ``sigma`` below one pixel (0.5, 0.71: the multi-scale option's first
   level), where the sampled stencils alias;
3. what widening the cut would cost: the 1-D stencil's taps ``2 R + 1``, ``R = ceil(t sigma)``,
   at ``t = 4`` and ``t = 6`` (the separable jet costs ``9 (2 R + 1)`` multiply-adds per pixel),
   and the largest sigma the fused M2 kernels (``KERNEL_MAX_TAPS``) then take.

    python benchmarks/gaussian_jet_accuracy.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from eqpdenet.kernels.m2_op import KERNEL_MAX_TAPS
from eqpdenet.pde.m2 import gaussian_jet
from eqpdenet.pde.stencils import GAUSSIAN_TRUNCATE, gaussian_derivative_weights

WIDER = 6.0


def plain_weights(sigma: float, truncate: float) -> np.ndarray:
    """The sampled ``G''`` on ``|k| <= max(ceil(truncate sigma), 2)``, no correction."""
    radius = max(math.ceil(truncate * sigma), 2)
    z = np.arange(-radius, radius + 1.0) / sigma
    return (z * z - 1) * np.exp(-z * z / 2) / (math.sqrt(2 * math.pi) * sigma**3)


def exact_uxx(x: np.ndarray, sigma: float, width: float) -> np.ndarray:
    """``(G_sigma * exp(-x^2 / (2 s^2)))''``: the blur is a Gaussian of variance ``s^2 + sigma^2``."""
    v = width * width + sigma * sigma
    return width / math.sqrt(v) * (x * x / v**2 - 1 / v) * np.exp(-x * x / (2 * v))


def stencil_uxx(weights: np.ndarray, x: np.ndarray, width: float) -> np.ndarray:
    """Cross-correlation ``sum_k w_k f(x + k)`` with ``f`` the blob evaluated exactly (no border)."""
    radius = len(weights) // 2
    return sum(w * np.exp(-(x + k) ** 2 / (2 * width * width))
               for k, w in zip(range(-radius, radius + 1), weights, strict=True))


def uxx_error(sigma: float, width: float, truncate: float = GAUSSIAN_TRUNCATE,
              corrected: bool = True) -> float:
    """Largest error of ``u_xx`` over the largest ``|u_xx|`` (1-D, float64)."""
    weights = (gaussian_derivative_weights(2, sigma, 2, truncate=truncate) if corrected
               else plain_weights(sigma, truncate))
    x = np.arange(-math.ceil(8 * width), math.ceil(8 * width) + 1.0)
    exact = exact_uxx(x, sigma, width)
    return float(np.abs(stencil_uxx(weights, x, width) - exact).max() / np.abs(exact).max())


def jet_uxx_error(sigma: float, width: float) -> float:
    """The same for the 2-D separable ``gaussian_jet`` on ``exp(-(x^2 + y^2) / (2 s^2))``."""
    half = math.ceil(8 * width) + math.ceil(GAUSSIAN_TRUNCATE * sigma)
    c = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(c.flip(0), c, indexing="ij")  # y up
    blob = torch.exp(-(x * x + y * y) / (2 * width * width))
    uxx = gaussian_jet(blob[None], sigma, "zeros", scale_normalised=False)[0, 3]
    v = width * width + sigma * sigma
    exact = width**2 / v * (x * x / v**2 - 1 / v) * torch.exp(-(x * x + y * y) / (2 * v))
    return float((uxx - exact).abs().max() / exact.abs().max())


def magnified_difference(scale: float, truncate: float, width: float = 2.0,
                         sigma: float = 1.0) -> float:
    """``sigma^2 u_xx`` of the blob of width ``s`` at ``sigma`` (points ``k``) against its copy
    magnified by ``scale`` at ``scale sigma`` (points ``scale k``)."""
    x = np.arange(-math.ceil(8 * width), math.ceil(8 * width) + 1.0)
    small = sigma**2 * stencil_uxx(gaussian_derivative_weights(2, sigma, 2, truncate=truncate),
                                   x, width)
    big = (scale * sigma)**2 * stencil_uxx(
        gaussian_derivative_weights(2, scale * sigma, 2, truncate=truncate), scale * x,
        scale * width)
    return float(np.abs(big - small).max() / np.abs(small).max())


def taps(sigma: float, truncate: float) -> int:
    return 2 * max(math.ceil(truncate * sigma), 2) + 1


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    print("1. u_xx of a Gaussian blob of width 2 sigma: largest error / largest |u_xx| (1-D)")
    print(f"| sigma | library (cut {GAUSSIAN_TRUNCATE:g} sigma) | same correction, cut {WIDER:g} "
          f"sigma | plain, cut {GAUSSIAN_TRUNCATE:g} | plain, cut {WIDER:g} |")
    print("|---:|---:|---:|---:|---:|")
    for sigma in (1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0):
        row = [uxx_error(sigma, 2 * sigma, t, c) for c in (True, False)
               for t in (GAUSSIAN_TRUNCATE, WIDER)]
        print(f"| {sigma:g} | {row[0]:.1e} | {row[1]:.1e} | {row[2]:.1e} | {row[3]:.1e} |")
    print("\n   the 2-D gaussian_jet (lifted model), blob of width 2 sigma: "
          + ", ".join(f"sigma {s:g}: {jet_uxx_error(s, 2 * s):.1e}" for s in (1.0, 2.0, 4.0)))

    print("\n2. sigma^2 u_xx of a blob of width 2 at sigma = 1 against its copy magnified by "
          "lambda at sigma = lambda")
    print(f"| lambda | cut {GAUSSIAN_TRUNCATE:g} sigma | cut {WIDER:g} sigma |")
    print("|---:|---:|---:|")
    for scale in (2.0, 4.0, 8.0):
        print(f"| {scale:g} | {magnified_difference(scale, GAUSSIAN_TRUNCATE):.1e} | "
              f"{magnified_difference(scale, WIDER):.1e} |")

    print("\n   below one pixel the sampled stencils alias: a blob of width 2 sigma at sigma "
          "against its copy magnified by 2 at 2 sigma, cut 4 sigma: "
          + ", ".join(f"sigma {s:g}: {magnified_difference(2.0, GAUSSIAN_TRUNCATE, 2 * s, s):.1e}"
                      for s in (0.5, 0.71, 1.0, 1.5)))

    print(f"\n3. 1-D stencil taps (2 R + 1) at cut {GAUSSIAN_TRUNCATE:g} and {WIDER:g} sigma")
    print(f"| sigma | cut {GAUSSIAN_TRUNCATE:g} | cut {WIDER:g} | ratio |")
    print("|---:|---:|---:|---:|")
    for sigma in (0.71, 1.0, 1.41, 2.0, 4.0):
        narrow, wide = taps(sigma, GAUSSIAN_TRUNCATE), taps(sigma, WIDER)
        print(f"| {sigma:g} | {narrow} | {wide} | {wide / narrow:.2f} |")
    for t in (GAUSSIAN_TRUNCATE, WIDER):
        largest = max(s / 100 for s in range(50, 2001) if taps(s / 100, t) <= KERNEL_MAX_TAPS)
        print(f"   largest sigma (to 0.01 px) within the fused kernels' {KERNEL_MAX_TAPS} taps at cut "
              f"{t:g} sigma: {largest:g}")


if __name__ == "__main__":
    main()
