"""eqpdenet.symbolic on M2 = R² × S¹: jets in (x, y, θ), the SE(2) action, the left-invariant
frame, the invariants it gives, and that they are exactly the registered set ``"m2"``."""

from __future__ import annotations

import math
import types

import pytest

sp = pytest.importorskip("sympy")

import torch  # noqa: E402

from eqpdenet.pde.m2 import M2_DERIVATIVE_NAMES, M2_SE2, M2Derivatives, M2InvariantSet  # noqa: E402
from eqpdenet.pde.stencils import derivative_names  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    GROUPS,
    M2,
    JetSpace,
    LieGroupAction,
    VectorField,
    compile_invariants,
    criterion,
    find_invariants,
    is_invariant,
    jacobian_rank,
    left_invariant_derivatives,
    left_invariant_frame,
    prolong,
    reduce_on_the_circle,
    theta,
    u,
    x,
    y,
)

J2 = JetSpace(2, independent=M2)
(_, ux, uy, ut, uxx, uxy, uxt, uyy, uyt, utt) = J2.derivatives
c, s = sp.cos(theta), sp.sin(theta)
ROTATION = VectorField(-y, x, 0, "rotation", {theta: 1})


@pytest.fixture(scope="module")
def derived():
    return left_invariant_derivatives("se2_m2", 2)


def test_m2_jet_space_is_named_like_the_m2_jet():
    assert J2.names == M2_DERIVATIVE_NAMES
    assert J2.coordinates[:3] == (x, y, theta) and J2.dimension == 3 + 10
    assert J2.derivative((1, 0, 1)) is uxt
    assert JetSpace(3, independent=M2).dimension == 3 + 20
    assert JetSpace(3).names == derivative_names(3)  # the plane's jet is unchanged
    assert [str(v) for v in JetSpace(1, channels=2, independent="xyθ").derivatives] == [
        "u1", "u1_x", "u1_y", "u1_θ", "u2", "u2_x", "u2_y", "u2_θ"]
    with pytest.raises(ValueError, match="one letter"):
        JetSpace(1, independent=(x, sp.Symbol("phi")))
    with pytest.raises(ValueError, match="distinct"):
        JetSpace(1, independent=(x, x))
    with pytest.raises(ValueError, match="derivative"):
        J2.symbol(1, 0)


def test_rotation_of_m2_prolongation_matches_hand_derivation():
    # Q = phi - xi . grad u = y u_x - x u_y - u_θ; phi^J = D_J Q + xi . grad u_J. The θ-derivatives
    # ride along: (u_xθ, u_yθ) rotates like (u_x, u_y), and u_θ, u_θθ are unchanged.
    expected = {x: -y, y: x, theta: 1, u: 0, ux: -uy, uy: ux, ut: 0,
                uxx: -2 * uxy, uxy: uxx - uyy, uyy: 2 * uxy, uxt: -uyt, uyt: uxt, utt: 0}
    got = prolong(ROTATION, 2)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert sp.expand(got[key] - value) == 0, key
    # A planar field on M2 has no θ component; its prolongation there agrees with the plane's.
    planar, lifted = prolong(VectorField(x, y, 0), 2), prolong(VectorField(x, y, 0), 2,
                                                                independent=M2)
    assert lifted[theta] == 0 and lifted[ut] == 0 and lifted[uxt] == -uxt and lifted[utt] == 0
    assert all(sp.expand(lifted[k] - v) == 0 for k, v in planar.items())


def _recursive_prolongation(field: VectorField, order: int, independent) -> dict:
    """Independent check in p variables: phi^{J,i} = D_i phi^J - sum_k D_i(xi^k) u_{J,k}."""
    jet = JetSpace(order, independent=independent)
    p = len(independent)
    xi = [field.xi(v) for v in independent]
    out = {jet.derivative((0,) * p): field.phi_u}
    for index in jet.multi_indices[1:]:
        axis = next(k for k, n in enumerate(index) if n)
        parent = tuple(n - (k == axis) for k, n in enumerate(index))
        value = jet.total_derivative(out[jet.derivative(parent)], axis)
        for k in range(p):
            up = tuple(n + (m == k) for m, n in enumerate(parent))
            value -= jet.total_derivative(xi[k], axis) * jet.derivative(up)
        out[jet.derivative(index)] = sp.expand(value)
    return out


@pytest.mark.parametrize("field", [
    ROTATION,
    VectorField(x * theta, sp.sin(theta) * y, theta * u, "", {theta: x * y + u}),
    VectorField(0, 0, sp.cos(theta) * u, "", {"θ": x}),
])
def test_prolongation_formula_agrees_with_recursion_in_three_variables(field):
    direct, recursive = prolong(field, 2), _recursive_prolongation(field, 2, M2)
    for symbol, value in recursive.items():
        assert sp.expand(direct[symbol] - value) == 0, symbol


def test_vector_fields_on_m2():
    assert str(ROTATION) == "-y ∂x + x ∂y + ∂θ"
    assert ROTATION.variables == M2 and ROTATION.xi(theta) == 1
    assert VectorField(1, 0, 0).variables == (x, y)
    with pytest.raises(ValueError, match="θ component"):
        VectorField(sp.cos(theta), 0, 0)
    with pytest.raises(ValueError, match="not among the independent variables"):
        prolong(ROTATION, 1, independent=(x, y))


def test_expected_counts_on_m2():
    group = GROUPS.get("se2_m2")
    assert group.variables == M2
    # dim J^(n) = 3 + binom(n + 3, 3); SE(2) (dimension 3) acts freely: orbit dimension 3.
    assert [group.orbit_dimension(n) for n in (1, 2)] == [3, 3]
    assert [group.expected_count(n) for n in (1, 2)] == [7 - 3, 13 - 3] == [4, 10]


def test_left_invariant_frame_commutes_with_the_action():
    frame = left_invariant_frame("se2_m2")
    assert frame.variables == M2
    assert frame.fields == ((c, s, 0), (-s, c, 0), (0, 0, 1))
    group = GROUPS.get("se2_m2")

    def bracket(a, b):  # [a, b]^j = a(b^j) - b(a^j), written out here independently
        return [sp.simplify(sum(a[k] * sp.diff(b[j], v) - b[k] * sp.diff(a[j], v)
                                for k, v in enumerate(M2))) for j in range(3)]

    for field in group.fields:
        xi = [field.xi(v) for v in M2]
        for a in frame.fields:
            assert bracket(a, xi) == [0, 0, 0], (a, field)
            assert frame.bracket(frame.fields.index(a), field) == (0, 0, 0)
    # The frame of the plane (d_x, d_y) does not commute with the rotation: the test can fail.
    assert bracket((1, 0, 0), [ROTATION.xi(v) for v in M2]) == [0, 1, 0]
    # Structure constants: [A1, A2] = 0, [A1, A3] = -A2, [A2, A3] = A1.
    assert frame.commutator(0, 1) == (0, 0, 0)
    assert frame.commutator(0, 2) == (0, -1, 0)
    assert frame.commutator(1, 2) == (1, 0, 0)


def test_counts_and_expressions_of_the_moving_frame(derived):
    first = left_invariant_derivatives("se2_m2", 1)
    assert (first.expected_count, first.found_count) == (4, 4)
    assert first.names == ("u", "A1u", "A2u", "A3u")
    assert (derived.expected_count, derived.found_count) == (10, 10) and derived.complete
    assert (derived.jet_dimension, derived.orbit_dimension) == (13, 3)
    assert derived.method == "frame" and derived.max_degree is None and not derived.notes
    assert derived.names == M2_SE2.names
    a1, a2 = c * ux + s * uy, -s * ux + c * uy
    expected = [u, a1, a2, ut,
                c**2 * uxx + 2 * c * s * uxy + s**2 * uyy,
                c * s * (uyy - uxx) + (c**2 - s**2) * uxy,
                c * uxt + s * uyt + a2 / 2,
                s**2 * uxx - 2 * c * s * uxy + c**2 * uyy,
                -s * uxt + c * uyt - a1 / 2,
                utt]
    for name, got, want in zip(derived.names, derived.expressions, expected, strict=True):
        assert sp.expand(got - want) == 0, name
    assert "A13u = " in str(derived) and "A3 = ∂θ" in str(derived)


def test_every_derived_invariant_satisfies_the_criterion(derived):
    for expr in derived.expressions:
        for field in GROUPS.get("se2_m2").fields:
            assert criterion(expr, field) == 0, (expr, field)
        assert is_invariant(expr, "se2_m2"), expr
    # Not vacuous: Cartesian derivatives and wrongly oriented frames fail it.
    for expr in (ux, c * ux - s * uy, c * uxt - s * uyt, uxx, c**2 * uxx + s**2 * uyy):
        assert not is_invariant(expr, "se2_m2"), expr
    # pr R (E) = d_θ E - u_y dE/du_x + u_x dE/du_y
    assert sp.expand(criterion(c * ux - s * uy, ROTATION) - (-2 * s * ux - 2 * c * uy)) == 0


def test_functional_independence_by_the_jacobian_rank(derived):
    assert jacobian_rank(derived.expressions) == 10
    assert jacobian_rank(derived.expressions[:4]) == 4
    assert jacobian_rank(derived.expressions[:-1]) == 9
    # The fourth order-1 invariant depends on θ: u, |∇u|², u_θ are only 3 independent θ-free ones.
    assert jacobian_rank([u, ux**2 + uy**2, ut, ux * c + uy * s]) == 4
    assert jacobian_rank([u, ux**2 + uy**2, ut, (ux * c + uy * s)**2 + (-ux * s + uy * c)**2]) == 3
    with pytest.raises(ValueError, match="outside cos"):
        jacobian_rank([theta * ux + c])


def _lambdified(derived):
    symbols = [*J2.derivatives, theta]
    return [sp.lambdify(symbols, e, "math") for e in derived.expressions]


def test_derived_expressions_equal_the_registered_m2_set(derived):
    """THE MATCH: SymPy's expressions (lambdified, float64) against the registered torch
    functions, on random jets and orientations, and on the orientation grid of an M2 jet."""
    functions = _lambdified(derived)
    generator = torch.Generator().manual_seed(0)
    jets = torch.randn(10, 50, generator=generator, dtype=torch.float64)
    angles = torch.rand(50, generator=generator, dtype=torch.float64) * 2 * math.pi
    view = types.SimpleNamespace(**dict(zip(M2_DERIVATIVE_NAMES, jets, strict=True)),
                                 cos=torch.cos(angles), sin=torch.sin(angles))
    for name, function, invariant in zip(derived.names, functions, M2_SE2.invariants,
                                         strict=True):
        assert invariant.name == name
        torch_values = invariant.function(view, None)
        sympy_values = torch.tensor([function(*jets[:, k].tolist(), angles[k].item())
                                     for k in range(50)], dtype=torch.float64)
        torch.testing.assert_close(torch.broadcast_to(torch_values, (50,)), sympy_values,
                                   rtol=0, atol=1e-12, msg=name)
    n = 8  # an M2 jet (1, 10, N, 1, 1): orientations 2 pi k / N, cos and sin from M2Derivatives
    field = torch.randn(1, 10, n, 1, 1, generator=generator, dtype=torch.float64)
    d = M2Derivatives(field)
    registered = M2_SE2(field)[0, :, :, 0, 0]
    for index, function in enumerate(functions):
        for k in range(n):
            value = function(*field[0, :, k, 0, 0].tolist(), 2 * math.pi * k / n)
            assert abs(registered[index, k].item() - value) < 1e-12
            assert abs(d.cos[k, 0, 0].item() - math.cos(2 * math.pi * k / n)) < 1e-15


def test_ordered_products_are_not_symmetric_the_symmetrised_ones_are(derived):
    frame, jet = derived.frame, JetSpace(2, independent=M2)
    a1a3 = frame.apply(0, frame.apply(2, u, jet), jet)
    a3a1 = frame.apply(2, frame.apply(0, u, jet), jet)
    a2u = derived.expressions[derived.names.index("A2u")]
    assert sp.expand(a1a3 - a3a1) != 0
    assert sp.expand(a1a3 - a3a1 + a2u) == 0  # [A1, A3] = -A2
    a13 = derived.expressions[derived.names.index("A13u")]
    assert sp.expand(a13 - (a1a3 + a3a1) / 2) == 0
    assert sp.expand(a13 - a1a3 - a2u / 2) == 0
    # Either ordered product is invariant too (they differ from A13u by -+ A2u / 2).
    assert is_invariant(a1a3, "se2_m2") and is_invariant(a3a1, "se2_m2")
    a2a3, a3a2 = (frame.apply(1, frame.apply(2, u, jet), jet),
                  frame.apply(2, frame.apply(1, u, jet), jet))
    a1u = derived.expressions[derived.names.index("A1u")]
    assert sp.expand(a2a3 - a3a2 - a1u) == 0  # [A2, A3] = A1
    a1a2, a2a1 = (frame.apply(0, frame.apply(1, u, jet), jet),
                  frame.apply(1, frame.apply(0, u, jet), jet))
    assert sp.expand(a1a2 - a2a1) == 0


def test_invariants_of_an_exactly_transformed_field(derived):
    """(g.U)(x, θ) = U(R_-φ (x - b), θ - φ): the invariants of g.U at g.m equal those of U at m,
    exactly computed jets (SymPy derivatives), while the Cartesian derivatives differ."""
    phi, b = sp.Rational(7, 10), (sp.Rational(1, 3), -sp.Rational(1, 2))
    field = ((1 + x - 2 * y + x * y / 3 + y**2) * sp.cos(theta) + (x**2 - y / 2) * sp.sin(2 * theta)
             + x * sp.cos(theta) ** 2)
    cx, sx = sp.cos(phi), sp.sin(phi)
    moved = field.xreplace({x: cx * (x - b[0]) + sx * (y - b[1]),
                            y: -sx * (x - b[0]) + cx * (y - b[1]), theta: theta - phi})
    m = (sp.Rational(2, 5), -sp.Rational(3, 10), sp.Rational(1, 4))
    gm = (cx * m[0] - sx * m[1] + b[0], sx * m[0] + cx * m[1] + b[1], m[2] + phi)

    def jet_at(f, point):
        values = {}
        for name, index in zip(J2.names, J2.multi_indices, strict=True):
            derivative = f
            for variable, k in zip(M2, index, strict=True):
                derivative = sp.diff(derivative, variable, k) if k else derivative
            values[name] = float(derivative.subs(dict(zip(M2, point, strict=True))))
        return values

    before, after = jet_at(field, m), jet_at(moved, gm)
    functions = _lambdified(derived)
    for name, function in zip(derived.names, functions, strict=True):
        a = function(*before.values(), float(m[2]))
        b_ = function(*after.values(), float(gm[2]))
        assert abs(a - b_) < 1e-12 * (1 + abs(a)), name
    assert abs(before["u_x"] - after["u_x"]) > 0.1  # the comparison is not vacuous


def test_find_invariants_uses_the_frame_on_m2_and_the_search_finds_the_theta_free_ones():
    result = find_invariants("se2_m2", 2)
    assert result.method == "frame" and result.names == M2_SE2.names
    searched = find_invariants("se2_m2", 2, max_degree=3, method="search")
    # Free of θ: u, u_θ, u_θθ, Δu, |∇u|², ∇u·∇u_θ, det(∇u, ∇u_θ), det H, ∇uᵀH∇u: 9 independent
    # of 10 (|∇u_θ|² and the like depend on these); the tenth needs θ.
    assert searched.expected_count == 10 and searched.found_count == 9, str(searched)
    assert any("method='frame'" in note for note in searched.notes)
    for expr in searched.expressions:
        assert theta not in expr.free_symbols and is_invariant(expr, "se2_m2"), expr
    with pytest.raises(ValueError, match="method"):
        find_invariants("se2_m2", 2, method="guess")


def test_reduce_on_the_circle():
    assert reduce_on_the_circle(c**2 + s**2 - 1) == 0
    assert reduce_on_the_circle(sp.cos(2 * theta) - c**2 + s**2) == 0
    assert reduce_on_the_circle(ux * (c**4 - s**4) - ux * (c**2 - s**2)) == 0
    assert reduce_on_the_circle(c) != 0 and reduce_on_the_circle(s * ux) != 0
    assert reduce_on_the_circle(ux**2 + 1) == ux**2 + 1


def test_moving_frame_refuses_groups_it_does_not_cover():
    with pytest.raises(ValueError, match="freely and transitively"):
        left_invariant_frame("se2")  # 3 generators on the 2 variables of the plane
    with pytest.raises(ValueError, match="values of u"):
        left_invariant_frame(LieGroupAction("shift", [VectorField(1, 0, 0), VectorField(0, 1, u)]))
    with pytest.raises(ValueError, match=r"not closed under the Lie bracket \(\[∂x, x ∂y\] = ∂y"):
        left_invariant_frame(LieGroupAction("sheared", [
            VectorField(1, 0, 0), VectorField(0, x, 0), VectorField(-y, x, 0, "", {theta: 1})]))
    with pytest.raises(ValueError, match="affine"):
        left_invariant_frame(LieGroupAction("bent", [VectorField(1, 0, 0),
                                                     VectorField(x**2, 1, 0)]))
    # The plane's translations: the frame is (d_x, d_y) and the invariants the Cartesian jet.
    translations = left_invariant_derivatives(
        LieGroupAction("t2", [VectorField(1, 0, 0), VectorField(0, 1, 0)]), 2)
    assert translations.expressions == list(JetSpace(2).derivatives)
    assert translations.complete


def test_joint_invariants_on_m2_by_the_frame():
    result = left_invariant_derivatives("se2_m2", 1, channels=2)
    assert result.expected_count == result.found_count == 3 + 2 * 4 - 3
    assert result.names == ("u1", "A1u1", "A2u1", "A3u1", "u2", "A1u2", "A2u2", "A3u2")


def test_compiled_m2_invariants_equal_the_registered_set(derived):
    compiled = compile_invariants(derived, "m2_derived")
    assert isinstance(compiled, M2InvariantSet) and compiled.domain == "m2"
    assert compiled.names == M2_SE2.names and compiled.order == 2
    field = torch.randn(2, 3, 10, 8, 4, 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(compiled(field), M2_SE2(field), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="only polynomials"):
        compile_invariants([ux / (c * uy + 1)], "ratio_on_m2")
    with pytest.raises(ValueError, match="2-jet"):
        compile_invariants([JetSpace(3, independent=M2).derivative((0, 0, 3)) * c], "third")


def test_eqpdenet_symbolic_lists_the_m2_group(capsys):
    from eqpdenet.app.cli import main

    assert main(["symbolic", "se2_m2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| se2_m2 |")]
    # group, order, dim J, orbit dim, expected, found
    assert [(int(r[1]), int(r[3]), int(r[4]), int(r[5]), int(r[6])) for r in rows] == [
        (1, 7, 3, 4, 4), (2, 13, 3, 10, 10)]
    assert "A13u = " in out and "A1 = cos(θ) ∂x + sin(θ) ∂y" in out

