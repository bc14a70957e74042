"""Round 17: the covariant ratios' power of two per plane is read from the plane's largest
``R = |H|^2 + |∇u|^4``, which overflows in float32 once ``|∇u|`` exceeds about 4e9 and underflows
to 0 once the jet is below about 1e-23. The rescaling was then off (``sigma = 1``), and the
unscaled ratios overflowed: the reference raised ``NonFiniteStateError`` on an image of
amplitude 1e10 at spacing 1e-3, the fused kernel returned NaN input gradients without a word at
spacing 1; at amplitude 1e-30 both fell to the guard (states 2 % off). Where ``R`` overflows or
underflows, both backends now read the power from the plane's largest first and second
derivatives (``invariants.component_rescaling``, ``component_rescaling`` in
``csrc/fused_euler.cpp``), which cannot overflow.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from eqpdenet.pde.invariants import (
    Derivatives,
    component_rescaling,
    hessian_reference_sq,
    plane_ratio_rescaling,
    ratio_rescaling,
)
from kernels.test_cpu_kernel import (  # noqa: F401 - extension: the kernel's autouse fixture
    _layer,
    extension,
    uses_kernel,
    waves,
)

HAVE_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _increments_and_gradients(layer, u64: torch.Tensor, dtype, fused: bool):
    """The Euler increment ``u_T - u_0``, the gradient of ``<u_T - u_0, c>`` with respect to the
    input and to every F weight and bias (fixed cotangent ``c``), in float64. The increment, not
    ``u_T``: at amplitude 1e10 the state is the input to float32's last digit."""
    u = u64.to(dtype).requires_grad_(True)
    out = layer.evolve(u) if fused else layer.evolve_reference(u)
    assert uses_kernel(out) == fused
    increment = out - u
    cotangent = torch.randn(out.shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(2)).to(dtype)
    grads = torch.autograd.grad((increment * cotangent).sum(),
                                [u, *(p for n, p in layer.named_parameters() if "pdes" in n)])
    return [t.double() for t in (increment, *grads)]


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("amplitude, spacing", [
    (1e10, 1.0), (1e10, 1e-3), (1e20, 100.0), (1e20, 1.0), (1e-30, 1.0)],
    ids=["1e10", "1e10-fine", "1e20-coarse", "1e20-capped", "1e-30"])
def test_float32_covariant_ratios_where_R_overflows_or_underflows(amplitude, spacing, fused):
    # Float64 at the same amplitude and spacing is the truth: there R (1e40 to 1e80, or 1e-120)
    # is a normal number and the plane's power comes from it. At 1e20 and spacing 1 the power
    # needed (2^-66) is beyond the cap of 2^-63, which still leaves R finite.
    if fused and not HAVE_COMPILER:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    u64 = waves((2, 1, 11, 9), torch.float64) * amplitude
    layers = {dtype: _layer(("sim2", "scaling"), dtype, ratio_regularisation="covariant",
                            spacing=spacing) for dtype in (torch.float64, torch.float32)}
    truth = _increments_and_gradients(layers[torch.float64], u64, torch.float64, fused=False)
    got = _increments_and_gradients(layers[torch.float32], u64, torch.float32, fused=fused)
    assert all(bool(torch.isfinite(t).all()) for t in got)
    errors = [(g - t).abs().max().item() / t.abs().max().item() for g, t in zip(got, truth,
                                                                               strict=True)]
    # float32 rounding through 3 steps of well-conditioned ratios (measured <= 2e-5 at unit
    # amplitude, tests/kernels/test_fused_ratio_rescaling_round16.py)
    assert max(errors) <= 1e-4, errors


def test_component_rescaling_exact_powers():
    first = torch.tensor([3.0, 0.0, 0.5, 1.0, 0.0, 1e38, 1e-38, float("inf"), 1.0])
    second = torch.tensor([8.0, 8.0, 0.0, 1024.0, 0.0, 0.0, 0.0, 1.0, float("nan")])
    sigma = component_rescaling(first, second)
    # k = max(floor(log2 first), floor(floor(log2 second) / 2)): 3 -> 1 and 8 -> 1; 8 -> 1;
    # 0.5 -> -1; 1 -> 0 and 1024 -> 5; nothing to read -> 1; 1e38 -> 126, capped at 63;
    # 1e-38 -> -127, capped at -63; not finite -> 1
    expected = [2.0**-1, 2.0**-1, 2.0, 2.0**-5, 1.0, 2.0**-63, 2.0**63, 1.0, 1.0]
    assert sigma.tolist() == expected
    # floor(log2) exact next to a power of two, where log2 rounds to the integer
    below = torch.tensor([math.nextafter(2.0**20, 0.0)], dtype=torch.float64)
    assert component_rescaling(below, torch.zeros(1, dtype=torch.float64)).item() == 2.0**-19
    # the cap keeps sigma^2 normal in every floating dtype
    for dtype, cap in ((torch.float16, 7), (torch.bfloat16, 63), (torch.float64, 511)):
        huge = torch.tensor([torch.finfo(dtype).max], dtype=dtype)
        assert component_rescaling(huge, huge).item() == 2.0**-cap


def _jet(scale: float, dtype=torch.float32) -> Derivatives:
    jet = waves((2, 6, 7, 5), torch.float64).mul(scale).to(dtype)
    return Derivatives(jet)


def test_the_plane_power_comes_from_R_wherever_R_is_a_positive_number():
    # the rule every committed covariant result was computed with stays as it was, bit for bit
    d = _jet(1.0)
    largest = hessian_reference_sq(d).amax(dim=(-2, -1), keepdim=True)
    assert torch.equal(plane_ratio_rescaling(d), ratio_rescaling(largest))
    # where R overflows (float32, |∇u| ~ 1e10), the components decide, and the rescaled R is
    # in [1, 80)
    d = _jet(1e10)
    assert not torch.isfinite(hessian_reference_sq(d)).all()
    sigma = plane_ratio_rescaling(d)
    rescaled = Derivatives(torch.stack([d.u, d.u_x * sigma, d.u_y * sigma, d.u_xx * sigma**2,
                                        d.u_xy * sigma**2, d.u_yy * sigma**2], dim=-3))
    largest = hessian_reference_sq(rescaled).amax(dim=(-2, -1))
    assert bool(((largest >= 1) & (largest < 80)).all()), largest
