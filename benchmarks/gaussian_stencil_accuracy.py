"""How close the ``gaussian`` stencil's derivatives are to those of the continuous blur, and what
its Laplacian's symbol is: the numbers docs/symbolic.md states ("The Gaussian jet's accuracy").

The stencil (``eqpdenet.pde.stencils.gaussian_derivative_weights``) is the sampled Gaussian
derivative truncated at ``R = ceil(4 sigma)``, times a polynomial that makes its discrete
moments exact (so that polynomials up to degree ``order + 1`` get the jet of their blur
exactly). Printed, in float64:

1. the largest error of ``u_xx`` on an anisotropic Gaussian blob (whose blur is a Gaussian, so
   the exact value is known), relative to the largest ``|u_xx|``, for the library's stencil and
   for the plain sampled Gaussian derivative on the same support, at sigma 1 and 1.5 pixels;
2. the Laplacian's largest eigenvalue (the explicit Euler bound's ``lambda_max``) against the
   continuous ``2 / (e sigma^2)``, and the symbol's largest value (0 for a Laplacian that damps
   every frequency; positive where the moment correction lets a frequency grow slightly).

    python benchmarks/gaussian_stencil_accuracy.py      # a few seconds
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from eqpdenet import jet
from eqpdenet.pde.stencils import derivative_index, stencil_kernels


def blob_errors(sigma: float, widths: tuple[float, float]) -> tuple[float, float]:
    a, b = widths
    c = torch.arange(81, dtype=torch.float64) - 40.0
    y, x = torch.meshgrid(c.flip(0), c, indexing="ij")  # y up
    u = torch.exp(-(x**2 / (2 * a * a) + y**2 / (2 * b * b)))
    wide_a, wide_b = a * a + sigma * sigma, b * b + sigma * sigma  # blurred: a Gaussian again
    blurred = a * b / math.sqrt(wide_a * wide_b) * torch.exp(-(x**2 / (2 * wide_a)
                                                               + y**2 / (2 * wide_b)))
    exact = (x * x / wide_a**2 - 1 / wide_a) * blurred
    library = jet(u[None, None], 2, "gaussian", sigma=sigma, boundary="zeros")[0, 0,
                                                                               derivative_index("u_xx")]
    radius = math.ceil(4 * sigma)
    z = np.arange(-radius, radius + 1) / sigma
    g0 = np.exp(-z * z / 2) / (math.sqrt(2 * math.pi) * sigma)
    g2 = (z * z - 1) * np.exp(-z * z / 2) / (math.sqrt(2 * math.pi) * sigma**3)
    kernel = torch.tensor(np.outer(g0, g2))[None, None]  # rows: y (smoothing), columns: x
    plain = torch.nn.functional.conv2d(torch.nn.functional.pad(u[None, None], (radius,) * 4),
                                       kernel)[0, 0]
    scale = float(exact.abs().max())
    return float((library - exact).abs().max()) / scale, float((plain - exact).abs().max()) / scale


def laplacian_symbol(sigma: float, points: int = 3001) -> tuple[float, float]:
    bank = stencil_kernels("gaussian", 2, sigma)
    kernel = bank[derivative_index("u_xx")] + bank[derivative_index("u_yy")]
    radius = kernel.shape[0] // 2
    theta = np.linspace(-math.pi, math.pi, points)
    phase = np.exp(1j * np.outer(theta, np.arange(-radius, radius + 1)))
    # sum_rc e^{i a r} K[r, c] e^{i b c}: two matrix products (an unoptimised three-operand
    # einsum loops over all four indices at once: minutes at sigma = 4)
    symbol = (phase @ np.asarray(kernel) @ phase.T).real
    return float(-symbol.min()), float(symbol.max())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    print("1. u_xx of a Gaussian blob of widths (a, b) pixels: largest error / largest |u_xx|")
    print("| sigma | widths | library stencil | plain sampled Gaussian, same support |")
    print("|---:|---|---:|---:|")
    for sigma in (1.0, 1.5):
        for widths in ((6.0, 4.0), (3.0, 4.0), (2.0, 3.0), (1.5, 2.5)):
            library, plain = blob_errors(sigma, widths)
            print(f"| {sigma:g} | {widths[0]:g}, {widths[1]:g} | {library:.2e} | {plain:.2e} |")
    print("\n2. The Laplacian's symbol")
    print("| sigma | lambda_max | 2 / (e sigma^2) | ratio - 1 | largest value of the symbol |")
    print("|---:|---:|---:|---:|---:|")
    for sigma in (0.5, 0.6, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        lam, top = laplacian_symbol(sigma)
        continuous = 2 / (math.e * sigma**2)
        print(f"| {sigma:g} | {lam:.4f} | {continuous:.4f} | {lam / continuous - 1:+.1%} | "
              f"{top:.1e} |")


if __name__ == "__main__":
    main()
