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
