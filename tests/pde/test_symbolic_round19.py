"""Round 19 (probe q2): the symbolic group code.

F1: for a group without both translations (or a search on M2) the note put the whole shortfall
on invariants that depend on the independent variables, even where invariants free of them were
missing too. F2: a group on M2 that does not act freely (its frame not 2π-periodic in θ) got a
"complete" frame in cos(θ/2) or exp(θ); compile_invariants' refusal always named cos(θ/2). F3: a
group name with ``|`` broke the markdown table of ``eqpdenet symbolic``.
"""

from __future__ import annotations

import re

import pytest
import sympy as sp

from eqpdenet.app import symbolic_table as table_module
from eqpdenet.app.symbolic_table import symbolic_table
from eqpdenet.errors import ConfigError
from eqpdenet.pde.symbolic import (
    GROUPS,
    JetSpace,
    LieGroupAction,
    VectorField,
    _JetAction,
    _turned,
    compile_invariants,
    find_invariants,
    is_invariant,
    left_invariant_frame,
    register_group,
    theta,
    u,
    x,
    y,
)

SO2 = LieGroupAction("so2_alone", [VectorField(-y, x, 0)])
SPIRAL = LieGroupAction("spiral_alone", [VectorField(x / 2 - y, x + y / 2, 0)])
ux, uy, uxx, uxy, uyy = (sp.Symbol(n, real=True) for n in ("u_x", "u_y", "u_xx", "u_xy", "u_yy"))


# ----------------------------------------------------------------------------- F1


def test_so2_alone_note_says_how_many_xy_free_invariants_are_missing_and_how_to_find_them():
    """SO(2) alone, order 2: 6 u-jet coordinates, on which the rotation's prolongation (free of
    x, y) is one field: 5 invariants free of x, y, of the 7 in all. max_degree=2 finds 4; the
    fifth, ∇uᵀH∇u, has degree 3. The note said only that x, y-dependent ones were missing."""
    result = find_invariants(SO2, 2, max_degree=2)
    assert (result.found_count, result.expected_count) == (4, 7)
    assert result.notes == [
        "found 4 of 7: the group does not contain both translations, so only invariants free of "
        "x, y were searched; at most 5 of the 7 are free of them (the coefficients of each "
        "monomial in x, y of the prolonged generators, which annihilate every such invariant, "
        "have rank 1 on the 6 coordinates of the u-jet), so at least 2 depend on x, y (the "
        "search does not form them); of those free of x, y, found 4 of 5: raise max_degree "
        "(now 2): up to 5 functionally independent invariants may exist, but every diagonal "
        "part is zero here, so the search forms polynomial invariants only, no ratios: a higher "
        "max_degree finds more only where they are polynomials; the missing ones may be "
        "rational (ratios of relative invariants with non-constant cofactors, as the curvature "
        "of the level lines under the rotation and u ∂x), which no max_degree forms: write them "
        "down and check them with is_invariant"]
    higher = find_invariants(SO2, 2, max_degree=3)  # the advice holds: the fifth is found
    fifth = ux**2 * uxx + 2 * ux * uy * uxy + uy**2 * uyy
    assert higher.found_count == 5 and fifth in higher.expressions
    assert is_invariant(fifth, SO2)
    assert higher.notes == [
        "found 5 of 7: the group does not contain both translations, so only invariants free of "
        "x, y were searched; at most 5 of the 7 are free of them (the coefficients of each "
        "monomial in x, y of the prolonged generators, which annihilate every such invariant, "
        "have rank 1 on the 6 coordinates of the u-jet), so at least 2 depend on x, y (the "
        "search does not form them); the search found every one free of x, y (5)"]


def test_spiral_alone_note_says_no_degree_finds_its_fifth_xy_free_invariant():
    """The spiral alone, order 2: 5 invariants free of x, y (its prolongation on the u-jet is
    one field), the fifth log|∇u|² + atan(u_y/u_x) not rational: the note says no max_degree
    finds it, as it does for the spiral with the translations."""
    note, = find_invariants(SPIRAL, 2, max_degree=3).notes
    assert note.startswith(
        "found 4 of 7: the group does not contain both translations, so only invariants free of "
        "x, y were searched; at most 5 of the 7 are free of them (the coefficients of each "
        "monomial in x, y of the prolonged generators, which annihilate every such invariant, "
        "have rank 1 on the 6 coordinates of the u-jet), so at least 2 depend on x, y (the "
        "search does not form them); of those free of x, y, found 4 of 5: the search forms ")
    assert note.endswith(
        "at most 4 of them are functionally independent and no max_degree finds more: 1 "
        "invariant is of another form (such as ratios of relative invariants with other "
        "characters or with non-constant cofactors, or functions that are not rational)")
    assert "raise max_degree" not in note
    fifth = sp.log(ux**2 + uy**2) + sp.atan(uy / ux)
    assert is_invariant(fifth, SPIRAL)


def test_free_rank_keeps_the_diagonal_part_with_the_rest():
    """Invariants free of x, y are annihilated by each x, y-monomial coefficient of the whole
    prolonged field: for the spiral one field (rank 1: 5 such invariants at order 2), where the
    search's bound splits it into a scaling and a rotation (rank 2: 4 of the searched form)."""
    action = _JetAction(SPIRAL, JetSpace(2))
    assert (action.n, action.free_rank(), action.annihilator_rank()) == (6, 1, 2)
    assert _JetAction(SO2, JetSpace(2)).free_rank() == 1
    # SE(2): with the translations every invariant is free of x, y: 6 - 1 = 5, the expected count
    assert _JetAction(GROUPS.get("se2"), JetSpace(2)).free_rank() == 1


def test_search_on_m2_says_the_theta_free_ones_are_all_found():
    """se2_m2 by the search, order 1: 4 u-jet coordinates (u, u_x, u_y, u_θ), the rotation one
    field on them: 3 invariants free of x, y, θ (u, u_θ, |∇u|²), all found; the fourth depends
    on θ."""
    result = find_invariants("se2_m2", 1, method="search")
    assert (result.found_count, result.expected_count) == (3, 4)
    assert result.notes == [
        "found 3 of 4: the group acts on more than x, y, so only invariants free of x, y, θ were "
        "searched; at most 3 of the 4 are free of them (the coefficients of each monomial in x, "
        "y, θ of the prolonged generators, which annihilate every such invariant, have rank 1 "
        "on the 4 coordinates of the u-jet), so at least 1 depends on θ (method='frame' finds "
        "those); the search found every one free of x, y, θ (3)"]


# ----------------------------------------------------------------------------- F2


def _m2_group(name, xi_x, xi_y, rate, variable=theta):
    return LieGroupAction(name, [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                 VectorField(xi_x, xi_y, 0, "g", {variable: rate})])


_NOT_FREE = ("the group does not act freely on M2 = R² x S¹ (an element that turns θ by a "
             "multiple of 2π fixes the origin and is not the identity), so derivatives along "
             "this frame are not functions on M2 and not invariant under that element; an "
             "independent variable on the line rather than the circle takes another name than θ")


@pytest.mark.parametrize("generator, rate, message", [
    ((-y, x), 2, "A1 = cos(θ/2) ∂x + sin(θ/2) ∂y, and cos(θ/2) is not 2π-periodic in θ (at "
                 "θ + 2π it is -cos(θ/2))"),
    ((x, y), 1, "A1 = exp(θ) ∂x, and exp(θ) is not 2π-periodic in θ (at θ + 2π it is "
                "exp(θ + 2π))"),
    ((y, 0), 1, "A2 = θ ∂x + ∂y, and θ is not 2π-periodic in θ (at θ + 2π it is θ + 2π)"),
], ids=["rotation_at_twice_the_rate", "scaling_turned", "shear_turned"])
def test_a_frame_not_periodic_in_theta_is_refused(generator, rate, message):
    """θ -> θ + 2φ with the rotation by φ: the rotation by π fixes every θ; x ∂x + y ∂y + ∂θ:
    the scaling by exp(2π); y ∂x + ∂θ: the shear by 2π. Each fixes the origin of M2 without
    being the identity. They were '4 of 4' with no note."""
    group = _m2_group("not_free", *generator, rate)
    expected = f"not_free: the moving frame has {message}: {_NOT_FREE}"
    with pytest.raises(ConfigError) as caught:
        find_invariants(group, 1)
    assert str(caught.value) == expected
    with pytest.raises(ConfigError) as caught:
        left_invariant_frame(group)
    assert str(caught.value) == expected


def test_the_periodicity_test_itself():
    """cos(θ/2) flips at θ + 2π (the probe's A1u at m and at g·m: ±2.1445); cos 2θ, cos θ and
    what is free of θ do not change."""
    assert _turned(sp.cos(theta / 2)) == -sp.cos(theta / 2)
    assert _turned(sp.exp(theta)) == sp.exp(theta + 2 * sp.pi)
    assert _turned(theta * ux) == (theta + 2 * sp.pi) * ux
    for periodic in (sp.cos(2 * theta), sp.sin(theta) * ux, sp.cos(theta) ** 2, u, sp.S(3)):
        assert _turned(periodic) is None


def test_periodic_frames_and_frames_on_the_line_are_kept():
    """θ turned at half the rate: cos 2θ, a field on M2 (the action is free: the element that
    turns θ by 2π turns the plane by 4π). The same rate 2 on a line variable t: cos(t/2), sound
    there. Both complete at order 1, as se2_m2."""
    half = find_invariants(_m2_group("half", -y, x, sp.Rational(1, 2)), 1)
    assert (half.found_count, half.expected_count, half.notes) == (4, 4, [])
    assert half.expressions[1] == ux * sp.cos(2 * theta) + uy * sp.sin(2 * theta)
    t = sp.Symbol("t", real=True)
    line = find_invariants(_m2_group("on_the_line", -y, x, 2, t), 1)
    assert (line.found_count, line.expected_count, line.notes) == (4, 4, [])
    assert line.expressions[1] == ux * sp.cos(t / 2) + uy * sp.sin(t / 2)
    assert find_invariants("se2_m2", 1).expressions[1] == ux * sp.cos(theta) + uy * sp.sin(theta)


def test_compile_names_the_function_of_theta_it_refuses():
    """The refusal said 'cos(θ/2) is not one' whatever the function (cos 2θ included, which is a
    function on the circle)."""
    cases = [
        ("cos(2*θ)*u_x + sin(2*θ)*u_y + u_θ",
         "compile_invariants: cos(2 θ), sin(2 θ) are not compiled on M2: only cos θ, sin θ "
         "(cos(2 θ), sin(2 θ) are 2π-periodic, functions on the circle: write them as "
         "polynomials in cos θ, sin θ (sympy.expand_trig))"),
        ("cos(2*θ)*u_x + u_θ",
         "compile_invariants: cos(2 θ) is not compiled on M2: only cos θ, sin θ (cos(2 θ) is "
         "2π-periodic, a function on the circle: write it as a polynomial in cos θ, sin θ "
         "(sympy.expand_trig))"),
        ("cos(θ/2)*u_x + sin(θ/2)*u_y",
         "compile_invariants: cos(θ/2), sin(θ/2) are not compiled on M2: only cos θ, sin θ "
         "(functions of the orientation θ on the circle; cos(θ/2), sin(θ/2) are not)"),
        ("cos(2*θ)*exp(θ)*u_x + u_θ",
         "compile_invariants: cos(2 θ), exp(θ) are not compiled on M2: only cos θ, sin θ (a "
         "function of the orientation θ on the circle; exp(θ) is not one)"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError) as caught:
            compile_invariants([text], "r19_theta")
        assert str(caught.value) == message
    # written as the message says, it compiles
    compiled = compile_invariants([sp.expand_trig(sp.cos(2 * theta)) * ux + sp.Symbol("u_θ")],
                                  "r19_theta")
    assert len(compiled.names) == 1


# ----------------------------------------------------------------------------- F3


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row, split at the pipes that are not escaped."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


def test_a_pipe_or_a_line_break_in_a_group_name_keeps_the_table_s_columns(monkeypatch):
    monkeypatch.setattr(GROUPS, "_items", dict(GROUPS._items))
    monkeypatch.setattr(table_module, "REGISTERED_DEGREES", [(1, 2)])
    register_group(LieGroupAction("pipe|name", [VectorField(1, 0, 0), VectorField(0, 1, 0)]))
    register_group(LieGroupAction("two\nlines", [VectorField(1, 0, 0), VectorField(0, 1, 0)]))
    text, results = symbolic_table(["pipe|name", "two\nlines"])
    header, rule, *rows = text.splitlines()
    assert len(rows) == 2 and len(results) == 2
    assert _cells(rows[0])[:9] == ["pipe\\|name", "1", "∂x, ∂y", "5", "2", "3", "3", "2",
                                   "`u`; `u_x`; `u_y`"]
    assert _cells(rows[1])[:3] == ["two lines", "1", "∂x, ∂y"]
    assert all(len(_cells(line)) == 10 for line in (header, rule, *rows))


def test_cell_escapes_pipes_and_line_breaks_only():
    assert table_module._cell("a|b\nc\r\nd") == "a\\|b c d"
    assert table_module._cell("`u_x² + u_y²`") == "`u_x² + u_y²`"
