"""Right-hand sides ``du/dt = F_theta(I(jet(u)))``: the function ``F_theta`` of the invariants, and
:class:`InvariantRHS`, the whole map ``u -> jet -> invariants -> F_theta``.

``F_theta`` comes from a registry (:data:`RIGHT_HAND_SIDES`, the config's ``rhs`` field):

``linear`` (:class:`LinearF`, the paper's)
    ``F(I) = sum_k w_k I_k + b``: ``K + 1`` parameters for ``K`` invariants.
``polynomial`` (:class:`PolynomialF`)
    every monomial of total degree ``1 .. degree`` in the invariants, plus a bias.

Both are :class:`MonomialF`: ``F(I) = b + sum_m w_m prod_k I_k^{e_mk}`` with a declared exponent
table (:meth:`MonomialF.monomials`), which is what lets the compiled kernels evaluate them.

:class:`InvariantRHS` is independent of the time integration (see
:mod:`eqpdenet.pde.integrators`), as a torchdiffeq ``func`` is of its solver.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import (
    check_device,
    check_images,
    check_values,
    hooks_registered,
    is_input_checked,
    match_dtype,
    module_dtype,
    require,
    require_int,
    require_positive,
)
from ..errors import ConfigError, InputError, InputTypeError
from ..registry import CallRegistry, Registry
from .invariants import (
    DEFAULT_RATIO_EPS,
    DEFAULT_RATIO_REGULARISATION,
    RATIO_REGULARISATIONS,
    InvariantSet,
    get_invariant_set,
    require_planar,
)
from .joint import DEFAULT_JET_FLOOR, JointInvariants, check_channel_jet
from .stencils import (
    Jet,
    bank_second_order_symbol_range,
    derivative_index,
    derivative_multi_indices,
    derivative_names,
    jet_order,
    kernel_symbol,
    second_order_symbol_range,
)

__all__ = [
    "RIGHT_HAND_SIDES",
    "SYMBOL_POINTS",
    "InvariantRHS",
    "InvariantSystemRHS",
    "PerChannelInvariants",
    "invariant_maps",
    "LinearF",
    "MonomialF",
    "PolynomialF",
    "make_rhs",
    "monomial_recipe",
]


def _exponent_table(monomials: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """``monomials`` as a list of exponent tuples, checked: a non-empty collection of sequences
    of integers (not ``bool``), every one as long as the first (one exponent per invariant),
    every exponent ``>= 0``, every monomial of degree ``>= 1`` (the constant term is ``F``'s
    bias) and listed once; else a :class:`~eqpdenet.errors.ConfigError` naming the monomial
    (these were raw errors from deep inside, or a ragged table accepted)."""
    if isinstance(monomials, str | bytes) or not isinstance(monomials, Iterable):
        raise ConfigError(f"monomials: must be a sequence of exponent tuples, got "
                          f"{type(monomials).__name__} {monomials!r}")
    monomials = list(monomials)
    if not monomials:
        # F would be its bias alone, and its degree and number of invariants undefined
        raise ConfigError("monomials: the exponent table is empty; F needs at least one "
                          "monomial of degree >= 1")
    table: list[tuple[int, ...]] = []
    positions: dict[tuple[int, ...], int] = {}
    for position, m in enumerate(monomials):
        where = f"monomials[{position}]"
        if isinstance(m, str | bytes) or not isinstance(m, Iterable):
            raise ConfigError(f"{where}: monomial {m!r} must be a sequence of integer exponents, "
                              f"one per invariant")
        m = tuple(m)
        if not all(isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in m):
            raise ConfigError(f"{where}: monomial {m!r} must be a sequence of integer exponents, "
                              f"one per invariant")
        m = tuple(int(e) for e in m)
        if table and len(m) != len(table[0]):
            raise ConfigError(f"{where}: monomial {m} has {len(m)} exponent"
                              f"{'s' * (len(m) != 1)}, monomials[0] {table[0]} has "
                              f"{len(table[0])}: every monomial needs one exponent per invariant")
        if any(e < 0 for e in m):
            raise ConfigError(f"{where}: monomial {m} has a negative exponent: F is a "
                              f"polynomial in the invariants (exponents >= 0)")
        if sum(m) < 1:
            raise ConfigError(f"{where}: monomial {m} is of degree 0, a constant: that term is "
                              f"F's bias; every monomial must be of degree >= 1")
        if m in positions:
            raise ConfigError(f"{where}: monomial {m} is listed twice (first as monomials"
                              f"[{positions[m]}]): each monomial has one weight")
        positions[m] = position
        table.append(m)
    return table


def monomial_recipe(monomials: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """How to build each monomial from a lower one: ``(index of lower monomial or -1, invariant)``.

    A monomial of degree 1 is an invariant itself (``(-1, k)``); one of degree ``d > 1`` is the
    earlier monomial with one factor ``I_k`` fewer, times ``I_k`` (``k`` its first invariant).
    The table must be closed under this lowering and list lower monomials first; it is checked
    first (non-empty, one integer exponent ``>= 0`` per invariant in every monomial, each of
    degree ``>= 1`` and listed once): one :class:`~eqpdenet.errors.ConfigError` naming the
    monomial.

    Example:
        >>> monomial_recipe([(1, 0), (0, 1), (2, 0), (1, 1)])
        [(-1, 0), (-1, 1), (0, 0), (1, 0)]
    """
    monomials = _exponent_table(monomials)
    index = {m: i for i, m in enumerate(monomials)}
    recipe = []
    for position, m in enumerate(monomials):
        if sum(m) == 1:
            recipe.append((-1, m.index(1)))
            continue
        k = next(i for i, e in enumerate(m) if e)
        lower = tuple(e - (i == k) for i, e in enumerate(m))
        if index.get(lower, position) >= position:
            raise ConfigError(f"monomial {m}: its lower monomial {lower} must come before it")
        recipe.append((index[lower], k))
    return recipe


class MonomialF(nn.Module):
    """``F(I) = b + sum_m w_m prod_k I_k^{e_mk}``: ``(..., K, H, W) -> (..., H, W)``.

    Subclasses define the exponent table (:meth:`monomials`, lower degrees first); ``weight``
    holds one coefficient per monomial and ``bias`` is ``b``. The compiled kernels evaluate any
    ``MonomialF`` from this table, so a subclass must compute exactly this sum. The table is
    checked when ``F`` is made (:func:`monomial_recipe`: non-empty, one integer exponent ``>= 0``
    per invariant in every monomial, each of degree ``>= 1`` and listed once, lower monomials
    first), a :class:`~eqpdenet.errors.ConfigError` naming the monomial.
    """

    def __init__(self, monomials: Sequence[Sequence[int]]):
        super().__init__()
        self._monomials = _exponent_table(monomials)
        self._recipe = monomial_recipe(self._monomials)
        self.weight = nn.Parameter(torch.zeros(len(self._monomials)))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def degree(self) -> int:
        return max(sum(m) for m in self._monomials)

    @property
    def n_invariants(self) -> int:
        """``K``, the invariants ``F`` is a function of."""
        return len(self._monomials[0]) if self._monomials else 0

    def _check(self, invariants) -> Tensor:
        """``invariants`` in this ``F``'s dtype, checked (type, shape, dtype, device: no host
        read): an :class:`~eqpdenet.errors.InputTypeError` unless it is a floating-point tensor,
        an :class:`~eqpdenet.errors.InputError` naming the shape unless it is ``(..., K, H, W)``
        of this ``F``'s ``K``, or naming both devices unless it is on this ``F``'s; a lower
        precision than ``F``'s is converted up, a higher one is an ``InputTypeError`` naming
        both dtypes (:func:`~eqpdenet.checks.match_dtype`, the library's dtype policy)."""
        if not isinstance(invariants, Tensor):
            raise InputTypeError(f"{type(self).__name__} takes invariant maps as a torch.Tensor "
                                 f"(..., {self.n_invariants}, H, W), got {type(invariants).__name__}")
        if invariants.dim() < 3 or invariants.shape[-3] != self.n_invariants:
            raise InputError(f"{type(self).__name__} is a function of {self.n_invariants} "
                             f"invariants: it takes maps (..., {self.n_invariants}, H, W), got "
                             f"shape {tuple(invariants.shape)}")
        # Another dtype reached einsum, a raw "expected scalar type Float but found Double"
        # (round 18); InvariantRHS converts before it calls F, so there this is a no-op.
        if not invariants.is_floating_point():
            raise InputTypeError(f"invariants must be a floating-point tensor, got dtype "
                                 f"{invariants.dtype}")
        check_device(invariants, self, "invariants")
        return match_dtype(invariants, self.weight.dtype, "invariants")

    def monomials(self) -> list[tuple[int, ...]]:
        """Exponent tuples of the terms multiplying ``self.weight``."""
        return list(self._monomials)

    def recipe(self) -> list[tuple[int, int]]:
        """:func:`monomial_recipe` of :meth:`monomials`."""
        return list(self._recipe)

    def forward(self, invariants: Tensor) -> Tensor:
        """``(..., K, H, W) -> (..., H, W)``, computed in this ``F``'s dtype and returned in the
        input's (checked by :meth:`_check`)."""
        x = self._check(invariants)
        terms: list[Tensor] = []
        for lower, k in self._recipe:
            base = x[..., k, :, :]
            terms.append(base if lower < 0 else terms[lower] * base)
        out = torch.einsum("...mhw,m->...hw", torch.stack(terms, dim=-3), self.weight) + self.bias
        return out if x is invariants else out.to(invariants.dtype)


class LinearF(MonomialF):
    """``F(I) = sum_k w_k I_k + b``: ``(..., K, H, W) -> (..., H, W)``; ``K + 1`` parameters."""

    def __init__(self, n_invariants: int):
        require_int(n_invariants, "n_invariants", 1)
        super().__init__([tuple(int(i == j) for i in range(n_invariants))
                          for j in range(n_invariants)])

    def forward(self, invariants: Tensor) -> Tensor:
        x = self._check(invariants)
        out = torch.einsum("...khw,k->...hw", x, self.weight) + self.bias
        return out if x is invariants else out.to(invariants.dtype)


#: The most terms (monomials) a polynomial ``F`` may have: ``C(K + degree, degree) - 1`` grows
#: fast (5 invariants: 251 terms at degree 5, 3,002 at degree 10, 3.5 million at degree 50).
MAX_POLYNOMIAL_TERMS = 10_000


def polynomial_terms(n_invariants: int, degree: int) -> int:
    """The number of monomials of degree 1 ... ``degree`` in ``n_invariants`` variables."""
    return math.comb(n_invariants + degree, degree) - 1


def require_polynomial_size(n_invariants: int, degree: int, field: str = "degree") -> None:
    """A :class:`~eqpdenet.errors.ConfigError` when a polynomial ``F`` would have more than
    :data:`MAX_POLYNOMIAL_TERMS` terms (before any is enumerated)."""
    terms = polynomial_terms(n_invariants, degree)
    require(terms <= MAX_POLYNOMIAL_TERMS, field,
            f"degree {degree} in {n_invariants} invariants is {terms:,} terms, more than the bound "
            f"of {MAX_POLYNOMIAL_TERMS:,}; lower the degree")


class PolynomialF(MonomialF):
    """Multivariate polynomial of total degree ``<= degree`` in the ``K`` invariants.

    ``F(I) = b + sum_m w_m prod_k I_k^{e_{m,k}}`` over all exponent vectors with
    ``1 <= sum_k e_{m,k} <= degree``: ``C(K + degree, degree) - 1`` weights plus the bias.
    Degree 1 computes what :class:`LinearF` does.
    """

    def __init__(self, n_invariants: int, degree: int = 2):
        require_int(n_invariants, "n_invariants", 1)
        require_int(degree, "degree", 1)
        require_polynomial_size(n_invariants, degree)
        super().__init__([
            tuple(combo.count(k) for k in range(n_invariants))
            for d in range(1, degree + 1)
            for combo in itertools.combinations_with_replacement(range(n_invariants), d)
        ])


#: Frequencies per axis on which :meth:`InvariantRHS.linear_symbol` is evaluated (both ends of
#: ``[-pi, pi]`` included, so the highest frequency, where central differences peak, is on it;
#: twice as fine as :func:`~eqpdenet.pde.stencils.second_order_symbol_range`'s 257).
SYMBOL_POINTS = 513


def _symbol(bank: np.ndarray, spacing: float, coefficients: dict[str, float],
            points: int) -> tuple[np.ndarray, float]:
    """The symbol of ``sum_J c_J u_J`` computed with the stencils ``bank`` (a jet's ``(D, k, k)``
    at unit spacing, :attr:`~eqpdenet.pde.stencils.Jet.bank`) on a ``points``-per-axis grid of
    frequencies, and ``sum_J |c_J| sum |kernel_J|``, a bound on its modulus."""
    terms = {name: float(c) for name, c in coefficients.items() if c}
    for name in terms:
        derivative_index(name)  # a ConfigError for what names no derivative
    order = max((len(name) - 2 for name in terms if name != "u"), default=0)
    if order > jet_order(bank.shape[0]):
        raise ConfigError(f"coefficients {sorted(terms)}: a derivative of order {order}, above "
                          f"the jet's order {jet_order(bank.shape[0])}, which it does not compute")
    indices = derivative_multi_indices(jet_order(bank.shape[0]))
    kernel, bound = np.zeros(bank.shape[1:]), 0.0
    for name, c in terms.items():
        index = derivative_index(name)
        scaled = bank[index] * (c / spacing ** sum(indices[index]))
        kernel += scaled
        bound += float(np.abs(scaled).sum())
    return kernel_symbol(kernel, points), bound


#: Forms of ``F_theta``: name -> ``builder(n_invariants, degree)``, called with both arguments
#: by position (a builder that cannot take them is refused when registered), returning ``F``: an
#: ``nn.Module`` ``(..., K, H, W) -> (..., H, W)``, pointwise. A :class:`MonomialF` is what the
#: compiled kernels, the weight-based initialisations (:data:`~eqpdenet.pde.layer.INITS`
#: ``"heat"``, ``"normal"``, ``init_noise``) and the stability check
#: (:meth:`InvariantRHS.linearisation`) read; any other module runs on the reference path with
#: its own initialisation, and its stability is not checked.
RIGHT_HAND_SIDES: Registry = CallRegistry("right-hand side", "builder(n_invariants, degree)", 1, 1)


def _linear(n_invariants: int, degree: int = 1) -> LinearF:
    # a degree other than 1 with the linear form was ignored without a word
    degree = require_int(degree, "degree", 1)
    require(degree == 1, "degree", f"{degree} has no effect on the 'linear' right-hand side (F "
            f"is linear in the invariants): leave degree at 1, or set rhs = 'polynomial' for a "
            f"polynomial of degree {degree}")
    return LinearF(n_invariants)


RIGHT_HAND_SIDES.register("linear", _linear)
RIGHT_HAND_SIDES.register("polynomial", PolynomialF)


def make_rhs(kind: str, n_invariants: int, degree: int = 1) -> nn.Module:
    """``F_theta`` of a registered form: ``"linear"`` or ``"polynomial"`` (of ``degree``); a
    :class:`~eqpdenet.errors.ConfigError` naming the form where its builder returns anything
    but an ``nn.Module``."""
    F = RIGHT_HAND_SIDES.get(kind)(n_invariants, degree)
    require(isinstance(F, nn.Module), "rhs", f"the right-hand side {kind!r} must build F as an "
            f"nn.Module (..., K, H, W) -> (..., H, W), its builder returned {type(F).__name__}")
    return F


class InvariantRHS(nn.Module):
    """``u -> F_theta(I(jet(u)))``, the right-hand side of ``du/dt = F_theta(invariants of u)``.

    Args:
        invariants: invariant set or its registered name (``"se2"``, ``"scaling"``).
        rhs: form of ``F_theta`` (:data:`RIGHT_HAND_SIDES`: ``"linear"``, ``"polynomial"``).
        degree: degree of a polynomial ``F``.
        stencil, spacing, boundary: how the jet is computed (:class:`~eqpdenet.pde.stencils.Jet`).
        ratio_eps: regularisation scale of ratios (:func:`~eqpdenet.pde.invariants.safe_ratio`).
        sigma: scale of a stencil family that has one (``gaussian``), in the unit of ``x``.
        ratio_regularisation: ``"covariant"`` (default: ratios as invariant as the exact ones)
            or ``"absolute"`` (the paper's) (:data:`~eqpdenet.pde.invariants.RATIO_REGULARISATIONS`).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``, each channel independently; the fixed stencils
    are a non-persistent buffer, so ``state_dict`` holds only ``F``'s parameters. Called alone,
    it checks ``u`` as a layer does (:meth:`enter`); inside an
    :class:`~eqpdenet.pde.integrators.EulerStep` it is checked once by the outermost piece.

    Example:
        >>> rhs = InvariantRHS("se2")
        >>> rhs(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, invariants: str | InvariantSet = "se2", rhs: str = "linear", degree: int = 1,
                 stencil: str = "central", spacing: float = 1.0, boundary: str = "replicate",
                 ratio_eps: float = DEFAULT_RATIO_EPS, sigma: float | None = None,
                 ratio_regularisation: str = DEFAULT_RATIO_REGULARISATION):
        super().__init__()
        self.invariant_set = require_planar(get_invariant_set(invariants), "invariants")
        self.ratio_eps = require_positive(ratio_eps, "ratio_eps")
        RATIO_REGULARISATIONS.check(ratio_regularisation, "ratio_regularisation")
        self.ratio_regularisation = ratio_regularisation
        self.jet = Jet(self.invariant_set.order, stencil, spacing, boundary, sigma)
        self.F = make_rhs(rhs, len(self.invariant_set), degree)

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def enter(self, u: Tensor) -> Tensor:
        """The entry checks (:mod:`eqpdenet.checks`): images ``(B, C, H, W)`` with finite
        values, returned in this module's dtype (lower precision converted up, higher an
        :class:`~eqpdenet.errors.InputTypeError`)."""
        check_images(u, "u")
        check_device(u, self, "u")
        check_values(u, "u")
        return match_dtype(u, module_dtype(self), "u")

    def invariants(self, u: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, K, H, W)``: the invariants of ``u``, in its dtype (not
        checked: an analysis of ``u`` as it is; :meth:`forward` checks)."""
        return self.invariant_set(self.jet(u), self.ratio_eps, self.ratio_regularisation)

    def forward(self, u: Tensor) -> Tensor:
        x = u if is_input_checked(self) else self.enter(u)
        out = self.F(self.invariants(x))
        return out if x is u else out.to(u.dtype)

    def _linear_parts(self) -> tuple[Tensor, Tensor] | None:
        """``(jacobian, gradient)`` at ``u = 0``, float64: ``d I / d jet`` ``(K, D)`` of the set
        and ``d F / d I`` ``(K,)``; None where ``F`` is not a :class:`MonomialF`."""
        if not isinstance(self.F, MonomialF):
            return None
        size = (self.invariant_set.order + 1) * (self.invariant_set.order + 2) // 2

        def invariants_of(jet: Tensor) -> Tensor:
            return self.invariant_set(jet.reshape(size, 1, 1), self.ratio_eps,
                                      self.ratio_regularisation).reshape(-1)

        zero_jet = torch.zeros(size, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(invariants_of, zero_jet)
        params = {name: p.detach().to("cpu", torch.float64) for name, p in self.F.named_parameters()}
        at_zero = invariants_of(zero_jet).reshape(-1, 1, 1)
        gradient = torch.autograd.functional.jacobian(
            lambda i: torch.func.functional_call(self.F, params, (i,)).reshape(()), at_zero)
        return jacobian, gradient.reshape(-1)

    def linearisation(self) -> dict[str, float] | None:
        """``{name: c_J}`` for every coordinate of the jet (``"u"``, ``"u_x"``, ...,
        :func:`~eqpdenet.pde.stencils.derivative_names`): ``F`` linearised at ``u = 0``,
        ``F(I(jet)) ~ F(I(0)) + sum_J c_J u_J``, or None where ``F`` is not a :class:`MonomialF`.

        ``c = d F(I(jet)) / d jet`` at the zero jet, in float64 (autograd through the invariants
        and ``F``). The scheme's small-``u`` behaviour is that of the linear PDE
        ``u_t = sum_J c_J u_J`` of every order the jet has: :meth:`linear_symbol` gives its
        symbol, :meth:`~eqpdenet.pde.integrators.EulerStep.stability` checks it.

        Example:
            >>> rhs = InvariantRHS("se2")
            >>> with torch.no_grad():
            ...     _ = rhs.F.weight.copy_(torch.tensor([0.5, 0.0, 2.0, 0.0, 0.0]))
            >>> {name: c for name, c in rhs.linearisation().items() if c}
            {'u': 0.5, 'u_xx': 2.0, 'u_yy': 2.0}
        """
        parts = self._linear_parts()
        if parts is None:
            return None
        jacobian, gradient = parts
        names = derivative_names(self.invariant_set.order)
        return dict(zip(names, (float(c) for c in gradient @ jacobian), strict=True))

    def linearised_second_order(self) -> tuple[float, float, float] | None:
        """``(c_xx, c_xy, c_yy)``: the second-order part of ``F`` linearised at ``u = 0``, in the
        jet's coordinates, or None where ``F`` is not a :class:`MonomialF` or no invariant of
        the set has a linear second-order term (the set is of first order, or its invariants
        are all nonlinear there).

        The second-order terms of :meth:`linearisation`: for a linear ``F`` of the paper's SE(2)
        set, ``c_xx = c_yy`` = the Laplacian's weight and ``c_xy = 0``; for a compiled set
        holding ``u_xx``, ``u_xy``, ``u_yy`` apart (a group without rotations), any quadratic
        form. Invariants of degree >= 2 in the jet, and every monomial of ``F`` of degree >= 2 in
        invariants that vanish at ``u = 0``, have no linear part there; the linearisation is the
        heat-like term that governs small ``u`` (with the terms of other orders, which
        :meth:`~eqpdenet.pde.integrators.EulerStep.stability` checks as well).
        """
        if self.invariant_set.order < 2:
            return None
        parts = self._linear_parts()
        if parts is None:
            return None
        jacobian, gradient = parts
        second = [derivative_index(name) for name in ("u_xx", "u_xy", "u_yy")]
        # The set's own linear part first: where no invariant has a second-order term there is
        # no diffusion to check, whatever F's weights (a zero weight is a checked a = 0).
        if not bool(jacobian[:, second].ne(0).any()):
            return None
        return tuple(float(c) for c in gradient @ jacobian[:, second])

    def linear_symbol(self, coefficients: dict[str, float], points: int = SYMBOL_POINTS
                      ) -> np.ndarray:
        """The symbol ``sigma(omega)`` of this jet's discrete operator ``sum_J c_J u_J``
        (``coefficients = {name: c_J}``, e.g. :meth:`linearisation`), complex, on a
        ``points x points`` grid of frequencies in ``[-pi, pi]^2`` (both ends included), on an
        infinite/periodic grid: explicit Euler for ``u_t = sum_J c_J u_J`` multiplies the mode of
        frequency ``omega`` by ``1 + dt sigma(omega)`` per step. Odd orders (``u_x``, ``u_xxx``)
        give imaginary parts (their stencils are antisymmetric); in ``1 / unit of x^|J|``."""
        return _symbol(self.jet.bank, self.jet.spacing, coefficients, points)[0]

    def linear_symbol_bound(self, coefficients: dict[str, float]) -> float:
        """``sum_J |c_J| sum |kernel_J|``: a bound on ``|sigma|`` at every frequency (the scale
        that the rounding of :meth:`linear_symbol` is measured against)."""
        return _symbol(self.jet.bank, self.jet.spacing, coefficients, 3)[1]

    def diffusivity(self) -> float | None:
        """Coefficient ``a`` of ``u_xx + u_yy`` in ``F`` linearised at ``u = 0`` where that
        linearisation's second-order part is isotropic (:meth:`linearised_second_order`:
        ``c_xx = c_yy = a``, ``c_xy = 0``), else None (no second-order part, an anisotropic one,
        or ``F`` not a :class:`MonomialF`).

        For a linear ``F`` of the SE(2) set, its Laplacian weight; for a polynomial ``F`` of
        invariants that all vanish at ``u = 0`` (every registered set), the weight of the
        degree-1 monomial ``I_laplacian``. The explicit Euler bound on ``a dt`` is then the same
        as for a linear ``F`` with that weight: the linearisation's heat term, which governs
        small ``u`` (the higher terms can still blow up large ``u``).
        """
        coefficients = self.linearised_second_order()
        if coefficients is None:
            return None
        c_xx, c_xy, c_yy = coefficients
        if c_xy != 0.0 or c_xx != c_yy:
            return None
        return c_xx

    def laplacian_max_eigenvalue(self) -> float:
        """Largest eigenvalue of the discrete ``-(u_xx + u_yy)`` of this right-hand side's jet
        (its stencils as built, :attr:`~eqpdenet.pde.stencils.Jet.bank`; a jet of order 1,
        which computes no ``u_xx``, by its stencil family's order-2 kernels)."""
        return -self.second_order_symbol_range((1.0, 0.0, 1.0))[0]

    def second_order_symbol_range(self, coefficients: tuple[float, float, float]
                                  ) -> tuple[float, float]:
        """``(min, max)`` of the symbol of this jet's discrete ``c_xx u_xx + c_xy u_xy +
        c_yy u_yy`` (:func:`~eqpdenet.pde.stencils.second_order_symbol_range`)."""
        coefficients = tuple(float(c) for c in coefficients)
        if self.jet.order < 2:
            return second_order_symbol_range(self.jet.stencil, self.jet.spacing, self.jet.sigma,
                                             coefficients)
        return bank_second_order_symbol_range(self.jet.bank, self.jet.spacing, coefficients)

    def extra_repr(self) -> str:
        return (f"invariants={self.invariant_set.name!r}, ratio_eps={self.ratio_eps}, "
                f"ratio_regularisation={self.ratio_regularisation!r}")


class InvariantSystemRHS(nn.Module):
    """The right-hand side of a system of PDEs ``du^c/dt = F^c_theta(I(u^1 ... u^C))``: a
    pointwise network of the differential invariants of all channels.

    ``I`` (:class:`~eqpdenet.pde.joint.JointInvariants` of ``group``) is, by ``joint``:
    ``"channel"``, the invariants of each channel alone (the paper's eq. (4) for SE(2));
    ``"mixtures"``, those plus the joint invariants of ``mixtures`` learned linear combinations
    of the channels; ``"all"``, every joint invariant of all pairs and triples (``O(C^3)`` maps).
    ``F_theta`` is (with ``normalize_invariants``) a batch normalisation of each invariant map
    (their scales differ by orders of magnitude), a 1x1 convolution ``K -> hidden``, batch
    normalisation, ReLU, and a 1x1 convolution ``hidden -> C``. Every operation after the jet is
    pointwise, so the system is equivariant under every transformation the invariants are
    invariant under (up to the jet's discretisation). One explicit Euler step of it,
    ``u <- u + dt F_theta(I(u))`` (:class:`~eqpdenet.pde.integrators.EulerStep`), is a residual
    block.

    Args:
        channels: ``C``.
        group: ``"se2"`` or ``"sim2"`` (the invariants' group).
        hidden: width of ``F_theta``'s hidden layer (default ``C``).
        joint, mixtures: which invariants (above).
        stencil, spacing, boundary, sigma: how the jet is computed (``sigma`` for the
            ``gaussian`` stencil).
        ratio_eps: regularisation scale of ratio invariants (``sim2``).
        jet_floor: second-derivative size (``u`` per pixel²) below which the ``sim2`` maps treat
            a region as flat (:mod:`eqpdenet.pde.joint`).
        normalize_invariants: batch-normalise each invariant map before ``F_theta`` mixes them.

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``; called alone, it checks ``u`` as a layer
    does (:meth:`enter`); inside an :class:`~eqpdenet.pde.integrators.EulerStep` or a model
    it is checked once by the outermost piece.

    Example:
        >>> rhs = InvariantSystemRHS(4, "se2", hidden=8)
        >>> rhs(torch.rand(2, 4, 10, 10)).shape
        torch.Size([2, 4, 10, 10])
    """

    def __init__(self, channels: int, group: str = "se2", hidden: int | None = None, *,
                 joint: str = "channel", mixtures: int = 4, stencil: str = "isotropic",
                 spacing: float = 1.0, boundary: str = "replicate", sigma: float | None = None,
                 ratio_eps: float = DEFAULT_RATIO_EPS, jet_floor: float = DEFAULT_JET_FLOOR,
                 normalize_invariants: bool = True):
        super().__init__()
        self.channels = require_int(channels, "channels", 1)
        hidden = require_int(hidden if hidden is not None else channels, "hidden", 1)
        self.invariants_of = invariant_maps(channels, group, joint, mixtures, ratio_eps, jet_floor)
        self.jet = Jet(2, stencil, spacing, boundary, sigma=sigma)
        maps = self.invariants_of.out_channels
        self.F = nn.Sequential(
            *([nn.BatchNorm2d(maps)] if normalize_invariants else []),
            nn.Conv2d(maps, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    @property
    def names(self) -> list[str]:
        """The invariant maps fed to ``F_theta``, in order."""
        return self.invariants_of.names

    def enter(self, u: Tensor) -> Tensor:
        """The entry checks (:mod:`eqpdenet.checks`): images ``(B, channels, H, W)`` with finite
        values, returned in this module's dtype (lower precision converted up, higher an
        :class:`~eqpdenet.errors.InputTypeError`)."""
        check_images(u, "u", channels=self.channels)
        check_device(u, self, "u")
        check_values(u, "u")
        return match_dtype(u, module_dtype(self), "u")

    def invariants(self, u: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, K, H, W)`` (not checked: :meth:`forward` checks)."""
        return self.invariants_of(self.jet(u))

    def forward(self, u: Tensor) -> Tensor:
        x = u if is_input_checked(self) else self.enter(u)
        out = self.F(self.invariants(x))
        return out if x is u else out.to(u.dtype)


class PerChannelInvariants(nn.Module):
    """The invariants of each channel alone: :class:`~eqpdenet.pde.joint.JointInvariants` of one
    channel applied to every channel, ``(B, C, 6, H, W) -> (B, C K_1, H, W)``."""

    def __init__(self, channels: int, group: str = "se2", ratio_eps: float = DEFAULT_RATIO_EPS,
                 jet_floor: float = DEFAULT_JET_FLOOR):
        super().__init__()
        self.channels = require_int(channels, "channels", 1)
        self.one = JointInvariants(1, group, ratio_eps=ratio_eps, jet_floor=jet_floor)
        self.out_channels = channels * self.one.out_channels
        self.names = [name.replace("1", str(c + 1)) for c in range(channels)
                      for name in self.one.names]

    def forward(self, jet: Tensor) -> Tensor:
        """``(B, C, D, H, W) -> (B, C K_1, H, W)``, ``D >= 6`` (an order-2 jet or higher), checked
        as :class:`~eqpdenet.pde.joint.JointInvariants` checks its jet
        (:func:`~eqpdenet.pde.joint.check_channel_jet`: type, shape, channels, floating point; no
        host read)."""
        # The SE(2) shortcut skipped the check of `one`: an integer jet gave integer maps.
        check_channel_jet(jet, self.channels)
        batch, channels = jet.shape[:2]
        # the shortcut calls no module: not where a hook on `one` expects to be called
        if not self.one.scale_invariant and jet.shape[2] == 6 and not hooks_registered([self.one]):
            return _se2_per_channel(jet).flatten(1, 2)
        maps = self.one(jet.reshape(batch * channels, 1, *jet.shape[2:]))
        return maps.reshape(batch, channels * maps.shape[1], *maps.shape[2:])


def _se2_per_channel(jet: Tensor) -> Tensor:
    """``(B, C, 6, H, W) -> (B, C, 5, H, W)``: what ``JointInvariants(1, "se2")`` computes for
    each channel (``u, Δu, |∇u|², |H|², ∇uᵀH∇u``), written out so that a deep network's many
    channels cost a few fused passes instead of the general module's gathers."""
    u, ux, uy, uxx, uxy, uyy = jet.unbind(2)
    ux2, uy2, uxy_ = ux * ux, uy * uy, uxy * uxy
    return torch.stack([u, uxx + uyy, ux2 + uy2, uxx * uxx + 2 * uxy_ + uyy * uyy,
                        ux2 * uxx + 2 * (ux * uy) * uxy + uy2 * uyy], dim=2)


def invariant_maps(channels: int, group: str = "se2", joint: str = "channel", mixtures: int = 4,
                   ratio_eps: float = DEFAULT_RATIO_EPS,
                   jet_floor: float = DEFAULT_JET_FLOOR) -> nn.Module:
    """The invariants of ``channels`` channels of ``group``: per channel, with ``mixtures``
    learned joint combinations, or all joint (see :class:`InvariantSystemRHS`)."""
    if joint == "channel":
        return PerChannelInvariants(channels, group, ratio_eps, jet_floor)
    if joint == "mixtures":
        return JointInvariants(channels, group, require_int(mixtures, "mixtures", 1), ratio_eps,
                               jet_floor)
    if joint == "all":
        return JointInvariants(channels, group, None, ratio_eps, jet_floor)
    raise ConfigError(f"joint must be 'channel', 'mixtures' or 'all', got {joint!r}")
