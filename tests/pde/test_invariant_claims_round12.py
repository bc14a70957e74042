"""A hand-made invariant set's declared invariance is checked when it is made (probe round 12).

``transformed_jet`` is held to the chain rule computed by SymPy; the check to sets whose
declarations are true, false, or true only for quarter turns."""

import math

import pytest
import sympy as sp
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.pde.invariants import Invariant, InvariantSet, get_invariant_set, transformed_jet
from eqpdenet.pde.stencils import derivative_multi_indices


def _polynomial_jet(order):
    """A polynomial u of degree ``order`` with fixed rational coefficients and its exact jet."""
    x, y = sp.symbols("x y")
    u = sum(sp.Rational((3 * a + 5 * b) % 7 - 3, 1 + a + b) * x**a * y**b
            for a, b in derivative_multi_indices(order))
    return x, y, u


def _jet_of(expr, x, y, order):
    values = [float(sp.diff(expr, x, a, y, b).subs({x: 0, y: 0}))
              for a, b in derivative_multi_indices(order)]
    return torch.tensor(values, dtype=torch.float64)[:, None, None]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("angle", [0.7, -2.2, math.pi / 2])
def test_a_rotated_jet_is_the_jet_of_the_rotated_function(order, angle):
    x, y, u = _polynomial_jet(order)
    c, s = sp.cos(sp.Float(angle, 30)), sp.sin(sp.Float(angle, 30))
    rotated = u.subs({x: c * x + s * y, y: -s * x + c * y}, simultaneous=True)  # u(R^T p)
    expected = _jet_of(rotated, x, y, order)
    got = transformed_jet(_jet_of(u, x, y, order), "rotations", angle)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factor", [0.6, 1.7])
def test_a_scaled_jet_is_the_jet_of_the_scaled_function(factor):
    x, y, u = _polynomial_jet(3)
    scaled = u.subs({x: x / sp.Float(factor, 30), y: y / sp.Float(factor, 30)},
                    simultaneous=True)
    torch.testing.assert_close(transformed_jet(_jet_of(u, x, y, 3), "scalings", factor),
                               _jet_of(scaled, x, y, 3), rtol=1e-12, atol=1e-12)


def test_a_quarter_turn_of_a_high_order_jet_is_a_signed_swap():
    """u(R^T p) for a quarter turn: ∂x -> -∂y... exactly, each derivative (a, b) of the new
    function is (-1)^a times u's derivative (b, a)."""
    order = 20
    jet = torch.arange(1.0, (order + 1) * (order + 2) // 2 + 1, dtype=torch.float64)[:, None, None]
    got = transformed_jet(jet, "rotations", math.pi / 2)[:, 0, 0]
    indices = derivative_multi_indices(order)
    where = {index: k for k, index in enumerate(indices)}
    expected = torch.tensor([(-1) ** a * jet[where[(b, a)], 0, 0].item() for a, b in indices],
                            dtype=torch.float64)
    assert torch.equal(got, expected)


def _set(name, order, function, claims):
    return InvariantSet(name, "hand-made", order, [Invariant("i", "i", "i", function)],
                        invariant_under=claims)


@pytest.mark.parametrize("claims, function, order, changed", [
    (["rotations"], lambda d, r: d.u_x, 1, "rotation by 0.61 rad"),
    # unchanged by quarter turns (u_xx and u_yy swap), not by other rotations
    (["rotations"], lambda d, r: d.u_xx ** 2 + d.u_yy ** 2, 2, "rotation by 0.61 rad"),
    (["translations", "scalings"], lambda d, r: d.u_x ** 2 + d.u_y ** 2, 1, "scaling by 0.6"),
    (["rotations"], lambda d, r: d.u_x ** 2 + d.u_y ** 2 + d.u_xxxxxxxxxxxxxx, 14,
     "rotation by 1.571 rad"),
])
def test_a_false_declaration_is_refused_naming_the_invariant(claims, function, order, changed):
    with pytest.raises(ConfigError) as error:
        _set("claimed", order, function, claims)
    message = str(error.value)
    assert "invariant set 'claimed'" in message and "invariant 'i'" in message
    assert f"under a {changed}" in message and "leave" in message


@pytest.mark.parametrize("claims, function, order", [
    (["translations", "rotations"], lambda d, r: d.u_x ** 2 + d.u_y ** 2, 1),
    (["rotations"], lambda d, r: d.u_xx * d.u_yy - d.u_xy ** 2, 2),
    (["rotations", "scalings"],
     lambda d, r: r(d.u_xx + d.u_yy, (d.u_xx * d.u_yy - d.u_xy ** 2).abs().sqrt()), 2),
    (["rotations"], lambda d, r: d.u_x ** 2 + d.u_y ** 2 + d.u_xxxxxxxxxxxxxx * 0, 14),
    (["translations"], lambda d, r: d.u_x, 1),
])
def test_a_true_declaration_is_kept(claims, function, order):
    assert _set("claimed", order, function, claims).invariant_under == frozenset(claims)


def test_the_built_in_sets_pass_their_own_check():
    for name in ("se2", "scaling", "sim2"):
        invariant_set = get_invariant_set(name)
        rebuilt = InvariantSet(name, invariant_set.group, invariant_set.order,
                               invariant_set.invariants,
                               invariant_under=invariant_set.invariant_under)
        assert {"rotations", "scalings"} & rebuilt.invariant_under


def test_a_value_undefined_at_a_jet_and_at_its_transform_is_no_change():
    """sqrt(det H) is NaN where det H < 0, at the jet and at its rotation alike: invariant."""
    root = _set("root", 2, lambda d, r: (d.u_xx * d.u_yy - d.u_xy ** 2).sqrt() + d.u_x * 0,
                ["rotations"])
    assert "rotations" in root.invariant_under
    with pytest.raises(ConfigError, match="invariant 'i' changes under a rotation"):
        _set("root", 2, lambda d, r: (d.u_xx * d.u_yy - d.u_xy ** 2).sqrt() + d.u_x, ["rotations"])


@pytest.mark.parametrize("transformation, parameter, message", [
    ("scalings", 0.0, "a scaling's factor must be positive"),
    ("scalings", -2.0, "a scaling's factor must be positive"),
    ("rotations", math.inf, "parameter must be a finite number"),
    ("shears", 0.5, "transformation must be 'rotations' or 'scalings'"),
])
def test_transformed_jet_refuses_what_is_no_such_transformation(transformation, parameter, message):
    with pytest.raises(ConfigError, match=message):
        transformed_jet(torch.zeros(6, 1, 1), transformation, parameter)
