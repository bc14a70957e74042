"""The Euler stability check and its line in ``describe`` (probe round 13): a reaction term
``c_u u`` alone (a set whose derivatives enter through ratios, ``sim2``) is checked as under
``se2`` (it said "nothing to check" while ``u_t = -25 u`` at ``dt = 0.1`` grew 57x); the
printed line names what was checked: the whole linear part where it has first-order terms (it
printed "diffusion check of 0 ... UNSTABLE"), the reason where ``F`` cannot be linearised (it
said "no second-order term")."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from eqpdenet import EulerFlow, EulerStep, Invariant, InvariantRHS, InvariantSet, PDELayer
from eqpdenet.analysis import describe_layer
from eqpdenet.pde import RIGHT_HAND_SIDES


def _sim2_layer(c_u: float) -> PDELayer:
    layer = PDELayer.build(["sim2"], init_noise=0.0, init="zeros")
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight[0] = c_u
    return layer


def _check_line(layer: PDELayer) -> str:
    line = next(line for line in describe_layer(layer).splitlines() if "dt = " in line)
    return line.split("; ", 1)[1]


@pytest.mark.parametrize("c_u, stable, max_dt", [(-25.0, False, 0.08), (-15.0, True, 2 / 15),
                                                 (3.0, True, None)])
def test_a_reaction_term_alone_is_checked(c_u, stable, max_dt):
    report = _sim2_layer(c_u).stability()[0]
    assert report["linear_part"] == {"u": c_u}
    assert report["stable"] is stable
    assert report["max_dt"] == (None if max_dt is None else pytest.approx(max_dt))
    assert (report["reason"] is None) is stable


def test_the_unstable_reaction_grows_as_the_check_says():
    layer = _sim2_layer(-25.0)
    with torch.no_grad():
        out = layer.pdes[0](torch.ones(1, 1, 8, 8, dtype=torch.float64).float())
    assert float(out.abs().max()) == pytest.approx(1.5**10, rel=1e-5)  # |1 + dt c_u|^10
    assert "dt = 0.1 is above the explicit Euler bound of the reaction term -25 u" \
        in layer.stability()[0]["reason"]


def test_the_describe_line_of_a_reaction_term():
    assert _check_line(_sim2_layer(-25.0)).endswith(
        "n/a (no second-order term in F linearised at u = 0); reaction check dt·c_u ≥ −2: "
        "dt·c_u = −2.5, UNSTABLE")


def _component(name: str):
    return lambda jet, ratio: getattr(jet, name)


def test_the_describe_line_of_a_first_order_term_names_it():
    names = ["u", "u_x", "u_xx", "u_xy", "u_yy"]
    invariants = InvariantSet("transport", "translations", 2, [
        Invariant(name, name, name, _component(name)) for name in names])
    rhs = InvariantRHS(invariants)
    with torch.no_grad():
        rhs.F.weight.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    line = _check_line(PDELayer([EulerFlow(EulerStep(rhs, 0.1), 10)]))
    assert line.startswith("stability check of 1 u_x: UNSTABLE (the linear part")
    assert "diffusion check of 0" not in line


def test_the_describe_line_of_an_f_that_cannot_be_linearised_says_so(monkeypatch):
    class LinearOfInvariants(nn.Module):
        def __init__(self, k, degree=1):
            super().__init__()
            self.lin = nn.Linear(k, 1)

        def forward(self, invariants):
            return self.lin(invariants.movedim(-3, -1)).squeeze(-1)

    monkeypatch.setitem(RIGHT_HAND_SIDES._items, "linear-of-invariants-r13", LinearOfInvariants)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = PDELayer.build(["se2"], rhs="linear-of-invariants-r13", init_noise=0.0)
    assert _check_line(layer) == (
        "diffusion check 0 ≤ a·dt ≤ 0.25: n/a (cannot check: InvariantRHS cannot linearise its "
        "F (LinearOfInvariants) at u = 0 (only a MonomialF is linearised), so the scheme's "
        "stability is unknown)")


def test_a_step_called_alone_refuses_a_non_finite_result():
    """``u_t = 1e38 (u + |H|^2)`` overflows float32 in one step: a step called alone returned
    inf silently, the same step in an EulerFlow raised."""
    from eqpdenet.errors import NonFiniteStateError

    rhs = InvariantRHS("se2")
    with torch.no_grad():
        rhs.F.weight[0] = 1e38
        rhs.F.weight[4] = 1e38
    images = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the input range's own warning
        with pytest.raises(NonFiniteStateError, match="PDE 'se2' produced a non-finite state "
                                                      r"\(NaN or inf\) at Euler step 1"):
            EulerStep(rhs, 1.0)(images)
    calm = InvariantRHS("se2")
    with torch.no_grad():
        calm.F.weight.zero_()
        calm.F.weight[2] = 0.1  # the heat equation, stable at dt = 0.1
    u = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(EulerStep(calm, 0.1)(u), EulerFlow(EulerStep(calm, 0.1), 1)(u))
