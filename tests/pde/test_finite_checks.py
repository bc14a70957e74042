"""Finiteness of PDE states checked on the device: one read after the last step, or none until
asked (``deferred_state_checks``), with the same error as a check after every step."""

from __future__ import annotations

import pytest
import torch

from eqpdenet.checks import deferred_state_checks, first_failed_step, report_non_finite
from eqpdenet.errors import NonFiniteStateError
from eqpdenet.pde import PDELayer


def test_first_failed_step():
    flags = [torch.tensor(v) for v in (True, True, False, True, False)]
    assert first_failed_step(flags).tolist() == [3]
    assert first_failed_step([torch.tensor(True)] * 4).tolist() == [0]


def test_report_raises_for_the_first_pde_in_order():
    with pytest.raises(NonFiniteStateError) as info:
        report_non_finite(["a", "b", "c"], [0.1, 0.2, 0.3], torch.tensor([0, 7, 2]))
    assert (info.value.pde, info.value.step, info.value.dt) == ("b", 7, 0.2)
    report_non_finite(["a"], [0.1], torch.tensor([0]))  # all finite: nothing


def _diverging_layer(backend: str) -> PDELayer:
    layer = PDELayer.build(["scaling", "se2", "se2"], T=10.0, dt=1.0, init_noise=0.0,
                           backend=backend)
    with torch.no_grad():
        layer.pdes[1].step.rhs.F.weight[0] = 1e10 - 1  # u_l = (1e10)^l overflows at l = 4
        layer.pdes[2].step.rhs.F.weight[0] = 1e20 - 1  # overflows at l = 2, but comes later
    return layer


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_deferred_checks_raise_later_the_error_of_an_immediate_check(backend):
    layer, u = _diverging_layer(backend), torch.ones(2, 1, 5, 5)
    with pytest.raises(NonFiniteStateError) as immediate:
        layer(u)
    with deferred_state_checks() as reports:
        out = layer(u)  # no error inside: the reports stay on the device
    assert not torch.isfinite(out).all()
    assert reports.names == ["pde0:scaling", "pde1:se2", "pde2:se2"]
    with pytest.raises(NonFiniteStateError) as deferred:
        reports.raise_first()
    assert (deferred.value.pde, deferred.value.step) == (immediate.value.pde,
                                                         immediate.value.step) == ("pde1:se2", 4)


def test_reference_reads_the_device_once_per_flow(monkeypatch):
    """The Euler loop itself never converts a device tensor to a Python bool."""
    layer = PDELayer.build(["se2"], T=1.0, dt=0.1, backend="reference")
    calls = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: calls.append(1) or original(t))
    layer(torch.rand(2, 1, 6, 6))
    assert calls == []  # the one read is .tolist() of the first bad step, after the 10 steps


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_deferred_reports_keep_their_layout_when_all_is_finite(backend):
    """A training step replayed many times reads its reports by position: finite states must
    report too."""
    layer = PDELayer.build(["se2", "scaling"], T=0.3, dt=0.1, backend=backend)
    with deferred_state_checks() as reports:
        layer(torch.rand(2, 1, 6, 6))
    assert reports.names == ["pde0:se2", "pde1:scaling"]
    assert reports.flags().tolist() == [0, 0]
    reports.raise_first()  # nothing to raise
