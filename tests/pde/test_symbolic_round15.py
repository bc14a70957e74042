"""Round 15 (symbolic, probe r15/p3): SymPy's derivative notation (``Derivative(u, x)``,
``u(x, y)``) is refused by every entry taking expressions (``is_invariant`` called ``u_x``
written so invariant under SE(2), and ``u`` itself not); a note no longer says only "raise
max_degree" where the search forms polynomials only, nor advises a degree the monomial bound
refuses; a moving frame in ``exp(θ)`` gives its invariants (the rank test failed on it with a
message naming neither); ``cos(u_x)`` is refused as a function that is not rational (it was
named a variable of M2)."""

from __future__ import annotations

import math

import pytest

sp = pytest.importorskip("sympy")

from eqpdenet.errors import ConfigError  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    MAX_SEARCH_MONOMIALS,
    JetSpace,
    LieGroupAction,
    VectorField,
    _incomplete_note,
    _JetAction,
    compile_invariants,
    criterion,
    find_invariants,
    functionally_independent,
    get_group,
    is_invariant,
    jacobian_rank,
    prolong,
    theta,
    u,
    x,
    y,
)

X, Y = sp.symbols("x y")
U = sp.Function("u")(X, Y)
ROTATION = get_group("se2").fields[2]
ADVICE = ("not a jet coordinate (u, u_x, u_xy are coordinates of the jet space, not functions of "
          "x, y): write u_x for Derivative(u(x, y), x), u_xy for Derivative(u(x, y), x, y), u for "
          "u(x, y)")
DERIVATIVE = f"Derivative(u, x) is SymPy's Derivative along x, {ADVICE}"
FUNCTION = f"u(x, y) is an undefined function (SymPy's Function), {ADVICE}"


# ----------------------------------------------------------------------------- F1


@pytest.mark.parametrize("call", [
    lambda: is_invariant("Derivative(u, x)", "se2"),
    lambda: criterion("Derivative(u, x)", ROTATION),
    lambda: compile_invariants(["u_x**2", "Derivative(u, x)"], "r15"),
    lambda: functionally_independent(["u", "Derivative(u, x)"]),
    lambda: jacobian_rank(["u_x"], ["Derivative(u, x)"]),
    lambda: JetSpace(2).total_derivative("Derivative(u, x)", 0),
], ids=["is_invariant", "criterion", "compile_invariants", "functionally_independent",
        "jacobian_rank", "total_derivative"])
def test_sympy_derivative_notation_is_refused_by_every_entry_alike(call):
    """Each answered (True, 0, a rank) or failed later: Derivative(u, x) of the jet coordinate u
    is 0 in the jet space, so u_x written so passed as invariant."""
    with pytest.raises(ConfigError) as caught:
        call()
    assert str(caught.value) == DERIVATIVE


def test_an_undefined_function_u_of_x_y_is_refused_naming_the_outermost_term():
    with pytest.raises(ConfigError) as caught:
        is_invariant(U, "se2")  # was False: u(x, y) is no coordinate a prolonged field moves
    assert str(caught.value) == FUNCTION
    with pytest.raises(ConfigError) as caught:
        is_invariant(sp.diff(U, X)**2 + sp.diff(U, Y)**2, "se2")  # was False
    assert str(caught.value).startswith(
        "Derivative(u(x, y), x) in Derivative(u(x, y), x)**2 + Derivative(u(x, y), y)**2 is "
        "SymPy's Derivative along x, not a jet coordinate")
    with pytest.raises(ConfigError) as caught:
        compile_invariants([U], "r15")  # named x, y "the position" before
    assert str(caught.value) == FUNCTION
    with pytest.raises(ConfigError) as caught:
        VectorField(0, 0, U)  # u(x, y) ∂u: D_x would have differentiated u(x, y) along x
    assert str(caught.value) == f"the vector field coefficient phi_u: {FUNCTION}"


def test_calculus_that_reads_the_same_in_the_jet_is_still_accepted():
    """A generic function of an invariant, or of the position in a field, means the same in the
    jet space: unchanged."""
    assert is_invariant("f(u_x**2 + u_y**2)", "se2") is True
    assert is_invariant("f(u_x)", "se2") is False
    assert prolong(VectorField(sp.Function("f")(x), 0, 0), 1)[sp.Symbol("u_x", real=True)] == (
        -sp.Symbol("u_x", real=True) * sp.Derivative(sp.Function("f")(x), x))
    assert is_invariant("u_x**2 + u_y**2", "se2") is True and is_invariant("u_x", "se2") is False


# ----------------------------------------------------------------------------- F2


LEVEL_SETS = LieGroupAction("level_set_motions", [
    VectorField(1, 0, 0), VectorField(0, 1, 0), VectorField(-y, x, 0), VectorField(u, 0, 0)])
POLYNOMIALS_ONLY = ("every diagonal part is zero here, so the search forms polynomial invariants "
                    "only, no ratios")
RATIONAL = ("the missing ones may be rational (ratios of relative invariants with non-constant "
            "cofactors, as the curvature of the level lines under the rotation and u ∂x), which "
            "no max_degree forms: write them down and check them with is_invariant")


def test_a_search_of_polynomials_only_says_the_missing_invariants_may_be_rational():
    """Rotation and u ∂x (bracket u ∂y): every diagonal part is zero, so only polynomials are
    formed, and the two missing invariants at order 2 are rational (κ², det H / |∇u|⁴); the
    note said only "raise max_degree ... of the searched form may exist"."""
    uy2 = "(u_y**2*u_xx - 2*u_x*u_y*u_xy + u_x**2*u_yy)**2/(u_x**2 + u_y**2)**3"
    determinant = "(u_xx*u_yy - u_xy**2)/(u_x**2 + u_y**2)**2"
    assert is_invariant(uy2, LEVEL_SETS) and is_invariant(determinant, LEVEL_SETS)
    assert jacobian_rank(["u", uy2, determinant]) == 3
    result = find_invariants(LEVEL_SETS, 2, max_degree=3)
    assert (result.found_count, result.expected_count, result.expressions) == (1, 3, [u])
    assert result.notes[-1] == (
        f"found 1 of 3: raise max_degree (now 3): up to 3 functionally independent invariants "
        f"may exist, but {POLYNOMIALS_ONLY}: a higher max_degree finds more only where they are "
        f"polynomials; {RATIONAL}")


def test_a_note_never_advises_a_degree_the_monomial_bound_refuses():
    """max_degree=8 at order 2 is the largest allowed (3,002 monomials; 9 is 5,004 > 5,000): the
    note said "raise max_degree (now 8)". Built from the note's function on the search's action
    (the search itself at degree 8 takes seconds)."""
    n = len(JetSpace(2).derivatives)
    assert math.comb(n + 9, 9) - 1 == 5004 > MAX_SEARCH_MONOMIALS >= math.comb(n + 8, 8) - 1
    with pytest.raises(ConfigError, match=r"max_degree=9 .* is 5,004 monomials to search"):
        find_invariants(LEVEL_SETS, 2, max_degree=9)
    largest = ("max_degree=8 is the largest that the bound of 5,000 searched monomials allows on "
               "the 6 coordinates of the u-jet (9 would search 5,004), so no allowed max_degree "
               "searches further")
    note = _incomplete_note(_JetAction(LEVEL_SETS, JetSpace(2)), 1, 3, 8, True, True, 0)
    assert note == (f"found 1 of 3: up to 3 functionally independent invariants may exist, but "
                    f"{POLYNOMIALS_ONLY}; {largest}; {RATIONAL}")
    sim2 = _JetAction(get_group("sim2"), JetSpace(2))  # a diagonal part: ratios are formed
    # Without ratios, sim2's scaling confines the polynomials to u (round 21: that note says to
    # pass rational=True); the hyperbolic scaling, of weights of both signs, confines nothing.
    hyperbolic = _JetAction(LieGroupAction("hyp", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                                   VectorField(x, -y, 0)]), JetSpace(2))
    note = _incomplete_note(hyperbolic, 3, 4, 8, False, True, 0)
    assert "raise max_degree" not in note
    assert note.endswith(f"but {largest}; allow rational invariants (rational=True)")
    assert _incomplete_note(sim2, 3, 4, 7, True, True, 0).startswith(
        "found 3 of 4: raise max_degree (now 7): up to 4 ")
    u_dx = LieGroupAction("u_dx", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                   VectorField(u, 0, 0)])
    note = _incomplete_note(_JetAction(u_dx, JetSpace(2)), 4, 5, 8, True, False, 0)
    assert f"not proven whether a higher max_degree finds more ({largest})" in note


# ----------------------------------------------------------------------------- F3


def test_a_moving_frame_in_exp_theta_gives_its_invariants():
    """∂x, ∂y, x ∂x + y ∂y + ∂t act freely and transitively on (x, y, t): A1 = exp(t) ∂x,
    A2 = exp(t) ∂y, A3 = ∂t. The exact rank test gave up ("could not evaluate the Jacobian ...
    at 10 random rational points"); exp(θ) now takes a positive rational value there. (Round
    19: on M2, θ on the circle, the frame is refused, the action not being free
    (test_symbolic_round19); on a variable t of the line it is sound.)"""
    t = sp.Symbol("t", real=True)
    group = LieGroupAction("scale_and_turn", [
        VectorField(1, 0, 0), VectorField(0, 1, 0), VectorField(x, y, 0, "s", {t: 1})])
    result = find_invariants(group, 1)
    ux, uy, ut = (sp.Symbol(n, real=True) for n in ("u_x", "u_y", "u_t"))
    assert result.expressions == [u, sp.exp(t) * ux, sp.exp(t) * uy, ut]
    assert (result.found_count, result.expected_count, result.notes) == (4, 4, [])
    assert len(result.expressions[1:]) == 3  # the derivatives along the frame at order 1
    assert all(is_invariant(e, group) for e in result.expressions)
    assert not is_invariant(ux, group)
    assert jacobian_rank(["exp(θ)*u_x", "exp(2*θ)*u_x**2"]) == 1  # the square of the first
    assert jacobian_rank(["exp(θ/2)*u_x", "exp(-θ)*u_y", "u_θ"]) == 3
    with pytest.raises(ConfigError) as caught:
        jacobian_rank(["θ*exp(θ)*u_x"])
    assert str(caught.value) == ("θ occurs outside cos, sin, exp of rational multiples of it: "
                                 "the exact rank test needs rational values of every term")
    with pytest.raises(ConfigError) as caught:
        compile_invariants([sp.exp(theta) * ux, "u_θ"], "r15_exp")  # named θ "the position"
    assert str(caught.value) == (
        "compile_invariants: exp(θ) is not compiled on M2: only cos θ, sin θ (a function of the "
        "orientation θ on the circle; exp(θ) is not one)")


# ----------------------------------------------------------------------------- F4


@pytest.mark.parametrize("expr", ["cos(u_x)", "sin(2*u)", "u_θ*cos(u_x)"])
def test_cos_of_a_jet_coordinate_is_refused_as_not_rational(expr):
    """cos(u_x) was read as an angle u_x: "compiles functions of the jet of the plane (x, y) or
    of M2 (x, y, θ), not of x, y, u_x"."""
    atom = expr.split("*")[-1] if "u_θ" in expr else expr
    with pytest.raises(ConfigError) as caught:
        compile_invariants([expr], "r15_cos")
    assert str(caught.value) == (f"cannot compile {sp.sympify(atom)}: only rational functions "
                                 f"of the jet are supported")


def test_cos_of_a_parameter_is_named_a_symbol_to_substitute():
    with pytest.raises(ConfigError) as caught:
        compile_invariants(["cos(a)*u_x"], "r15_cos")
    assert str(caught.value) == (
        "compile_invariants: the symbol a in u_x*cos(a) is not a jet coordinate of the plane "
        "(u, u_x, u_y, u_xx, ...); substitute parameters by numbers")
