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


# ----------------------------------------------------------------------------- F3


SE2_THETA_SHIFT = LieGroupAction("se2_x_shift", [*T2, VectorField(-y, x, 0),
                                                 VectorField(0, 0, 0, "t", {theta: 1})])
_SPAN = ("se2_x_shift: the moving frame needs a group acting freely and transitively on its "
         "independent variables (x, y, θ), so 3 linearly independent generators; they span 4")


def test_auto_falls_back_to_the_search_where_the_frame_refuses_a_group_that_is_not_free():
    """dim J^(2) on (x, y, θ) is 3 + 10, the orbits have dimension 4: 9 invariants (Fels-Olver),
    all free of x, y, θ, all found; it was a ConfigError that did not name the search."""
    result = find_invariants(SE2_THETA_SHIFT, 2)
    assert (result.method, result.found_count, result.expected_count) == ("search", 9, 9)
    assert result.notes == [f"method='auto' used the search: the moving frame does not apply "
                            f"({_SPAN}); only invariants free of x, y, θ are searched"]
    assert result.expressions == find_invariants(SE2_THETA_SHIFT, 2, method="search").expressions
    for expr in result.expressions:
        assert is_invariant(expr, SE2_THETA_SHIFT), expr
    with pytest.raises(ConfigError) as caught:
        find_invariants(SE2_THETA_SHIFT, 2, method="frame")
    assert str(caught.value) == f"{_SPAN}; method='search' finds the invariants free of x, y, θ"


def test_a_fallback_that_misses_theta_dependent_invariants_does_not_send_them_to_the_frame():
    """∂x, ∂y and ∂θ alone (a group of dimension 3 on 3 variables acts freely: framed) versus
    ∂x, ∂θ on (x, y, θ), not transitive: the note may not say that method='frame' finds the
    invariants that depend on y."""
    group = LieGroupAction("xt", [VectorField(1, 0, 0), VectorField(0, 0, 0, "t", {theta: 1})])
    result = find_invariants(group, 1)
    assert result.method == "search"
    assert result.notes[0].startswith("method='auto' used the search: the moving frame does not "
                                      "apply (xt: the moving frame needs a group acting freely ")
    assert "method='frame' finds those" not in result.notes[-1]
    assert "(the search does not form them)" in result.notes[-1]


def test_generators_whose_brackets_complete_a_free_group_get_its_frame():
    """∂x and the M2 rotation generate SE(2) on M2 ([∂x, R] = ∂y): 3 dimensions on 3 variables;
    the frame refused them as "more than 3 dimensions"."""
    group = LieGroupAction("x_and_rotation", [VectorField(1, 0, 0),
                                              VectorField(-y, x, 0, "r", {theta: 1})])
    result = find_invariants(group, 1)
    assert result.method == "frame" and result.complete
    assert result.expressions == find_invariants("se2_m2", 1).expressions
    assert str(left_invariant_frame(group)).splitlines()[0] == "A1 = cos(θ) ∂x + sin(θ) ∂y"


def test_the_command_tabulates_a_group_the_frame_refuses(monkeypatch):
    monkeypatch.setattr(GROUPS, "_items", dict(GROUPS._items))
    monkeypatch.setattr(table_module, "REGISTERED_DEGREES", [(1, 2), (2, 3)])
    register_group(SE2_THETA_SHIFT)
    _, results = symbolic_table(["se2_x_shift"])
    assert [(r.method, r.found_count, r.expected_count) for r in results] == [
        ("search", 3, 3), ("search", 9, 9)]


# ----------------------------------------------------------------------------- F4


SA2 = LieGroupAction("sa2", [*T2, VectorField(x, -y, 0), VectorField(y, 0, 0),
                             VectorField(0, x, 0)], "special affine")


def test_max_degree_of_the_command_raises_the_searched_degree(monkeypatch, capsys):
    """SA(2) at order 3: 12 - 5 = 7 invariants; degree 3 finds 5, degree 4 all 7 (the probe
    checked them numerically). The note names the command's option."""
    monkeypatch.setattr(GROUPS, "_items", dict(GROUPS._items))
    register_group(SA2)
    _, results = symbolic_table(["sa2"], max_degree=4)
    assert [(r.max_degree, r.found_count, r.expected_count) for r in results] == [
        (4, 1, 1), (4, 3, 3), (4, 7, 7)]
    print_table(["sa2"])
    out = capsys.readouterr().out
    assert "\nnote (sa2, order 3): found 5 of 7: raise --max-degree (now 3): up to 7 " in out
    assert "raise max_degree" not in out


def test_a_max_degree_beyond_the_monomial_bound_is_refused_before_any_row(monkeypatch):
    """Order 3 has 10 jet coordinates: degree 6 is C(16, 6) - 1 = 8,007 monomials, degree 5
    3,002 (the bound is 5,000). The frame rows of se2_m2 have no degree and are not checked."""
    monkeypatch.setattr(GROUPS, "_items", dict(GROUPS._items))
    register_group(SA2)
    rows = []
    with pytest.raises(ConfigError) as caught:
        symbolic_table(["se2_m2", "sa2"], on_row=rows.append, max_degree=6)
    assert str(caught.value) == (
        "invalid config: --max-degree: 6 is 8,007 monomials to search for sa2 at order 3 (its "
        "10 jet coordinates), more than the bound of 5,000; at most 5 for every row of this "
        "table")
    assert rows == []
    with pytest.raises(ConfigError, match=r"--max-degree: must be >= 1, got 0"):
        symbolic_table(["se2"], max_degree=0)


def test_the_command_line_option(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["symbolic", "se2", "--max-degree", "0"])
    assert caught.value.code == 2
    assert "argument --max-degree: '0' is not a positive integer" in capsys.readouterr().err
    assert main(["symbolic", "se2", "--max-degree", "2"]) == 0
    out = capsys.readouterr().out
    assert "| se2 | 2 | ∂x, ∂y, -y ∂x + x ∂y | 8 | 3 | 5 | 4 | 2 |" in out
    assert "note (se2, order 2): found 4 of 5: raise --max-degree (now 2): up to 5 " in out


# ------------------------------------------------------------------ review r2 of these fixes

M2_ROTATION = VectorField(-y, x, 0, "r", {theta: 1})


@pytest.mark.parametrize("xi_other", [
    sp.Tuple(sp.Tuple(theta, 1)),                       # a SymPy tuple of pairs
    __import__("numpy").array([[theta, 1]], dtype=object),  # NumPy rows
    __import__("types").MappingProxyType({theta: 1}),   # mappings that are not a dict
    sp.Dict({theta: 1}),
])
def test_xi_other_takes_any_mapping_and_pairs_of_any_sequence_type(xi_other):
    """Review r2: the first check took dicts, tuples and lists only (sp.Tuple and NumPy rows
    worked before it); MappingProxyType and sp.Dict were raw TypeErrors before it."""
    assert VectorField(-y, x, 0, "r", xi_other) == M2_ROTATION


def test_bare_fields_in_any_collection_are_told_to_wrap_them():
    for fields in ((field for field in T2), set(T2)):
        with pytest.raises(ConfigError) as caught:
            get_group(fields)
        assert str(caught.value).endswith("VectorField; wrap the fields in "
                                          "LieGroupAction(name, fields)"), str(caught.value)


def test_the_frame_of_generators_not_closed_says_what_they_generate():
    """Review r2: the search says that ∂x and the M2 rotation generate SE(2) (their bracket
    is ∂y); the frame, which takes them now, gave SE(2)'s counts without that note."""
    group = LieGroupAction("dxrot", [VectorField(1, 0, 0, "dx"), M2_ROTATION])
    framed = find_invariants(group, 1)
    searched = find_invariants(group, 1, method="search")
    assert framed.method == "frame" and framed.notes[0] == searched.notes[0]
    assert "not closed under the Lie bracket" in framed.notes[0]


def test_max_degree_leaves_frame_rows_alone_and_names_the_limit_of_every_row(capsys):
    """Review r2: se2_m2 with --channels 2 lists frame rows, which --max-degree 4 refused as
    searches; se2 --max-degree 9 was told "at most 8" (order 2), then 8 refused at order 3."""
    text, results = symbolic_table(["se2_m2"], channels=2, max_degree=4)
    assert {r.method for r in results} == {"frame"}
    with pytest.raises(ConfigError) as caught:
        symbolic_table(["se2"], max_degree=9)
    assert str(caught.value).endswith("at most 5 for every row of this table")
    assert "at order 3" in str(caught.value)
