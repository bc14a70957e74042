"""Round 17: the stability checks with coefficients that are NaN or inf.

An outside probe: a NaN or inf convection velocity beside diffusion reached
``torch.linalg.eigvals`` in ``M2SystemRHS.euler_stability``, where MKL's LAPACK crashed the
process (segmentation fault; ``NonFiniteStateError``'s message points users to
``EulerStep.stability()``); a NaN diffusion alone raised a raw ``TypeError``. The planar check
linearised NaN coefficients and called the step stable (every comparison with NaN is False).
Both now report the step unstable, naming the parameters.
"""

from __future__ import annotations

import pytest
import torch

from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.layer import PDELayer
from eqpdenet.pde.m2_rhs import M2SystemRHS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("terms, poisoned", [
    (("convection",), "convection"),
    (("convection", "diffusion"), "convection"),
    (("convection", "diffusion"), "diffusion"),
    (("diffusion",), "diffusion"),
])
def test_m2_step_with_a_non_finite_coefficient_is_unstable(terms, poisoned, value):
    rhs = M2SystemRHS(1, terms, orientations=4, backend="reference").double()
    with torch.no_grad():
        rhs.terms[poisoned].weight.view(-1)[0] = value
    report = EulerStep(rhs, 1.0, name="b").stability()
    assert report["stable"] is False
    assert report["reason"] == (f"F has coefficients that are not finite (NaN or inf, in "
                                f"{poisoned}.weight): every Euler step gives a non-finite state")


@pytest.mark.parametrize("invariants", [["se2"], ["sim2"], ["scaling"]])
def test_planar_step_with_a_non_finite_coefficient_is_unstable(invariants):
    torch.manual_seed(0)
    layer = PDELayer.build(invariants, T=1.0, dt=0.1)
    step = layer.pdes[0].step
    with torch.no_grad():
        step.rhs.F.weight[0] = float("nan")
    report = step.stability()
    assert report["stable"] is False
    assert "not finite (NaN or inf, in F.weight)" in report["reason"]
