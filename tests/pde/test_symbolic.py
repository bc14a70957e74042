"""eqpdenet.symbolic: prolongation, invariant search, functional equivalence, compilation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

sp = pytest.importorskip("sympy")

import torch  # noqa: E402

import eqpdenet  # noqa: E402
from eqpdenet import EqPdeNet, PDELayer, get_invariant_set, jet  # noqa: E402
from eqpdenet.geometry import pixel_coordinates  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    DEFAULT_DEGREES,
    GROUPS,
    PAPER_INVARIANTS,
    JetSpace,
    LieGroupAction,
    VectorField,
    compile_invariants,
    criterion,
    find_invariants,
    functionally_independent,
    is_invariant,
    jacobian_rank,
    lie_bracket,
    prolong,
    u,
    x,
    y,
)

J2 = JetSpace(2)
ux, uy, uxx, uxy, uyy = J2.derivatives[1:]


def test_rotation_prolongation_matches_hand_derivation():
    # v = -y d_x + x d_y: phi^x = -u_y, phi^y = u_x, phi^xx = -2 u_xy, phi^xy = u_xx - u_yy,
    # phi^yy = 2 u_xy (derived by hand from phi^{J,i} = D_i phi^J - sum_k D_i(xi^k) u_{J,k}).
    expected = {x: -y, y: x, u: 0, ux: -uy, uy: ux, uxx: -2 * uxy, uxy: uxx - uyy, uyy: 2 * uxy}
    got = prolong(VectorField(-y, x, 0), 2)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert sp.expand(got[key] - value) == 0, key


def _recursive_prolongation(field: VectorField, order: int) -> dict:
    """Independent check: phi^{J,i} = D_i phi^J - sum_k D_i(xi^k) u_{J,k} (Olver, eq. 2.44)."""
    jet = JetSpace(order)
    xi = (field.xi_x, field.xi_y)
    out = {jet.symbol(0, 0): field.phi_u}
    for a, b in jet.multi_indices[1:]:
        axis, (pa, pb) = (0, (a - 1, b)) if a else (1, (a, b - 1))
        parent = out[jet.symbol(pa, pb)]
        value = jet.total_derivative(parent, axis)
        value -= jet.total_derivative(xi[0], axis) * jet.symbol(pa + 1, pb)
        value -= jet.total_derivative(xi[1], axis) * jet.symbol(pa, pb + 1)
        out[jet.symbol(a, b)] = sp.expand(value)
    return out


@pytest.mark.parametrize("field", [
    VectorField(x, y, 0), VectorField(x * y, u, x * u**2), VectorField(-y, x, u),
    VectorField(0, 0, sp.sin(x) * u),
])
def test_prolongation_formula_agrees_with_recursion(field):
    direct, recursive = prolong(field, 3), _recursive_prolongation(field, 3)
    for symbol, value in recursive.items():
        assert sp.expand(direct[symbol] - value) == 0, symbol


def test_scaling_prolongation_is_diagonal():
    prolonged = prolong(VectorField(x, y, 0), 3)
    for (a, b), symbol in zip(JetSpace(3).multi_indices, JetSpace(3).derivatives, strict=True):
        assert prolonged[symbol] == -(a + b) * symbol


@pytest.mark.parametrize("name", ["se2", "scaling"])
def test_paper_invariants_satisfy_the_criterion(name):
    for expr in PAPER_INVARIANTS[name]:
        for field in GROUPS.get(name).fields:
            assert criterion(expr, field) == 0, (expr, field)
        assert is_invariant(expr, name)


def test_criterion_detects_non_invariants():
    rotation = VectorField(-y, x, 0)
    assert criterion(ux, rotation) != 0
    assert criterion(ux**2 / uxx, rotation) != 0  # eq. (5) is not rotation invariant
    assert not is_invariant(uxx + uyy, "scaling")
    assert not is_invariant(u, "se2_intensity_shift")


def test_expected_counts():
    counts = {(name, order): find_invariants(name, order, degree).expected_count
              for name, configs in DEFAULT_DEGREES.items() for order, degree in configs}
    assert counts == {("se2", 1): 2, ("se2", 2): 5, ("se2", 3): 9,
                      ("scaling", 1): 2, ("scaling", 2): 5, ("scaling", 3): 9,
                      ("sim2", 1): 1, ("sim2", 2): 4, ("sim2", 3): 8,
                      ("se2_intensity_shift", 2): 4, ("se2_intensity_shift", 3): 8,
                      ("affine", 1): 1, ("affine", 2): 2, ("affine", 3): 6}


@pytest.mark.parametrize("name", list(DEFAULT_DEGREES))
def test_ready_groups_complete_and_invariant(name):
    for order, degree in DEFAULT_DEGREES[name]:
        result = find_invariants(name, order, degree)
        assert result.found_count == result.expected_count, str(result)
        assert result.seconds < 10
        assert jacobian_rank(result.expressions) == result.found_count
        for expr in result.expressions:
            assert is_invariant(expr, name), expr


# ----------------------------------------------------------------------------- several channels


@pytest.mark.parametrize("field", [
    VectorField(-y, x, 0), VectorField(x, y, 0), VectorField(x * y, x, x * u**2),
    VectorField(0, 0, u), VectorField(0, 0, 1),
])
def test_joint_prolongation_transforms_every_channel_alike(field):
    """On C = 3 channels, channel c's coefficients are the one-channel ones with u -> uc; the
    total derivatives of the vector-valued jet add no cross-channel terms for such fields."""
    single = prolong(field, 2)
    joint = prolong(field, 2, channels=3)
    space = JetSpace(2, channels=3)
    assert set(joint) == {x, y, *space.derivatives}
    for c in range(3):
        rename = dict(zip(J2.derivatives, space.channel_derivatives(c), strict=True))
        for symbol, value in single.items():
            key = rename.get(symbol, symbol)
            assert sp.expand(joint[key] - value.xreplace(rename)) == 0, (c, symbol)


def test_joint_jet_space_names_and_dimension():
    space = JetSpace(1, channels=2)
    assert [str(s) for s in space.derivatives] == ["u1", "u1_x", "u1_y", "u2", "u2_x", "u2_y"]
    assert JetSpace(2, channels=3).dimension == 2 + 3 * 6
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        JetSpace(2, channels=0)
    with pytest.raises(ValueError, match="xi may not depend on u"):
        prolong(VectorField(u, 0, 0), 1, channels=2)


# Counted by hand: the groups act freely on generic jets, so s = dim G and the count is
# 2 + C binom(n + 2, 2) - dim G: SE(2) (dim 3) 8 - 3 = 5 and 14 - 3 = 11, SIM(2) (dim 4) 4 and 10.
JOINT_COUNTS = {("se2", 1): 5, ("se2", 2): 11, ("sim2", 1): 4, ("sim2", 2): 10}


@pytest.mark.parametrize("name, order", list(JOINT_COUNTS))
def test_joint_invariants_of_two_channels_complete_and_invariant(name, order):
    result = find_invariants(name, order, 3 if order == 2 else 2, channels=2)
    assert result.expected_count == JOINT_COUNTS[(name, order)] == result.found_count, str(result)
    assert result.jet_dimension == 2 + 2 * (3 if order == 1 else 6)
    assert jacobian_rank(result.expressions) == result.found_count
    for expr in result.expressions:
        assert is_invariant(expr, name), expr
    # Genuinely joint: some invariant couples the two channels.
    assert any({"u1", "u2"} <= {str(s)[:2] for s in e.free_symbols} for e in result.expressions)


def test_joint_criterion_rejects_non_invariants():
    u1x, u1y, u2x, u2y = (JetSpace(1, channels=2).symbol(a, b, c)
                          for c in (0, 1) for a, b in ((1, 0), (0, 1)))
    assert is_invariant(u1x * u2x + u1y * u2y, "se2")
    assert not is_invariant(u1x * u2x - u1y * u2y, "se2")
    assert not is_invariant(u1x * u2y + u1y * u2x, "se2")
    assert not is_invariant(u1x * u2x + u1y * u2y, "sim2")  # weight -2 under scaling


def test_eqpdenet_symbolic_prints_the_joint_counts(capsys):
    from eqpdenet.app.cli import main

    assert main(["symbolic", "--channels", "2", "se2", "sim2"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| se2 |") or line.startswith("| sim2 |")]
    # group, order, dim J, orbit dim, expected, found
    assert [(r[0][2:], int(r[1]), int(r[3]), int(r[4]), int(r[5]), int(r[6])) for r in rows] == [
        ("se2", 1, 8, 3, 5, 5), ("se2", 2, 14, 3, 11, 11),
        ("sim2", 1, 8, 4, 4, 4), ("sim2", 2, 14, 4, 10, 10)]


def test_compile_refuses_joint_invariants():
    u1x, u2x = JetSpace(1, channels=2).symbol(1, 0, 0), JetSpace(1, channels=2).symbol(1, 0, 1)
    with pytest.raises(ValueError, match="JointInvariants"):
        compile_invariants([u1x * u2x], "joint")


def test_se2_derived_set_is_functionally_equivalent_to_eq4():
    derived = find_invariants("se2", 2, 3).expressions
    paper = list(PAPER_INVARIANTS["se2"])
    assert jacobian_rank(paper) == jacobian_rank(derived) == 5
    for invariant in paper:
        assert jacobian_rank([*derived, invariant]) == 5, invariant
    for invariant in derived:
        assert jacobian_rank([*paper, invariant]) == 5, invariant


def test_scaling_derived_set_and_the_dependence_of_eq5():
    derived = find_invariants("scaling", 2, 2).expressions
    paper = list(PAPER_INVARIANTS["scaling"])
    assert jacobian_rank(derived) == 5
    # The six ratios of eq. (5) are functionally dependent: rank 4 (they omit u, and 4
    # independent scale-invariant ratios of (u_x, u_y, u_xx, u_xy, u_yy) exist).
    assert jacobian_rank(paper) == 4
    assert len(functionally_independent(paper)) == 4
    for invariant in paper:
        assert jacobian_rank([*derived, invariant]) == 5, invariant
    # eq. (5) together with u is functionally equivalent to the derived set.
    assert jacobian_rank([u, *paper]) == 5
    for invariant in derived:
        assert jacobian_rank([u, *paper, invariant]) == 5, invariant


def test_group_without_translations_is_reported_honestly():
    rotation_only = LieGroupAction("so2", [VectorField(-y, x, 0)])
    result = find_invariants(rotation_only, 1, 2)
    assert result.expected_count == 4  # x^2 + y^2, u, u_x^2 + u_y^2, x u_x + y u_y
    assert result.found_count == 2  # only the x, y-free ones are searched
    assert any("x, y" in note for note in result.notes)


def test_lie_bracket_by_hand():
    rotation, stretch = VectorField(-y, x, 0), VectorField(x, 0, 0)
    # [R, D]^x = R(x) - D(-y) = -y, [R, D]^y = R(0) - D(x) = -x
    bracket = lie_bracket(rotation, stretch)
    assert (bracket.xi_x, bracket.xi_y, bracket.phi_u) == (-y, -x, 0)
    assert lie_bracket(VectorField(1, 0, 0), VectorField(x, 0, u * x)).phi_u == u
    for name in GROUPS.names():  # every ready group's generators span a Lie algebra
        assert GROUPS.get(name).brackets == (), name


def test_generators_not_closed_under_the_bracket_count_as_the_group_they_generate():
    """Rotations and x d_x generate shears too (the affine group): the expected count is the
    affine group's, not 8 minus the rank of the four fields given, and a note names the
    brackets that complete the algebra."""
    group = LieGroupAction("rotation_and_stretch", [VectorField(1, 0, 0), VectorField(0, 1, 0),
                                                    VectorField(-y, x, 0), VectorField(x, 0, 0)])
    assert len(group.brackets) == 2
    for order, degree in ((1, 2), (2, 3)):
        result = find_invariants(group, order, degree)
        affine = find_invariants("affine", order, degree)
        assert (result.orbit_dimension, result.expected_count) == (
            affine.orbit_dimension, affine.expected_count)
        assert result.complete
        assert all(is_invariant(expr, "affine") for expr in result.expressions)
        assert any("not closed under the Lie bracket" in note for note in result.notes)
    assert not find_invariants("affine", 2, 3).notes


def test_generators_of_no_finite_dimensional_group_are_refused():
    with pytest.raises(ValueError, match="finite-dimensional"):
        find_invariants(LieGroupAction("x_cubed", [VectorField(1, 0, 0), VectorField(x**3, 0, 0)]),
                        1, 2)


def test_too_low_degree_is_reported():
    result = find_invariants("se2", 2, 2)
    assert result.found_count == 4 < result.expected_count == 5
    assert result.notes


def _random_jet(order=2, shape=(3, 4, 5), seed=0):
    generator = torch.Generator().manual_seed(seed)
    d = (order + 1) * (order + 2) // 2
    return torch.randn(*shape[:-2], d, *shape[-2:], generator=generator, dtype=torch.float64)


def test_compiled_paper_se2_equals_handwritten():
    compiled = compile_invariants(PAPER_INVARIANTS["se2"], "se2_compiled")
    hand = get_invariant_set("se2")
    assert compiled.names == hand.names
    values = _random_jet()
    torch.testing.assert_close(compiled(values), hand(values), rtol=1e-12, atol=1e-12)


def test_compiled_derived_se2_matches_handwritten():
    compiled = compile_invariants(find_invariants("se2", 2, 3), "se2_derived")
    hand = get_invariant_set("se2")
    values = _random_jet(seed=1)
    ours, theirs = compiled(values), hand(values)
    by_name = {name: ours[..., k, :, :] for k, name in enumerate(compiled.names)}
    for k, name in enumerate(hand.names):
        if name in by_name:
            torch.testing.assert_close(by_name[name], theirs[..., k, :, :], rtol=1e-12,
                                       atol=1e-12)
    assert set(compiled.names) == {"u", "grad_sq", "laplacian", "grad_hess_grad", "hess_det"}
    # |H|^2 = (u_xx + u_yy)^2 - 2 det H: the same information.
    torch.testing.assert_close(by_name["laplacian"] ** 2 - 2 * by_name["hess_det"],
                               theirs[..., hand.names.index("hess_sq"), :, :])


def test_compiled_ratios_use_safe_ratio():
    compiled = compile_invariants([ux**2 / uxx], "ratio")
    values = torch.zeros(1, 6, 1, 1, dtype=torch.float64)
    values[0, 1], values[0, 3] = 2.0, 0.0  # u_xx = 0: finite, 0
    assert compiled(values, ratio_eps=0.1).item() == 0.0
    values[0, 3] = 0.5
    assert compiled(values, 0.1, "absolute").item() == pytest.approx(4 * 0.5 / (0.25 + 0.01))
    # covariant, without a declared reference: r / (1 + eps^2 r^2) with r = a / b = 8
    assert compiled(values, 0.1, "covariant").item() == pytest.approx(8 / (1 + 0.01 * 64))
    fixed = compile_invariants([ux**2 / uxx], "ratio", ratio_eps=1e-9)
    assert fixed(values, ratio_eps=0.1).item() == pytest.approx(8.0)


def test_the_registered_sim2_set_generates_the_symbolic_one():
    """eqpdenet.pde.invariants writes the sim2 set out by hand, with (Δu)²/det H replaced by its
    product with |∇u|²/Δu: each expression is invariant, they are functionally independent and
    as many as the theory predicts, and the hand-written torch code computes them."""
    found = find_invariants("sim2", 2)
    grad, lap, det = ux**2 + uy**2, uxx + uyy, uxx * uyy - uxy**2
    ghg = ux**2 * uxx + 2 * ux * uy * uxy + uy**2 * uyy
    ours = [u, grad / lap, grad * lap / det, ghg / det]
    assert sp.simplify(found.expressions[2] - lap**2 / det) == 0  # the one we replace
    assert all(is_invariant(e, "sim2") for e in ours)
    assert len(functionally_independent(ours)) == found.expected_count == 4
    hand = get_invariant_set("sim2")
    compiled = compile_invariants(ours, "sim2-from-sympy")
    jets = torch.randn(5, 6, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hand(jets, 1e-9, "absolute"), compiled(jets, 1e-9, "absolute"),
                               rtol=1e-9, atol=1e-9)


def test_compile_rejects_non_rational():
    with pytest.raises(ValueError, match="rational"):
        compile_invariants([sp.sqrt(ux**2 + uy**2)], "norm")


def _analytic(px, py):
    """A smooth function with a generic 2-jet at the origin (nonzero gradient, Laplacian, det)."""
    return torch.exp(-((px - 0.4) ** 2 + 0.5 * (py + 0.3) ** 2)) * (1 + 0.3 * px) + 0.2 * px * py


def test_sim2_compiled_set_is_numerically_invariant():
    sim2 = compile_invariants(find_invariants("sim2", 2, 3), "sim2")
    angle, factor = 0.7, 1.3
    c, s = math.cos(angle), math.sin(angle)

    def errors(h):
        px, py = pixel_coordinates(5, 5, h, dtype=torch.float64)
        f = _analytic(px, py)
        # (g.f)(p) = f(g^-1 p), g = rotation by angle then scaling by factor; g fixes the centre.
        qx, qy = (c * px + s * py) / factor, (-s * px + c * py) / factor
        gf = _analytic(qx, qy)
        jets = jet(torch.stack([f, gf])[:, None], 2, spacing=h)[:, 0, :, 2, 2]  # (2, 6)
        values = sim2(jets[..., None, None], ratio_eps=1e-12)[..., 0, 0]  # (2, K)
        non_invariant = (jets[0, 1] - jets[1, 1]).abs().item()  # u_x is not invariant
        return ((values[0] - values[1]).abs() / (1 + values[0].abs())).max().item(), non_invariant

    (e1, n1), (e2, _), (e3, _) = errors(0.04), errors(0.02), errors(0.01)
    assert n1 > 0.1  # the comparison is not vacuous
    assert e1 < 1e-2
    assert e1 / e2 > 3.5 and e2 / e3 > 3.5, (e1, e2, e3)  # second-order stencils: ~4x per halving


def test_compiled_set_in_pde_layer_and_eqpdenet():
    torch.manual_seed(0)
    sim2 = compile_invariants(find_invariants("sim2", 2, 3), "sim2")
    layer = PDELayer.build([sim2, "se2"], T=0.2, dt=0.1, init="normal", init_scale=0.01)
    model = EqPdeNet(hidden=8, layer=layer, image_size=10)
    images = torch.rand(2, 1, 10, 10)
    logits = model(images)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    grad = layer.pdes[0].step.rhs.F.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_import_eqpdenet_does_not_import_sympy_and_guard_message():
    code = (
        "import sys\n"
        "import eqpdenet\n"
        "assert 'sympy' not in sys.modules, 'import eqpdenet imported sympy'\n"
        "sys.modules['sympy'] = None\n"
        "try:\n"
        "    import eqpdenet.pde.symbolic\n"
        "except ImportError as exc:\n"
        "    assert \"pip install 'eqpdenet[symbolic]'\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ImportError without sympy')\n"
    )
    src = str(Path(eqpdenet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
