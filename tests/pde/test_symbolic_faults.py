"""Faults an outside-in probe of eqpdenet.pde.symbolic found (session of 2026-12-06): a saved
model loading another set registered under its set's name, mixed derivatives named out of
order, unbounded searches, messages that were not one clear line, and a note that suggested
raising max_degree where no degree helps."""

from __future__ import annotations

import io
import pickle
import time

import pytest

sp = pytest.importorskip("sympy")

import torch  # noqa: E402

from eqpdenet import EqPdeNet, PDELayer  # noqa: E402
from eqpdenet.errors import ConfigError, InputError  # noqa: E402
from eqpdenet.pde.invariants import INVARIANT_SETS, get_invariant_set  # noqa: E402
from eqpdenet.pde.symbolic import (  # noqa: E402
    MAX_CHANNELS,
    MAX_FRAME_ORDER,
    MAX_ORDER,
    MAX_SEARCH_MONOMIALS,
    JetSpace,
    LieGroupAction,
    VectorField,
    compile_invariants,
    criterion,
    find_invariants,
    get_group,
    is_invariant,
    jacobian_rank,
    u,
    unicode_formula,
    x,
    y,
)

ux, uy, uxx, uxy, uyy = JetSpace(2).derivatives[1:]
OTHER_FORMULAS = ["u", "u_x**2 + u_y**2", "u_xx + u_yy", "u_xx*u_yy - u_xy**2"]


# ----------------------------------------------------------------------------- 1. saving


def _saved_model(name: str):
    torch.manual_seed(0)
    derived = compile_invariants(find_invariants("sim2", 2), name, register=True)
    layer = PDELayer.build([derived], T=0.2, dt=0.1, init_noise=0.1, backend="reference")
    model = EqPdeNet(hidden=8, layer=layer, image_size=12).eval()
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.save({"model": model, "out": model(images)}, buffer)
    return derived, images, buffer.getvalue()


def _loaded_set(saved: dict):
    return next(m.invariant_set for m in saved["model"].modules() if hasattr(m, "invariant_set"))


def test_a_registered_compiled_set_is_saved_by_its_recipe_not_its_name():
    """docs/symbolic.md's flow (compile_invariants(..., register=True), then torch.save of the
    model): loaded where another set had taken the name, the model computed that set's
    invariants silently (logits off by 0.024); where none had, it failed with "unknown
    invariant set". It now loads its own set, compiled again, whatever the registry holds."""
    name = "probe_saved_by_recipe"
    try:
        derived, images, data = _saved_model(name)
        # Another script (or a later version of this one) takes the name.
        INVARIANT_SETS.register(name, compile_invariants(OTHER_FORMULAS, name), replace=True)
        saved = torch.load(io.BytesIO(data), weights_only=False)
        assert torch.equal(saved["model"](images), saved["out"])
        loaded = _loaded_set(saved)
        assert loaded is not get_invariant_set(name) and loaded is not derived
        assert [i.unicode for i in loaded.invariants] == [i.unicode for i in derived.invariants]
        assert (loaded.names, loaded.invariant_under) == (derived.names, derived.invariant_under)
        # ... and where nothing is registered under it (a fresh process)
        del INVARIANT_SETS._items[name]
        saved = torch.load(io.BytesIO(data), weights_only=False)
        assert torch.equal(saved["model"](images), saved["out"])
        assert name not in INVARIANT_SETS  # loading registers nothing
    finally:
        INVARIANT_SETS._items.pop(name, None)


def test_a_registered_compiled_set_is_still_shared_by_deepcopy_and_copies_by_recipe_else():
    import copy

    name = "probe_deepcopy"
    try:
        registered = compile_invariants(OTHER_FORMULAS, name, register=True)
        assert copy.deepcopy(registered) is registered
        restored = pickle.loads(pickle.dumps(registered))
        assert restored is not registered and restored.names == registered.names
        own = compile_invariants(OTHER_FORMULAS, "probe_unregistered")
        copied = copy.deepcopy(own)
        assert copied is not own and copied.compiled_from == own.compiled_from
    finally:
        INVARIANT_SETS._items.pop(name, None)


# ----------------------------------------------------------------------------- 2. names


@pytest.mark.parametrize(("written", "canonical"), [
    ("u_yx", "u_xy"), ("u_yyx", "u_xyy"), ("u_yxy", "u_xyy"), ("u2_yx", "u2_xy"),
    ("u_θx", "u_xθ"), ("u_yθx", "u_xyθ"),
])
def test_mixed_derivatives_named_in_any_order_are_the_jet_coordinate(written, canonical):
    """u_yx matched the name pattern but was no coordinate of the jet: is_invariant("u_yx",
    "se2") was True (a constant), criterion 0."""
    assert is_invariant(written, "se2") is is_invariant(canonical, "se2")
    rotation = get_group("se2").fields[2]
    assert criterion(written, rotation) == criterion(canonical, rotation) != 0
    assert jacobian_rank([written, canonical]) == 1
    assert is_invariant(f"{written} - {canonical}", "se2")  # the same coordinate


def test_the_probes_u_yx_is_u_xy_in_a_compiled_set_and_its_layer():
    """compile_invariants(["u_yx"]) declared rotations and scalings (false) and the layer failed
    at its first forward with "u_yx needs a higher-order jet"."""
    mixed = compile_invariants(["u_yx", "u_yyx + u_xxx"], "mixed_order")
    assert mixed.invariant_under == frozenset({"translations"})
    assert [i.unicode for i in mixed.invariants] == ["u_xy", "u_xxx + u_xyy"]
    layer = PDELayer.build([mixed], T=0.1, dt=0.1, init_noise=0.0, backend="reference")
    with torch.no_grad():
        layer.pdes[0].step.rhs.F.weight.copy_(torch.tensor([1.0, 0.0]))
    images = torch.rand(2, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jet = layer.double().pdes[0].step.rhs.jet(images)
    expected = images + 0.1 * jet[:, :, 4]  # u + dt u_xy, u_xy at index 4
    torch.testing.assert_close(layer.pdes[0](images), expected)
    with pytest.raises(ConfigError, match="not invariant under rotations"):
        compile_invariants(["u_yx"], "false_claim", invariant_under=["rotations"])


def test_a_hand_written_set_reading_u_yx_is_told_the_channel_name():
    from eqpdenet.pde.invariants import Derivatives

    d = Derivatives(torch.zeros(6, 2, 2))
    with pytest.raises(InputError, match="u_yx is not a jet channel.*write u_xy"):
        _ = d.u_yx
    with pytest.raises(InputError, match="u_xxx needs a higher-order jet"):
        _ = d.u_xxx


def test_other_variables_are_matched_in_the_jet_spaces_order():
    """Letters other than x, y, θ are ordered as the jet space's variables: u_st and u_ts are
    one coordinate of a space on (x, y, t, s)."""
    t, s = sp.symbols("t s", real=True)
    field = VectorField(0, 0, 0, "shear", {t: s, s: 0})
    assert criterion("u_st", field) == criterion("u_ts", field) == -sp.Symbol("u_tt", real=True)


# ----------------------------------------------------------------------------- 5. bounds


@pytest.mark.parametrize(("args", "keywords", "message"), [
    (("se2", 20), {"max_degree": 2}, rf"order: 20 is more than the bound of {MAX_ORDER}"),
    (("se2", 2), {"max_degree": 30}, r"max_degree: max_degree=30 on the 6 jet coordinates of "
                                     r"order 2 is 1,947,791 monomials to search, more than the "
                                     r"bound of 5,000"),
    (("se2", 2), {"max_degree": 9}, r"5,004 monomials"),
    (("se2", 1), {"channels": 20}, rf"channels: 20 is more than the bound of {MAX_CHANNELS}"),
    (("se2_m2", 6), {}, rf"order: 6 is more than the bound of {MAX_FRAME_ORDER} \(the moving "),
    (("se2_m2", 1), {"channels": 5}, r"channels: 5 is more than the bound of 4"),
])
def test_the_search_is_bounded_before_any_work(args, keywords, message):
    """find_invariants("se2", 20, max_degree=2) ran for more than 100 s; max_degree=30 and
    channels=20 did not finish."""
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        find_invariants(*args, **keywords)
    assert time.perf_counter() - start < 0.5


def test_the_bounds_admit_the_documented_searches():
    assert MAX_SEARCH_MONOMIALS >= 3_002  # se2 at order 2, degree 8 (4 s)
    assert find_invariants("se2", 2, max_degree=6).complete
    assert find_invariants("se2", 1, max_degree=2, channels=MAX_CHANNELS).complete


@pytest.mark.parametrize(("exprs", "keywords", "message"), [
    (["u_x"], {"order": 400}, r"order: 400 is more than the bound of 6 for a compiled set"),
    (["u_xxxxxxx"], {}, r"order: 7 is more than the bound of 6 .*u_xxxxxxx uses derivatives of "
                        r"order 7"),
])
def test_a_compiled_set_is_bounded(exprs, keywords, message):
    """compile_invariants(["u_x"], "b", order=400) was accepted, and PDELayer.build then failed
    with numpy's memory error."""
    with pytest.raises(ConfigError, match=message):
        compile_invariants(exprs, "bounded", **keywords)
    assert compile_invariants(["u_x"], "sixth", order=MAX_ORDER).order == MAX_ORDER


# ----------------------------------------------------------------------------- 6. messages


@pytest.mark.parametrize(("coefficient", "message"), [
    (None, r"^cannot read None as the vector field coefficient xi_x \(a SymPy expression"),
    ("x+", r"^cannot read 'x\+' as the vector field coefficient xi_x"),
    (sp.I * x, r"^vector field coefficient xi_x=I\*x: coefficients must be real and finite$"),
    (1j, r"coefficients must be real and finite"),
    (sp.oo, r"coefficients must be real and finite"),
])
def test_vector_field_coefficients_are_one_clear_error(coefficient, message):
    """VectorField(None) was an AttributeError, VectorField("x+") SymPy's multi-line parse
    error, and VectorField(I x, 0, 0) was accepted (I read as a real parameter)."""
    with pytest.raises(ConfigError, match=message) as info:
        VectorField(coefficient, 0, 0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("expression", [None, "u_x+", object()])
def test_what_is_no_expression_is_one_clear_error_everywhere(expression):
    """compile_invariants([None], "n") was an AttributeError."""
    with pytest.raises(ConfigError, match=r"^compile_invariants: cannot read .* as an "
                                          r"expression") as info:
        compile_invariants([expression], "n")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^cannot read .* as an expression"):
        is_invariant(expression, "se2")


def test_unicode_formula_writes_every_power():
    """u_x**-2 printed as "u_x  (-2)"."""
    assert unicode_formula(ux**-2) == "u_x⁻²"
    assert unicode_formula((ux + u) ** -3) == "(u + u_x)⁻³"
    assert unicode_formula(ux**2 / uxx**3) == "u_x²/u_xx³"
    assert unicode_formula(ux ** sp.Rational(-2, 3)) == "u_x^(-2/3)"
    assert unicode_formula(ux**2.5) == "u_x^2.5"
    assert unicode_formula(ux**12 + uy**2) == "u_x¹² + u_y²"


# ----------------------------------------------------------------------------- 7. notes

CONFORMAL = LieGroupAction("conformal", [
    VectorField(1, 0, 0), VectorField(0, 1, 0), VectorField(-y, x, 0), VectorField(x, y, 0),
    VectorField(x**2 - y**2, 2 * x * y, 0), VectorField(2 * x * y, y**2 - x**2, 0)])


@pytest.mark.parametrize("degree", [2, 4])
def test_the_conformal_groups_note_does_not_suggest_a_higher_degree(degree):
    """1 of 2 at order 2: Δu / |∇u|² is invariant, but a ratio of relative invariants whose
    cofactors depend on x, y, which no degree of the search forms; the note said "raise
    max_degree"."""
    assert is_invariant((uxx + uyy) / (ux**2 + uy**2), CONFORMAL)
    result = find_invariants(CONFORMAL, 2, max_degree=degree)
    assert (result.found_count, result.expected_count) == (1, 2)
    (note,) = result.notes
    assert "raise max_degree" not in note
    assert ("each scale the jet coordinates with weights of one sign, so every such P is a "
            "polynomial in the coordinates left alone (u), and at most 1 invariant of the "
            "searched form is functionally independent: no max_degree finds more: 1 invariant "
            "is of another form") in note
