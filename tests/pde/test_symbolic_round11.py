"""Round 11 (symbolic): fields whose brackets never close are refused in seconds with a message
of one readable line (they took 40 s and printed a 128,000-character bracket); a relation, a
truth value or a tuple is not an expression (they passed the check and failed later with raw
TypeErrors); ``compile_invariants`` takes the ``replace`` its own message advised; a constant
beyond float64 is named as such, in a few digits."""

from __future__ import annotations

import time

import pytest
import sympy as sp
import torch

from eqpdenet.errors import ConfigError
from eqpdenet.pde.invariants import INVARIANT_SETS
from eqpdenet.pde.stencils import jet
from eqpdenet.pde.symbolic import (
    MAX_BRACKET_LENGTH,
    LieGroupAction,
    VectorField,
    compile_invariants,
    criterion,
    find_invariants,
    get_group,
    is_invariant,
    jacobian_rank,
    lie_algebra_closure,
    x,
    y,
)


@pytest.mark.parametrize("extra", [1 / (1 + x**2 + y**2), x / (1 + y**2)])
def test_fields_whose_brackets_grow_are_refused_with_one_short_line(extra):
    fields = [VectorField(1, 0, 0), VectorField(0, 1, 0), VectorField(extra, 0, 0)]
    start = time.process_time()
    with pytest.raises(ConfigError, match=r"^g: the Lie bracket \[.*\] of the generators is "
                                          r"\d+ characters long .*its brackets grow at each step"
                       ) as caught:
        find_invariants(LieGroupAction("g", fields), 1)
    # not a timing assertion of the machine: a bound on the work (40 CPU-seconds before)
    assert time.process_time() - start < 30
    assert len(str(caught.value)) < 600 and "\n" not in str(caught.value)


def test_every_documented_group_closes_with_short_brackets():
    for name in ("se2", "scaling", "sim2", "affine", "se2_intensity_shift", "se2_m2"):
        group = get_group(name)
        closure = lie_algebra_closure(group.fields)
        assert all(len(str(field)) < MAX_BRACKET_LENGTH // 10 for field in closure), name


def test_a_closing_algebra_of_polynomial_fields_still_closes():
    # d_x, d_y, y^3 d_x: brackets y^2 d_x, y d_x (then zero): 5 dimensions
    fields = [VectorField(1, 0, 0), VectorField(0, 1, 0), VectorField(y**3, 0, 0)]
    assert len(lie_algebra_closure(fields)) == 5


@pytest.mark.parametrize("value", ["u_x > 0", "Eq(u_x, 0)", sp.Eq(sp.Symbol("u_x"), 0), True,
                                   sp.Tuple(1, 2)])
def test_what_is_not_an_expression_is_one_config_error_everywhere(value):
    rotation = get_group("se2").fields[2]
    for call in (lambda: is_invariant(value, "se2"), lambda: criterion(value, rotation),
                 lambda: jacobian_rank([value]), lambda: compile_invariants([value], "c")):
        with pytest.raises(ConfigError, match=r"cannot read .* as an expression"):
            call()


@pytest.mark.parametrize("value", ["x > 0", sp.Tuple(1, 2), False])
def test_a_vector_field_coefficient_that_is_not_an_expression_is_refused(value):
    with pytest.raises(ConfigError, match=r"cannot read .* as the vector field coefficient xi_x"):
        VectorField(value, 0, 0)


def test_compile_invariants_replaces_a_registered_set_when_asked():
    name = "round11-mine"
    try:
        first = compile_invariants(["u"], name, register=True)
        with pytest.raises(ConfigError, match=r"named 'round11-mine' is already registered "
                                              r"\(pass replace=True, with register=True"):
            compile_invariants(["u_x"], name, register=True)
        assert INVARIANT_SETS.get(name) is first
        second = compile_invariants(["u_x"], name, register=True, replace=True)
        assert INVARIANT_SETS.get(name) is second and second is not first
        with pytest.raises(ConfigError, match="replace=True replaces a registered set, so it "
                                              "needs register=True"):
            compile_invariants(["u_y"], name, replace=True)
        with pytest.raises(ConfigError, match="register must be True or False, got 1"):
            compile_invariants(["u_y"], "round11-other", register=1)
    finally:
        INVARIANT_SETS._items.pop(name, None)


def test_a_constant_beyond_float64_is_named_in_a_few_digits():
    with pytest.raises(ConfigError, match=r"^cannot compile the constant 1\.000e\+400: it is "
                                          r"beyond float64") as caught:
        compile_invariants(["1e400*u"], "c")
    assert len(str(caught.value)) < 120
    with pytest.raises(ConfigError, match=r"cannot compile the constant oo: coefficients must be "
                                          r"finite"):
        compile_invariants(["oo*u"], "c")


def test_a_long_constant_is_labelled_in_a_few_digits_and_computed_exactly():
    invariant_set = compile_invariants(["1e300*u**2", "u_x/3"], "c")
    big, third = invariant_set.invariants
    assert big.unicode == "1.0e+300 u²" and "10^{300}" in big.latex
    assert third.unicode == "u_x/3"  # short numbers as they were
    u = torch.full((1, 1, 6, 6), 1e-150, dtype=torch.float64)
    values = invariant_set(jet(u, 2, "central"))
    torch.testing.assert_close(values[:, :, 0], torch.ones_like(u), rtol=1e-12, atol=0)
