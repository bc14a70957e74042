"""Round 17: ``describe_layer`` of a planar step whose F holds a NaN printed the reaction check
with ``dt·c_u = 0`` and "no second-order term", the stability report's reason dropped; it now
prints the verdict with that reason, as the M2 description does."""

from __future__ import annotations

import torch

from eqpdenet.analysis.describe import describe_layer
from eqpdenet.pde.layer import PDELayer


def test_a_nan_coefficient_is_described_with_the_reports_reason():
    torch.manual_seed(0)
    layer = PDELayer.paper()
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight.view(-1)[0] = float("nan")
    lines = [line for line in describe_layer(layer).splitlines() if "check" in line]
    assert lines[0].endswith("stability check: UNSTABLE (F has coefficients that are not finite "
                             "(NaN or inf, in F.weight): every Euler step gives a non-finite "
                             "state)")
    assert "stability check: UNSTABLE" not in lines[1]  # the other PDEs as before
