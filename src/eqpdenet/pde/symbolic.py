"""Differential invariants of any Lie group action on the plane, derived with SymPy.

The paper's approach "applies to any Lie group action provided that a generating set of
differential invariants can be efficiently computed"; this module computes them. The setting is
``p = 2`` independent variables ``(x, y)`` (axes as in :mod:`eqpdenet.geometry`: ``x`` to the
right, ``y`` up) and one dependent variable ``u``, or several, ``u1 ... uC``, that the group
transforms alike (``channels=C``: joint invariants, e.g. ``u1_x u2_x + u1_y u2_y``).

1. Describe the action by the vector fields of its Lie algebra, ``xi_x d_x + xi_y d_y + phi d_u``
   (:class:`VectorField`), collected in a :class:`LieGroupAction`. Ready groups:
   :data:`GROUPS` (``se2``, ``scaling``, ``sim2``, ``se2_intensity_shift``, ``affine``).
2. :func:`prolong` gives the prolonged field on the jet space ``J^(n)`` (Olver, *Applications of
   Lie Groups to Differential Equations*, Thm. 2.36)::

       phi^J = D_J (phi - xi_x u_x - xi_y u_y) + xi_x u_{J,x} + xi_y u_{J,y}

3. :func:`find_invariants` solves the infinitesimal criterion ``pr zeta_i (I) = 0`` for every
   generator, as a linear system on the coefficients of polynomials in the jet, and forms
   rational invariants as ratios of *relative* invariants of equal weight (see below). The
   result is reduced to a functionally independent set by the rank of its Jacobian at a random
   (exact, rational) jet point and compared with the count the theory predicts,
   ``dim J^(n) - s`` with ``dim J^(n) = 2 + C binom(n + 2, 2)`` (``C`` channels) and ``s`` the
   generic orbit dimension of the prolonged action (rank of the prolonged fields' coefficients
   at a random point).
4. :func:`compile_invariants` turns the expressions into an :class:`~eqpdenet.invariants.
   InvariantSet` (torch operations on the jet, every division through
   :func:`~eqpdenet.invariants.safe_ratio`) usable by :class:`~eqpdenet.pde.PDELayer`.

How invariants are searched
---------------------------
Only functions of the ``u``-jet (``u, u_x, u_y, u_xx, ...``), not of ``x, y``, are searched: for a
group containing the translations ``d_x, d_y`` (every ready group) an invariant cannot depend on
``x, y`` anyway, and an ``x``-dependent feature would not suit a PDE layer applied to images. For
a group without translations the search still returns only ``x, y``-free invariants, while
``expected_count`` counts all of them; the result then carries a note.

The generators are split in two. A generator is *diagonal* if its prolongation acts on every
jet coordinate by ``phi^J = c_J u_J`` with constants ``c_J`` (translations, with ``c_J = 0``;
scalings ``x d_x + y d_y``, ``c_J = -|J|``; ``x d_x``; intensity scaling ``u d_u``). Every
monomial of the jet is then a weight vector of the diagonal generators, of weight
``sum_J e_J c_J``. For each weight ``w`` the polynomials of that weight (degree ``<=
max_degree``) annihilated by the other generators (rotation, shears, ``d_u``, ...) are found by an
exact nullspace over the rationals. They are *relative invariants*: ``pr zeta(P) = w(zeta) P``.
Those of weight 0 are absolute (polynomial) invariants; for ``w != 0`` the ratios ``P / P_w``
over the simplest relative invariant ``P_w`` of that weight are rational invariants (all ratios
within a weight follow from these). Every candidate satisfies the criterion exactly; candidates
are taken simplest first (degree, then number of terms) and kept if they raise the Jacobian rank,
until the predicted count is reached. This is sound, and complete for the ready groups at the
degrees used in :data:`DEFAULT_DEGREES`; where it finds fewer than predicted it says so
(``found_count < expected_count``), never more.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

try:
    import sympy as sp
    from sympy.polys.matrices import DomainMatrix
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "eqpdenet.symbolic needs SymPy, an optional dependency: pip install eqpdenet[symbolic]"
    ) from exc

from ..errors import ConfigError
from ..registry import Registry
from .invariants import Invariant, InvariantSet, register_invariant_set, safe_ratio
from .joint import JointInvariants, JointTerm
from .stencils import derivative_multi_indices, derivative_names

__all__ = [
    "DEFAULT_DEGREES",
    "GROUPS",
    "JOINT_DEGREES",
    "PAPER_INVARIANTS",
    "JetSpace",
    "LieGroupAction",
    "SymbolicInvariants",
    "VectorField",
    "available_groups",
    "compile_invariants",
    "criterion",
    "find_invariants",
    "functionally_independent",
    "get_group",
    "is_invariant",
    "jacobian_rank",
    "joint_expressions",
    "prolong",
    "register_group",
    "unicode_formula",
    "u",
    "x",
    "y",
]

x, y, u = sp.symbols("x y u", real=True)


# ----------------------------------------------------------------------------- jet space


class JetSpace:
    """Coordinates of ``J^(n)``: ``x, y`` and SymPy symbols named like the jet channels.

    ``JetSpace(2).derivatives`` is ``(u, u_x, u_y, u_xx, u_xy, u_yy)`` (same order as
    :func:`eqpdenet.stencils.derivative_names`); ``coordinates`` prepends ``x, y``.

    With ``channels = C > 1`` (a vector-valued ``u = (u1, ..., uC)``) every channel has its own
    jet coordinates, channel by channel: ``JetSpace(1, channels=2).derivatives`` is
    ``(u1, u1_x, u1_y, u2, u2_x, u2_y)``, and ``dim J^(n) = 2 + C binom(n + 2, 2)``.
    """

    def __init__(self, order: int, channels: int = 1):
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a positive integer, got {channels!r}")
        self.order, self.channels = order, channels
        self.multi_indices = derivative_multi_indices(order)
        base = derivative_names(order)
        if channels == 1:
            self.names = base
            self.dependent: tuple[sp.Symbol, ...] = (u,)
        else:
            self.names = tuple("u" + str(c) + name[1:] for c in range(1, channels + 1)
                               for name in base)
            self.dependent = tuple(sp.Symbol(f"u{c}", real=True) for c in range(1, channels + 1))
        dependent = {symbol.name: symbol for symbol in self.dependent}
        self.derivatives: tuple[sp.Symbol, ...] = tuple(
            dependent.get(name) or sp.Symbol(name, real=True) for name in self.names
        )
        self.coordinates = (x, y, *self.derivatives)
        keys = [(c, a, b) for c in range(channels) for a, b in self.multi_indices]
        self._by_index = dict(zip(keys, self.derivatives, strict=True))

    @property
    def dimension(self) -> int:
        """``dim J^(n) = 2 + C binom(n + 2, 2)`` (``C`` channels)."""
        return len(self.coordinates)

    def symbol(self, a: int, b: int, channel: int = 0) -> sp.Symbol:
        """``u_J`` of channel ``channel`` (from 0) for ``J = (a x-derivatives, b y-derivatives)``."""
        return self._by_index[(channel, a, b)]

    def channel_derivatives(self, channel: int) -> tuple[sp.Symbol, ...]:
        """The jet coordinates of one channel (from 0), in jet order."""
        return tuple(self._by_index[(channel, a, b)] for a, b in self.multi_indices)

    def total_derivative(self, expr: sp.Expr, axis: int) -> sp.Expr:
        """``D_x expr`` (``axis=0``) or ``D_y expr`` (``axis=1``); ``expr`` of order < ``order``."""
        step = (1, 0) if axis == 0 else (0, 1)
        out = sp.diff(expr, (x, y)[axis])
        for (c, a, b), symbol in self._by_index.items():
            if expr.has(symbol):
                target = (c, a + step[0], b + step[1])
                if target not in self._by_index:
                    raise ConfigError(f"D_{'xy'[axis]} of {expr} needs a jet of order > {self.order}")
                out += sp.diff(expr, symbol) * self._by_index[target]
        return out

    def __repr__(self) -> str:
        channels = f", channels={self.channels}" if self.channels > 1 else ""
        return f"JetSpace(order={self.order}{channels}, dimension={self.dimension})"


# ----------------------------------------------------------------------------- vector fields


@dataclasses.dataclass(frozen=True)
class VectorField:
    """``xi_x d_x + xi_y d_y + phi_u d_u``, coefficients SymPy expressions in ``x, y, u``.

    Use the module's symbols :data:`x`, :data:`y`, :data:`u` (or strings, parsed with them).
    """

    xi_x: sp.Expr = sp.S.Zero
    xi_y: sp.Expr = sp.S.Zero
    phi_u: sp.Expr = sp.S.Zero
    name: str = ""

    def __post_init__(self):
        local = {"x": x, "y": y, "u": u}
        for field in ("xi_x", "xi_y", "phi_u"):
            value = sp.sympify(getattr(self, field), locals=local)
            # Accept plain sp.Symbol("x") too: symbols are matched by name.
            value = value.xreplace({s: local[s.name] for s in value.free_symbols
                                    if s.name in local})
            extra = value.free_symbols - {x, y, u}
            if extra:
                raise ConfigError(f"vector field coefficient {field}={value} may depend on x, y, u "
                                 f"only, not {sorted(map(str, extra))}")
            object.__setattr__(self, field, value)

    def __str__(self) -> str:
        terms = []
        for coefficient, basis in ((self.xi_x, "∂x"), (self.xi_y, "∂y"), (self.phi_u, "∂u")):
            if coefficient == 1:
                terms.append(basis)
            elif coefficient != 0:
                text = unicode_formula(coefficient)
                terms.append(f"({text}) {basis}" if coefficient.is_Add else f"{text} {basis}")
        return " + ".join(terms).replace("+ -", "- ") or "0"


def prolong(field: VectorField, order: int, channels: int = 1) -> dict[sp.Symbol, sp.Expr]:
    """The ``n``-th prolongation of ``field`` (Olver, Thm. 2.36): ``{coordinate: coefficient}``.

    Keys are ``x, y, u, u_x, ...`` (:attr:`JetSpace.coordinates`); the coefficient of ``u_J`` is
    ``phi^J = D_J (phi - xi_x u_x - xi_y u_y) + xi_x u_{J,x} + xi_y u_{J,y}``, expanded.

    With ``channels = C > 1`` the field acts on every channel alike, ``xi_x d_x + xi_y d_y +
    sum_c phi(x, y, u^c) d_{u^c}`` (the group moves the plane and transforms every channel's
    values the same way), and ``phi^{c,J}`` is the formula above for each channel ``c``, with the
    total derivatives of the vector-valued jet. ``xi`` may then not depend on ``u``.
    """
    if channels > 1 and (field.xi_x.has(u) or field.xi_y.has(u)):
        raise ConfigError(f"{field}: on several channels the plane's part xi may not depend on u "
                          f"(which channel's u would it be?)")
    jet = JetSpace(order + 1, channels)  # D_J Q involves order n + 1 terms, which cancel
    out = {x: field.xi_x, y: field.xi_y}
    for c, dependent in enumerate(jet.dependent):
        phi = field.phi_u.xreplace({u: dependent})
        characteristic = phi - field.xi_x * jet.symbol(1, 0, c) - field.xi_y * jet.symbol(0, 1, c)
        # D_J Q for all |J| <= n, by total order: D_(a, b) = D_x D_(a-1, b) or D_y D_(a, b-1).
        total: dict[tuple[int, int], sp.Expr] = {(0, 0): characteristic}
        highest = {jet.symbol(i, order + 1 - i, k) for i in range(order + 2)
                   for k in range(channels)}
        for a, b in derivative_multi_indices(order):
            if (a, b) != (0, 0):
                total[(a, b)] = (jet.total_derivative(total[(a - 1, b)], 0) if a
                                 else jet.total_derivative(total[(a, b - 1)], 1))
            coefficient = sp.expand(total[(a, b)] + field.xi_x * jet.symbol(a + 1, b, c)
                                    + field.xi_y * jet.symbol(a, b + 1, c))
            if coefficient.free_symbols & highest:  # pragma: no cover - a bug, not a user error
                raise AssertionError(f"prolongation of {field} did not cancel order {order + 1}")
            out[jet.symbol(a, b, c)] = coefficient
    return out


def criterion(expr: sp.Expr, field: VectorField, order: int | None = None,
              channels: int | None = None) -> sp.Expr:
    """``pr zeta (expr)``, simplified (``cancel``): zero iff ``expr`` is invariant under ``field``.

    ``order`` and ``channels`` default to those of the jet coordinates in ``expr``.
    """
    order = _expr_order(expr) if order is None else order
    channels = _expr_channels(expr) if channels is None else channels
    prolonged = prolong(field, order, channels)
    return sp.cancel(sum(coefficient * sp.diff(expr, symbol)
                         for symbol, coefficient in prolonged.items()))


def is_invariant(expr: sp.Expr, group: LieGroupAction | str) -> bool:
    """True if ``pr zeta_i (expr) = 0`` identically for every generator of the group.

    A rational ``expr = a / b`` (symbols other than jet coordinates are constants) is tested as
    the polynomial identity ``b pr zeta(a) - a pr zeta(b) = 0`` (the quotient rule), exactly and
    much faster than simplifying ``pr zeta(a / b)``; anything else through :func:`criterion`.
    """
    group = get_group(group)
    expr = sp.sympify(expr)
    order, channels = _expr_order(expr), _expr_channels(expr)
    space = JetSpace(order, channels)
    gens = (*space.coordinates, *sorted(expr.free_symbols - set(space.coordinates), key=str))
    numerator, denominator = sp.fraction(sp.together(expr))
    try:
        a, b = sp.Poly(numerator, *gens), sp.Poly(denominator, *gens)
        fields = [{symbol: sp.Poly(coefficient, *gens) for symbol, coefficient
                   in prolong(field, order, channels).items() if coefficient != 0}
                  for field in group.fields]
    except sp.PolynomialError:
        return all(criterion(expr, field, order, channels) == 0 for field in group.fields)

    def apply(poly: sp.Poly, prolonged: dict) -> sp.Poly:
        return sum((c * poly.diff(symbol) for symbol, c in prolonged.items()), sp.Poly(0, *gens))

    return all((b * apply(a, prolonged) - a * apply(b, prolonged)).is_zero for prolonged in fields)


_JET_NAME = re.compile(r"^u(\d*)(?:_([xy]+))?$")


def _expr_order(expr: sp.Expr) -> int:
    matches = (_JET_NAME.match(s.name) for s in sp.sympify(expr).free_symbols)
    return max((len(m.group(2) or "") for m in matches if m), default=0)


def _expr_channels(expr: sp.Expr) -> int:
    """Channels of a jet space holding every jet coordinate of ``expr``: 1 for ``u, u_x, ...``;
    for numbered ones ``uc_J`` the largest ``c``, at least 2 (one channel is named ``u``)."""
    matches = (_JET_NAME.match(s.name) for s in sp.sympify(expr).free_symbols)
    numbers = [int(m.group(1)) for m in matches if m and m.group(1)]
    return max(*numbers, 2) if numbers else 1


# ----------------------------------------------------------------------------- groups


@dataclasses.dataclass(frozen=True)
class LieGroupAction:
    """A Lie group acting on ``X x U``, given by the vector fields spanning its Lie algebra."""

    name: str
    fields: tuple[VectorField, ...]
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ConfigError(f"group {self.name!r} needs at least one generator")

    @property
    def dimension(self) -> int:
        return len(self.fields)

    def prolonged(self, order: int, channels: int = 1) -> list[dict[sp.Symbol, sp.Expr]]:
        return [prolong(field, order, channels) for field in self.fields]

    def orbit_dimension(self, order: int, seed: int = 0, channels: int = 1) -> int:
        """Generic orbit dimension ``s`` on ``J^(n)`` (of ``channels`` channels): rank of the
        prolonged coefficients at a random rational point."""
        jet = JetSpace(order, channels)
        point = _random_point(jet.coordinates, random.Random(seed))
        rows = [[_exact(prolonged[c], point) for c in jet.coordinates]
                for prolonged in self.prolonged(order, channels)]
        return _rank(rows)

    def expected_count(self, order: int, channels: int = 1) -> int:
        """Number of functionally independent invariants of order ``<= n``: ``dim J^(n) - s``."""
        return JetSpace(order, channels).dimension - self.orbit_dimension(order, channels=channels)

    def __str__(self) -> str:
        return f"{self.name}: " + ", ".join(str(field) for field in self.fields)


_TRANSLATIONS = (VectorField(1, 0, 0, "d_x"), VectorField(0, 1, 0, "d_y"))
_ROTATION = VectorField(-y, x, 0, "rotation")
_SCALING = VectorField(x, y, 0, "scaling")

#: Ready group actions by name.
GROUPS: Registry[LieGroupAction] = Registry("group")


def register_group(group: LieGroupAction, *, replace: bool = False) -> LieGroupAction:
    """Make a group available by name (to :func:`get_group` and ``eqpdenet symbolic``)."""
    return GROUPS.register(group.name, group, replace=replace)


def get_group(name: str | LieGroupAction) -> LieGroupAction:
    return name if isinstance(name, LieGroupAction) else GROUPS.get(name)


def available_groups() -> tuple[str, ...]:
    return GROUPS.names()


register_group(LieGroupAction("se2", (*_TRANSLATIONS, _ROTATION),
                              "SE(2): translations and rotations of the plane (eq. (4))"))
register_group(LieGroupAction("scaling", (*_TRANSLATIONS, _SCALING),
                              "Λ: translations and isotropic scalings (x, y) -> λ (x, y) (eq. (5))"))
register_group(LieGroupAction("sim2", (*_TRANSLATIONS, _ROTATION, _SCALING),
                              "SIM(2): translations, rotations and isotropic scalings"))
register_group(LieGroupAction("se2_intensity_shift",
                              (*_TRANSLATIONS, _ROTATION, VectorField(0, 0, 1, "intensity shift")),
                              "SE(2) x intensity shift u -> u + c"))
register_group(LieGroupAction("affine", (
    *_TRANSLATIONS, VectorField(x, 0, 0, "x d_x"), VectorField(y, 0, 0, "y d_x"),
    VectorField(0, x, 0, "x d_y"), VectorField(0, y, 0, "y d_y")),
    "affine group A(2) = GL(2) ⋉ R^2 of the plane"))

#: Order and polynomial degree used for each ready group by :func:`symbolic_table`.
#: ``JOINT_DEGREES`` is the same for several channels (``eqpdenet symbolic --channels C``).
DEFAULT_DEGREES: dict[str, list[tuple[int, int]]] = {
    "se2": [(1, 2), (2, 3), (3, 3)],
    "scaling": [(1, 2), (2, 2), (3, 2)],
    "sim2": [(1, 2), (2, 3), (3, 3)],
    "se2_intensity_shift": [(2, 3), (3, 3)],
    "affine": [(1, 2), (2, 3), (3, 4)],
}
JOINT_DEGREES: list[tuple[int, int]] = [(1, 2), (2, 3)]

_PAPER = {name: sp.Symbol(name, real=True) for name in derivative_names(2)[1:]}
_ux, _uy, _uxx, _uxy, _uyy = (_PAPER[n] for n in ("u_x", "u_y", "u_xx", "u_xy", "u_yy"))

#: The paper's hand-derived sets as SymPy expressions: eq. (4) (``se2``) and eq. (5) (``scaling``).
PAPER_INVARIANTS: dict[str, tuple[sp.Expr, ...]] = {
    "se2": (u, _ux**2 + _uy**2, _uxx + _uyy, _ux**2 * _uxx + 2 * _ux * _uy * _uxy + _uy**2 * _uyy,
            _uxx**2 + 2 * _uxy**2 + _uyy**2),
    "scaling": tuple(a**2 / b for a in (_ux, _uy) for b in (_uxx, _uxy, _uyy)),
}

#: Names given to compiled invariants that are (up to a constant factor) these expressions.
_KNOWN_NAMES = {
    u: "u",
    _ux**2 + _uy**2: "grad_sq",
    _uxx + _uyy: "laplacian",
    _ux**2 * _uxx + 2 * _ux * _uy * _uxy + _uy**2 * _uyy: "grad_hess_grad",
    _uxx**2 + 2 * _uxy**2 + _uyy**2: "hess_sq",
    _uxx * _uyy - _uxy**2: "hess_det",
}


# ----------------------------------------------------------------------------- exact linear algebra


def _random_point(symbols, rng: random.Random) -> dict[sp.Symbol, Fraction]:
    """A random rational point; nonzero, large spread, so that it is generic in practice."""
    return {s: Fraction(rng.choice((-1, 1)) * rng.randint(1, 10**4), rng.randint(1, 97))
            for s in symbols}


def _exact(expr: sp.Expr, point: dict) -> Fraction:
    value = sp.sympify(expr).xreplace({s: sp.Rational(v.numerator, v.denominator)
                                       for s, v in point.items()})
    if not value.is_Rational:
        raise ZeroDivisionError(f"{expr} is not finite and rational at {point}")
    return Fraction(int(value.p), int(value.q))


class _Echelon:
    """Incremental row echelon form over the rationals (rank tests without floating point)."""

    def __init__(self):
        self.rows: list[tuple[int, list[Fraction]]] = []  # (pivot column, row with pivot 1)

    def reduce(self, row: Sequence[Fraction]) -> list[Fraction]:
        row = list(row)
        for pivot, basis in self.rows:
            if row[pivot]:
                factor = row[pivot]
                row = [a - factor * b for a, b in zip(row, basis, strict=True)]
        return row

    def add(self, row: Sequence[Fraction]) -> bool:
        """Add ``row``; True if it was independent of the rows so far."""
        row = self.reduce(row)
        pivot = next((i for i, a in enumerate(row) if a), None)
        if pivot is None:
            return False
        row = [a / row[pivot] for a in row]
        self.rows = [(p, [a - b[pivot] * c for a, c in zip(b, row, strict=True)]) if b[pivot]
                     else (p, b) for p, b in self.rows]
        self.rows.append((pivot, row))
        return True


def _rank(rows) -> int:
    echelon = _Echelon()
    return sum(echelon.add(row) for row in rows)


# ----------------------------------------------------------------------------- rational functions


@dataclasses.dataclass(frozen=True)
class _Rational:
    """``numerator / denominator`` as polynomials in the u-jet (denominator None: polynomial)."""

    numerator: sp.Poly
    denominator: sp.Poly | None = None

    @property
    def degree(self) -> int:
        return self.numerator.total_degree() + (self.denominator.total_degree()
                                                if self.denominator is not None else 0)

    @property
    def terms(self) -> int:
        return len(self.numerator.terms()) + (len(self.denominator.terms())
                                              if self.denominator is not None else 0)

    def expr(self) -> sp.Expr:
        n = self.numerator.as_expr()
        return n if self.denominator is None else n / self.denominator.as_expr()

    def gradient(self, point: tuple[Fraction, ...]) -> list[Fraction]:
        gens = self.numerator.gens
        p = _poly_value(self.numerator, point)
        dp = [_poly_value(self.numerator.diff(g), point) for g in gens]
        if self.denominator is None:
            return dp
        q = _poly_value(self.denominator, point)
        if q == 0:
            raise ZeroDivisionError
        dq = [_poly_value(self.denominator.diff(g), point) for g in gens]
        return [(a * q - p * b) / (q * q) for a, b in zip(dp, dq, strict=True)]


def _poly_value(poly: sp.Poly, point: tuple[Fraction, ...]) -> Fraction:
    total = Fraction(0)
    for exponents, coefficient in poly.terms():
        term = Fraction(int(coefficient.p), int(coefficient.q))
        for value, e in zip(point, exponents, strict=True):
            if e:
                term *= value**e
        total += term
    return total


def jacobian_rank(exprs: Sequence[sp.Expr], variables: Sequence[sp.Symbol] | None = None,
                  seed: int = 0) -> int:
    """Generic rank of the Jacobian of ``exprs`` (exact, at a random rational point).

    ``variables`` default to the jet coordinates the expressions use. Equal to the number of
    functionally independent expressions among them (with probability ~1).
    """
    exprs = [sp.sympify(e) for e in exprs]
    if variables is None:
        variables = JetSpace(max((_expr_order(e) for e in exprs), default=0),
                             max((_expr_channels(e) for e in exprs), default=1)).coordinates
    rng = random.Random(seed)
    for _ in range(10):
        point = _random_point(variables, rng)
        try:
            rows = [[_exact(sp.diff(e, v), point) for v in variables] for e in exprs]
        except ZeroDivisionError:
            continue  # hit a pole: draw another point
        return _rank(rows)
    raise ConfigError("could not find a regular point for the Jacobian of the expressions")


def functionally_independent(exprs: Sequence[sp.Expr],
                             variables: Sequence[sp.Symbol] | None = None) -> list[sp.Expr]:
    """Greedy maximal functionally independent subset of ``exprs``, in their order."""
    kept: list[sp.Expr] = []
    for expr in exprs:
        if jacobian_rank([*kept, expr], variables) > len(kept):
            kept.append(expr)
    return kept


# ----------------------------------------------------------------------------- the search


@dataclasses.dataclass
class SymbolicInvariants:
    """Result of :func:`find_invariants`.

    Attributes:
        group: the group.
        order: jet order ``n``.
        max_degree: highest polynomial degree searched (numerator and denominator each).
        expressions: functionally independent invariants (SymPy), simplest first.
        expected_count: ``dim J^(n) - s`` predicted by the theory.
        jet_dimension, orbit_dimension: ``dim J^(n)`` and ``s``.
        seconds: wall time of the search.
        notes: caveats (fewer found than predicted, group without translations, ...).
        channels: number of dependent variables ``u1 ... uC`` (1: ``u``).
    """

    group: LieGroupAction
    order: int
    max_degree: int
    expressions: list[sp.Expr]
    expected_count: int
    jet_dimension: int
    orbit_dimension: int
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    channels: int = 1

    @property
    def found_count(self) -> int:
        return len(self.expressions)

    @property
    def complete(self) -> bool:
        return self.found_count == self.expected_count

    def __str__(self) -> str:
        channels = f", {self.channels} channels" if self.channels > 1 else ""
        lines = [f"{self.group.name}{channels}, order {self.order}: {self.found_count} of "
                 f"{self.expected_count} expected invariants (dim J = {self.jet_dimension}, "
                 f"orbit dim = {self.orbit_dimension}, {self.seconds:.2f} s)"]
        lines += [f"  {unicode_formula(e)}" for e in self.expressions]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _diagonal_weights(prolonged: dict, jet: JetSpace) -> list[Fraction] | None:
    """``c_J`` if the prolonged field acts by ``phi^J = c_J u_J`` on every ``u_J``, else None."""
    weights = []
    for symbol in jet.derivatives:
        coefficient = prolonged[symbol]
        c = sp.cancel(coefficient / symbol) if coefficient != 0 else sp.S.Zero
        if not c.is_Rational:
            return None
        weights.append(Fraction(int(c.p), int(c.q)))
    return weights


def _annihilated(basis: list[tuple[int, ...]], fields: list[dict], jet: JetSpace,
                 gens: tuple) -> list[sp.Poly]:
    """Polynomials in ``span(monomials basis)`` killed by every prolonged field (exact nullspace)."""
    if not fields:
        return [sp.Poly.from_dict({m: 1}, *gens, domain=sp.QQ) for m in basis]
    all_gens = (x, y, *gens)
    rows: dict[tuple, dict[int, sp.Rational]] = {}
    for f_index, prolonged in enumerate(fields):
        for k, symbol in enumerate(gens):
            try:
                coefficient = sp.Poly(prolonged[symbol], *all_gens, domain=sp.QQ)
            except sp.PolynomialError as exc:
                raise ConfigError(f"the prolonged generator has a non-polynomial coefficient "
                                 f"{prolonged[symbol]}; the polynomial search needs polynomial "
                                 f"vector fields") from exc
            coefficient_terms = coefficient.terms()
            for column, monomial in enumerate(basis):
                e = monomial[k]
                if not e:
                    continue
                lowered = monomial[:k] + (e - 1,) + monomial[k + 1:]
                for exponents, value in coefficient_terms:
                    key = (f_index, tuple(a + b for a, b in zip(exponents, (0, 0, *lowered),
                                                                strict=True)))
                    row = rows.setdefault(key, {})
                    row[column] = row.get(column, sp.QQ.zero) + sp.QQ(e) * value
    matrix = {i: {j: v for j, v in row.items() if v}
              for i, row in enumerate(rows.values())}
    matrix = {i: row for i, row in matrix.items() if row}
    if not matrix:
        return [sp.Poly.from_dict({m: 1}, *gens, domain=sp.QQ) for m in basis]
    matrix = {i: row for i, row in enumerate(matrix.values())}
    kernel = DomainMatrix(matrix, (len(matrix), len(basis)), sp.QQ).nullspace().to_Matrix()
    out = []
    for r in range(kernel.rows):
        coefficients = {basis[j]: kernel[r, j] for j in range(len(basis)) if kernel[r, j] != 0}
        out.append(sp.Poly.from_dict(coefficients, *gens, domain=sp.QQ))
    return out


def _normalise(poly: sp.Poly) -> sp.Poly:
    """Integer coefficients with gcd 1 and a positive leading coefficient."""
    _, primitive = poly.clear_denoms()
    primitive = primitive.primitive()[1]
    return -primitive if primitive.LC() < 0 else primitive


def find_invariants(group: LieGroupAction | str, order: int, max_degree: int = 3,
                    rational: bool = True, seed: int = 0,
                    channels: int = 1) -> SymbolicInvariants:
    """Functionally independent differential invariants of order ``<= order`` (see module doc).

    Args:
        group: a :class:`LieGroupAction` or the name of a ready one.
        order: jet order ``n``.
        max_degree: polynomials of total degree ``1 .. max_degree`` in ``u, u_x, ...`` are
            searched (for ratios, numerator and denominator each).
        rational: also form ratios of relative invariants of equal weight.
        seed: seed of the random point of the rank tests.
        channels: ``C`` dependent variables ``u1 ... uC`` transformed alike (see :func:`prolong`):
            the joint invariants of the channels.
    """
    start = time.perf_counter()
    group = get_group(group)
    jet = JetSpace(order, channels)
    gens = jet.derivatives
    prolonged = group.prolonged(order, channels)
    diagonal, other = [], []
    for p in prolonged:
        weights = _diagonal_weights(p, jet)
        (diagonal.append(weights) if weights is not None else other.append(p))
    # Monomials of degree 1..max_degree in the u-jet, by weight under the diagonal generators.
    classes: dict[tuple, list[tuple[int, ...]]] = {}
    for degree in range(1, max_degree + 1):
        for combo in itertools.combinations_with_replacement(range(len(gens)), degree):
            exponents = tuple(combo.count(k) for k in range(len(gens)))
            weight = tuple(sum(e * c[k] for k, e in enumerate(exponents)) for c in diagonal)
            classes.setdefault(weight, []).append(exponents)
    candidates: list[_Rational] = []
    for weight, basis in classes.items():
        relative = sorted({_normalise(p) for p in _annihilated(basis, other, jet, gens)},
                          key=lambda p: (p.total_degree(), len(p.terms()), str(p.as_expr())))
        if not any(weight):
            candidates += [_Rational(p) for p in relative]
        elif rational and len(relative) > 1:
            pivot = relative[0]
            candidates += [_Rational(p, pivot) for p in relative[1:]]
    candidates.sort(key=lambda c: (c.denominator is not None, c.degree, c.terms,
                                   str(c.expr())))
    expected_orbit = group.orbit_dimension(order, seed, channels)
    expected = jet.dimension - expected_orbit
    rng = random.Random(seed)
    echelon, kept = _Echelon(), []
    point = tuple(_random_point(gens, rng)[g] for g in gens)
    for candidate in candidates:
        if len(kept) == expected:
            break
        try:
            row = candidate.gradient(point)
        except ZeroDivisionError:  # pragma: no cover - probability ~0
            continue
        if echelon.add(row):
            kept.append(sp.factor(candidate.expr()))  # factored: shorter to read and evaluate
    notes = []
    if not _has_translations(group):
        notes.append("the group does not contain both translations: only invariants free of "
                     "x, y were searched, the expected count includes x, y-dependent ones")
    elif len(kept) < expected:
        notes.append(f"found {len(kept)} of {expected}: raise max_degree (now {max_degree})"
                     + ("" if rational else " or allow rational invariants"))
    return SymbolicInvariants(group, order, max_degree, kept, expected, jet.dimension,
                              expected_orbit, time.perf_counter() - start, notes, channels)


def _has_translations(group: LieGroupAction) -> bool:
    rows = [[field.xi_x, field.xi_y] for field in group.fields
            if field.phi_u == 0 and field.xi_x.is_Number and field.xi_y.is_Number]
    return sp.Matrix(rows).rank() == 2 if rows else False


# ----------------------------------------------------------------------------- compilation


_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def unicode_formula(expr: sp.Expr) -> str:
    """One-line unicode form: ``u_x² + u_y²``, ``(u_x² + u_y²)/(u_xx + u_yy)``."""
    text = sp.sstr(expr)
    text = re.sub(r"\*\*(\d+)", lambda m: m.group(1).translate(_SUPERSCRIPTS), text)
    return text.replace("*", " ")


def _torch_polynomial(expr: sp.Expr) -> Callable:
    """``expr`` (a polynomial in the jet symbols) as ``f(d) -> tensor``, by walking its tree."""
    if expr.is_Symbol:
        name = expr.name
        return lambda d: getattr(d, name)
    if expr.is_Number:
        value = float(expr)
        return lambda d: value
    if expr.is_Add or expr.is_Mul:
        parts = [_torch_polynomial(a) for a in expr.args]
        if expr.is_Add:
            return lambda d: sum(p(d) for p in parts)
        return lambda d: math.prod((p(d) for p in parts), start=1.0)
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        base, exponent = _torch_polynomial(expr.base), int(expr.exp)
        return lambda d: base(d) ** exponent
    raise ConfigError(f"cannot compile {expr}: only rational functions of the jet are supported")


def _name_of(expr: sp.Expr) -> str | None:
    for known, name in _KNOWN_NAMES.items():
        ratio = sp.cancel(expr / known)
        if ratio.is_Number and ratio != 0:
            return name if ratio == 1 else None
    return None


def compile_invariants(symbolic: SymbolicInvariants | Sequence[sp.Expr], name: str,
                       ratio_eps: float | None = None, group: str | None = None,
                       order: int | None = None, register: bool = False) -> InvariantSet:
    """An :class:`~eqpdenet.invariants.InvariantSet` computing the expressions with torch.

    Each expression is split into numerator and denominator (``sympy.fraction`` of its
    ``together`` form); a ratio is evaluated as ``safe_ratio(numerator, denominator, eps)``.
    ``eps`` is the one the layer passes (``EulerConv(ratio_eps=...)``) unless ``ratio_eps`` fixes
    it for this set. Invariants equal to one of the paper's (``u``, ``laplacian``, ...) get its
    name (so ``PDELayer.build(init="heat")`` finds the Laplacian); others are ``{name}_{k}``.
    With ``register``, the set is also registered by ``name`` (see
    :func:`eqpdenet.invariants.register_invariant_set`).
    """
    if isinstance(symbolic, SymbolicInvariants):
        exprs = list(symbolic.expressions)
        group = group or symbolic.group.description or symbolic.group.name
        order = symbolic.order if order is None else order
        equation = f"derived by eqpdenet.symbolic (order {symbolic.order}, degree " \
                   f"<= {symbolic.max_degree})"
    else:
        exprs = [sp.sympify(e) for e in symbolic]
        equation = "compiled by eqpdenet.symbolic"
    if not exprs:
        raise ConfigError("no invariants to compile")
    if max(_expr_channels(e) for e in exprs) > 1:
        raise ConfigError("compile_invariants compiles invariants of one channel u; for joint "
                          "invariants of several channels use eqpdenet.pde.joint.JointInvariants")
    order = max(max(_expr_order(e) for e in exprs), 0) if order is None else order
    invariants, used = [], set()
    for index, expr in enumerate(exprs):
        numerator, denominator = sp.fraction(sp.together(expr))
        numerator_f = _torch_polynomial(numerator)
        if denominator == 1:
            function = _polynomial_function(numerator_f)
        else:
            denominator_f = _torch_polynomial(denominator)
            function = _ratio_function(numerator_f, denominator_f, ratio_eps)
        label = _name_of(expr) or f"{name}_{index}"
        if label in used:
            label = f"{name}_{index}"
        used.add(label)
        invariants.append(Invariant(label, unicode_formula(expr), sp.latex(expr), function))
    invariant_set = InvariantSet(name, group or name, order, invariants, equation)
    if register:
        register_invariant_set(invariant_set)
    return invariant_set


def _polynomial_function(numerator: Callable) -> Callable:
    def function(d, eps):
        value = numerator(d)
        if isinstance(value, float):  # a constant: broadcast like u
            return value + 0.0 * d.u
        return value
    return function


def _ratio_function(numerator: Callable, denominator: Callable, fixed_eps: float | None):
    def function(d, eps):
        return safe_ratio(numerator(d), denominator(d), fixed_eps if fixed_eps is not None else eps)
    return function


# ----------------------------------------------------------------------------- joint invariants


def _joint_term(term: JointTerm, jets: Sequence[Sequence[sp.Expr]]) -> sp.Expr:
    """A :class:`~eqpdenet.pde.joint.JointTerm` of channels whose 2-jets are ``jets[c]``."""
    def grad(c):
        return jets[c][1], jets[c][2]

    def hess(c):
        return jets[c][3], jets[c][4], jets[c][5]

    c = term.channels
    if term.kind == "u":
        return jets[c[0]][0]
    if term.kind == "laplacian":
        return jets[c[0]][3] + jets[c[0]][5]
    if term.kind in ("grad_dot", "grad_det"):
        (ax, ay), (bx, by) = grad(c[0]), grad(c[1])
        return ax * bx + ay * by if term.kind == "grad_dot" else ax * by - ay * bx
    if term.kind == "hess_dot":
        (axx, axy, ayy), (bxx, bxy, byy) = hess(c[0]), hess(c[1])
        return axx * bxx + 2 * axy * bxy + ayy * byy
    (ax, ay), (hxx, hxy, hyy), (bx, by) = grad(c[0]), hess(c[1]), grad(c[2])
    return ax * (hxx * bx + hxy * by) + ay * (hxy * bx + hyy * by)


def joint_expressions(invariants: JointInvariants, eps: sp.Expr | float = 0) -> list[sp.Expr]:
    """The maps of a :class:`~eqpdenet.pde.joint.JointInvariants` as SymPy expressions in the
    2-jets of its channels (``JetSpace(2, channels)``), in the module's output order.

    Mixing weights become the exact rationals of their floating-point values. For SIM(2),
    ``eps = 0`` gives the plain ratios ``T / G``, ``T / N``; a number or symbol gives the
    regularised ``T G / (G^2 + eps^2 N)`` the module computes (without its ``0 / 0`` guard).
    """
    space = JetSpace(2, invariants.channels)
    inputs = [space.channel_derivatives(c) for c in range(invariants.channels)]
    sources = {"input": inputs}
    if invariants.mixing is not None:
        weights = [[sp.Rational(float(w)) for w in row] for row in invariants.mixing.tolist()]
        sources["mixture"] = [[sum(w * jet[d] for w, jet in zip(row, inputs, strict=True))
                               for d in range(6)] for row in weights]
    out = []
    for block in invariants.blocks:
        jets = sources[block.source]
        for term in block.terms:
            value = _joint_term(term, jets)
            if not invariants.scale_invariant or term.weight == 0:
                out.append(value)
                continue
            scope = [term.channels[0]] if block.per_channel else range(len(jets))
            g = sum(jets[c][1] ** 2 + jets[c][2] ** 2 for c in scope)
            n = g**2 + sum(jets[c][3] ** 2 + 2 * jets[c][4] ** 2 + jets[c][5] ** 2 for c in scope)
            if term.weight == -4:
                out.append(value / n)
            else:
                out.append(value / g if eps == 0 else value * g / (g**2 + eps**2 * n))
    return out
