"""Accuracy of the fused paper-layer kernel (``csrc/fused_euler.cpp``) at the sizes it is used on:
MNIST's 28x28 and an odd 17x5 (the other tests mostly use 11x9).

Round 6 (probe p2, finding 2) found the kernel outside the tests' own rules there. Two causes:

* Conditioning, not a fault: in float64 the fused and reference input gradients of the paper's
  covariant layer (10 steps, 28x28) differed by 3.3e-10 of their largest entry, against the fixed
  1e-10 of ``test_cpu_kernel.TOL``; moving the input by one rounding unit moves the reference's
  own gradient by up to 6e-10. Over 10 steps the covariant ratios amplify rounding ~5e6-fold,
  so no fixed tolerance is right at every size: float64 is held to the map's measured sensitivity
  (:func:`test_float64_fused_agrees_with_the_reference_within_the_maps_sensitivity`), and float32
  errors are averaged (geometrically) over inputs 1 ulp apart: the largest entry's error of one
  input depends on which few pixels round unluckily, and the reference's varies 50x from one
  such input to the next (a single draw once made it look 5x worse than the reference's).
* A float32 loss: the kernel summed a second difference as ``b0 (L + R) + b1 C``; ``L + R``
  (about ``2|u|``) is rounded before ``2C`` cancels it, where the reference's conv2d sums
  ``(L - 2C) + R``, exact where the image is smooth. The ratios amplify it where a denominator
  nearly vanishes (median float32 input-gradient error 3x-17x the reference's for some
  covariant configurations, within the averaged 4x rule below at 3.5x). Since round 16 the
  covariant sets' instances sum in conv2d's order (in float64 the old order made their
  gradients wrong by up to 1e97 on standardised digits:
  ``tests/kernels/test_fused_ratio_rescaling_round16.py``); the paper's layer (absolute, se2)
  keeps the old order, so that its reproduction stays exactly reproducible by its recorded
  command (docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import statistics

import pytest
import torch

from kernels.test_cpu_kernel import (  # noqa: F401 - extension: the kernel's autouse fixture
    NEW_CONFIGS,
    _layer,
    extension,
    uses_kernel,
    waves,
)

if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: the fused kernel cannot be built here", allow_module_level=True)

#: MNIST's size and an odd one (the covariant ratios' worst cases in round 6 were on these).
SHAPES = {"28x28": (2, 2, 28, 28), "17x5": (3, 2, 17, 5)}
#: Float64 (full steps): five 28x28 images, the probe's case (its fourth is the ill-conditioned one).
F64_SHAPES = {"28x28": (5, 2, 28, 28), "17x5": (3, 2, 17, 5)}
#: Inputs 1 ulp apart over which a float32 error is averaged (the first is the input itself).
PERTURBATIONS = 5




def _nudged(u: torch.Tensor, k: int, ulps: float) -> torch.Tensor:
    """``u`` itself for ``k = 0``, else ``u (1 + d)`` with ``|d| <= ulps`` (seeded by ``k``)."""
    if k == 0:
        return u
    generator = torch.Generator().manual_seed(1000 + k)
    d = (torch.rand(u.shape, generator=generator, dtype=torch.float64) * 2 - 1) * ulps
    return (u.double() * (1 + d)).to(u.dtype)


def _outputs(layer, u, gout, fused: bool) -> list[torch.Tensor]:
    """States and the gradients of ``<states, gout>`` w.r.t. ``u`` and each PDE's F weight and
    bias, in float64."""
    u = u.clone().requires_grad_(True)
    out = layer.evolve(u) if fused else layer.evolve_reference(u)
    assert uses_kernel(out) == fused
    parameters = [p for name, p in layer.named_parameters() if "pdes" in name]
    grads = torch.autograd.grad((out * gout.to(out.dtype)).sum(), [u, *parameters])
    return [t.detach().double() for t in (out, *grads)]


def _relative_error(a: torch.Tensor, truth: torch.Tensor) -> float:
    return ((a - truth).abs().max() / truth.abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("config", NEW_CONFIGS, ids=[str(i) for i in range(len(NEW_CONFIGS))])
def test_float32_fused_is_as_accurate_as_the_reference(config, shape):
    """Every configuration of ``test_cpu_kernel.NEW_CONFIGS`` (3 steps), for the states and every
    gradient: the fused kernel's float32 error is at most 4 times the reference's (or 1e-5 of
    the largest value). An error is the distance to the float64 reference at the same float32
    input, relative to the largest entry, averaged geometrically over :data:`PERTURBATIONS`
    inputs 1 ulp apart (module docstring). Measured here: at most 1.8x (x86-64 AVX2); the
    former ``(L + R) - 2C`` reached 3.5x on these inputs and 17x on others."""
    config = dict(config, steps=min(config["steps"], 3))
    layers = {dtype: _layer(dtype=dtype, **config) for dtype in (torch.float32, torch.float64)}
    u = waves(shape, torch.float32)
    gout = torch.randn(shape[0], len(config["invariants"]), *shape[1:], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2))
    errors = {"reference": [], "fused": []}
    for k in range(PERTURBATIONS):
        u_k = _nudged(u, k, 2.0**-24)
        truth = _outputs(layers[torch.float64], u_k.double(), gout, fused=False)
        for name, fused in (("reference", False), ("fused", True)):
            outputs = _outputs(layers[torch.float32], u_k, gout, fused)
            errors[name].append([_relative_error(a, t) for a, t in zip(outputs, truth, strict=True)])
    names = ["states", "input", *(n for n, _ in layers[torch.float32].named_parameters() if "pdes" in n)]
    for i, name in enumerate(names):
        reference, fused = (statistics.geometric_mean(max(e[i], 1e-30) for e in errors[key])
                            for key in ("reference", "fused"))
        assert fused <= max(4 * reference, 1e-5), (name, fused, reference)


@pytest.mark.parametrize("shape", F64_SHAPES.values(), ids=F64_SHAPES.keys())
@pytest.mark.parametrize("config", NEW_CONFIGS, ids=[str(i) for i in range(len(NEW_CONFIGS))])
def test_float64_fused_agrees_with_the_reference_within_the_maps_sensitivity(config, shape):
    """Float64, every configuration at its full number of steps (10 for the paper's layer): the
    fused and reference results differ by at most ``max(1e-10, 4 s)`` of their largest entry,
    ``s`` the largest change of the reference's own result when the input moves by one float64
    rounding unit (two such inputs): a condition estimate times the unit roundoff, the size of
    the difference rounding alone makes between two correct implementations. On these 28x28
    waves ``s`` is 3.5e-10 for the input gradient of the paper's covariant layer (configuration
    0) and 1.9e-10 for ``sim2`` (configuration 2), whose fused and reference input gradients
    differ by 1.2e-10: above the fixed 1e-10 the 11x9 tests use, by rounding alone."""
    layer = _layer(dtype=torch.float64, **config)
    u = waves(shape, torch.float64)
    gout = torch.randn(shape[0], len(config["invariants"]), *shape[1:], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2))
    reference = _outputs(layer, u, gout, fused=False)
    fused = _outputs(layer, u, gout, fused=True)
    sensitivity = [0.0] * len(reference)
    for k in (1, 2):
        moved = _outputs(layer, _nudged(u, k, 2.0**-53), gout, fused=False)
        sensitivity = [max(s, _relative_error(m, r))
                       for s, m, r in zip(sensitivity, moved, reference, strict=True)]
    for i, (f, r, s) in enumerate(zip(fused, reference, sensitivity, strict=True)):
        assert _relative_error(f, r) <= max(1e-10, 4 * s), (i, _relative_error(f, r), s)
