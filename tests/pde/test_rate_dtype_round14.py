"""Round 14: a right-hand side of one's own that computes in another dtype is refused where its
result is used, naming it (siblings of the invariants' dtype check).

``x + dt F(x)`` with ``F`` in float64 turned a float32 state into float64, and a complex ``F``
made a complex state, without a word; an M2 term beside ``network`` did the same to the fields.
A lower floating-point precision (autocast's bfloat16) is promoted back and stays accepted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet.errors import ConfigError
from eqpdenet.pde.integrators import EulerStep
from eqpdenet.pde.m2_rhs import M2_TERMS, M2SystemRHS


class Cast(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, u):
        return -u.to(self.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64, torch.int32])
def test_an_euler_step_refuses_a_rate_of_another_dtype(dtype):
    with pytest.raises(ConfigError, match=rf"^invalid config: rhs: Cast of EulerStep 'mine' must "
                                          rf"return du/dt in the state's dtype torch.float32 \(or a "
                                          rf"lower floating-point precision\), got {dtype}$"):
        EulerStep(Cast(dtype), 0.1, name="mine")(torch.rand(2, 1, 5, 5))


def test_a_lower_precision_rate_is_promoted_back():
    x = torch.rand(2, 1, 5, 5)
    out = EulerStep(Cast(torch.bfloat16), 0.5)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x - 0.5 * x.to(torch.bfloat16).float())


class Term64(nn.Module):
    def forward(self, u, system):
        return torch.zeros_like(u, dtype=torch.float64)


def test_an_m2_term_of_another_dtype_is_named(monkeypatch):
    monkeypatch.setattr(M2_TERMS, "_items", dict(M2_TERMS._items))
    M2_TERMS.register("term64", lambda channels, *options, relative=False: Term64())
    rhs = M2SystemRHS(2, ("network", "term64"), backend="reference")
    with pytest.raises(ConfigError, match=r"^the M2 right-hand-side term 'term64' \(Term64\) must "
                                          r"return its part of du/dt in the fields' dtype "
                                          r"torch.float32 .*got torch.float64$"):
        rhs(torch.rand(2, 2, 4, 9, 9))


def test_under_autocast_a_float32_rate_of_a_bfloat16_state_is_autocast_s_own_choice():
    # Round 14 (review): the check refused autocast's float32 operations in a bfloat16 state;
    # the lifted model under autocast failed, naming its built-in network term.
    x = torch.rand(2, 1, 5, 5).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="must return du/dt in the state's dtype torch.bfloat16"):
        EulerStep(Cast(torch.float32), 0.1)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert EulerStep(Cast(torch.float32), 0.1)(x).dtype == torch.float32


def test_a_lifted_model_runs_under_autocast():
    from eqpdenet.models.lifted_pde import LiftedPDEConfig, LiftedPDENet

    torch.manual_seed(0)
    model = LiftedPDENet(LiftedPDEConfig(channels=[2, 3], blocks=[1, 1]), image_size=20).eval()
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32
    assert float((low - exact).abs().max() / exact.abs().max()) < 0.05
