"""Round 16, probe v3 (the public API of the PDE layers): F1, F2, F3, F5 and F6's items on
RatioRegularisation, available_invariant_sets and the kernels' entry points. Each bad argument is
one clear EqPdeNetError naming it; valid uses are unchanged."""

import pytest
import torch

from eqpdenet import kernels
from eqpdenet.errors import ConfigError, InputError, InputTypeError
from eqpdenet.pde import (
    EulerStep,
    LayerConfig,
    M2SystemRHS,
    MonomialF,
    PDELayer,
    PolynomialF,
    RatioRegularisation,
    available_invariant_sets,
    get_invariant_set,
    make_reduction,
    safe_ratio,
)
from eqpdenet.pde.layer import LinearCombination, Mean
from eqpdenet.pde.rhs import monomial_recipe

# ----------------------------------------------------------------------------- F1


def test_m2_system_refuses_fields_on_another_number_of_orientations_than_declared():
    rhs = M2SystemRHS(2, ("diffusion",), orientations=4)
    message = ("M2SystemRHS was declared with orientations=4, got fields on 8 orientations in "
               "shape (1, 2, 8, 6, 6)")
    fields = torch.rand(1, 2, 8, 6, 6)
    for call in (rhs, rhs.invariants, EulerStep(rhs, 0.1)):
        with pytest.raises(InputError) as caught:
            call(fields)
        assert str(caught.value) == message


def test_m2_system_runs_on_its_declared_orientations_as_an_undeclared_one():
    torch.manual_seed(0)
    declared = M2SystemRHS(2, ("diffusion", "convection"), orientations=4, backend="reference")
    free = M2SystemRHS(2, ("diffusion", "convection"), backend="reference")
    free.load_state_dict(declared.state_dict())
    fields = torch.rand(1, 2, 4, 6, 6)
    assert torch.equal(declared(fields), free(fields))


@pytest.mark.parametrize("n, problem", [
    (5, "must be a multiple of 4 so that quarter turns map the orientations onto themselves, "
        "got 5"),
    (0, "must be >= 4, got 0"),
    (8.0, "must be an integer, got 8.0"),
])
def test_m2_system_orientations_must_be_a_positive_multiple_of_4(n, problem):
    with pytest.raises(ConfigError) as caught:
        M2SystemRHS(2, orientations=n)
    assert str(caught.value) == f"invalid config: orientations: {problem}"


# ----------------------------------------------------------------------------- F2


@pytest.mark.parametrize("table, message", [
    ([[0, 0]], "monomials[0]: monomial (0, 0) is of degree 0, a constant: that term is F's "
               "bias; every monomial must be of degree >= 1"),
    ([[1, 0], [2, -1]], "monomials[1]: monomial (2, -1) has a negative exponent: F is a "
                        "polynomial in the invariants (exponents >= 0)"),
    ([[1, 0], [1]], "monomials[1]: monomial (1,) has 1 exponent, monomials[0] (1, 0) has 2: "
                    "every monomial needs one exponent per invariant"),
    ([], "monomials: the exponent table is empty; F needs at least one monomial of degree >= 1"),
    ([[1, 0], [0, 1], [1, 0]], "monomials[2]: monomial (1, 0) is listed twice (first as "
                               "monomials[0]): each monomial has one weight"),
    ([[1.5, 0]], "monomials[0]: monomial (1.5, 0) must be a sequence of integer exponents, one "
                 "per invariant"),
    ([1, 0], "monomials[0]: monomial 1 must be a sequence of integer exponents, one per "
             "invariant"),
    ("10", "monomials: must be a sequence of exponent tuples, got str '10'"),
])
def test_a_bad_exponent_table_is_one_config_error_naming_the_monomial(table, message):
    for make in (MonomialF, monomial_recipe):
        with pytest.raises(ConfigError) as caught:
            make(table)
        assert str(caught.value) == message


def test_valid_exponent_tables_are_unchanged():
    F = MonomialF([(1, 0), [0, 1], (2, 0), (1, 1)])
    assert F.monomials() == [(1, 0), (0, 1), (2, 0), (1, 1)]
    assert F.recipe() == [(-1, 0), (-1, 1), (0, 0), (1, 0)]
    assert (F.degree, F.n_invariants, F.weight.shape) == (2, 2, (4,))
    # F(I) = b + sum_m w_m prod_k I_k^e_mk at I = (2, 3): 1 + 1*2 + 2*3 + 3*4 + 4*6 = 45
    with torch.no_grad():
        F.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        F.bias.fill_(1.0)
    invariants = torch.tensor([2.0, 3.0]).view(2, 1, 1)
    assert F(invariants).item() == 45.0
    assert len(PolynomialF(3, 3).monomials()) == 19  # C(6, 3) - 1


# ----------------------------------------------------------------------------- F3


@pytest.mark.parametrize("kind", ["linear", "mean", "max", "concat"])
@pytest.mark.parametrize("n, problem", [
    (0, "must be >= 1, got 0"),
    (-1, "must be >= 1, got -1"),
    (2.5, "must be an integer, got 2.5"),
    ("2", "must be an integer, got '2'"),
])
def test_make_reduction_needs_a_positive_integer_count(kind, n, problem):
    with pytest.raises(ConfigError) as caught:
        make_reduction(kind, n)
    assert str(caught.value) == f"invalid config: n_pdes: {problem}"


def test_linear_combination_alone_checks_its_count_and_valid_counts_are_unchanged():
    with pytest.raises(ConfigError, match=r"^invalid config: n_pdes: must be >= 1, got 0$"):
        LinearCombination(0)
    reduction = make_reduction("linear", 4)
    assert torch.equal(reduction.weight.data, torch.full((4,), 0.25))
    assert isinstance(make_reduction("mean", 1), Mean)


# ----------------------------------------------------------------------------- F5


@pytest.mark.parametrize("invariants", ["se2", b"se2", 5, get_invariant_set("se2")])
def test_build_with_one_name_says_what_layer_config_says(invariants):
    with pytest.raises(ConfigError) as built:
        PDELayer.build(invariants)
    with pytest.raises(ConfigError) as configured:
        LayerConfig(invariants=invariants)
    assert str(built.value) == str(configured.value)
    assert str(built.value).startswith(
        f"invalid config: layer.invariants: must be a list, got {type(invariants).__name__} ")


def test_build_still_takes_any_iterable_of_sets():
    layer = PDELayer.build(name for name in ("se2", "scaling"))
    assert [pde.step.rhs.invariant_set.name for pde in layer.pdes] == ["se2", "scaling"]


# ----------------------------------------------------------------------------- F6


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), 0.0, -1.0])
def test_an_infinite_or_non_positive_ratio_eps_is_refused(eps):
    message = f"ratio regularisation eps must be positive and finite, got {eps!r}"
    with pytest.raises(ConfigError) as caught:
        RatioRegularisation(eps=eps)
    assert str(caught.value) == message
    with pytest.raises(ConfigError) as caught:
        safe_ratio(torch.tensor([1.0]), torch.tensor([0.1]), eps)
    assert str(caught.value) == message


def test_ratio_eps_true_is_no_number_and_finite_ones_still_divide():
    with pytest.raises(ConfigError, match="eps must be positive and finite, got True"):
        RatioRegularisation(eps=True)
    # 2 * 0.5 / (0.25 + 0.01)
    a, b = torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    assert safe_ratio(a, b, 0.1).item() == 2 * 0.5 / (0.25 + 0.1 * 0.1)
    assert RatioRegularisation(0.1, "absolute")(a, b).item() == 2 * 0.5 / (0.25 + 0.1 * 0.1)


def test_available_invariant_sets_refuses_an_unknown_domain():
    for domain in ("planar", 2):
        with pytest.raises(ConfigError) as caught:
            available_invariant_sets(domain)
        assert str(caught.value) == (f"available_invariant_sets: unknown domain {domain!r}; "
                                     f"known: 'plane', 'm2'")
    assert {"se2", "scaling", "sim2"} <= set(available_invariant_sets("plane"))
    assert "m2" in available_invariant_sets("m2")
    assert set(available_invariant_sets()) == (set(available_invariant_sets("plane"))
                                               | set(available_invariant_sets("m2")))


def test_the_kernels_entry_points_refuse_what_is_no_pde():
    u = torch.rand(1, 1, 6, 6)
    empty = "specs is empty: the fused operator evolves at least one PDE (one PDESpec per PDE)"
    assert kernels.unsupported_reason(u, []) == empty
    with pytest.raises(ConfigError) as caught:
        kernels.fused_evolve(u, [])
    assert str(caught.value) == f"fused_evolve: {empty}"
    with pytest.raises(InputTypeError) as caught:
        kernels.fused_evolve(u, [None])
    assert str(caught.value) == "fused_evolve: specs[0] must be a PDESpec, got NoneType"
    with pytest.raises(InputTypeError) as caught:
        kernels.unsupported_reason(u.numpy(), [])
    assert str(caught.value) == "unsupported_reason: u must be a torch.Tensor, got ndarray"
    with pytest.raises(InputTypeError) as caught:
        kernels.stencil_is_supported(None)
    assert str(caught.value) == ("stencil_is_supported: weight must be a torch.Tensor (a jet's "
                                 "stencils (6, 1, 3, 3)), got NoneType")
    # a real layer's stencils and specs are judged as before (no kernel build needed here)
    layer = PDELayer.build(["se2"])
    assert kernels.stencil_is_supported(layer.pdes[0].step.rhs.jet.weight) is True
    assert kernels.stencil_is_supported(torch.zeros(5, 1, 3, 3)) is False
