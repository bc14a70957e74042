"""How well conditioned the ratio invariants are, per regularisation (numbers of docs/choices.md).

Not a timing: for layers of random PDEs (seeded N(0, 0.05²) coefficients and biases, as in
tests/kernels), the largest input gradient ``max |d<g, u_T>/du|`` in float64 (a random
cotangent ``g``), and how far the float32 reference is from it (relative to that maximum). Inputs:
uniform noise 11x9 (``noise``) and binary 16x15 patterns on a zero background (``binary``: jets
exactly 0 or of order 1, like a digit). Variants: the registered sets in both modes, and two
that were tried and replaced (``scaling/a²``: the covariant ratio with the numerator's square as
reference, ``sim2/(Δu)²``: ``find_invariants``' ``(Δu)² / det H`` instead of
``|∇u|² Δu / det H``). Last, the rounding noise each stencil leaves on a flat background (a
family with a scale of its own, such as ``gaussian``, at ``sigma = 1`` pixel). Then the same
float32 error for the covariant ``scaling`` and ``sim2`` per backend (the reference and the fused
C++ kernel, :mod:`eqpdenet.kernels`) at grid spacings 1e-5 to 1e6 (the float64 truth is the
reference at the same spacing; "not finite" where the float32 gradient is NaN or inf), and on
MNIST's first 32 test digits at unit spacing for the layers of :data:`DIGIT_CASES` (the data
folder as the CLI finds it: ``--data-dir`` > ``EQPDENET_DATA``; skipped where it holds no MNIST).

    python benchmarks/ratio_conditioning.py      # seconds, one thread is enough
"""

from __future__ import annotations

import argparse
import warnings

import torch

from eqpdenet.data.mnist import MNIST_FILES, find_mnist_file, read_idx, resolve_data_dir
from eqpdenet.errors import NonFiniteStateError
from eqpdenet.pde import PDELayer, available_stencils, jet
from eqpdenet.pde.invariants import (
    Invariant,
    InvariantSet,
    get_invariant_set,
    hessian_reference_sq,
)
from eqpdenet.pde.layer import LayerConfig
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


def _layer(invariants, mode: str, steps: int, dtype: torch.dtype, backend: str = "reference",
           spacing: float = 1.0) -> PDELayer:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(invariants, T=steps * 0.1, dt=0.1, init="normal", init_scale=0.05,
                               ratio_regularisation=mode, backend=backend, spacing=spacing)
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


def measure(invariants, mode: str, steps: int, inputs: str, backend: str = "reference",
            spacing: float = 1.0) -> tuple[float, float]:
    """(largest float64 input gradient of the reference, the float32 ``backend``'s distance to
    it / that maximum; inf where the float32 gradient is not finite)."""
    u64 = _inputs(inputs)
    cotangent = torch.randn(u64.shape[0], len(invariants), *u64.shape[1:], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(2))
    grads = []
    for dtype, used in ((torch.float64, "reference"), (torch.float32, backend)):
        layer = _layer(invariants, mode, steps, dtype, used, spacing)
        u = u64.to(dtype).requires_grad_(True)
        try:
            (grad,) = torch.autograd.grad((layer.evolve(u) * cotangent.to(dtype)).sum(), u)
        except NonFiniteStateError:
            grad = torch.full_like(u, float("nan"))
        grads.append(grad.double())
    scale = grads[0].abs().max().item()
    if not bool(torch.isfinite(grads[1]).all()):
        return scale, float("inf")
    return scale, (grads[1] - grads[0]).abs().max().item() / scale


#: The layers measured on digits: (label, invariants, standardised inputs, T, init_noise).
DIGIT_CASES = [
    ("se2, sim2; [0, 1]; T 0.3; noise 0.05", ["se2", "sim2"], False, 0.3, 0.05),
    ("scaling; [0, 1]; T 0.3; noise 0.05", ["scaling"], False, 0.3, 0.05),
    ("se2_sim2 preset; standardised; T 1; noise 0.01", ["se2", "se2", "sim2", "sim2"], True, 1.0,
     0.01),
    ("4 sim2; standardised; T 1; noise 0.05", ["sim2"] * 4, True, 1.0, 0.05),
    ("2 scaling; standardised; T 1; noise 0.05", ["scaling"] * 2, True, 1.0, 0.05),
]


def digit_gradient_errors(data_dir: str | None) -> dict[str, dict[str, float]] | None:
    """Per case of :data:`DIGIT_CASES` and float32 backend, on MNIST's first 32 test digits
    (covariant ratios, a fixed cotangent): the largest input-gradient entry in float64
    (``"scale"``), each backend's largest input-gradient error against it (``"<backend>"``) and
    its largest F-gradient error relative to the largest float64 F gradient
    (``"<backend> F"``), and the float64 fused kernel's largest input-gradient difference to
    the float64 reference (``"fused float64"``); ``None`` without MNIST."""
    path = find_mnist_file(resolve_data_dir(data_dir), "test_images")
    if path is None:
        return None
    digits = torch.from_numpy(read_idx(path, spec=MNIST_FILES["test_images"])[:32].copy())
    unit = digits.unsqueeze(1).double() / 255
    out = {}
    for label, invariants, standardised, horizon, noise in DIGIT_CASES:
        x = (unit - 0.1307) / 0.3081 if standardised else unit
        grads = {}
        for dtype, backend in ((torch.float64, "reference"), (torch.float32, "reference"),
                               (torch.float32, "fused"), (torch.float64, "fused")):
            torch.manual_seed(0)
            layer = PDELayer.from_config(LayerConfig(
                invariants=invariants, ratio_regularisation="covariant", init_noise=noise,
                backend=backend, T=horizon, dt=0.1)).to(dtype)
            u = x.to(dtype).requires_grad_(True)
            y = layer(u)
            weights = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
            grad, *theta = torch.autograd.grad((y * weights).sum(), [u, *layer.parameters()])
            name = (backend if dtype == torch.float32 else
                    "truth" if backend == "reference" else "fused float64")
            grads[name] = (grad.double(), torch.cat([g.double().flatten() for g in theta]))
        truth, theta_truth = grads.pop("truth")
        row = {"scale": truth.abs().max().item(),
               "fused float64": (grads.pop("fused float64")[0] - truth).abs().max().item()}
        for backend, (grad, theta) in grads.items():
            row[backend] = (grad - truth).abs().max().item()
            row[backend + " F"] = ((theta - theta_truth).abs().max().item()
                                   / theta_truth.abs().max().item())
        out[label] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="the folder holding mnist/")
    args = parser.parse_args()
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
    print("\nCovariant ratios in float32 per backend (noise inputs, 3 steps; error as above):\n")
    spacings = (1e-5, 1.0, 100.0, 1e6)
    print("| layer | backend | " + " | ".join(f"spacing {h:g}" for h in spacings) + " |")
    print("|---|---|" + "---:|" * len(spacings))
    for label in ("scaling", "sim2"):
        for backend in ("reference", "fused"):
            errors = [measure([label], "covariant", 3, "noise", backend, h)[1] for h in spacings]
            print(f"| {label} | {backend} | "
                  + " | ".join("not finite" if e == float("inf") else f"{e:.1e}" for e in errors)
                  + " |")
    errors = digit_gradient_errors(args.data_dir)
    if errors is None:
        print("\n(no MNIST in the data folder: the digits' table is skipped)")
        return
    print("\nGradients on 32 MNIST test digits, float32 against the float64 reference (input: "
          "largest error; F: largest error / largest F gradient; last column: the fused kernel "
          "in float64 against the reference in float64):\n")
    print("| layer | largest input gradient | input: reference | input: fused | F: reference "
          "| F: fused | input: fused in float64 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, row in errors.items():
        print(f"| {label} | {row['scale']:.2g} | {row['reference']:.2g} | {row['fused']:.2g} | "
              f"{row['reference F']:.1e} | {row['fused F']:.1e} | {row['fused float64']:.2g} |")


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
