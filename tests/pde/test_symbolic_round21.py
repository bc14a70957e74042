"""Round 21 (probe r21/p4): the symbolic group code and ``eqpdenet symbolic``.

F1: ``VectorField`` took a number as its ``name`` (``VectorField(-y, x, 0, 1)``, meant as the M2
rotation, was the planar rotation named 1) and a non-dict ``xi_other`` raised a raw TypeError;
bare fields passed as the group were told only that a group is named by a string. F2: with
``rational=False`` a group with a scaling was told to "raise max_degree" where the weights rule
out any further polynomial invariant. F3: ``method="auto"`` sent a group on ``x, y, θ`` with more
generators than variables to the moving frame, whose refusal did not name the search that finds
all its invariants; ``eqpdenet symbolic`` could not tabulate it. F4: the command's note said
"raise max_degree", an option the command did not have.
"""

from __future__ import annotations

import pytest

sp = pytest.importorskip("sympy")

from eqpdenet.app import symbolic_table as table_module  # noqa: E402
from eqpdenet.app.cli import main  # noqa: E402
from eqpdenet.app.symbolic_table import print_table, symbolic_table  # noqa: E402
from eqpdenet.errors import ConfigError  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    GROUPS,
    JetSpace,
    LieGroupAction,
    VectorField,
    _JetAction,
    find_invariants,
    get_group,
    is_invariant,
    left_invariant_frame,
    register_group,
    theta,
    u,
    x,
    y,
)

T2 = [VectorField(1, 0, 0), VectorField(0, 1, 0)]
J2 = {name: sp.Symbol(name, real=True) for name in ("u_x", "u_y", "u_xx", "u_xy", "u_yy")}


# ----------------------------------------------------------------------------- F1


def test_a_number_as_the_name_is_refused_with_the_place_of_the_theta_component():
    with pytest.raises(ConfigError) as caught:
        VectorField(-y, x, 0, 1)
    assert str(caught.value) == (
        "vector field name must be a string, got int 1: the 4th argument is the name "
        "(VectorField(xi_x, xi_y, phi_u, name, xi_other)); give components along other "
        "variables such as θ in xi_other={theta: ...}")


@pytest.mark.parametrize("other, shown", [
    (1, "int 1"), ("θ", "str 'θ'"), ((theta, 1), "tuple (θ, 1)"), ([theta], "list [θ]"),
])
def test_an_xi_other_that_is_no_dict_or_pairs_is_one_config_error(other, shown):
    """A number raised TypeError: 'int' object is not iterable; a flat pair failed on unpacking."""
    with pytest.raises(ConfigError) as caught:
        VectorField(-y, x, 0, "rot", other)
    assert str(caught.value) == (
        f"vector field xi_other must be a dict {{variable: coefficient}} or a sequence of "
        f"(variable, coefficient) pairs, such as {{theta: 1}}, got {shown}")


def test_xi_other_as_a_dict_or_pairs_gives_the_same_field():
    as_dict = VectorField(-y, x, 0, "rot", {theta: 1})
    for other in ([(theta, 1)], ((theta, 1),), [("θ", 1)], iter([(theta, 1)])):
        assert VectorField(-y, x, 0, "rot", other) == as_dict
    assert str(as_dict) == "-y ∂x + x ∂y + ∂θ"


@pytest.mark.parametrize("fields, shown", [
    ([VectorField(1, 0, 0)], "a list of 1 VectorField"),
    (tuple(T2), "a tuple of 2 VectorField"),
    (VectorField(1, 0, 0), "a VectorField"),
])
def test_bare_fields_as_the_group_are_told_to_be_wrapped(fields, shown):
    with pytest.raises(ConfigError) as caught:
        find_invariants(fields, 1)
    assert str(caught.value) == (f"a group is a registered name or a LieGroupAction, got "
                                 f"{shown}; wrap the fields in LieGroupAction(name, fields)")
    wrapped = find_invariants(LieGroupAction("t2", T2), 1)
    assert (wrapped.found_count, wrapped.expected_count) == (3, 3)


# ----------------------------------------------------------------------------- F2


def test_without_ratios_a_scaling_is_told_to_pass_rational_not_to_raise_the_degree():
    """Under x ∂x + y ∂y every derivative u_J has weight -|J|, so the polynomial invariants are
    functions of u alone: 1 of 5 at every degree (the probe: 3 and 8)."""
    for degree in (3, 4):
        result = find_invariants("scaling", 2, max_degree=degree, rational=False)
        assert result.expressions == [u] and result.expected_count == 5
        assert result.notes == [
            "found 1 of 5: with rational=False the search keeps only polynomials of weight 0 "
            "under the diagonal elements (x ∂x + y ∂y), whose weights leave 1 jet coordinate (u) "
            "in a monomial of weight 0, so at most 1 polynomial invariant is functionally "
            "independent and no max_degree finds more: the other 4 are not polynomial; pass "
            "rational=True (ratios of relative invariants)"]
    for name, expected, diagonal in (("sim2", 4, "x ∂x + y ∂y"), ("affine", 2, "x ∂x; x ∂x - y ∂y")):
        (note,) = find_invariants(name, 2, rational=False).notes
        assert note.startswith(f"found 1 of {expected}: with rational=False the search keeps "
                               f"only polynomials of weight 0 under the diagonal elements "
                               f"({diagonal}), whose weights leave 1 jet coordinate (u)")
        assert "raise max_degree" not in note
    # rational=True finds them all, as the note says
    assert find_invariants("scaling", 2, max_degree=2).complete


def test_weights_of_both_signs_confine_nothing_and_the_degree_advice_stays():
    """x ∂x - y ∂y: u_x, u_y have weights -1, +1, so u_x u_y has weight 0; at degree 2 the search
    finds 4 of 5 and degree 3 finds the fifth, u_x² u_yy (weight -2 + 2)."""
    hyperbolic = LieGroupAction("hyperbolic", [*T2, VectorField(x, -y, 0)])
    assert _JetAction(hyperbolic, JetSpace(2)).polynomial_coordinates() == (
        ["x ∂x - y ∂y"], set(range(6)))
    low = find_invariants(hyperbolic, 2, max_degree=2, rational=False)
    assert low.found_count == 4 and low.notes[0].startswith(
        "found 4 of 5: raise max_degree (now 2) or allow rational invariants: up to 5 ")
    high = find_invariants(hyperbolic, 2, max_degree=3, rational=False)
    assert high.complete and J2["u_x"] ** 2 * J2["u_yy"] in high.expressions


def test_the_weight_zero_coordinates_of_the_affine_group_are_found_across_its_scalings():
    """A(2)'s diagonal elements x ∂x (weights 0, 1, 0, 2, 1, 0 on u, u_x, u_y, u_xx, u_xy, u_yy,
    up to sign) and x ∂x - y ∂y (of both signs): only their sum y ∂y excludes u_y, u_yy, so no
    single one of them shows that only u is left."""
    names, alone = _JetAction(get_group("affine"), JetSpace(2)).polynomial_coordinates()
    assert (names, alone) == (["x ∂x", "x ∂x - y ∂y"], {0})
    assert _JetAction(get_group("se2"), JetSpace(2)).polynomial_coordinates() == (
        [], set(range(6)))
