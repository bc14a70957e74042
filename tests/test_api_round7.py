"""Faults of the seventh outside-in round (2026-12-06): the public API as a user composes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqpdenet import EulerFlow, EulerStep
from eqpdenet.errors import ConfigError


@pytest.mark.parametrize("rhs, got", [(nn.Linear(5, 1), "(2, 2, 4, 1)"),
                                      (nn.Conv2d(2, 1, 1), "(2, 1, 4, 5)")])
def test_an_euler_step_refuses_a_rate_that_would_broadcast(rhs, got):
    # u + dt F(u) broadcast such an F silently into a state of the right shape
    u = torch.rand(2, 2, 4, 5)
    for module in (EulerStep(rhs, 0.1), EulerFlow(EulerStep(rhs, 0.1), 3)):
        with pytest.raises(ConfigError, match=rf"rhs: .* state's shape \(2, 2, 4, 5\), got shape "
                                              rf"{got.replace('(', '[(]').replace(')', '[)]')}"):
            module(u)


def test_an_euler_step_of_any_module_of_the_right_shape_is_u_plus_dt_f():
    torch.manual_seed(0)
    rhs, u = nn.Linear(5, 5).double(), torch.rand(2, 3, 4, 5, dtype=torch.float64)
    step = EulerStep(rhs, 0.25)
    assert torch.equal(step(u), u + 0.25 * rhs(u))
    flow = EulerFlow(EulerStep(rhs, 0.25), 2)
    once = u + 0.25 * rhs(u)
    assert torch.equal(flow(u), once + 0.25 * rhs(once))
