"""eqpdenet.symbolic on groups given in other bases or forms than the ready ones, and the checks
of its public functions: results that depend only on the Lie algebra, honest notes where the
search falls short, jet coordinates matched by name, and clear errors before any work."""

from __future__ import annotations

import math

import pytest

sp = pytest.importorskip("sympy")

import torch  # noqa: E402

from eqpdenet import EqPdeNet, PDELayer, jet  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    GROUPS,
    M2,
    JetSpace,
    LieGroupAction,
    VectorField,
    compile_invariants,
    criterion,
    find_invariants,
    functionally_independent,
    get_group,
    is_invariant,
    jacobian_rank,
    left_invariant_frame,
    reduce_on_the_circle,
    theta,
    u,
    x,
    y,
)

J2 = JetSpace(2)
ux, uy, uxx, uxy, uyy = J2.derivatives[1:]
R = sp.Rational


def _combine(fields, matrix, name):
    """The group whose generators are the rows of ``matrix`` times ``fields`` (constant
    coefficients: another basis of the same Lie algebra when ``matrix`` is invertible)."""
    assert sp.Matrix(matrix).det() != 0
    combined = [VectorField(sum((c * f.xi_x for c, f in zip(row, fields, strict=True)), sp.S.Zero),
                            sum((c * f.xi_y for c, f in zip(row, fields, strict=True)), sp.S.Zero),
                            sum((c * f.phi_u for c, f in zip(row, fields, strict=True)), sp.S.Zero))
                for row in matrix]
    return LieGroupAction(name, combined)


CONTRAST = LieGroupAction("se2_contrast", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                           VectorField(-y, x, 0), VectorField(0, 0, u)])

# Fixed, random-looking invertible changes of basis (rows: new generators in the old basis).
BASES = [
    ("sim2", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, -1]]),  # the probe's R ± S
    ("sim2", [[2, -1, 3, R(1, 2)], [1, 1, -1, 0], [0, 3, 2, 1], [-1, 0, R(1, 3), -2]]),
    (CONTRAST, [[1, 2, 0, -1], [0, 1, 1, R(1, 2)], [3, 0, -2, 1], [1, -1, 1, 1]]),
    (CONTRAST, [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -3]]),
    ("affine", [[1, 0, 2, 0, 0, -1], [0, 1, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0],
                [0, 0, 0, 1, 2, 0], [0, 0, 3, 0, 1, 1], [1, 1, 0, 0, 0, R(2, 5)]]),
]


@pytest.mark.parametrize("group, matrix", BASES)
def test_any_basis_of_the_algebra_gives_the_same_invariants(group, matrix):
    """The probe's fault: SIM(2) as ∂x, ∂y, R + S, R - S gave 1 of 4 at every degree (only
    generators that were diagonal by themselves gave weights). The search now works on the span,
    so every basis gives exactly the standard basis' invariants, complete and invariant."""
    standard = get_group(group)
    other = _combine(standard.fields, matrix, f"{standard.name}_other")
    for order in (1, 2):
        expected = find_invariants(standard, order, 3)
        result = find_invariants(other, order, 3)
        assert result.found_count == result.expected_count == expected.expected_count, str(result)
        assert result.expressions == expected.expressions
        assert not result.notes
        for expr in result.expressions:
            assert is_invariant(expr, standard), expr


SPIRAL = LieGroupAction("spiral", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                   VectorField(x / 2 - y, x + y / 2, 0)])


def test_a_spiral_note_says_that_no_degree_finds_more():
    """The spiral similarity's fifth invariant at order 2 is not rational. The search finds the
    four rational ones (SIM(2)'s), proves with the rank of the fields annihilating its family
    (2 on the 6 u-jet coordinates) that no degree gives more, and says so instead of 'raise
    max_degree' (which it said before at every degree)."""
    result = find_invariants(SPIRAL, 2, 3)
    assert (result.found_count, result.expected_count) == (4, 5)
    assert all(is_invariant(e, SPIRAL) for e in result.expressions)
    (note,) = result.notes
    assert "raise max_degree" not in note
    assert "rank 2 on the 6 coordinates" in note and "at most 4" in note
    assert "no max_degree finds more: 1 invariant is of another form" in note


def test_a_too_low_degree_is_reported_with_the_bound_of_the_searched_form():
    (note,) = find_invariants("se2", 2, 2).notes
    assert note.startswith("found 4 of 5: raise max_degree (now 2): up to 5 ")


@pytest.mark.parametrize("field, order, expected", [
    (VectorField(u, 0, 0), 1, ["u", "u_y/u_x"]),
    (VectorField(0, 0, u**2), 1, ["u_y/u_x", "u**2/u_x"]),
    (VectorField(u, 0, 0), 2, None),
    (VectorField(0, 0, u**2), 2, None),
])
def test_relative_invariants_with_the_cofactors_of_jet_coordinates(field, order, expected):
    """u ∂x maps u_x, u_y to -u_x times themselves, u² ∂u maps u, u_x, u_y to u, 2u, 2u times
    themselves: non-constant cofactors. The search found 1 of 2 and 0 of 2 at order 1 (any
    degree); it now forms ratios of equal cofactor and is complete."""
    group = LieGroupAction("cofactors", [VectorField(1, 0, 0), VectorField(0, 1, 0), field])
    result = find_invariants(group, order, 3)
    assert result.complete, str(result)
    assert all(is_invariant(e, group) for e in result.expressions)
    if expected is not None:
        assert [str(e) for e in result.expressions] == expected


def test_a_search_not_proven_exhaustive_does_not_promise_a_degree():
    group = LieGroupAction("u_dx", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                    VectorField(u, 0, 0)])
    result = find_invariants(group, 2, 2)
    assert (result.found_count, result.expected_count) == (4, 5)
    (note,) = result.notes
    assert "raise max_degree" not in note and "not proven whether a higher max_degree" in note
    assert find_invariants(group, 2, 3).complete


def test_mixed_elements_whose_parts_do_not_split_are_searched_across_classes():
    """(x + y) ∂x + (x - y) ∂y has a diagonal part no diagonal element cancels and an
    off-diagonal part (a boost) with real eigenvalues: its invariants mix the classes of the
    diagonal parts. With the scaling they are the relative invariants of the scaling's weights
    annihilated by it (u_x² - 2 u_x u_y - u_y² and its relatives)."""
    group = LieGroupAction("boost_scaling", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                             VectorField(x + y, x - y, 0), VectorField(x, y, 0)])
    result = find_invariants(group, 2, 3)
    assert result.complete and result.expected_count == 4, str(result)
    assert all(is_invariant(e, group) for e in result.expressions)


def test_translations_are_found_in_the_span():
    """SE(2) as ∂x, the rotation and the rotation about (1, 0): ∂y is their difference. The note
    that the group lacks translations was false."""
    group = LieGroupAction("se2_two_rotations", [VectorField(1, 0, 0), VectorField(-y, x, 0),
                                                 VectorField(-y, x - 1, 0)])
    result = find_invariants(group, 2, 3)
    assert result.complete and result.notes == []
    assert result.expressions == find_invariants("se2", 2, 3).expressions
    assert group.contains(VectorField(0, 1, 0)) and not group.contains(VectorField(x, y, 0))
    rotation_only = find_invariants(LieGroupAction("so2", [VectorField(-y, x, 0)]), 1, 2)
    assert any("does not contain both translations" in n for n in rotation_only.notes)


def test_an_irrational_factor_of_a_generator_is_divided_out():
    group = LieGroupAction("se2_sqrt2", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                         VectorField(-sp.sqrt(2) * y, sp.sqrt(2) * x, 0)])
    assert find_invariants(group, 2, 3).expressions == find_invariants("se2", 2, 3).expressions
    assert group.basis[2] == VectorField(-y, x, 0)  # same span
    assert is_invariant(ux**2 + uy**2, group)
    irrational_rate = LieGroupAction("spiral_sqrt2", [
        VectorField(1, 0, 0), VectorField(0, 1, 0),
        VectorField(sp.sqrt(2) * x - y, x + sp.sqrt(2) * y, 0)])
    with pytest.raises(ValueError, match=r"irrational constant \(√2, π\) is accepted only as a "
                                         r"factor common to all"):
        find_invariants(irrational_rate, 1, 2)


def test_floats_are_read_exactly_only_when_they_are_small_fractions():
    scaled = VectorField(0.5 * x, 0.25 * y, 1.5 * u)
    assert (scaled.xi_x, scaled.xi_y, scaled.phi_u) == (x / 2, y / 4, 3 * u / 2)
    group = LieGroupAction("sim2_float", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                          VectorField(-y, x, 0), VectorField(0.5 * x, 0.5 * y, 0)])
    assert find_invariants(group, 2, 3).expressions == find_invariants("sim2", 2, 3).expressions
    tenth = LieGroupAction("tenth", [VectorField(1, 0, 0), VectorField(0.1 * x - y, x, 0)])
    with pytest.raises(ValueError, match=r"write a float such as 0\.1 as sp\.Rational\(1, 10\)"):
        find_invariants(tenth, 1, 2)
    with pytest.raises(ValueError, match="rational functions of the variables"):
        find_invariants(LieGroupAction("exp", [VectorField(sp.exp(x), 0, 0)]), 1, 2)


@pytest.mark.parametrize("fields, message", [
    ([(1, 0, 0), (0, 1, 0)], r"generator 0 is a tuple \(\(1, 0, 0\)\), not a VectorField"),
    ([VectorField(1, 0, 0), sp.Matrix([0, 1, 0])], "generator 1 is a MutableDenseMatrix"),
    (["d_x"], "generator 0 is a str"),
    (None, "fields must be a list of VectorField, got NoneType"),
    (VectorField(1, 0, 0), "fields must be a list of VectorField, got VectorField"),
    ([], "needs at least one generator"),
])
def test_generators_that_are_not_vector_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LieGroupAction("g", fields)


def test_a_group_needs_a_name():
    with pytest.raises(ValueError, match="non-empty string"):
        LieGroupAction("", [VectorField(1, 0, 0)])


@pytest.mark.parametrize("keyword, value, message", [
    ("max_degree", 2.5, "max_degree: must be an integer, got 2.5"),
    ("max_degree", 0, "max_degree: must be >= 1, got 0"),
    ("max_degree", -1, "max_degree: must be >= 1, got -1"),
    ("max_degree", True, "max_degree: must be an integer, got True"),
    ("order", 2.0, "order: must be an integer, got 2.0"),
    ("order", -1, "order: must be >= 0, got -1"),
])
def test_search_arguments_are_checked(keyword, value, message):
    arguments = {"order": 2, "max_degree": 3, keyword: value}
    with pytest.raises(ValueError, match=message):
        find_invariants("se2", **arguments)


# ----------------------------------------------------------------------------- names and symbols


def test_jet_coordinates_are_matched_by_name_in_every_public_function():
    """A plain sp.Symbol("u_x") was a constant to the criterion: is_invariant(u_x, 'se2') was
    True, criterion 0 and the Jacobian rank of u_x, u_y 0."""
    plain_ux, plain_uy, plain_uxx = sp.symbols("u_x u_y u_xx")
    rotation = get_group("se2").fields[2]
    assert not is_invariant(plain_ux, "se2")
    assert is_invariant(plain_ux**2 + plain_uy**2, "se2")
    assert is_invariant("u_x**2 + u_y**2", "se2")
    assert criterion(plain_ux, rotation) == -uy
    assert jacobian_rank([plain_ux, plain_uy]) == 2
    assert jacobian_rank([plain_ux, ux]) == 1  # the same coordinate
    assert functionally_independent([plain_ux, ux, plain_uy]) == [plain_ux, plain_uy]
    assert J2.total_derivative(plain_ux, 0) == uxx
    assert J2.total_derivative(sp.Symbol("x") * plain_ux, 1) == x * uxy
    assert reduce_on_the_circle(sp.cos(sp.Symbol("theta")) ** 2
                                + sp.sin(sp.Symbol("theta")) ** 2 - 1) == 0
    compiled = compile_invariants([plain_ux**2 + plain_uy**2, plain_uxx + sp.Symbol("u_yy")], "p")
    assert compiled.names == ("grad_sq", "laplacian")
    # Other symbols stay constants: a parameter of an expression is not a jet coordinate.
    assert is_invariant(sp.Symbol("a") * (ux**2 + uy**2), "se2")


def test_criterion_needs_a_vector_field():
    with pytest.raises(ValueError, match="criterion needs a VectorField, got str"):
        criterion(ux, "se2")


# ----------------------------------------------------------------------------- compilation


def test_undefined_symbols_are_refused_at_compile_time_naming_them():
    """They compiled, and the first forward raised AttributeError: a."""
    with pytest.raises(ValueError, match=r"the symbol a in a\*u_xx is not a jet coordinate of the "
                                         r"plane \(u, u_x, u_y, u_xx, \.\.\.\); substitute"):
        compile_invariants([ux**2 + uy**2, sp.Symbol("a") * uxx], "typo")
    with pytest.raises(ValueError, match=r"the symbols a, v_x, x in .* are not jet coordinates of "
                                         r"the plane .*the position \(x\) is not a jet coordinate"):
        compile_invariants([sp.Symbol("a") * uxx, x * ux, sp.Symbol("v_x") ** 2], "typos")
    with pytest.raises(ValueError, match=r"cannot read 'u_x \+\* 2' as an expression"):
        compile_invariants(["u_x +* 2"], "garbage")


def test_an_order_below_the_expressions_is_refused():
    with pytest.raises(ValueError, match=r"order=1, but u_xx uses derivatives of order 2"):
        compile_invariants([uxx], "low", order=1)
    with pytest.raises(ValueError, match=r"order=1, but .* uses derivatives of order 2"):
        compile_invariants(find_invariants("se2", 2, 3), "low", order=1)
    assert compile_invariants([ux], "higher", order=2).order == 2


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_compiled_set_needs_a_name(name):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        compile_invariants([ux], name)


def test_ratio_eps_is_checked_at_compile_time():
    with pytest.raises(ValueError, match="ratio_eps: must be positive, got 0"):
        compile_invariants([ux / uxx], "r", ratio_eps=0)


def test_every_finite_real_constant_is_a_coefficient():
    """sp.pi * u_x was refused while 0.5 * u_x compiled; the rule is now any finite real
    number, evaluated as a float. A constant denominator is a coefficient, not a ratio."""
    values = torch.randn(2, 6, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    compiled = compile_invariants([sp.pi * ux, 0.5 * ux, sp.sqrt(2) * uy, ux / 3, uxx / sp.pi],
                                  "constants")
    out = compiled(values, ratio_eps=0.1)
    torch.testing.assert_close(out[:, 0], math.pi * values[:, 1], rtol=1e-15, atol=0)
    torch.testing.assert_close(out[:, 1], 0.5 * values[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2], math.sqrt(2) * values[:, 2], rtol=1e-15, atol=0)
    torch.testing.assert_close(out[:, 3], values[:, 1] / 3, rtol=1e-15, atol=0)
    torch.testing.assert_close(out[:, 4], values[:, 3] / math.pi, rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="cannot compile the constant I: coefficients must be real"):
        compile_invariants([sp.I * ux], "complex")


def test_invariant_under_is_derived_and_checked_exactly():
    derived = compile_invariants(find_invariants("se2", 2, 3), "se2_derived_declared")
    assert derived.invariant_under == {"translations", "rotations"}
    sim2 = compile_invariants(find_invariants("sim2", 2, 3), "sim2_derived_declared")
    assert sim2.invariant_under == {"translations", "rotations", "scalings"}
    # A fixed eps divides absolutely, a b / (b² + eps²): not scale invariant.
    fixed = compile_invariants(find_invariants("sim2", 2, 3), "sim2_fixed", ratio_eps=0.1)
    assert fixed.invariant_under == {"translations", "rotations"}
    assert compile_invariants([ux], "gradient_x").invariant_under == {"translations"}
    assert compile_invariants([ux**2 + uy**2], "g", invariant_under=["rotations"]
                              ).invariant_under == {"rotations"}
    with pytest.raises(ValueError, match=r"not invariant under scalings: u_x\*\*2 \+ u_y\*\*2 is "
                                         r"not \(the infinitesimal criterion of the group scaling"):
        compile_invariants([ux**2 + uy**2], "g", invariant_under=["scalings"])
    with pytest.raises(ValueError, match="not invariant under scalings: its ratios divide with "
                                         "the fixed ratio_eps"):
        compile_invariants(find_invariants("sim2", 2, 3), "f", ratio_eps=0.1,
                           invariant_under=["scalings"])
    with pytest.raises(ValueError, match=r"unknown transformation\(s\) \['reflections'\]"):
        compile_invariants([ux**2 + uy**2], "g", invariant_under=["reflections"])
    with pytest.raises(ValueError, match="must be a list of names"):
        compile_invariants([ux**2 + uy**2], "g", invariant_under="rotations")


def test_a_derived_rotation_invariant_set_makes_the_invariant_head_quarter_turn_invariant():
    """EqPdeNet(head='invariant') on a derived SE(2) set reported quarter_turn_invariant False:
    the compiled set declared nothing. The declaration holds on the grid: the invariants of a
    quarter-turned image are the quarter-turned invariants (float64)."""
    derived = compile_invariants(find_invariants("se2", 2, 3), "se2_quarter")
    model = EqPdeNet(hidden=8, layer=PDELayer.build([derived], T=0.2, dt=0.1), head="invariant")
    assert model.quarter_turn_invariant
    images = torch.rand(2, 1, 12, 12, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    values = derived(jet(images, 2))
    turned = derived(jet(torch.rot90(images, 1, (-2, -1)), 2))
    torch.testing.assert_close(turned, torch.rot90(values, 1, (-2, -1)), rtol=1e-9, atol=1e-9)
    x_only = compile_invariants([ux], "x_only")
    model = EqPdeNet(hidden=8, layer=PDELayer.build([x_only], T=0.2, dt=0.1), head="invariant")
    assert not model.quarter_turn_invariant


# ----------------------------------------------------------------------------- M2


def test_a_rotation_turning_theta_twice_as_fast_gets_its_rank_and_a_clear_compile_error():
    """The frame has cos(θ/2): the rank test evaluated only cos θ, sin θ exactly and gave up with
    'could not find a regular point'. Rational multiples of θ are now exact. (Round 19: on M2,
    θ on the circle, the frame is refused, the action not being free (test_symbolic_round19);
    on a variable t of the line it is sound.)"""
    t = sp.Symbol("t", real=True)
    group = LieGroupAction("speed2", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                      VectorField(-y, x, 0, "r", {t: 2})])
    result = find_invariants(group, 1)
    assert result.complete and result.found_count == 4 and not result.notes
    assert any(e.has(sp.cos(t / 2)) for e in result.expressions)
    assert jacobian_rank(result.expressions) == 4
    assert all(criterion(e, f) == 0 for e in result.expressions for f in group.fields)
    assert reduce_on_the_circle(sp.cos(theta / 2) ** 2 + sp.sin(theta / 2) ** 2 - 1) == 0
    assert reduce_on_the_circle(sp.cos(theta) - 2 * sp.cos(theta / 2) ** 2 + 1) == 0
    with pytest.raises(ValueError, match=r"cos\(θ/2\).* are not compiled on M2"):
        compile_invariants([e.subs(t, theta) for e in result.expressions[1:3]], "speed2")


def test_a_redundant_generator_on_m2_is_reduced_to_a_basis():
    group = LieGroupAction("se2_m2_redundant", [*GROUPS.get("se2_m2").fields,
                                                VectorField(1, 1, 0)])
    result = find_invariants(group, 1)
    assert result.expressions == find_invariants("se2_m2", 1).expressions
    flat = LieGroupAction("flat", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                   VectorField(1, 1, 0, "", {theta: 0})])
    with pytest.raises(ValueError, match="so 3 linearly independent generators; they span 2 "
                                         r"\(3 given, linearly dependent\)"):
        left_invariant_frame(flat)
    # find_invariants falls back to the search there (round 21, probe r21/p4/F3): u, u_x, u_y,
    # u_θ of the 5 (θ itself is the fifth)
    searched = find_invariants(flat, 1)
    assert searched.method == "search" and searched.found_count == 4
    assert searched.notes[0].startswith("method='auto' used the search")


def test_m2_expressions_are_matched_by_name_too():
    plain = sp.Symbol("u_θ") * sp.cos(sp.Symbol("theta"))
    assert jacobian_rank([plain]) == 1
    assert is_invariant(sp.Symbol("u_θ"), "se2_m2")
    assert JetSpace(1, independent=M2).dimension == 7


# ----------------------------------------------------------------------------- the command


def test_a_group_named_twice_is_listed_once(capsys):
    from eqpdenet.app.cli import main

    assert main(["symbolic", "se2", "scaling", "se2"]) == 0
    rows = [line.split(" | ")[0][2:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| se2 |") or line.startswith("| scaling |")]
    assert rows == ["se2"] * 3 + ["scaling"] * 3


def test_a_layer_with_a_compiled_set_is_saved_whole_and_loads_the_same_set():
    """README's layer of a derived set: torch.save(layer) failed ("Can't pickle local
    object"), the compiled functions being closures; the set now pickles as the recipe that
    compiles it again, so the loaded layer computes the same numbers with the same names."""
    import io

    import torch

    from eqpdenet import PDELayer
    from eqpdenet.pde.symbolic import compile_invariants, find_invariants

    derived = compile_invariants(find_invariants("sim2", order=2), "sim2")
    layer = PDELayer.build([derived, "se2"], backend="reference")
    torch.nn.init.normal_(layer.pdes[0].step.rhs.F.weight, std=0.1)
    images = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(images), layer(images))
    again = loaded.pdes[0].step.rhs.invariant_set
    assert again is not derived
    assert (again.name, again.names, again.equation, again.invariant_under) == (
        derived.name, derived.names, derived.equation, derived.invariant_under)


@pytest.mark.parametrize("name", [None, ""])
def test_an_invariant_set_needs_a_name(name):
    from eqpdenet.errors import ConfigError
    from eqpdenet.pde.invariants import InvariantSet, get_invariant_set

    with pytest.raises(ConfigError, match="non-empty string"):
        InvariantSet(name, "SE(2)", 1, get_invariant_set("se2").invariants)
