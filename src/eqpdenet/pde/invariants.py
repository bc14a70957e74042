"""Differential invariants: named, printable functions of the jet, grouped in sets per Lie group.

An :class:`InvariantSet` maps a jet ``(..., D, H, W)`` (see :mod:`eqpdenet.pde.stencils`) to its
invariants ``(..., K, H, W)``. Three sets come registered:

``se2`` (eq. (4)), invariant under rotations and translations of the plane::

    u,  u_x^2 + u_y^2,  u_xx + u_yy,  u_x^2 u_xx + 2 u_x u_y u_xy + u_y^2 u_yy,
    u_xx^2 + 2 u_xy^2 + u_yy^2

``scaling`` (eq. (5)), invariant under ``x -> lambda x`` (and translations)::

    u_x^2/u_xx, u_x^2/u_xy, u_x^2/u_yy, u_y^2/u_xx, u_y^2/u_xy, u_y^2/u_yy

``sim2``, invariant under rotations, scalings and translations (SIM(2))::

    u,  |∇u|² / Δu,  |∇u|² Δu / det H,  ∇uᵀ H ∇u / det H

(``|∇u|² = u_x² + u_y²``, ``Δu = u_xx + u_yy``, ``det H = u_xx u_yy − u_xy²``,
``∇uᵀ H ∇u = u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy``).
``eqpdenet.pde.symbolic.find_invariants("sim2", order=2)`` derives ``u, |∇u|² / Δu,
(Δu)² / det H, ∇uᵀ H ∇u / det H``; the third is replaced here by its product with the second,
which generates the same invariants (``(Δu)² / det H`` is the quotient of the two wherever
``|∇u|² != 0``; ``tests/pde/test_invariants.py`` checks the rank). The reason is conditioning:
``(Δu)² / det H`` does not change when ``u`` is multiplied by a constant, so its derivatives
grow like 1 / (size of the jet) and are huge on the low-amplitude fronts a PDE creates (input
gradients of 1e8 against 10 for the product after 3 Euler steps on binary patterns,
``benchmarks/ratio_conditioning.py``, ``docs/choices.md``); every ratio of ``sim2`` (and of
``scaling``) scales like ``u``.

Each set declares the transformations it is invariant under
(:attr:`InvariantSet.invariant_under`). A planar set's declared rotations and scalings are
checked when it is made, on random jets transformed exactly (:func:`transformed_jet`); the tests
also hold every built-in set to its declaration on sampled images.

Regularised ratios
------------------
A plain ``a / b`` is infinite where ``b = 0`` (flat regions of an image, which are most of an
MNIST digit's background). Every division goes through :func:`safe_ratio`, in one of two modes
(:data:`RATIO_REGULARISATIONS`, the layer option ``ratio_regularisation``):

``"covariant"`` (the library's default)::

    a b / (b^2 + eps^2 ref + guard)

    with ``ref`` a rotation-invariant quantity of the same scaling weight as ``b^2``: for the
    second-order denominators (``u_xx``, ``u_xy``, ``u_yy``, ``Δu``)
    ``ref = R = |H|^2 + |∇u|^4`` (:func:`hessian_reference_sq`, ``|H|^2 = u_xx^2 + 2 u_xy^2 +
    u_yy^2``), for ``det H`` ``ref = R^2``. Under ``p -> lambda p`` every term of the
    denominator scales like ``b^2``, so the same samples differentiated with grid spacing ``h``
    or ``h / lambda`` give the same values, to rounding, for every set declared scale invariant
    (the built-in ``scaling`` and ``sim2`` in float32 too, at every accepted spacing, 1e-6 to
    1e6: they form their ratios from the jet rescaled by one exact power of two per image plane
    that brings the plane's largest ``R`` to order 1, so that the det-H ratios, products of
    degree 8 in the second derivatives, neither overflow nor underflow; the quotient is the
    unscaled one to the last bit wherever that one neither overflowed nor felt the guard;
    :func:`_ratio_operands`; the fused CPU kernel of :mod:`eqpdenet.kernels` does the same);
    ``R`` is rotation invariant, so the ``sim2`` set stays rotation invariant. The ratio is
    bounded: ``|a b| / (b^2 + eps^2 ref) <= |a| / (2 eps sqrt(ref))``, and ``sqrt(R) >= |∇u|^2``,
    ``R >= |H|^2 >= (Δu)^2 / 2`` and ``|∇u|^2 |H| <= R / 2`` make that ``<= 1 / (2 eps)`` for
    ``u_x^2 / u_xx`` and ``|∇u|^2 / Δu``, ``<= 0.36 / eps`` for ``|∇u|^2 Δu / det H`` and
    ``<= 1 / (4 eps)`` for ``∇uᵀ H ∇u / det H``. Its gradients are large only where the whole
    jet is small (``R`` small), not wherever ``b`` alone vanishes. ``eps`` is dimensionless
    against ``|H|^2`` and has the unit of 1 / intensity against ``|∇u|^4`` (the inputs are
    standardised).
    ``guard`` (:func:`ratio_guard`) is the square root of the smallest positive normal number of
    the dtype (2^-63 in float32, 2^-511 in float64): it turns the ``0 / 0`` of an exactly flat
    jet into 0, and keeps the ratio's derivatives (which divide by the denominator twice)
    finite there, whatever the gradient arriving from above. It changes the denominator by more
    than a rounding unit only where the denominator is below ``guard / machine eps`` (2e-12 in
    float32). For the built-in ``scaling`` and ``sim2`` sets, whose rescaled denominators are
    at least about ``eps^2`` wherever ``R != 0``, that is only at an exactly flat jet. For a ratio
    of another set it is where the denominator's jet is small: in float32 second derivatives
    below ~1e-6 for a second-order ``b`` with ``ref = R`` (the rounding level of data of size 1
    at unit spacing), but below ~1e-3 for ``det H`` with ``ref = R^2`` (degree 8), and it moves
    with the grid spacing (``u_xx ~ h^-2``).
    A ratio given no ``ref`` (user-defined sets, ``eqpdenet.pde.symbolic``) uses ``ref = a^2``:
    ``r / (1 + eps^2 r^2)`` with ``r = a / b``, a function of the exact ratio, so invariant
    wherever ``r`` is, but with large gradients wherever ``a`` and ``b`` both vanish.
``"absolute"`` (the paper's, eq. (5) as the paper computes it)::

    a b / (b^2 + eps^2)

    ``eps`` has the unit of ``b`` and so fixes a length scale: the ratio of ``f(p / lambda)`` at
    ``lambda p`` equals that of ``f`` with ``eps / lambda^2``, not with ``eps``, so the
    ``scaling`` invariants are *not* scale invariant where ``|b|`` is of order ``eps``
    (``docs/choices.md``).

A scale-invariant function that is not constant cannot be continuous at the zero jet (a
scaling moves every jet towards 0 while keeping the value) and its derivatives grow where the
jet is small (measured in ``docs/choices.md``); exactly flat regions give 0.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
from torch import Tensor

from ..errors import ConfigError, InputError, InputTypeError
from ..registry import CallRegistry, Registry, _shown
from .stencils import check_order, derivative_multi_indices, derivative_names, jet_order

__all__ = [
    "DEFAULT_RATIO_EPS",
    "DEFAULT_RATIO_REGULARISATION",
    "INVARIANT_SETS",
    "RATIO_REGULARISATIONS",
    "TRANSFORMATIONS",
    "Invariant",
    "InvariantSet",
    "RatioRegularisation",
    "RecordingRatio",
    "available_invariant_sets",
    "get_invariant_set",
    "hessian_reference_sq",
    "ratio_rescaling",
    "ratio_guard",
    "register_invariant_set",
    "safe_ratio",
    "transformed_jet",
]

#: Default regularisation scale of :func:`safe_ratio` (see the module doc for its unit per mode).
DEFAULT_RATIO_EPS = 0.1
#: Default mode of the ratio regularisation of the library (the paper's layer uses "absolute").
DEFAULT_RATIO_REGULARISATION = "covariant"
#: What a set may declare itself invariant under (:attr:`InvariantSet.invariant_under`).
TRANSFORMATIONS = ("translations", "rotations", "scalings")


def ratio_guard(dtype: torch.dtype) -> float:
    """The guard of the covariant ratio: ``sqrt`` of the smallest positive normal number of
    ``dtype`` (exactly a power of 2; its reciprocal squared is finite)."""
    return math.sqrt(torch.finfo(dtype).tiny)


def safe_ratio(a: Tensor, b: Tensor, eps=DEFAULT_RATIO_EPS,
               reference_sq: Tensor | None = None) -> Tensor:
    """Regularised ``a / b``: finite and smooth for every finite input.

    * ``reference_sq=None``: ``a b / (b^2 + eps^2)`` (the paper's absolute ``eps``).
    * ``reference_sq`` given, a tensor of the scaling weight of ``b^2``:
      ``a b / (b^2 + eps^2 reference_sq + guard)`` (:func:`ratio_guard`); with
      ``reference_sq = a^2`` this is ``r / (1 + eps^2 r^2)`` for ``r = a / b``.
    * ``eps`` a :class:`RatioRegularisation` (what an invariant function receives): that
      regularisation's mode and ``eps``.

    A plain ``eps`` must be positive and finite (as ``InvariantRHS``'s ``ratio_eps``: an
    infinite one made every ratio 0), else a :class:`~eqpdenet.errors.ConfigError`.

    Example:
        >>> a, b = torch.tensor([2.0, 2.0]), torch.tensor([0.5, 0.0])
        >>> safe_ratio(a, b, 0.1)  # 2 * 0.5 / (0.25 + 0.01); 0 where b = 0
        tensor([3.8462, 0.0000])
        >>> safe_ratio(a, b, 0.1, reference_sq=a * a)  # r / (1 + 0.01 r^2), r = 4
        tensor([3.4483, 0.0000])
    """
    _check_ratio_operands(a, b, reference_sq)
    if isinstance(eps, RatioRegularisation):
        return eps(a, b, reference_sq)
    # finite as well, as InvariantRHS's ratio_eps: an infinite eps made every ratio 0 silently
    if not 0 < eps < math.inf:
        raise ConfigError(f"ratio regularisation eps must be positive and finite, got "
                          f"{eps!r}")
    if reference_sq is None:
        return a * b / (b * b + eps * eps)
    denominator = b * b + eps * eps * reference_sq
    return a * b / (denominator + ratio_guard(denominator.dtype))


def _check_ratio_operands(a, b, reference_sq) -> None:
    """The operands of :func:`safe_ratio`: tensors (or plain numbers, as a compiled invariant's
    constant numerator is) of shapes that broadcast together, else an
    :class:`~eqpdenet.errors.InputError` naming them (shapes only, no host read; a raw
    TypeError or broadcast RuntimeError from inside before)."""
    operands = {"a": a, "b": b}
    if reference_sq is not None:
        operands["reference_sq"] = reference_sq
    for name, value in operands.items():
        if not (isinstance(value, Tensor)
                or (isinstance(value, numbers.Real) and not isinstance(value, bool))):
            raise InputTypeError(f"safe_ratio: {name} must be a torch.Tensor (or a number), got "
                                 f"{type(value).__name__}")
    if torch.compiler.is_compiling():  # symbolic shapes (unhashable); the tracer checks them
        return
    tensors = {name: tuple(value.shape) for name, value in operands.items()
               if isinstance(value, Tensor)}
    if len(set(tensors.values())) > 1:
        try:
            torch.broadcast_shapes(*tensors.values())
        except RuntimeError:
            raise InputError("safe_ratio: the shapes of " + ", ".join(
                f"{name} {shape}" for name, shape in tensors.items())
                + " do not broadcast together") from None


def _covariant(a: Tensor, b: Tensor, eps: float, reference_sq: Tensor | None) -> Tensor:
    return safe_ratio(a, b, eps, a * a if reference_sq is None else reference_sq)


def _absolute(a: Tensor, b: Tensor, eps: float, reference_sq: Tensor | None) -> Tensor:
    return safe_ratio(a, b, eps)


#: Modes of the ratio regularisation: name -> ``ratio(a, b, eps, reference_sq)`` (a mode whose
#: signature cannot take these four arguments is refused when registered).
RATIO_REGULARISATIONS: Registry[Callable] = CallRegistry(
    "ratio regularisation", "ratio(a, b, eps, reference_sq)", 1.0, 1.0, 0.1, None)
RATIO_REGULARISATIONS.register("covariant", _covariant)
RATIO_REGULARISATIONS.register("absolute", _absolute)


def transformed_jet(jet: Tensor, transformation: str, parameter: float) -> Tensor:
    """The exact jet of the transformed function, by the chain rule (no grid, no stencil).

    ``jet`` ``(..., D, H, W)`` holds the derivatives of ``u`` (in :func:`derivative_names`
    order); the result holds those of ``u(R^T p)`` for ``transformation = "rotations"``
    (``R`` the rotation by ``parameter`` radians: the gradient becomes ``R ∇u``, the Hessian
    ``R H R^T``, each order-``k`` derivative tensor ``R ⊗ ... ⊗ R`` applied to it), or of
    ``u(p / λ)`` for ``"scalings"`` (``λ = parameter > 0``: order ``k`` times ``λ^-k``).
    The same shape and dtype. A quarter turn's coefficients are exact (0 and ±1)."""
    order = jet_order(jet.shape[-3])
    indices = derivative_multi_indices(order)
    if not (isinstance(parameter, numbers.Real) and math.isfinite(parameter)):
        raise ConfigError(f"transformed_jet: parameter must be a finite number, got "
                          f"{parameter!r}")
    if transformation == "scalings" and parameter <= 0:
        raise ConfigError(f"transformed_jet: a scaling's factor must be positive, got "
                          f"{parameter!r}")
    if transformation == "scalings":
        factors = torch.tensor([float(parameter) ** -(a + b) for a, b in indices],
                               dtype=jet.dtype, device=jet.device)
        return jet * factors[:, None, None]
    if transformation != "rotations":
        raise ConfigError(f"transformed_jet: transformation must be 'rotations' or 'scalings', "
                          f"got {transformation!r}")
    c, s = math.cos(parameter), math.sin(parameter)
    c, s = (0.0 if abs(c) < 1e-15 else c), (0.0 if abs(s) < 1e-15 else s)
    position = {index: k for k, index in enumerate(indices)}
    matrix = torch.zeros(len(indices), len(indices), dtype=torch.float64)
    for row, (a, b) in enumerate(indices):
        # Each x of the new derivative is c ∂x - s ∂y of u, each y is s ∂x + c ∂y: the
        # coefficient of t^p in (c t - s)^a (s t + c)^b is the weight of u's derivative with
        # p x's (t counts the x's).
        polynomial = [1.0]
        for t_weight, one_weight in [(c, -s)] * a + [(s, c)] * b:
            polynomial = [(t_weight * polynomial[p - 1] if p else 0.0)
                          + (one_weight * polynomial[p] if p < len(polynomial) else 0.0)
                          for p in range(len(polynomial) + 1)]
        for p, weight in enumerate(polynomial):
            if weight:
                matrix[row, position[(p, a + b - p)]] = weight
    return torch.einsum("ij,...jhw->...ihw", matrix.to(jet.dtype).to(jet.device), jet)


@dataclass(frozen=True)
class RatioRegularisation:
    """How an invariant divides: the second argument of every invariant function.

    Calling it, ``ratio(a, b, reference_sq)``, gives the regularised ``a / b`` of its ``mode``
    (:data:`RATIO_REGULARISATIONS`): ``"covariant"`` ``a b / (b^2 + eps^2 reference_sq +
    guard)`` (``reference_sq`` of the scaling weight of ``b^2``, e.g.
    :func:`hessian_reference_sq` for a second-order ``b``; ``a^2`` if not given),
    ``"absolute"`` ``a b / (b^2 + eps^2)`` (``reference_sq`` ignored).
    Passing it to :func:`safe_ratio` as ``eps`` does the same, so an invariant function written
    as ``lambda d, eps: safe_ratio(a, b, eps)`` follows the layer's mode; ``float(ratio)`` is
    ``eps``.

    Example:
        >>> ratio = RatioRegularisation(0.1, "covariant")
        >>> ratio(torch.tensor(4.0), torch.tensor(2.0), torch.tensor(100.0))  # 8 / (4 + 1)
        tensor(1.6000)
    """

    eps: float = DEFAULT_RATIO_EPS
    mode: str = DEFAULT_RATIO_REGULARISATION

    def __post_init__(self):
        # finite as well, as InvariantRHS's ratio_eps (inf made every ratio 0); not a bool
        if not (isinstance(self.eps, int | float) and not isinstance(self.eps, bool)
                and 0 < self.eps < math.inf):
            raise ConfigError(f"ratio regularisation eps must be positive and finite, got "
                              f"{self.eps!r}")
        RATIO_REGULARISATIONS.get(self.mode)

    def __call__(self, a: Tensor, b: Tensor, reference_sq: Tensor | None = None) -> Tensor:
        return RATIO_REGULARISATIONS.get(self.mode)(a, b, self.eps, reference_sq)

    def __float__(self) -> float:
        return float(self.eps)


@dataclass(frozen=True)
class RecordingRatio(RatioRegularisation):
    """A :class:`RatioRegularisation` that records how an invariant function uses it: the
    reference each division passes (``references``; None for a division without one) and how
    often ``float(ratio)`` is read (``floats``, as ``safe_ratio(a, b, eps)`` does). What an
    invariant divides by is known only to its function: evaluate it on :func:`sample_jet` with
    one of these (``eqpdenet.analysis.describe`` reads the references, the PDE layer whether it
    divides at all)."""

    references: list = dataclass_field(default_factory=list, compare=False, hash=False)
    floats: list = dataclass_field(default_factory=list, compare=False, hash=False)

    def __call__(self, a, b, reference_sq=None):
        self.references.append(reference_sq)
        return super().__call__(a, b, reference_sq)

    def __float__(self) -> float:
        self.floats.append(1)
        return super().__float__()


def sample_jet(order: int) -> Tensor:
    """A seeded random jet ``(D, 3, 3)`` float64 of ``order``, to evaluate invariant functions on
    (:class:`RecordingRatio`)."""
    return torch.randn((order + 1) * (order + 2) // 2, 3, 3, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0))


class Derivatives:
    """Read-only view of a jet ``(..., D, H, W)`` by name: ``d.u_x`` is ``jet[..., 1, :, :]``."""

    def __init__(self, jet: Tensor):
        order = self._order = jet_order(jet.shape[-3])
        for index, name in enumerate(derivative_names(order)):
            setattr(self, name, jet[..., index, :, :])

    def __getattr__(self, name: str) -> Tensor:
        # only reached for names not set in __init__
        if name.startswith("u_") and not name.startswith("__"):
            letters = name[2:]
            if letters and set(letters) <= {"x", "y"} and letters != "".join(sorted(letters)):
                # u_yx is no channel name: the jet holds each mixed derivative once, x first.
                raise InputError(f"{name} is not a jet channel: the jet names each derivative "
                                 f"with its x before its y (derivatives commute): write "
                                 f"u_{''.join(sorted(letters))}")
            raise InputError(f"{name} needs a higher-order jet than the one given (order {self._order})")
        raise AttributeError(name)


@dataclass(frozen=True)
class Invariant:
    """One differential invariant.

    Attributes:
        name: short identifier (``"grad_sq"``).
        unicode: human-readable formula (``"u_x² + u_y²"``).
        latex: LaTeX formula.
        function: ``function(d, ratio)`` -> tensor ``(..., H, W)``, where ``d`` gives derivatives
            by name (``d.u_x``) and ``ratio`` is the :class:`RatioRegularisation` of the layer:
            ``ratio(a, b)`` is the regularised ``a / b`` (``safe_ratio(a, b, ratio)`` too).
    """

    name: str
    unicode: str
    latex: str
    function: Callable[[Derivatives, RatioRegularisation], Tensor]

    def __post_init__(self):
        # A function of the wrong form failed at the first forward, with a raw TypeError.
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"an invariant's name must be a non-empty string, got "
                              f"{_shown(self.name)}")
        for field in ("unicode", "latex"):
            if not isinstance(getattr(self, field), str):
                raise ConfigError(f"invariant {self.name!r}: {field} must be a string, got "
                                  f"{_shown(getattr(self, field))}")
        if not callable(self.function):
            raise ConfigError(f"invariant {self.name!r}: function must be callable as "
                              f"function(d, ratio), got {_shown(self.function)}")
        try:
            signature = inspect.signature(self.function)
        except (TypeError, ValueError):  # no signature to read (some built-ins): unchecked
            return
        try:
            signature.bind(None, None)
        except TypeError as error:
            raise ConfigError(f"invariant {self.name!r}: function must be callable as "
                              f"function(d, ratio) (d the derivatives by name, ratio the "
                              f"layer's RatioRegularisation): {error}") from None


class InvariantSet:
    """A named, ordered set of differential invariants of one group action.

    Args:
        name: registry key (``"se2"``).
        group: the group, in words.
        order: highest derivative order used (the jet order it needs).
        invariants: the invariants, in the order of the output channels.
        equation: where it comes from (``"eq. (4)"``).
        kernel: the name under which the compiled kernels (:mod:`eqpdenet.kernels`) implement
            exactly these invariants, or None (the default: the plain PyTorch reference only).
            A declared capability: set it only for a set that computes what that kernel does.
        invariant_under: the transformations of the plane (:data:`TRANSFORMATIONS`) under which
            every invariant of the set is invariant (with the ``covariant`` ratio
            regularisation). Default: none declared. Checked when a planar set is made (below).

    Calling the set on a jet ``(..., D, H, W)`` returns ``(..., K, H, W)``, ``K = len(self)``.
    ``domain`` is ``"plane"``: the sets of this class are functions of images (the M2 sets of
    :mod:`eqpdenet.pde.m2` are of fields on position x orientation).

    Checks. The arguments are checked when the set is made (one
    :class:`~eqpdenet.errors.ConfigError` naming the set and the argument or invariant): ``name``,
    ``group`` and ``equation`` strings, ``kernel`` a string or None, ``order`` an integer in
    ``0 ..`` :data:`~eqpdenet.pde.stencils.MAX_ORDER` (0 is a set of functions of ``u`` alone,
    as :func:`eqpdenet.pde.symbolic.compile_invariants` makes of ``u``; not a ``bool`` or a
    string), ``invariants`` a non-empty sequence of :class:`Invariant`. A set of the plane is
    then evaluated on the zero jet of its ``order`` (1 x 1 maps, float64 and float32, no
    randomness): an invariant that reads a derivative beyond ``order``, fails there, or does not
    return one map of the jet's shape and dtype is refused then, not at the first forward. A
    declared ``rotations`` or ``scalings`` is then checked on random jets
    (:meth:`_check_declared_invariance`): a false declaration is refused, naming the invariant
    that changes. Every call first checks the jet (:func:`check_jet`: a floating-point
    ``torch.Tensor`` ``(..., D, H, W)``, else an :class:`~eqpdenet.errors.InputTypeError` or
    :class:`~eqpdenet.errors.InputError` naming the jet), then each
    invariant's result against the jet (a tensor ``jet.shape[:-3] + jet.shape[-2:]`` in the
    jet's dtype: one map; a comparison of shapes and dtypes, no host read) and names the set and
    the invariant where it is not.

    Pickling (``torch.save`` of a model holding the set): a set compiled by
    :func:`eqpdenet.pde.symbolic.compile_invariants` pickles as the recipe that compiles it
    again, registered or not, and loads as its own set whatever is registered under its name
    where it is loaded; any other registered set pickles as its name (its functions are
    lambdas); other sets pickle by value, and one of them whose functions pickle cannot store
    (lambdas, closures: a set never registered, or replaced under its name since a model took
    it) is a :class:`~eqpdenet.errors.ConfigError` naming the set and the invariant.
    ``copy.deepcopy`` and ``copy.copy`` share a registered set.
    """

    domain = "plane"
    #: The ``eps`` every ratio of the set divides with whatever the layer passes (a set compiled
    #: with ``compile_invariants(..., ratio_eps=...)``: absolute ratios), or None: the layer's.
    fixed_ratio_eps: float | None = None

    def __init__(self, name: str, group: str, order: int, invariants, equation: str = "",
                 kernel: str | None = None, invariant_under=()):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"an invariant set's name must be a non-empty string, got {name!r}")
        where = f"invariant set {name!r}"
        for field, value in (("group", group), ("equation", equation)):
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {field} must be a string, got {_shown(value)}")
        if kernel is not None and not isinstance(kernel, str):
            raise ConfigError(f"{where}: kernel must be a kernel's name or None, got "
                              f"{_shown(kernel)}")
        order = check_order(order, f"{where}: order")
        self.name, self.group, self.order, self.equation = name, group, order, equation
        self.kernel = kernel
        if isinstance(invariants, Invariant | str) or not hasattr(invariants, "__iter__"):
            raise ConfigError(f"{where}: invariants must be a sequence of Invariant, got "
                              f"{_shown(invariants)}")
        self.invariants: tuple[Invariant, ...] = tuple(invariants)
        if not self.invariants:
            raise ConfigError(f"{where} is empty")
        for index, invariant in enumerate(self.invariants):
            if not isinstance(invariant, Invariant):
                raise ConfigError(f"{where}: invariants[{index}] must be an Invariant(name, "
                                  f"unicode, latex, function), got {_shown(invariant)}")
        if isinstance(invariant_under, str):
            raise ConfigError(f"{where}: invariant_under must be a sequence of transformations "
                              f"(e.g. ({invariant_under!r},)), got the string {invariant_under!r}")
        unknown = sorted(set(invariant_under) - set(TRANSFORMATIONS), key=repr)
        if unknown:
            raise ConfigError(f"{where}: unknown transformation(s) {unknown}; "
                              f"known: {', '.join(TRANSFORMATIONS)}")
        self.invariant_under: frozenset[str] = frozenset(invariant_under)
        if self.domain == "plane":
            self._try_on_zero_jet()
            self._check_declared_invariance()

    def _try_on_zero_jet(self) -> None:
        """Each invariant on the zero jet of the set's order (1 x 1 maps, float64, then float32):
        a :class:`~eqpdenet.errors.ConfigError` naming the set and the invariant where one reads
        a derivative beyond the order, fails, or returns anything but one map in the jet's dtype
        (see the class doc; float32 too, the models' dtype: a map computed in float64 "for
        precision" passes a float64 jet)."""
        size = (self.order + 1) * (self.order + 2) // 2
        for dtype in (torch.float64, torch.float32):
            jet = torch.zeros(size, 1, 1, dtype=dtype)
            derivatives, ratio = Derivatives(jet), RatioRegularisation()
            for invariant in self.invariants:
                try:
                    with torch.no_grad():
                        value = invariant.function(derivatives, ratio)
                except Exception as error:  # noqa: BLE001 - the user's function: named, cause kept
                    raise ConfigError(
                        f"invariant set {self.name!r}: invariant {invariant.name!r} fails on the "
                        f"zero jet of the set's order {self.order}: {type(error).__name__}: "
                        f"{error}"
                        + (" (raise the set's order)" if "higher-order jet" in str(error) else "")
                    ) from error
                self._check_map(invariant, value, jet)

    def _check_declared_invariance(self) -> None:
        """Each declared rotation or scaling invariance, on eight seeded random jets of the set's
        order, at two angles (a quarter turn above order 12) or factors: the jet of
        ``u(R^T p)`` or ``u(p / λ)`` at the origin, exact by the chain rule
        (:func:`transformed_jet`), must give the same values to 1e-8
        relative (float64, ratios ``"covariant"``; exact invariants agree to rounding, about
        1e-14). A false declaration is a :class:`~eqpdenet.errors.ConfigError` naming the set,
        the invariant and the transformation, at the set's creation: the declaration decides
        which models call themselves exact under quarter turns (export checks them, the
        benchmark reports them). Translations need no check: an invariant is a function of the
        jet at a point and cannot see where the point is."""
        checked = [t for t in ("rotations", "scalings") if t in self.invariant_under]
        if not checked:
            return
        generator = torch.Generator().manual_seed(0)
        size = (self.order + 1) * (self.order + 2) // 2
        jet = torch.randn(size, 2, 4, generator=generator, dtype=torch.float64)
        ratio = RatioRegularisation(DEFAULT_RATIO_EPS, "covariant")
        before = self._values(jet, ratio)
        for transformation in checked:
            # Above order 12 a general angle's coefficients (up to 2^order) cancel beyond
            # float64's precision: only a quarter turn (exact coefficients) is checked there.
            parameters = ((0.6, 1.7) if transformation == "scalings" else
                          (0.61, 2.3) if self.order <= 12 else (math.pi / 2,))
            for parameter in parameters:
                after = self._values(transformed_jet(jet, transformation, parameter), ratio)
                for invariant, a, b in zip(self.invariants, before, after, strict=True):
                    # A value undefined at a jet (NaN: a square root of a negative determinant)
                    # is undefined at the transformed jet too, where the function is invariant.
                    same = torch.isclose(a, b, rtol=1e-8, atol=1e-12, equal_nan=True)
                    if bool(same.all()):
                        continue
                    error = float((a - b)[~same].abs().nan_to_num(nan=math.inf).max())
                    first = int(torch.nonzero(~same.flatten())[0])
                    shown = (f"rotation by {parameter:.4g} rad" if transformation == "rotations"
                             else f"scaling by {parameter}")
                    raise ConfigError(
                        f"invariant set {self.name!r} declares invariant_under "
                        f"{transformation!r}, but invariant {invariant.name!r} changes under a "
                        f"{shown} of a random jet (from {float(a.flatten()[first]):.6g} to "
                        f"{float(b.flatten()[first]):.6g}; largest difference {error:.3g}): leave "
                        f"{transformation!r} out of invariant_under, or correct the invariant")

    def _values(self, jet: Tensor, ratio: RatioRegularisation) -> list[Tensor]:
        """Each invariant's map on ``jet`` (no grad); a failure names the set and invariant."""
        derivatives, values = Derivatives(jet), []
        for invariant in self.invariants:
            try:
                with torch.no_grad():
                    values.append(invariant.function(derivatives, ratio))
            except Exception as error:  # noqa: BLE001 - the user's function: named, cause kept
                raise ConfigError(f"invariant set {self.name!r}: invariant {invariant.name!r} "
                                  f"fails on a random jet of order {self.order}: "
                                  f"{type(error).__name__}: {error}") from error
        return values

    def _check_map(self, invariant: Invariant, value, jet: Tensor) -> None:
        """A :class:`~eqpdenet.errors.ConfigError` naming the set and the invariant unless
        ``value`` is one map of ``jet``: a tensor ``jet.shape[:-3] + jet.shape[-2:]`` in the
        jet's dtype (another dtype, a map computed in float64 "for precision", complex, integer
        or bool, was promoted by the stack of the maps and failed later with a raw torch error,
        or carried no gradient)."""
        expected = jet.shape[:-3] + jet.shape[-2:]
        if isinstance(value, Tensor) and value.shape == expected and value.dtype == jet.dtype:
            return
        if isinstance(value, Tensor) and value.shape == expected:
            raise ConfigError(f"invariant set {self.name!r}: invariant {invariant.name!r} must "
                              f"return its map in the jet's dtype, {jet.dtype} for this jet, "
                              f"got {value.dtype} (compute in the jet's dtype, or cast the "
                              f"result back to it)")
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else _shown(value)
        raise ConfigError(f"invariant set {self.name!r}: invariant {invariant.name!r} must "
                          f"return one map of the jet's shape, {tuple(expected)} for a jet "
                          f"{tuple(jet.shape)}, got {got}")

    def __len__(self) -> int:
        return len(self.invariants)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(invariant.name for invariant in self.invariants)

    def __call__(self, jet: Tensor, ratio_eps: float = DEFAULT_RATIO_EPS,
                 ratio_regularisation: str = DEFAULT_RATIO_REGULARISATION) -> Tensor:
        check_jet(jet)
        derivatives = Derivatives(jet)
        ratio = RatioRegularisation(ratio_eps, ratio_regularisation)
        maps = [inv.function(derivatives, ratio) for inv in self.invariants]
        # the dtypes always (static, also while tracing); the shapes not while compiling
        # (symbolic shapes: the tracer checks them)
        shapes = not torch.compiler.is_compiling()
        expected = jet.shape[:-3] + jet.shape[-2:]
        for invariant, value in zip(self.invariants, maps, strict=True):
            if not isinstance(value, Tensor) or value.dtype != jet.dtype or (
                    shapes and value.shape != expected):
                self._check_map(invariant, value, jet)
        return torch.stack(maps, dim=-3)

    def _is_registered(self) -> bool:
        return self.name in INVARIANT_SETS and INVARIANT_SETS.get(self.name) is self

    def __reduce_ex__(self, protocol):
        reduction = self._reduction(protocol)
        if reduction[0] is not get_invariant_set and getattr(self, "compiled_from", None) is None:
            self._require_picklable(protocol)
        return reduction

    def _require_picklable(self, protocol) -> None:
        """A set pickled by value (not registered under its name, not compiled): a
        :class:`~eqpdenet.errors.ConfigError` naming it and the invariant whose function pickle
        cannot store (a lambda or a closure), rather than a raw ``PicklingError`` from inside
        ``torch.save``."""
        for invariant in self.invariants:
            try:
                pickle.dumps(invariant.function, protocol)
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                raise ConfigError(
                    f"invariant set {self.name!r} cannot be pickled (torch.save): it is not the "
                    f"set registered under its name (never registered, or replaced since), so "
                    f"it is stored by value, and the function of its invariant "
                    f"{invariant.name!r} cannot be ({error}); register the set "
                    f"(register_invariant_set) or define its functions at module level") from None

    def _reduction(self, protocol):
        """What :meth:`__reduce_ex__` returns, without its check (for copies)."""
        # A set compiled from SymPy expressions (eqpdenet.pde.symbolic.compile_invariants)
        # pickles as the recipe that compiles it again (its functions are closures), registered
        # or not: by name, a process that registered another set under that name loaded it
        # silently with other invariants, and one that registered none could not load it.
        # The loaded set is its own, whatever is registered under its name there.
        recipe = getattr(self, "compiled_from", None)
        if recipe is not None:
            return recipe
        # Any other registered set pickles as its name, looked up again on loading: its
        # functions are mostly lambdas, which pickle cannot store, and a model that holds the
        # set (the PDE layers, the lifted model) could not be saved whole with torch.save.
        # Other sets pickle as any object does.
        if self._is_registered():
            return get_invariant_set, (self.name,)
        return super().__reduce_ex__(protocol)

    def __copy__(self):
        # copy.copy used __reduce_ex__, which now checks what only pickle needs: a registered
        # set is itself, any other a new set sharing its attributes (its invariants are frozen).
        if self._is_registered():
            return self
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __deepcopy__(self, memo):
        # A registered set is shared within the process, as it was when every registered set
        # deep-copied by name (a model's deep copy does not compile its sets again). Any other
        # set copies as it pickles: a compiled one by its recipe.
        if self._is_registered():
            return self
        function, args, *state = self._reduction(4)
        copied = function(*copy.deepcopy(args, memo))
        memo[id(self)] = copied
        if state and state[0] is not None:
            copied.__dict__.update(copy.deepcopy(state[0], memo))
        return copied

    def __repr__(self) -> str:
        return f"InvariantSet({self.name!r}, group={self.group!r}, K={len(self)})"

    def __str__(self) -> str:
        lines = [f"{self.name}: differential invariants of {self.group}"
                 + (f" ({self.equation})" if self.equation else "")]
        lines += [f"  {inv.name:>12} = {inv.unicode}" for inv in self.invariants]
        return "\n".join(lines)

    def latex(self) -> str:
        """The set as a LaTeX ``\\left\\{ ... \\right\\}`` list."""
        return r"\left\{ " + ",\\; ".join(inv.latex for inv in self.invariants) + r" \right\}"


def check_jet(jet) -> None:
    """The checks of a jet where it enters an invariant set (:meth:`InvariantSet.__call__`),
    before any invariant is evaluated: a ``torch.Tensor`` (else an
    :class:`~eqpdenet.errors.InputTypeError`), of at least 3 dimensions ``(..., D, H, W)`` (else
    an :class:`~eqpdenet.errors.InputError`), floating point (else an ``InputTypeError``); a
    comparison of type, shape and dtype, no host read. An integer or bool jet gave integer
    invariants silently, a raw torch error from inside an invariant, or a message blaming the
    set's invariant for the map it returned in another dtype (round 18)."""
    if not isinstance(jet, Tensor):
        raise InputTypeError(f"jet must be a torch.Tensor (..., D, H, W), got "
                             f"{type(jet).__name__}")
    if jet.dim() < 3:
        raise InputError(f"expected a jet of shape (..., D, H, W), got {tuple(jet.shape)}")
    if not jet.is_floating_point():
        raise InputTypeError(f"jet must be a floating-point tensor, got dtype {jet.dtype}")


class _InvariantSetRegistry(Registry):
    """Invariant sets only: ``INVARIANT_SETS.register(name, function)`` was accepted (a function
    is callable, as the sets are) and failed at the first use."""

    def check_item(self, item) -> None:
        _require_invariant_set(item)


#: The invariant sets known by name (to :class:`~eqpdenet.pde.PDELayer` and configurations);
#: only :class:`InvariantSet` objects are registered (:func:`register_invariant_set`).
INVARIANT_SETS: Registry[InvariantSet] = _InvariantSetRegistry("invariant set")


def register_invariant_set(invariant_set: InvariantSet, *, replace: bool = False) -> InvariantSet:
    """Make a set available by name to the PDE layer and the configuration files."""
    _require_invariant_set(invariant_set)
    return INVARIANT_SETS.register(invariant_set.name, invariant_set, replace=replace)


def _require_invariant_set(invariant_set) -> None:
    if not isinstance(invariant_set, InvariantSet):
        hint = (": register the InvariantSet object itself (get_invariant_set looks one up by "
                "name)" if isinstance(invariant_set, str) else "")
        raise ConfigError(f"invalid config: invariant_set: must be an InvariantSet, got "
                          f"{type(invariant_set).__name__}{hint}")


def get_invariant_set(name: str | InvariantSet) -> InvariantSet:
    """Look a set up by name (an :class:`InvariantSet` is returned as is)."""
    return name if isinstance(name, InvariantSet) else INVARIANT_SETS.get(name)


#: The domains of the invariant sets eqpdenet defines (:attr:`InvariantSet.domain`).
DOMAINS = ("plane", "m2")


def available_invariant_sets(domain: str | None = None) -> tuple[str, ...]:
    """Names of the registered sets; with ``domain``, only those of that domain (``"plane"``:
    functions of images, for the PDE layer; ``"m2"``: of fields on position x orientation; or
    the domain of a registered set); another ``domain`` is a
    :class:`~eqpdenet.errors.ConfigError` naming the known ones (a mistyped one returned none)."""
    if domain is None:
        return INVARIANT_SETS.names()
    sets = {name: INVARIANT_SETS.get(name) for name in INVARIANT_SETS.names()}
    known = tuple(dict.fromkeys((*DOMAINS, *(s.domain for s in sets.values()))))
    if not isinstance(domain, str) or domain not in known:
        raise ConfigError(f"available_invariant_sets: unknown domain {domain!r}; known: "
                          f"{', '.join(repr(d) for d in known)}")
    return tuple(name for name, s in sets.items() if s.domain == domain)


def require_planar(invariant_set: InvariantSet, field: str) -> InvariantSet:
    """A ConfigError naming ``field`` unless the set is one of functions of images."""
    if invariant_set.domain != "plane":
        raise ConfigError(f"invalid config: {field}: the invariant set {invariant_set.name!r} is "
                          f"one of fields on {invariant_set.domain} (position x orientation), "
                          f"not of images: the lifted_pde model uses it")
    return invariant_set


# ----------------------------------------------------------------------------- the sets


class _RescaledJet:
    """The first and second derivatives of a jet times ``sigma`` and ``sigma^2`` (``u`` as is),
    by name like :class:`Derivatives`: the jet, at the same point, of the same function on a
    grid ``sigma`` times coarser (``p -> p / sigma``)."""

    def __init__(self, d: Derivatives, sigma: Tensor):
        sigma_sq = sigma * sigma
        self.u = d.u
        self.u_x, self.u_y = d.u_x * sigma, d.u_y * sigma
        self.u_xx, self.u_xy, self.u_yy = d.u_xx * sigma_sq, d.u_xy * sigma_sq, d.u_yy * sigma_sq


def _ratio_operands(d: Derivatives, ratio):
    """The derivatives the built-in ``scaling`` and ``sim2`` ratios are formed from: ``d``
    itself, or with the ``covariant`` mode ``d`` rescaled (:class:`_RescaledJet`) by one power
    of two per image plane (the last two dimensions), ``sigma = 2^-k``,
    ``k = floor(log2(R_max) / 4)`` (``R_max`` the plane's largest ``R`` of
    :func:`hessian_reference_sq`), which brings ``R_max`` into ``[1, 16)`` (give or take the
    rounding of ``log2``); where ``R_max`` overflowed or underflowed to 0, from the plane's
    largest derivatives instead (:func:`plane_ratio_rescaling`).

    Why: these ratios are scale invariant, so the rescaled jet gives the same quotient; every
    covariant ratio's numerator ``a b`` and each term of its denominator scale by the same power
    of ``sigma``, and a power of two multiplies exactly, so the quotient is the same to the last
    bit wherever the unscaled one neither overflowed nor underflowed nor felt the guard.
    Unscaled, the det-H ratios (products of degree 8 in the second derivatives) overflowed in
    float32 at spacing 1e-5 (u_xx ~ 1e10: inf / inf = NaN) and fell to the guard at spacing 30
    and above (denominator ~ u_xx^8 against 2^-63), the second-order ratios at spacing 1e3 and
    above. Why one factor per plane and not per pixel (round 15 had one per pixel): the
    ratios' derivatives grow like 1 / |jet| where the jet is small, and a per-pixel factor lifts
    every small jet to order 1, float32 rounding noise included (a plateau a few ulps uneven, as
    Euler steps leave beside a digit): the guard no longer bounded those derivatives, and a
    float32 ``sim2`` layer's gradients reached 1e14 on MNIST (10 steps, against 100 in float64;
    tests/kernels/test_fused_ratio_rescaling_round16.py). Against the plane's largest jet such
    jets stay small, where the guard bounds them as at unit spacing. ``sigma`` is computed
    without a gradient (it is piecewise constant and the quotient does not depend on it). The
    ``absolute`` mode (whose ``eps`` has a unit) and user modes get ``d`` unchanged."""
    if not (isinstance(ratio, RatioRegularisation) and ratio.mode == "covariant"):
        return d
    cached = d.__dict__.get("_rescaled_for_covariant_ratios")
    if cached is None:
        cached = _RescaledJet(d, plane_ratio_rescaling(d))
        d.__dict__["_rescaled_for_covariant_ratios"] = cached
    return cached


def plane_ratio_rescaling(d: Derivatives) -> Tensor:
    """The covariant ratios' power of two per image plane, shape ``(..., 1, 1)``:
    :func:`ratio_rescaling` of the plane's largest ``R`` (:func:`hessian_reference_sq`) where
    that is positive and finite; where ``R`` overflowed (float32: ``|∇u|`` above about 4e9, or
    ``|H|`` above about 1.8e19) or underflowed to 0 while the jet did not vanish,
    :func:`component_rescaling` of the plane's largest first and second derivatives, which
    cannot overflow; 1 where the jet is 0 or not finite. Computed without a gradient, and
    without a host read (both rules are evaluated and one is selected per plane)."""
    # detach, not no_grad: torch.export records a no_grad block as an operator ONNX lacks
    largest = hessian_reference_sq(d).detach().amax(dim=(-2, -1), keepdim=True)
    first = torch.maximum(d.u_x.detach().abs(), d.u_y.detach().abs())
    first = first.amax(dim=(-2, -1), keepdim=True)
    second = torch.maximum(torch.maximum(d.u_xx.detach().abs(), d.u_xy.detach().abs()),
                           d.u_yy.detach().abs()).amax(dim=(-2, -1), keepdim=True)
    by_reference = (largest > 0) & torch.isfinite(largest)
    return torch.where(by_reference, ratio_rescaling(largest), component_rescaling(first, second))


def _floor_log2(x: Tensor) -> Tensor:
    """``floor(log2(x))`` for positive finite ``x``, exact: the rounding of ``log2`` near a power
    of two is corrected against ``exp2`` (exact for an integer). ``torch.frexp`` would be exact
    too, but ONNX has no operator for it."""
    e = torch.floor(torch.log2(x))
    e = torch.where(torch.exp2(e) > x, e - 1, e)
    return torch.where(torch.exp2(e + 1) <= x, e + 1, e)


def component_rescaling(first: Tensor, second: Tensor) -> Tensor:
    """The power of two ``sigma = 2^-k`` that brings the larger of ``first`` (the largest
    ``|u_x|``, ``|u_y|``) times ``sigma`` and ``sqrt(second)`` (the largest ``|u_xx|``,
    ``|u_xy|``, ``|u_yy|``) times ``sigma`` into ``[1, 2)``, so that ``R`` of the rescaled jet lies
    in ``[1, 80)``: ``k = max(floor(log2 first), floor(floor(log2 second) / 2))``, of the entries
    that are positive. ``k`` is capped at ``±floor(-log2(tiny) / 2)`` (63 in float32) so that
    ``sigma^2`` and ``sigma^-2`` are normal numbers. 1 where both are 0 or either is not
    finite (the state is then not finite, which the layer reports)."""
    usable = torch.isfinite(first) & torch.isfinite(second) & ((first > 0) | (second > 0))
    one = torch.ones_like(first)
    k_first = torch.where(first > 0, _floor_log2(torch.where(first > 0, first, one)),
                          torch.full_like(first, -float("inf")))
    k_second = torch.where(second > 0,
                           torch.floor(_floor_log2(torch.where(second > 0, second, one)) / 2),
                           torch.full_like(second, -float("inf")))
    bound = math.floor(-math.log2(torch.finfo(first.dtype).tiny) / 2)
    k = torch.clamp(torch.maximum(k_first, k_second), -bound, bound)
    return torch.where(usable, torch.exp2(-torch.where(usable, k, torch.zeros_like(k))), one)


def ratio_rescaling(reference: Tensor) -> Tensor:
    """The power of two ``sigma = 2^-floor(log2(R) / 4)`` per entry of ``R`` (``reference``, of
    :func:`hessian_reference_sq`; :func:`_ratio_operands` passes each plane's largest), 1 where
    ``R`` is 0 or not finite: first derivatives times ``sigma`` and second times ``sigma^2``
    bring ``R`` into ``[1, 16)``."""
    usable = (reference > 0) & torch.isfinite(reference)
    exponent = torch.floor(torch.log2(torch.where(usable, reference, 1.0)) / 4)
    return torch.exp2(-exponent)  # exact for an integer (tests/pde/test_sim2_float32_round15.py)


def _grad_sq(d: Derivatives) -> Tensor:
    return d.u_x**2 + d.u_y**2


def _laplacian(d: Derivatives) -> Tensor:
    return d.u_xx + d.u_yy


def _grad_hess_grad(d: Derivatives) -> Tensor:
    return d.u_x**2 * d.u_xx + 2 * d.u_x * d.u_y * d.u_xy + d.u_y**2 * d.u_yy


def _hess_det(d: Derivatives) -> Tensor:
    return d.u_xx * d.u_yy - d.u_xy**2


def hessian_reference_sq(d: Derivatives) -> Tensor:
    """``R = |H|^2 + |∇u|^4 = u_xx^2 + 2 u_xy^2 + u_yy^2 + (u_x^2 + u_y^2)^2``: the covariant
    reference of a second-order denominator (``R^2`` that of ``det H``), computed once per jet.

    Rotation invariant, of the scaling weight of ``u_xx^2``, zero only where the jet's first and
    second derivatives all vanish."""
    cached = d.__dict__.get("_hessian_reference_sq")
    if cached is None:
        cached = d.u_xx**2 + 2 * d.u_xy**2 + d.u_yy**2 + _grad_sq(d) ** 2
        d.__dict__["_hessian_reference_sq"] = cached
    return cached


SE2 = register_invariant_set(InvariantSet(
    "se2", "SE(2), rotations and translations of the plane", 2, [
        Invariant("u", "u", "u", lambda d, ratio: d.u),
        Invariant("grad_sq", "u_x² + u_y²", "u_x^2 + u_y^2", lambda d, ratio: _grad_sq(d)),
        Invariant("laplacian", "u_xx + u_yy", "u_{xx} + u_{yy}", lambda d, ratio: _laplacian(d)),
        Invariant("grad_hess_grad", "u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy",
                  "u_x^2 u_{xx} + 2 u_x u_y u_{xy} + u_y^2 u_{yy}",
                  lambda d, ratio: _grad_hess_grad(d)),
        Invariant("hess_sq", "u_xx² + 2 u_xy² + u_yy²", "u_{xx}^2 + 2 u_{xy}^2 + u_{yy}^2",
                  lambda d, ratio: d.u_xx**2 + 2 * d.u_xy**2 + d.u_yy**2),
    ], equation="eq. (4)", kernel="se2", invariant_under=("translations", "rotations"),
))


def _ratio(numerator: str, denominator: str) -> Invariant:
    n, m = numerator[2:], denominator[2:]
    return Invariant(
        f"{numerator}2_over_{denominator}", f"{numerator}² / {denominator}",
        rf"\frac{{u_{n}^2}}{{u_{{{m}}}}}",
        lambda d, ratio: _scaling_ratio(_ratio_operands(d, ratio), ratio, numerator,
                                        denominator),
    )


def _scaling_ratio(d, ratio, numerator: str, denominator: str) -> Tensor:
    return ratio(getattr(d, numerator) ** 2, getattr(d, denominator), hessian_reference_sq(d))


SCALING = register_invariant_set(InvariantSet(
    "scaling", "scalings x -> λx (with translations)", 2,
    [_ratio(a, b) for a in ("u_x", "u_y") for b in ("u_xx", "u_xy", "u_yy")],
    equation="eq. (5)", kernel="scaling", invariant_under=("translations", "scalings"),
))

_GRAD_SQ_TEXT = ("u_x² + u_y²", "u_x^2 + u_y^2")
_LAPLACIAN_TEXT = ("u_xx + u_yy", "u_{xx} + u_{yy}")
_HESS_DET_TEXT = ("u_xx u_yy − u_xy²", "u_{xx} u_{yy} - u_{xy}^2")
_GRAD_HESS_GRAD_TEXT = ("u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy",
                        "u_x^2 u_{xx} + 2 u_x u_y u_{xy} + u_y^2 u_{yy}")


def _sim2_ratio(d, ratio, index: int) -> Tensor:
    """The ratio invariant ``index`` (1, 2 or 3) of ``sim2``."""
    if index == 1:
        return ratio(_grad_sq(d), _laplacian(d), hessian_reference_sq(d))
    numerator = _grad_sq(d) * _laplacian(d) if index == 2 else _grad_hess_grad(d)
    return ratio(numerator, _hess_det(d), hessian_reference_sq(d) ** 2)


SIM2 = register_invariant_set(InvariantSet(
    "sim2", "SIM(2), rotations, scalings and translations of the plane", 2, [
        Invariant("u", "u", "u", lambda d, ratio: d.u),
        Invariant("grad_sq_over_laplacian",
                  f"({_GRAD_SQ_TEXT[0]}) / ({_LAPLACIAN_TEXT[0]})",
                  rf"\frac{{{_GRAD_SQ_TEXT[1]}}}{{{_LAPLACIAN_TEXT[1]}}}",
                  lambda d, ratio: _sim2_ratio(_ratio_operands(d, ratio), ratio, 1)),
        Invariant("grad_sq_laplacian_over_hess_det",
                  f"({_GRAD_SQ_TEXT[0]}) ({_LAPLACIAN_TEXT[0]}) / ({_HESS_DET_TEXT[0]})",
                  rf"\frac{{\left({_GRAD_SQ_TEXT[1]}\right)\left({_LAPLACIAN_TEXT[1]}\right)}}"
                  rf"{{{_HESS_DET_TEXT[1]}}}",
                  lambda d, ratio: _sim2_ratio(_ratio_operands(d, ratio), ratio, 2)),
        Invariant("grad_hess_grad_over_hess_det",
                  f"({_GRAD_HESS_GRAD_TEXT[0]}) / ({_HESS_DET_TEXT[0]})",
                  rf"\frac{{{_GRAD_HESS_GRAD_TEXT[1]}}}{{{_HESS_DET_TEXT[1]}}}",
                  lambda d, ratio: _sim2_ratio(_ratio_operands(d, ratio), ratio, 3)),
    ], equation="from eqpdenet.pde.symbolic's find_invariants('sim2', order=2)", kernel="sim2",
    invariant_under=("translations", "rotations", "scalings"),
))
