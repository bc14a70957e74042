"""How well conditioned the ratio invariants are, per regularisation (numbers of docs/choices.md).

Not a timing: for layers of random PDEs (seeded N(0, 0.05²) coefficients and biases, as in
tests/kernels), the largest input gradient ``max |d<g, u_T>/du|`` in float64 (a random
cotangent ``g``), and how far the float32 reference is from it (relative to that maximum). Inputs:
uniform noise 11x9 (``noise``) and binary 16x15 patterns on a zero background (``binary``: jets
exactly 0 or of order 1, like a digit). Variants: the registered sets in both modes, and two
that were tried and replaced (``scaling/a²``: the covariant ratio with the numerator's square as
reference, ``sim2/(Δu)²``: ``find_invariants``' ``(Δu)² / det H`` instead of
``|∇u|² Δu / det H``). Last, the rounding noise each stencil leaves on a flat background (a
family with a scale of its own, such as ``gaussian``, at ``sigma = 1`` pixel).

    python benchmarks/ratio_conditioning.py      # seconds, one thread is enough
"""

from __future__ import annotations

import argparse
import warnings

import torch

from eqpdenet.pde import PDELayer, available_stencils, jet
from eqpdenet.pde.invariants import (
    Invariant,
    InvariantSet,
    get_invariant_set,
    hessian_reference_sq,
)
from eqpdenet.pde.stencils import stencil_has_scale


def _variants() -> dict[str, InvariantSet]:
    sim2 = get_invariant_set("sim2")
    lap = lambda d: d.u_xx + d.u_yy  # noqa: E731
    det = lambda d: d.u_xx * d.u_yy - d.u_xy**2  # noqa: E731
    laplacian_sq = Invariant("laplacian_sq_over_hess_det", "(Δu)² / det H", "",
                             lambda d, ratio: ratio(lap(d) ** 2, det(d),
                                                    hessian_reference_sq(d) ** 2))
    numerator_squared = [
        Invariant(f"{a}2_over_{b}", "", "", lambda d, ratio, a=a, b=b: ratio(
            getattr(d, a) ** 2, getattr(d, b), getattr(d, a) ** 4))
        for a in ("u_x", "u_y") for b in ("u_xx", "u_xy", "u_yy")]
    return {
        "scaling/a²": InvariantSet("scaling/a²", "scalings", 2, numerator_squared),
        "sim2/(Δu)²": InvariantSet("sim2/(Δu)²", "SIM(2)", 2,
                                   [*sim2.invariants[:2], laplacian_sq, sim2.invariants[3]]),
    }


def _layer(invariants, mode: str, steps: int, dtype: torch.dtype) -> PDELayer:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(invariants, T=steps * 0.1, dt=0.1, init="normal", init_scale=0.05,
                               ratio_regularisation=mode, backend="reference")
    with torch.no_grad():
        for pde in layer.pdes:
            pde.step.rhs.F.bias.normal_(0.0, 0.05)
    return layer.to(dtype)


def _inputs(name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if name == "noise":
        return torch.rand(3, 2, 11, 9, dtype=torch.float64, generator=generator)
    u = torch.zeros(3, 2, 16, 15, dtype=torch.float64)
    u[..., 3:13, 3:12] = torch.rand(3, 2, 10, 9, dtype=torch.float64, generator=generator).round()
    return u


def measure(invariants, mode: str, steps: int, inputs: str) -> tuple[float, float]:
    """(largest float64 input gradient, float32 reference's distance to it / that maximum)."""
    u64 = _inputs(inputs)
    cotangent = torch.randn(u64.shape[0], len(invariants), *u64.shape[1:], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(2))
    grads = []
    for dtype in (torch.float64, torch.float32):
        layer = _layer(invariants, mode, steps, dtype)
        u = u64.to(dtype).requires_grad_(True)
        (grad,) = torch.autograd.grad((layer.evolve(u) * cotangent.to(dtype)).sum(), u)
        grads.append(grad.double())
    scale = grads[0].abs().max().item()
    return scale, (grads[1] - grads[0]).abs().max().item() / scale


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    variants = _variants()
    cases = [
        ("paper's 4 PDEs", ["se2", "se2", "scaling", "scaling"], ("absolute", "covariant")),
        ("paper's 4 PDEs, ref = a²", ["se2", "se2", variants["scaling/a²"],
                                      variants["scaling/a²"]], ("covariant",)),
        ("scaling", ["scaling"], ("absolute", "covariant")),
        ("sim2", ["sim2"], ("absolute", "covariant")),
        ("sim2 with (Δu)²/det H", [variants["sim2/(Δu)²"]], ("absolute", "covariant")),
    ]
    print("| layer | mode | inputs | steps | max input gradient (float64) | float32 error |")
    print("|---|---|---|---:|---:|---:|")
    for label, invariants, modes in cases:
        for mode in modes:
            for inputs in ("noise", "binary"):
                for steps in (3, 10):
                    scale, error = measure(invariants, mode, steps, inputs)
                    print(f"| {label} | {mode} | {inputs} | {steps} | {scale:.3g} | {error:.1e} |")
    print("\nLargest |derivative| of a constant image (MNIST's standardised background), float32:")
    for label, noise in background_noise().items():
        print(f"  {label}: {noise:.2g}")


def background_noise() -> dict[str, float]:
    """Per registered stencil (a family with a scale of its own at ``sigma = 1`` pixel, named
    so), the largest derivative of its jet of a flat float32 background (0 where exact)."""
    background = torch.full((1, 1, 8, 8), -0.1307 / 0.3081)
    out = {}
    for stencil in available_stencils():
        sigma = 1.0 if stencil_has_scale(stencil) else None
        label = stencil if sigma is None else f"{stencil} (sigma {sigma:g})"
        out[label] = jet(background, 2, stencil, sigma=sigma)[0, 0, 1:].abs().max().item()
    return out


if __name__ == "__main__":
    main()
