"""Differential invariants of any Lie group action on the plane (or on M2), derived with SymPy.

The paper's approach "applies to any Lie group action provided that a generating set of
differential invariants can be efficiently computed"; this module computes them. The setting is
``p = 2`` independent variables ``(x, y)`` (axes as in :mod:`eqpdenet.geometry`: ``x`` to the
right, ``y`` up) and one dependent variable ``u``, or several, ``u1 ... uC``, that the group
transforms alike (``channels=C``: joint invariants, e.g. ``u1_x u2_x + u1_y u2_y``). Jets,
vector fields and prolongation work for any number ``p`` of independent variables; groups
acting on M2 = R² × S¹ use ``(x, y, θ)`` (:data:`M2`, jet coordinates ``u_θ``, ``u_xθ``, ...),
and their invariants come from the moving frame (see the end of this docstring).

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
4. :func:`compile_invariants` turns the expressions into an :class:`~eqpdenet.pde.invariants.
   InvariantSet` (torch operations on the jet, every division through
   :func:`~eqpdenet.pde.invariants.safe_ratio`) usable by :class:`~eqpdenet.pde.PDELayer`.

How invariants are searched
---------------------------
Only functions of the ``u``-jet (``u, u_x, u_y, u_xx, ...``), not of ``x, y``, are searched: for a
group containing the translations ``d_x, d_y`` (every ready group) an invariant cannot depend on
``x, y`` anyway, and an ``x``-dependent feature would not suit a PDE layer applied to images. For
a group without translations the search still returns only ``x, y``-free invariants, while
``expected_count`` counts all of them; the result then carries a note.

The search works on the Lie algebra, not on the generators as given: :attr:`LieGroupAction.basis`
is a basis of the span of the generators and their brackets, and everything below is linear in
the element ``zeta`` of the algebra, so any basis of the same algebra gives the same invariants.
The prolongation of ``zeta``, restricted to the ``u``-jet coordinates ``z``, is split into its
*diagonal part* ``Δ(zeta) = sum_z c_z z d_z`` (``c_z`` the constant coefficient of ``z`` in
``phi^z``) and the rest ``O(zeta)``. Elements with ``O = 0`` are *diagonal*: translations
(``c = 0``), ``x d_x + y d_y`` (``c_J = -|J|``), ``x d_x``, ``u d_u``; rotations, shears and
``d_u`` have ``Δ = 0``. Every jet monomial is an eigenvector of every ``Δ(zeta)``; monomials are
grouped by these weights (a partition that does not depend on the basis), and in each class the
polynomials (degree ``<= max_degree``) annihilated by every ``O(zeta)``, identically in ``x, y``,
are found by an exact nullspace over the rationals. They are *relative invariants*:
``pr zeta(P) = w(zeta) P``, ``w`` the weight of the class. Those of weight 0 are absolute
(polynomial) invariants; for ``w != 0`` the ratios ``P / P_w`` over the simplest relative
invariant ``P_w`` of that weight are rational invariants (all ratios within a class follow from
these). Two further families are searched where this one can miss invariants: relative
invariants across those classes, of the weights of the diagonal elements and annihilated by
the elements whose diagonal part is orthogonal to theirs (:meth:`_JetAction.complement`; only
when :meth:`_JetAction.mixed_elements_split` does not show them to lie in the classes), and
relative invariants with the polynomial cofactors of products of jet coordinates that every
element maps to multiples of themselves (``u_x`` under ``u d_x``: ``pr(u d_x)(u_x) = -u_x u_x``).
Every candidate satisfies the criterion exactly; candidates are taken simplest first (degree,
then number of terms) and kept if they raise the Jacobian rank, until the predicted count is
reached. This is sound, and complete for the ready groups at the degrees used in
:data:`DEFAULT_DEGREES`; where it finds fewer than predicted it says so (``found_count <
expected_count``), never more, and its note says whether a higher ``max_degree`` can find more
(only where that is not ruled out: docs/symbolic.md, "Sound, not always complete").

Groups acting on M2: the moving frame
-------------------------------------
SE(2) acts on M2 by ``(x, θ) -> (R_φ x + b, θ + φ)`` (``se2_m2``: ``d_x, d_y`` and ``-y d_x +
x d_y + d_θ``), freely and transitively. Its invariants depend on ``θ`` through ``cos θ, sin θ``,
which the search above does not form (it finds the 9 ``θ``-free ones of the 10 at order 2).
:func:`left_invariant_frame` solves for the vector fields that commute with every generator
(``A1 = cos θ d_x + sin θ d_y``, ``A2 = -sin θ d_x + cos θ d_y``, ``A3 = d_θ``) and
:func:`left_invariant_derivatives` takes the symmetrised iterated derivatives of ``u`` along them
(``A13u = (A1 A3 + A3 A1) u / 2``), verifies each by the criterion (exactly, modulo
``cos² θ + sin² θ = 1``: :func:`reduce_on_the_circle`) and the set by its Jacobian rank.
:func:`find_invariants` does this by default for a group acting on more than ``x, y``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fractions import Fraction

from ..errors import ConfigError, MissingDependencyError
from ..process_state import Silenced, quiet_warnings

try:
    import sympy as sp
    from sympy.core.function import AppliedUndef
    from sympy.polys.matrices import DomainMatrix
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    # an ImportError still (MissingDependencyError derives from it), said in one line by the
    # command line (exit status 2), with the install line quoted for zsh
    raise MissingDependencyError(
        f"eqpdenet.pde.symbolic (and eqpdenet symbolic) needs SymPy, an optional dependency, "
        f"which cannot be imported ({exc}): pip install 'eqpdenet[symbolic]'") from exc

from ..checks import require, require_int, require_positive
from ..registry import Registry
from .invariants import (
    INVARIANT_SETS,
    Invariant,
    InvariantSet,
    register_invariant_set,
    safe_ratio,
)
from .joint import JointInvariants, JointTerm
from .m2 import M2_DERIVATIVE_NAMES, M2InvariantSet
from .stencils import derivative_multi_indices, derivative_names

__all__ = [
    "DEFAULT_DEGREES",
    "FRAME_ORDERS",
    "GROUPS",
    "JOINT_DEGREES",
    "M2",
    "MAX_CHANNELS",
    "MAX_FRAME_ORDER",
    "MAX_ORDER",
    "MAX_SEARCH_MONOMIALS",
    "PAPER_INVARIANTS",
    "PLANE",
    "JetSpace",
    "LieGroupAction",
    "MovingFrame",
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
    "lie_algebra_closure",
    "lie_bracket",
    "left_invariant_derivatives",
    "left_invariant_frame",
    "prolong",
    "reduce_on_the_circle",
    "register_group",
    "theta",
    "unicode_formula",
    "u",
    "x",
    "y",
]

#: The most channels ``u1 ... uC`` :func:`find_invariants` and :func:`left_invariant_derivatives`
#: take (also ``eqpdenet symbolic --channels``): the search grows with the number of jet
#: coordinates (6 per channel at order 2) to the power of the degree; measured on the shared
#: 2-core machine, ``se2`` at order 2, degree 3 takes 1.8 s for 3 channels, 6.4 s for 4.
MAX_CHANNELS = 4
#: The highest jet order of the search and of :func:`compile_invariants`: the ready groups use
#: orders 1 to 3; ``se2`` takes 9.5 s at order 6, degree 3 (order 10, degree 2: 21 s; order 20
#: ran for minutes), and a compiled set of order ``n`` computes ``(n + 1)(n + 2) / 2``
#: derivatives with stencils of ``n + 1`` pixels (order 400 ran out of memory building them).
MAX_ORDER = 6
#: The highest order of the moving frame (:func:`left_invariant_derivatives`): its expressions
#: grow fast (``se2_m2``: 2.3 s at order 4, 35 s at order 6; 19 s at order 4 with 4 channels).
MAX_FRAME_ORDER = 4
#: The most jet monomials (degrees 1 to ``max_degree`` in the jet coordinates) the search sets
#: up: ``se2`` at order 2, degree 8 is 3,002 (4 s); degree 30 (1.9 million) did not finish.
MAX_SEARCH_MONOMIALS = 5_000

x, y, u = sp.symbols("x y u", real=True)
#: The orientation of M2 = R² × S¹ (radians; the jet coordinates ``u_θ``, ``u_xθ``, ...).
theta = sp.Symbol("θ", real=True)
#: The independent variables of the plane and of M2.
PLANE: tuple[sp.Symbol, ...] = (x, y)
M2: tuple[sp.Symbol, ...] = (x, y, theta)
_KNOWN_VARIABLES = {"x": x, "y": y, "θ": theta, "theta": theta}


# ----------------------------------------------------------------------------- jet space


class JetSpace:
    """Coordinates of ``J^(n)``: the independent variables and SymPy symbols named like the jet
    channels.

    ``JetSpace(2).derivatives`` is ``(u, u_x, u_y, u_xx, u_xy, u_yy)`` (same order as
    :func:`eqpdenet.pde.stencils.derivative_names`); ``coordinates`` prepends ``x, y``.

    With ``channels = C > 1`` (a vector-valued ``u = (u1, ..., uC)``) every channel has its own
    jet coordinates, channel by channel: ``JetSpace(1, channels=2).derivatives`` is
    ``(u1, u1_x, u1_y, u2, u2_x, u2_y)``, and ``dim J^(n) = 2 + C binom(n + 2, 2)``.

    ``independent`` are the ``p`` independent variables, ``(x, y)`` by default; each is named by
    one letter, and ``u_J`` is named by the letters of ``J`` in the order of ``independent``.
    On M2 (``independent = (x, y, θ)``): ``JetSpace(2, independent=M2).derivatives`` is
    ``(u, u_x, u_y, u_θ, u_xx, u_xy, u_xθ, u_yy, u_yθ, u_θθ)``, the order of
    :data:`eqpdenet.pde.m2.M2_DERIVATIVE_NAMES` (total order, then variable by variable), and
    ``dim J^(n) = p + C binom(n + p, p)``.
    """

    def __init__(self, order: int, channels: int = 1,
                 independent: Sequence[sp.Symbol] | None = None):
        independent = _check_independent(PLANE if independent is None else independent)
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a positive integer, got {channels!r}")
        self.order, self.channels, self.independent = order, channels, independent
        p = len(independent)
        derivative_multi_indices(order)  # validates the order
        #: ``J`` as counts of derivatives along each independent variable, in jet order.
        self.multi_indices: tuple[tuple[int, ...], ...] = tuple(
            tuple(combo.count(i) for i in range(p))
            for n in range(order + 1)
            for combo in itertools.combinations_with_replacement(range(p), n))
        letters = [v.name for v in independent]
        base = tuple("u" if not any(index) else
                     "u_" + "".join(letter * k for letter, k in zip(letters, index, strict=True))
                     for index in self.multi_indices)
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
        self.coordinates = (*independent, *self.derivatives)
        keys = [(c, *index) for c in range(channels) for index in self.multi_indices]
        self._by_index = dict(zip(keys, self.derivatives, strict=True))

    @property
    def dimension(self) -> int:
        """``dim J^(n) = p + C binom(n + p, p)`` (``p`` independent variables, ``C`` channels)."""
        return len(self.coordinates)

    def symbol(self, a: int, b: int, channel: int = 0) -> sp.Symbol:
        """``u_J`` of channel ``channel`` (from 0) for ``J = (a x-derivatives, b y-derivatives)``
        (two independent variables; for any number use :meth:`derivative`)."""
        if len(self.independent) != 2:
            raise ConfigError(f"JetSpace.symbol(a, b) needs 2 independent variables, this jet "
                              f"space has {len(self.independent)}: use derivative(index)")
        return self._by_index[(channel, a, b)]

    def derivative(self, index: Sequence[int], channel: int = 0) -> sp.Symbol:
        """``u_J`` of channel ``channel`` (from 0), ``J = index`` the number of derivatives along
        each independent variable: ``derivative((1, 0, 1))`` is ``u_xθ`` on M2."""
        return self._by_index[(channel, *index)]

    def channel_derivatives(self, channel: int) -> tuple[sp.Symbol, ...]:
        """The jet coordinates of one channel (from 0), in jet order."""
        return tuple(self._by_index[(channel, *index)] for index in self.multi_indices)

    def total_derivative(self, expr: sp.Expr, axis: int) -> sp.Expr:
        """``D_i expr`` along the independent variable ``independent[axis]`` (``D_x`` for 0,
        ``D_y`` for 1), explicit dependence on it included; ``expr`` of order < ``order``.
        Jet coordinates in ``expr`` are matched by name (a plain ``sp.Symbol("u_x")`` is
        ``u_x``; ``u_yx`` is ``u_xy``), and must be coordinates of this space."""
        expr = _in_space(_by_name(expr), self)
        variable = self.independent[axis]
        out = sp.diff(expr, variable)
        for (c, *index), symbol in self._by_index.items():
            if expr.has(symbol):
                index[axis] += 1
                target = (c, *index)
                if target not in self._by_index:
                    raise ConfigError(f"D_{variable.name} of {expr} needs a jet of order "
                                      f"> {self.order}")
                out += sp.diff(expr, symbol) * self._by_index[target]
        return out

    def __repr__(self) -> str:
        channels = f", channels={self.channels}" if self.channels > 1 else ""
        independent = ("" if self.independent == PLANE else
                       f", independent=({', '.join(v.name for v in self.independent)})")
        return f"JetSpace(order={self.order}{channels}{independent}, dimension={self.dimension})"


def _check_independent(independent: Sequence[sp.Symbol]) -> tuple[sp.Symbol, ...]:
    """The independent variables as a tuple of distinct one-letter symbols (not ``u``)."""
    out = []
    for variable in independent:
        variable = _KNOWN_VARIABLES.get(variable, variable) if isinstance(variable, str) else variable
        if not isinstance(variable, sp.Symbol):
            raise ConfigError(f"independent variables must be SymPy symbols, got {variable!r}")
        name = variable.name
        if len(name) != 1 or not name.isalpha() or name == "u":
            raise ConfigError(f"an independent variable is named by one letter other than u (it "
                              f"names the jet coordinates, u_x, u_xθ), got {name!r}")
        out.append(_KNOWN_VARIABLES.get(name, variable))
    if len({v.name for v in out}) != len(out):
        raise ConfigError(f"independent variables must be distinct, got {out}")
    return tuple(out)


# ----------------------------------------------------------------------------- vector fields



def _is_pair(value) -> bool:
    """A (variable, coefficient) pair of any sequence type: not a string, two items."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return False
    try:
        return len(value) == 2
    except TypeError:
        return False

@dataclasses.dataclass(frozen=True)
class VectorField:
    """``xi_x d_x + xi_y d_y + phi_u d_u``, coefficients SymPy expressions in ``x, y, u``.

    Use the module's symbols :data:`x`, :data:`y`, :data:`u` (or strings, parsed with them).

    A field on more independent variables than ``x, y`` gives its components along them in
    ``xi_other``, ``{variable: coefficient}`` (a one-letter symbol, or ``"θ"`` for
    :data:`theta`); its coefficients may depend on those variables too. The rotation of M2,
    ``-y d_x + x d_y + d_θ``, is ``VectorField(-y, x, 0, "rotation", {theta: 1})``.
    """

    xi_x: sp.Expr = sp.S.Zero
    xi_y: sp.Expr = sp.S.Zero
    phi_u: sp.Expr = sp.S.Zero
    name: str = ""
    #: Components along further independent variables, as ``((variable, coefficient), ...)``.
    xi_other: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()

    def __post_init__(self):
        # A 4th positional coefficient (meant for θ) lands in ``name``: VectorField(-y, x, 0, 1)
        # was read as the planar rotation named 1, its θ part silently lost.
        if not isinstance(self.name, str):
            raise ConfigError(
                f"vector field name must be a string, got {type(self.name).__name__} "
                f"{self.name!r}: the 4th argument is the name (VectorField(xi_x, xi_y, phi_u, "
                f"name, xi_other)); give components along other variables such as θ in "
                f"xi_other={{theta: ...}}")
        # any mapping (a dict, sp.Dict, a MappingProxyType), or pairs of any sequence type
        # (sp.Tuple, a NumPy row): the first check took tuples and lists only, a regression
        mapping = isinstance(self.xi_other, (Mapping, sp.Dict))
        other = self.xi_other.items() if mapping else self.xi_other
        # Anything else (a number, a string, a flat tuple) failed on unpacking with a raw
        # TypeError or ValueError naming neither the field nor xi_other.
        if not isinstance(other, (str, bytes)) and isinstance(other, Iterable):
            other = tuple(tuple(pair) if _is_pair(pair) else pair for pair in other)
        if isinstance(other, (str, bytes)) or not isinstance(other, tuple) or not all(
                isinstance(pair, tuple) and len(pair) == 2 for pair in other):
            raise ConfigError(
                f"vector field xi_other must be a dict {{variable: coefficient}} or a sequence "
                f"of (variable, coefficient) pairs, such as {{theta: 1}}, got "
                f"{type(self.xi_other).__name__} {self.xi_other!r}")
        variables = _check_independent((x, y, *(variable for variable, _ in other)))
        local = {"u": u, **{v.name: v for v in variables}, **_KNOWN_VARIABLES}
        allowed = {u, *variables}

        def parse(value, field):
            value = _sympify(value, f"the vector field coefficient {field}", local,
                             "'x**2 - y**2'")
            # The group acts on real x, y, u: I (or sqrt(-1), 1j) would be read as a real
            # parameter by the search and the criterion; oo, nan are no coefficients.
            if value.has(sp.I, sp.oo, -sp.oo, sp.zoo, sp.nan):
                raise ConfigError(f"vector field coefficient {field}={value}: coefficients must "
                                  f"be real and finite")
            # 0.5 is exactly 1/2: keep the exact arithmetic of the search and the closure.
            value = value.xreplace({f: _exact_float(f) for f in value.atoms(sp.Float)})
            # Accept plain sp.Symbol("x") too: symbols are matched by name.
            value = value.xreplace({s: local[s.name] for s in value.free_symbols
                                    if s.name in local})
            extra = value.free_symbols - allowed
            if extra:
                names = ", ".join(v.name for v in (*variables, u))
                hint = ("" if "θ" not in {s.name for s in extra} else
                        " (a field on M2 gives its θ component, 0 if none, in xi_other)")
                raise ConfigError(f"vector field coefficient {field}={value} may depend on "
                                  f"{names} only, not {sorted(map(str, extra))}{hint}")
            return value

        for field in ("xi_x", "xi_y", "phi_u"):
            object.__setattr__(self, field, parse(getattr(self, field), field))
        object.__setattr__(self, "xi_other", tuple(
            (variable, parse(value, f"xi_{variable.name}"))
            for variable, (_, value) in zip(variables[2:], other, strict=True)))

    @property
    def variables(self) -> tuple[sp.Symbol, ...]:
        """The independent variables the field is defined on: ``x, y`` and those of
        ``xi_other``."""
        return (x, y, *(variable for variable, _ in self.xi_other))

    def xi(self, variable: sp.Symbol) -> sp.Expr:
        """The component along an independent variable (0 for one the field does not name)."""
        if variable == x:
            return self.xi_x
        if variable == y:
            return self.xi_y
        return dict(self.xi_other).get(variable, sp.S.Zero)

    def __str__(self) -> str:
        terms = []
        parts = ((self.xi_x, "∂x"), (self.xi_y, "∂y"),
                 *((value, f"∂{variable.name}") for variable, value in self.xi_other),
                 (self.phi_u, "∂u"))
        for coefficient, basis in parts:
            if coefficient == 1:
                terms.append(basis)
            elif coefficient != 0:
                text = unicode_formula(coefficient)
                terms.append(f"({text}) {basis}" if coefficient.is_Add else f"{text} {basis}")
        return " + ".join(terms).replace("+ -", "- ") or "0"


#: A float coefficient is read exactly when it is a fraction with at most this denominator.
_FLOAT_DENOMINATOR = 1024


def _exact_float(value: sp.Float) -> sp.Expr:
    """``value`` as an exact rational where the float is one with a small denominator (0.5, 1.25),
    else unchanged (0.1 is not 1/10 in binary; the exact tests then ask for ``sp.Rational``)."""
    fraction = Fraction(float(value))
    if fraction.denominator <= _FLOAT_DENOMINATOR:
        return sp.Rational(fraction.numerator, fraction.denominator)
    return value


def _merge_variables(*groups: Sequence[sp.Symbol]) -> tuple[sp.Symbol, ...]:
    """The union of independent variables, in order of first appearance."""
    return tuple(dict.fromkeys(v for group in groups for v in group))


def prolong(field: VectorField, order: int, channels: int = 1,
            independent: Sequence[sp.Symbol] | None = None) -> dict[sp.Symbol, sp.Expr]:
    """The ``n``-th prolongation of ``field`` (Olver, Thm. 2.36): ``{coordinate: coefficient}``.

    Keys are ``x, y, u, u_x, ...`` (:attr:`JetSpace.coordinates`); the coefficient of ``u_J`` is
    ``phi^J = D_J (phi - xi_x u_x - xi_y u_y) + xi_x u_{J,x} + xi_y u_{J,y}``, expanded.

    With ``p`` independent variables ``x^1 ... x^p`` (``independent``, by default the field's
    :attr:`VectorField.variables`; ``(x, y, θ)`` on M2) the same theorem reads
    ``phi^J = D_J (phi - sum_i xi^i u_i) + sum_i xi^i u_{J,i}``, ``D_i`` the total derivative
    including explicit dependence on ``x^i``; a variable the field does not name has
    ``xi^i = 0``.

    With ``channels = C > 1`` the field acts on every channel alike, ``xi_x d_x + xi_y d_y +
    sum_c phi(x, y, u^c) d_{u^c}`` (the group moves the plane and transforms every channel's
    values the same way), and ``phi^{c,J}`` is the formula above for each channel ``c``, with the
    total derivatives of the vector-valued jet. ``xi`` may then not depend on ``u``.
    """
    independent = field.variables if independent is None else _check_independent(independent)
    missing = [v.name for v in field.variables if v not in independent]
    if missing:
        raise ConfigError(f"{field} moves {', '.join(missing)}, which are not among the "
                          f"independent variables {', '.join(v.name for v in independent)}")
    xi = [field.xi(v) for v in independent]
    if channels > 1 and any(c.has(u) for c in xi):
        raise ConfigError(f"{field}: on several channels the plane's part xi may not depend on u "
                          f"(which channel's u would it be?)")
    p = len(independent)
    units = [tuple(int(i == k) for i in range(p)) for k in range(p)]

    def shifted(index, k):
        return tuple(a + b for a, b in zip(index, units[k], strict=True))

    jet = JetSpace(order + 1, channels, independent)  # D_J Q has order n + 1 terms, which cancel
    out = dict(zip(independent, xi, strict=True))
    highest = {symbol for (_, *index), symbol in jet._by_index.items() if sum(index) == order + 1}
    for c, dependent in enumerate(jet.dependent):
        phi = field.phi_u.xreplace({u: dependent})
        characteristic = phi - sum(xi[k] * jet.derivative(units[k], c) for k in range(p))
        # D_J Q for all |J| <= n, by total order: D_J = D_i D_(J - e_i), i the first axis of J.
        zero = (0,) * p
        total: dict[tuple[int, ...], sp.Expr] = {zero: characteristic}
        for index in JetSpace(order, 1, independent).multi_indices:
            if index != zero:
                axis = next(k for k, count in enumerate(index) if count)
                parent = tuple(count - (k == axis) for k, count in enumerate(index))
                total[index] = jet.total_derivative(total[parent], axis)
            coefficient = sp.expand(total[index] + sum(xi[k] * jet.derivative(shifted(index, k), c)
                                                       for k in range(p)))
            if coefficient.free_symbols & highest:  # pragma: no cover - a bug, not a user error
                raise AssertionError(f"prolongation of {field} did not cancel order {order + 1}")
            out[jet.derivative(index, c)] = coefficient
    return out


def criterion(expr: sp.Expr, field: VectorField, order: int | None = None,
              channels: int | None = None) -> sp.Expr:
    """``pr zeta (expr)``, simplified (``cancel``): zero iff ``expr`` is invariant under ``field``.

    ``order`` and ``channels`` default to those of the jet coordinates in ``expr``. The jet space
    has the field's independent variables and those that ``expr``'s jet coordinates name
    (``u_θ``: ``θ``). Where ``expr`` has ``cos v``, ``sin v`` of a variable (``A1u = cos θ u_x +
    sin θ u_y`` on M2), the result is reduced modulo ``cos² v + sin² v - 1``
    (:func:`reduce_on_the_circle`), so that it is zero exactly when the criterion holds.
    Jet coordinates and variables in ``expr`` are matched by name (a plain ``sp.Symbol("u_x")``
    is ``u_x``, and ``u_yx`` is ``u_xy``: derivatives commute); any other symbol is a constant.
    SymPy's notation for derivatives of ``u`` (``Derivative(u, x)``, ``u(x, y)``) is refused, a
    ConfigError saying to write ``u_x``, ``u``.
    """
    if not isinstance(field, VectorField):
        raise ConfigError(f"criterion needs a VectorField, got {type(field).__name__} {field!r}")
    expr = _by_name(expr)
    order = _expr_order(expr) if order is None else order
    channels = _expr_channels(expr) if channels is None else channels
    independent = _merge_variables(field.variables, _expr_variables(expr))
    expr = _in_space(expr, JetSpace(order, channels, independent))
    return _apply_prolonged(expr, prolong(field, order, channels, independent))


def _apply_prolonged(expr: sp.Expr, prolonged: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """``pr zeta (expr)`` for a prolonged field ``{coordinate: coefficient}``, simplified."""
    value = sp.cancel(sum(coefficient * sp.diff(expr, symbol)
                          for symbol, coefficient in prolonged.items()))
    return reduce_on_the_circle(value) if value.has(sp.cos, sp.sin) else value


def reduce_on_the_circle(expr: sp.Expr) -> sp.Expr:
    """``expr`` with ``cos v, sin v`` (``v`` a symbol) reduced modulo ``cos² v + sin² v - 1``.

    ``cos v, sin v`` become symbols ``c, s``, and the numerator of ``expr``, a polynomial, is
    replaced by its remainder of degree <= 1 in ``s`` after division by ``s² + c² - 1``: ``a +
    b s`` with ``a, b`` free of ``s``. That vanishes on the whole circle only if ``a = b = 0``
    (``s`` takes both signs for every ``|c| < 1``), so the result is 0 exactly when ``expr``
    is 0 for every value of ``v``. Rational multiples of ``v`` are written through ``w = v / L``
    (``L`` their common denominator: ``cos(θ/2)``, ``cos 2θ`` become polynomials in ``cos w,
    sin w``, ``w = θ / 2``), and other arguments (``cos(x + θ)``) are first expanded by
    ``expand_trig``. Returned with ``cos, sin`` of ``v / L`` back in place.
    """
    expr = _by_name(expr)
    trig = _trig_atoms([expr])
    if any(_angle_of(f) is None for f in trig):
        expr = sp.expand_trig(expr)
        trig = _trig_atoms([expr])
    multiples: dict[sp.Symbol, list[tuple[sp.Expr, sp.Rational]]] = {}
    for f in trig:
        angle = _angle_of(f)
        if angle is not None:
            multiples.setdefault(angle[1], []).append((f, angle[0]))
    if not multiples:
        return expr
    forward, back, circles = {}, {}, []
    for angle in sorted(multiples, key=str):
        common = math.lcm(*(int(m.q) for _, m in multiples[angle]))
        w = sp.Dummy("w")
        c, s = sp.Dummy(f"cos_{angle.name}"), sp.Dummy(f"sin_{angle.name}")
        for f, m in multiples[angle]:
            value = sp.expand_trig(f.func(int(m * common) * w))
            forward[f] = value.xreplace({sp.cos(w): c, sp.sin(w): s})
        back.update({c: sp.cos(angle / common), s: sp.sin(angle / common)})
        circles.append((c, s))
    numerator, denominator = sp.fraction(sp.together(expr.xreplace(forward)))
    numerator = sp.expand(numerator)
    for c, s in circles:
        numerator = sp.expand(sp.rem(numerator, s**2 + c**2 - 1, s))
    if numerator == 0:
        return sp.S.Zero
    return (numerator / denominator).xreplace(back)


def is_invariant(expr: sp.Expr, group: LieGroupAction | str) -> bool:
    """True if ``pr zeta_i (expr) = 0`` identically for every generator of the group.

    A rational ``expr = a / b`` is tested as the polynomial identity ``b pr zeta(a) - a pr
    zeta(b) = 0`` (the quotient rule), exactly and much faster than simplifying ``pr zeta(a /
    b)``; anything else (e.g. with ``cos θ``) through :func:`criterion`. Jet coordinates and
    variables are matched by name (a plain ``sp.Symbol("u_x")`` is ``u_x``, and ``u_yx`` is
    ``u_xy``: derivatives commute); any other symbol is a constant. SymPy's notation for
    derivatives of ``u`` (``Derivative(u, x)``, ``u(x, y)``) is refused, a ConfigError saying to
    write ``u_x``, ``u``.
    """
    group = get_group(group)
    expr = _by_name(expr)
    order, channels = _expr_order(expr), _expr_channels(expr)
    independent = _merge_variables(group.variables, _expr_variables(expr))
    space = JetSpace(order, channels, independent)
    expr = _in_space(expr, space)
    gens = (*space.coordinates, *sorted(expr.free_symbols - set(space.coordinates), key=str))
    numerator, denominator = sp.fraction(sp.together(expr))
    try:
        a, b = sp.Poly(numerator, *gens), sp.Poly(denominator, *gens)
        fields = [{symbol: sp.Poly(coefficient, *gens) for symbol, coefficient
                   in prolong(field, order, channels, independent).items() if coefficient != 0}
                  for field in group.fields]
    except sp.polys.polyerrors.BasePolynomialError:
        return all(_apply_prolonged(expr, prolonged) == 0
                   for prolonged in group.prolonged(order, channels, independent))

    def apply(poly: sp.Poly, prolonged: dict) -> sp.Poly:
        return sum((c * poly.diff(symbol) for symbol, c in prolonged.items()), sp.Poly(0, *gens))

    return all((b * apply(a, prolonged) - a * apply(b, prolonged)).is_zero for prolonged in fields)


#: A jet coordinate's name: ``u`` or ``u<channel>``, then ``_`` and one letter per derivative.
_JET_NAME = re.compile(r"^u(\d*)(?:_([^\W\d_]+))?$")
#: The order in which a jet coordinate's name lists the letters of the plane and of M2
#: (:class:`JetSpace`: the order of the independent variables, ``x, y`` then ``θ``).
_LETTER_ORDER = {"x": 0, "y": 1, "θ": 2}


def _canonical_name(name: str) -> str:
    """The jet coordinate ``name`` (:data:`_JET_NAME`) with its letters in the order
    :class:`JetSpace` names them, where they are all among ``x, y, θ``: ``u_yx`` is ``u_xy``
    (partial derivatives commute, and the jet has one coordinate for both); other names
    unchanged (their order depends on the jet space: :func:`_in_space`)."""
    match = _JET_NAME.match(name)
    letters = match.group(2) if match else None
    if not letters or not set(letters) <= _LETTER_ORDER.keys():
        return name
    return f"u{match.group(1)}_{''.join(sorted(letters, key=_LETTER_ORDER.__getitem__))}"


def _sympify(value, what: str = "an expression", local: dict | None = None,
             example: str = "'u_x**2 + u_y**2'", calculus: bool = True) -> sp.Basic:
    """``sympify(value)``, or one ConfigError line naming ``value`` (SymPy's parse errors span
    several lines; ``None`` sympifies to ``None``, which no caller can use). Only an expression
    passes: a relation (``'u_x > 0'``, ``Eq(u_x, 0)``), a truth value or a tuple sympifies to
    another SymPy object, which the algebra later failed on with a raw ``TypeError``. With
    ``calculus``, ``Derivative(u, x)`` and ``u(x, y)`` are refused too (:func:`_refuse_calculus`).
    """
    try:
        # SymPy warns of non-expression arguments (a tuple)
        with quiet_warnings(Silenced(DeprecationWarning)):
            out = sp.sympify(value, locals={"u": u, **_KNOWN_VARIABLES} if local is None
                             else local)
    except (sp.SympifyError, SyntaxError, TypeError, ValueError, AttributeError):
        out = None
    if not isinstance(out, sp.Expr):
        raise ConfigError(f"cannot read {value!r} as {what} (a SymPy expression, a number or a "
                          f"string such as {example})")
    if calculus:
        _refuse_calculus(out, what)
    return out


def _jet_named(name: str) -> bool:
    return _JET_NAME.match(name) is not None


def _refuse_calculus(expr: sp.Expr, what: str) -> None:
    """One ConfigError line where ``expr`` writes a derivative of the dependent variable in
    SymPy's calculus notation instead of a jet coordinate: an undefined function named like a
    jet coordinate (``u(x, y)``), or an unevaluated ``Derivative`` or ``Integral`` of something
    that involves a jet coordinate, taken along a variable that is not one
    (``Derivative(u, x)``, ``Derivative(u(x, y), x)``). This module reads ``u, u_x, ...`` as
    coordinates of the jet space, independent of ``x, y``: ``Derivative(u, x)`` would be 0 (u_x
    declared invariant under se2) and ``u(x, y)`` a function that no prolonged field moves
    (``u`` declared not invariant). Calculus that reads the same either way is left alone:
    ``f(u_x**2 + u_y**2)``, ``f(x)`` (a generic function; :func:`prolong` takes ``f(x) ∂x``),
    ``Derivative(f(u_x), u_x)``. Calculus along a parameter or a dummy (``Integral(t u_x, (t,
    0, 1))``, ``Derivative(a u_x, a)``) is refused as well: a user's group may act on an
    independent variable of any one-letter name, which this check cannot tell from a parameter,
    and refusing with the way to write it is safer than a misread answer."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, AppliedUndef) and _jet_named(node.func.__name__):
            kind = "an undefined function (SymPy's Function)"
        elif isinstance(node, (sp.Derivative, sp.Integral)):
            inner = node.args[0]
            along = [v for v in node.variables if not _jet_named(getattr(v, "name", ""))]
            if not along or not (
                    any(_jet_named(s.name) for s in inner.free_symbols)
                    or any(_jet_named(f.func.__name__) for f in inner.atoms(AppliedUndef))):
                continue
            kind = (f"SymPy's {type(node).__name__} along "
                    f"{', '.join(sorted(map(str, set(along))))}")
        else:
            continue
        where = "" if node == expr else f" in {_shown(expr)}"
        whose = "" if what == "an expression" else f"{what}: "
        raise ConfigError(
            f"{whose}{_shown(node)}{where} is {kind}, not a jet coordinate "
            f"(u, u_x, u_xy are coordinates of the jet space, not functions of x, y): write "
            f"u_x for Derivative(u(x, y), x), u_xy for Derivative(u(x, y), x, y), u for u(x, y)")


def _by_name(expr) -> sp.Expr:
    """``expr`` (sympified) with every symbol named like a jet coordinate (``u``, ``u_x``,
    ``u2_xθ``) or like ``x``, ``y``, ``θ`` replaced by this module's symbol of that name.

    A jet coordinate is matched by its name, as :class:`VectorField` matches ``x, y, u``: a plain
    ``sp.Symbol("u_x")`` (no ``real=True``) is ``u_x``, not a constant that every prolonged
    field leaves alone. A mixed derivative named in another order is the same coordinate
    (:func:`_canonical_name`: ``u_yx`` is ``u_xy``, ``u_θx`` is ``u_xθ``). Anything that is not
    an expression (``None``, ``"x+"``) is a ConfigError naming it, and so is a derivative of
    ``u`` in SymPy's notation, ``Derivative(u, x)`` or ``u(x, y)`` (:func:`_refuse_calculus`),
    which would otherwise be misread."""
    expr = _sympify(expr)
    replace = {}
    for symbol in expr.free_symbols:
        name = symbol.name
        if isinstance(symbol, sp.Dummy):
            continue  # this module's own placeholders (cos θ -> c), whatever their names
        if name in _KNOWN_VARIABLES:
            target = _KNOWN_VARIABLES[name]
        elif _JET_NAME.match(name):
            name = _canonical_name(name)
            target = u if name == "u" else sp.Symbol(name, real=True)
        else:
            continue
        if target is not symbol:
            replace[symbol] = target
    return expr.xreplace(replace) if replace else expr


def _in_space(expr: sp.Expr, space: JetSpace) -> sp.Expr:
    """``expr`` with every symbol named like a jet coordinate replaced by the coordinate of
    ``space`` of the same channel and the same letters in any order (derivatives commute:
    ``u_st`` is the ``u_ts`` of a space whose independent variables are ``x, y, t, s``); a
    ConfigError for one that names no coordinate of ``space``."""
    def key(match):
        return match.group(1), "".join(sorted(match.group(2) or ""))

    coordinates = space.__dict__.get("_by_letters")
    if coordinates is None:
        coordinates = {key(_JET_NAME.match(s.name)): s for s in space.derivatives}
        space.__dict__["_by_letters"] = coordinates
    replace = {}
    for symbol in expr.free_symbols:
        match = _JET_NAME.match(symbol.name)
        if match is None or isinstance(symbol, sp.Dummy) or coordinates.get(key(match)) is symbol:
            continue
        target = coordinates.get(key(match))
        if target is None:
            raise ConfigError(f"{symbol.name} is not a jet coordinate of {space!r}: its "
                              f"coordinates are {', '.join(s.name for s in space.derivatives)}")
        replace[symbol] = target
    return expr.xreplace(replace) if replace else expr


def _expr_order(expr: sp.Expr) -> int:
    matches = (_JET_NAME.match(s.name) for s in sp.sympify(expr).free_symbols)
    return max((len(m.group(2) or "") for m in matches if m), default=0)


def _expr_channels(expr: sp.Expr) -> int:
    """Channels of a jet space holding every jet coordinate of ``expr``: 1 for ``u, u_x, ...``;
    for numbered ones ``uc_J`` the largest ``c``, at least 2 (one channel is named ``u``)."""
    matches = (_JET_NAME.match(s.name) for s in sp.sympify(expr).free_symbols)
    numbers = [int(m.group(1)) for m in matches if m and m.group(1)]
    return max(*numbers, 2) if numbers else 1


def _expr_variables(expr: sp.Expr) -> tuple[sp.Symbol, ...]:
    """The independent variables that ``expr``'s jet coordinates name (``u_xθ``: ``x, θ``),
    ``x, y`` first, then the others by name; ``x, y`` always (the plane is the default)."""
    matches = (_JET_NAME.match(s.name) for s in sp.sympify(expr).free_symbols)
    letters = {letter for m in matches if m for letter in (m.group(2) or "")} - {"x", "y"}
    return (x, y, *(_KNOWN_VARIABLES.get(letter) or sp.Symbol(letter, real=True)
                    for letter in sorted(letters)))


# ----------------------------------------------------------------------------- groups


@dataclasses.dataclass(frozen=True)
class LieGroupAction:
    """A Lie group acting on ``X x U``, given by the vector fields spanning its Lie algebra.

    ``fields`` is a sequence of :class:`VectorField` (anything else is refused with a
    ``ConfigError``); it may hold linearly dependent fields and need not be closed under the
    bracket: :attr:`basis` is a basis of the Lie algebra the fields generate, which every count
    and search uses, so any spanning set of the same algebra gives the same results.
    """

    name: str
    fields: tuple[VectorField, ...]
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a group's name must be a non-empty string, got {self.name!r}")
        if isinstance(self.fields, (VectorField, str)) or not isinstance(self.fields, Iterable):
            raise ConfigError(f"group {self.name!r}: fields must be a list of VectorField, got "
                              f"{type(self.fields).__name__} {self.fields!r}")
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ConfigError(f"group {self.name!r} needs at least one generator")
        for index, field in enumerate(self.fields):
            if not isinstance(field, VectorField):
                raise ConfigError(
                    f"group {self.name!r}: generator {index} is a {type(field).__name__} "
                    f"({field!r}), not a VectorField; write VectorField(xi_x, xi_y, phi_u)")

    @property
    def dimension(self) -> int:
        """The number of generators given (:attr:`basis` has the algebra's dimension)."""
        return len(self.fields)

    @property
    def variables(self) -> tuple[sp.Symbol, ...]:
        """The independent variables the group acts on: ``x, y`` and any further ones its
        generators name (``x, y, θ`` for a group acting on M2)."""
        return _merge_variables(*(field.variables for field in self.fields))

    def prolonged(self, order: int, channels: int = 1,
                  independent: Sequence[sp.Symbol] | None = None) -> list[dict[sp.Symbol, sp.Expr]]:
        """The generators prolonged to the jet space of order ``order`` (:func:`prolong`), one
        ``{coordinate: coefficient}`` per generator, over ``independent`` (default: the group's
        :attr:`variables`) and ``channels`` channels. The generators only, not their brackets
        (:attr:`basis` has those)."""
        independent = self.variables if independent is None else independent
        return [prolong(field, order, channels, independent) for field in self.fields]

    @functools.cached_property
    def _algebra(self) -> _Algebra:
        return _Algebra(self.fields, self.name)

    @property
    def brackets(self) -> tuple[VectorField, ...]:
        """Iterated Lie brackets of the generators that are not linear combinations (constant
        coefficients) of the generators and the brackets before them: empty when the fields
        span a Lie algebra. The generators, followed by these, span the Lie algebra of the group
        they generate (:func:`lie_algebra_closure`)."""
        return self._algebra.closure[len(self.fields):]

    @property
    def basis(self) -> tuple[VectorField, ...]:
        """A basis of the Lie algebra the generators generate: the generators and
        :attr:`brackets` less those that are constant-coefficient combinations of the ones
        before them; a generator whose coefficients share an irrational constant factor
        (``√2 (-y ∂x + x ∂y)``) is divided by it (same span)."""
        return self._algebra.basis

    def contains(self, field: VectorField) -> bool:
        """Whether ``field`` lies in the Lie algebra (the span of :attr:`basis`), tested exactly
        at random rational points like the closure."""
        return self._algebra.contains(field)

    def orbit_dimension(self, order: int, seed: int = 0, channels: int = 1) -> int:
        """Generic orbit dimension ``s`` on ``J^(n)`` (of ``channels`` channels): rank of the
        prolonged coefficients at a random rational point. The prolonged fields are those of the
        whole Lie algebra the generators span, their brackets included (:attr:`basis`): a
        function annihilated by the generators is annihilated by their brackets too, so these
        are the orbits of the group the generators generate."""
        jet = JetSpace(order, channels, self.variables)
        prolonged = [prolong(field, order, channels, self.variables) for field in self.basis]
        values = [value for p in prolonged for value in p.values()]
        point = _random_point(jet.coordinates, random.Random(seed), _angles(values),
                              _trig_atoms(values))
        rows = [[_exact(p[c], point) for c in jet.coordinates] for p in prolonged]
        return _rank(rows)

    def expected_count(self, order: int, channels: int = 1) -> int:
        """Number of functionally independent invariants of order ``<= n``: ``dim J^(n) - s``."""
        return (JetSpace(order, channels, self.variables).dimension
                - self.orbit_dimension(order, channels=channels))

    def __str__(self) -> str:
        return f"{self.name}: " + ", ".join(str(field) for field in self.fields)


def lie_bracket(a: VectorField, b: VectorField) -> VectorField:
    """``[a, b] = a b - b a``: the field with components ``a(b^v) - b(a^v)`` along every
    coordinate ``v`` (``x, y``, further independent variables, ``u``), ``a(f) = sum_w a^w
    d_w f``. Named ``[a, b]`` after the fields' names (their formulas where unnamed)."""
    variables = _merge_variables(a.variables, b.variables)
    coordinates = (*variables, u)

    def component(field, v):
        return field.phi_u if v == u else field.xi(v)

    def apply(field, expr):
        return sum((component(field, w) * sp.diff(expr, w) for w in coordinates), sp.S.Zero)

    values = {v: sp.expand(apply(a, component(b, v)) - apply(b, component(a, v)))
              for v in coordinates}
    return VectorField(values[x], values[y], values[u], f"[{a.name or a}, {b.name or b}]",
                       tuple((v, values[v]) for v in variables[2:]))


#: The most fields :func:`lie_algebra_closure` adds before it calls the algebra too large.
MAX_ALGEBRA_DIMENSION = 24

#: The longest a bracket of :func:`lie_algebra_closure` may be written (characters of its
#: ``str``) before the closure stops: brackets of fields that generate no finite-dimensional
#: group (``1/(1 + x^2 + y^2) d_x`` with the translations) grow at each step, and reaching
#: :data:`MAX_ALGEBRA_DIMENSION` with them took 40 s. The largest bracket of every group in
#: docs/symbolic.md is under 100 characters.
MAX_BRACKET_LENGTH = 2000


def _shown(value, limit: int = 120) -> str:
    """``str(value)``, its middle cut where it is longer than ``limit`` characters (a message
    stays one readable line)."""
    text = str(value)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]} ({len(text)} characters)"


def _field_components(field: VectorField, coordinates: Sequence[sp.Symbol]) -> list[sp.Expr]:
    return [field.phi_u if v == u else field.xi(v) for v in coordinates]


def _without_constant_factor(field: VectorField) -> VectorField:
    """``field`` divided by an irrational constant common to all its coefficients
    (``√2 (-y ∂x + x ∂y)`` -> ``-y ∂x + x ∂y``), which spans the same line; else ``field``."""
    components = [field.xi_x, field.xi_y, field.phi_u, *(value for _, value in field.xi_other)]

    def coefficients(expr):
        expr = sp.expand(expr)
        return [] if expr == 0 else list(sp.Poly(expr, *sorted(expr.free_symbols, key=str)
                                                 or [u]).coeffs())

    try:
        numbers = [c for expr in components for c in coefficients(expr)]
    except sp.polys.polyerrors.BasePolynomialError:
        return field
    if all(c.is_Rational for c in numbers) or not numbers or not numbers[0].is_number:
        return field
    factor = numbers[0].as_coeff_Mul()[1]  # its irrational part: -√2 -> √2
    if not all((c / factor).is_Rational for c in numbers):
        return field
    scaled = [sp.expand(c / factor) for c in components]
    return VectorField(scaled[0], scaled[1], scaled[2], field.name,
                       tuple(zip((v for v, _ in field.xi_other), scaled[3:], strict=True)))


class _Algebra:
    """The Lie algebra that ``fields`` generate: ``closure`` (the fields, then the brackets that
    are not constant-coefficient combinations of the fields before them), ``basis`` (the
    linearly independent ones among them), and span membership (:meth:`contains`).

    Linear dependence over the constants is tested exactly: every field's components at
    ``MAX_ALGEBRA_DIMENSION + 1`` random rational points (random rational ``cos v, sin v`` for an
    angle) form one row, and a field counts as independent when it raises the rank of these rows
    (with probability ~1 exactly when it is independent)."""

    def __init__(self, fields: Sequence[VectorField], name: str = "group", seed: int = 0):
        fields = [_without_constant_factor(field) for field in fields]
        self.name = name
        self.variables = _merge_variables(*(field.variables for field in fields))
        self.coordinates = (*self.variables, u)
        values = [c for field in fields for c in _field_components(field, self.coordinates)]
        rng = random.Random(seed)
        angles, atoms = _angles(values), _trig_atoms(values)
        self.points = [_random_point(self.coordinates, rng, angles, atoms)
                       for _ in range(MAX_ALGEBRA_DIMENSION + 1)]
        self.echelon = _Echelon()
        independent = [self.echelon.add(self._row(field)) for field in fields]
        labels = [f"g{index}" for index in range(1, len(fields) + 1)]  # the generators, 1-based
        pairs = [(i, j) for j in range(len(fields)) for i in range(j)]
        while pairs:
            i, j = pairs.pop(0)
            bracket = lie_bracket(fields[i], fields[j])
            label, written = f"[{labels[i]}, {labels[j]}]", str(bracket)
            if len(written) > MAX_BRACKET_LENGTH:
                raise ConfigError(
                    f"{name}: the Lie bracket {label} of the generators is "
                    f"{len(written)} characters long ({_shown(written)}): its brackets "
                    f"grow at each step, as those of fields that generate no "
                    f"finite-dimensional group do; this module handles finite-dimensional "
                    f"groups (at most {MAX_ALGEBRA_DIMENSION} dimensions)")
            if not self.echelon.add(self._row(bracket)):
                continue
            if len(self.echelon.rows) > MAX_ALGEBRA_DIMENSION:
                raise ConfigError(
                    f"{name}: the Lie brackets of the generators span more than "
                    f"{MAX_ALGEBRA_DIMENSION} dimensions (the last one added: {label} = "
                    f"{_shown(bracket)}); they generate no finite-dimensional group this "
                    f"module handles")
            pairs += [(k, len(fields)) for k in range(len(fields))]
            fields.append(bracket)
            labels.append(label)
            independent.append(True)
        self.closure = tuple(fields)
        self.basis = tuple(f for f, keep in zip(fields, independent, strict=True) if keep)

    def _row(self, field: VectorField) -> list[Fraction]:
        components = _field_components(field, self.coordinates)
        try:
            return [_exact(c, point) for point in self.points for c in components]
        except ZeroDivisionError:
            atoms = set().union(*(sp.sympify(c).atoms(sp.Number, sp.NumberSymbol, sp.Pow)
                                  for c in components))
            if any(isinstance(a, sp.Float) for a in atoms):
                hint = (f"write a float such as 0.1 as sp.Rational(1, 10) or sp.nsimplify(0.1) "
                        f"(a float is read exactly only when it is a fraction with denominator "
                        f"<= {_FLOAT_DENOMINATOR}, such as 0.5)")
            elif any(a.is_number and not a.is_Rational for a in atoms):
                hint = ("an irrational constant (√2, π) is accepted only as a factor common to "
                        "all of a generator's coefficients, √2 (-y ∂x + x ∂y), which is divided "
                        "out")
            else:
                hint = ("coefficients must be rational functions of the variables (and of cos, "
                        "sin of an angle)")
            raise ConfigError(
                f"{self.name}: cannot test the brackets of the generators exactly: {field} is "
                f"not rational at rational points; the exact tests need rational coefficients: "
                f"{hint}") from None

    def contains(self, field: VectorField) -> bool:
        if set(field.variables) - set(self.variables):
            return False
        return not any(self.echelon.reduce(self._row(field)))


def lie_algebra_closure(fields: Sequence[VectorField], name: str = "group",
                        seed: int = 0) -> tuple[VectorField, ...]:
    """``fields`` followed by the iterated Lie brackets that are not linear combinations (with
    constant coefficients) of the fields before them: a spanning set of the Lie algebra the
    fields generate, the algebra of the group they generate.

    Linear dependence over the constants is tested exactly: every field's components at
    ``MAX_ALGEBRA_DIMENSION + 1`` random rational points (random rational ``cos v, sin v`` for an
    angle) form one row, and a bracket is kept when it raises the rank of these rows (with
    probability ~1 exactly when it is independent). Raises ``ConfigError`` when the brackets span
    more than ``MAX_ALGEBRA_DIMENSION`` dimensions (e.g. ``d_x, x³ d_x`` generate all ``x^k d_x``:
    no finite-dimensional group) or a component is not rational at rational points. A field
    whose coefficients share an irrational constant factor (``√2``) is returned divided by it.
    """
    return _Algebra(fields, name, seed).closure


def _bracket_note(group: LieGroupAction) -> list[str]:
    """A note naming the brackets the generators left out, or nothing."""
    if not group.brackets:
        return []
    added = "; ".join(f"{field.name} = {field}" for field in group.brackets)
    return [f"the generators are not closed under the Lie bracket ({added}): the invariants "
            f"and counts are those of the group they generate, whose Lie algebra these "
            f"brackets complete"]


_TRANSLATIONS = (VectorField(1, 0, 0, "d_x"), VectorField(0, 1, 0, "d_y"))
_ROTATION = VectorField(-y, x, 0, "rotation")
_SCALING = VectorField(x, y, 0, "scaling")

#: Ready group actions by name.
GROUPS: Registry[LieGroupAction] = Registry("group")


def register_group(group: LieGroupAction, *, replace: bool = False) -> LieGroupAction:
    """Make a group available by name (to :func:`get_group` and ``eqpdenet symbolic``)."""
    if not isinstance(group, LieGroupAction):
        hint = (": register the LieGroupAction object itself (get_group looks one up by name)"
                if isinstance(group, str) else "")
        raise ConfigError(f"invalid config: group: must be a LieGroupAction, got "
                          f"{type(group).__name__}{hint}")
    return GROUPS.register(group.name, group, replace=replace)


def get_group(name: str | LieGroupAction) -> LieGroupAction:
    """The group registered as ``name`` (:data:`GROUPS`; a :class:`LieGroupAction` is returned
    as it is); an unknown name is a ``ConfigError`` listing the groups there are, and bare
    :class:`VectorField` generators (one, or a list) are refused with the advice to wrap them in
    a :class:`LieGroupAction`.

    Example:
        >>> get_group("se2").dimension
        3
    """
    if isinstance(name, LieGroupAction):
        return name
    # Bare generators are the likeliest non-name: the registry's "is named by a string" line
    # did not say how to pass them.
    kind = type(name).__name__
    if isinstance(name, Iterator):  # a generator: read once, to say what it held
        name = list(name)
    if isinstance(name, VectorField) or (
            isinstance(name, (list, tuple, set, frozenset)) and name
            and all(isinstance(field, VectorField) for field in name)):
        shown = ("a VectorField" if isinstance(name, VectorField) else
                 f"a {kind} of {len(name)} VectorField")
        raise ConfigError(f"a group is a registered name or a LieGroupAction, got {shown}; "
                          f"wrap the fields in LieGroupAction(name, fields)")
    return GROUPS.get(name)


def available_groups() -> tuple[str, ...]:
    """The names of the registered groups (:data:`GROUPS`), sorted."""
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
register_group(LieGroupAction("se2_m2", (
    *_TRANSLATIONS, VectorField(-y, x, 0, "rotation", {theta: 1})),
    "SE(2) acting on M2 = R² × S¹ by (x, θ) -> (R_φ x + b, θ + φ)"))

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
#: Groups whose invariants come from the moving frame (:func:`left_invariant_derivatives`), and
#: the orders :func:`symbolic_table` lists for them.
FRAME_ORDERS: dict[str, list[int]] = {"se2_m2": [1, 2]}

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


def _random_point(symbols, rng: random.Random, angles=(), atoms=()) -> dict[sp.Expr, Fraction]:
    """A random rational point; nonzero, large spread, so that it is generic in practice.

    An angle ``v`` of ``angles`` gets no value itself but a random rational point of the circle,
    ``cos w = (1 - t²) / (1 + t²)``, ``sin w = 2 t / (1 + t²)``, for ``v = L w``: ``L`` is the
    least common denominator of the rational multiples ``m`` of ``v`` in the trigonometric
    ``atoms`` (``cos(θ/2)``: ``L = 2``), and every ``cos(m v)``, ``sin(m v)`` of ``atoms`` (and
    ``cos v``, ``sin v``) gets the exact value of ``(cos w + i sin w)^(m L)``, so that
    expressions in them stay exact. Likewise a symbol ``v`` of which ``atoms`` hold
    ``exp(m v)`` (``m`` rational) gets no value itself: ``exp(v / L)`` is a random positive
    rational ``e`` and every ``exp(m v)`` of ``atoms`` is ``e^(m L)`` (the moving frame of
    ``∂x, ∂y, x ∂x + y ∂y + ∂θ`` is ``exp(θ) ∂x, exp(θ) ∂y, ∂θ``).
    """
    multiples: dict[sp.Symbol, set] = {}
    growths: dict[sp.Symbol, set] = {}
    for atom in atoms:
        angle = _angle_of(atom)
        if angle is not None:
            (growths if isinstance(atom, sp.exp) else multiples).setdefault(
                angle[1], set()).add(angle[0])
    point: dict[sp.Expr, Fraction] = {}
    for s in symbols:
        if s in growths:
            # exp(m v) for v = L w: exp(w) a random positive rational e, exp(m v) = e^(m L)
            # exactly. With cos, sin of v too, the values are those of no one real v, but
            # (exp v, cos v, sin v) is Zariski-dense in R+ x circle (exp v is transcendental
            # over cos v, sin v), so a Jacobian minor, a rational function of them, vanishes
            # at such a point generically only where it vanishes identically.
            e = Fraction(rng.randint(2, 97), rng.randint(1, 97))
            denominator = math.lcm(*(int(m.q) for m in growths[s]))
            for m in growths[s]:
                point[sp.exp(m * s)] = e ** int(m * denominator)
        if s in angles:
            t = Fraction(rng.choice((-1, 1)) * rng.randint(1, 97), rng.randint(1, 97))
            circle = ((1 - t * t) / (1 + t * t), 2 * t / (1 + t * t))
            found = multiples.get(s, set()) | {sp.S.One}
            denominator = math.lcm(*(int(m.q) for m in found))
            for m in found:
                c, si = _power_on_circle(circle, int(m * denominator))
                point[sp.cos(m * s)], point[sp.sin(m * s)] = c, si
        elif s not in growths:
            point[s] = Fraction(rng.choice((-1, 1)) * rng.randint(1, 10**4), rng.randint(1, 97))
    return point


def _power_on_circle(circle: tuple[Fraction, Fraction], k: int) -> tuple[Fraction, Fraction]:
    """``(cos k w, sin k w)`` from ``(cos w, sin w)``, exactly (``(cos w + i sin w)^k``)."""
    c, s = circle
    if k < 0:
        c, s, k = c, -s, -k
    re, im = Fraction(1), Fraction(0)
    for _ in range(k):
        re, im = re * c - im * s, re * s + im * c
    return re, im


def _angle_of(atom: sp.Expr) -> tuple[sp.Rational, sp.Symbol] | None:
    """``(m, v)`` for ``cos(m v)`` or ``sin(m v)`` (or ``exp(m v)``), ``m`` a nonzero rational
    and ``v`` a symbol; None for any other argument."""
    coefficient, rest = atom.args[0].as_coeff_Mul()
    if rest.is_Symbol and coefficient.is_Rational and coefficient != 0:
        return coefficient, rest
    return None


def _trig_atoms(exprs) -> set[sp.Expr]:
    """The ``cos``, ``sin`` atoms of ``exprs``."""
    return {f for e in exprs for f in sp.sympify(e).atoms(sp.cos, sp.sin)}


def _angles(exprs) -> set[sp.Symbol]:
    """The symbols ``v`` of which ``cos(m v)`` or ``sin(m v)`` (``m`` rational) occurs in
    ``exprs``."""
    return {angle[1] for f in _trig_atoms(exprs) if (angle := _angle_of(f)) is not None}


def _exp_atoms(exprs) -> set[sp.Expr]:
    """The ``exp(m v)`` atoms of ``exprs`` (``m`` a nonzero rational, ``v`` a symbol)."""
    return {f for e in exprs for f in sp.sympify(e).atoms(sp.exp) if _angle_of(f) is not None}


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

    ``variables`` default to the jet coordinates the expressions use (on M2, with ``θ``, when
    they name ``θ``-derivatives or contain ``cos θ, sin θ``). Equal to the number of
    functionally independent expressions among them (with probability ~1). A variable that
    occurs as ``cos v, sin v`` is evaluated at a random rational point of the circle, one that
    occurs as ``exp(v)`` at a random positive rational ``exp(v)`` (both of rational multiples
    of ``v``; see :func:`_random_point`); it may not occur otherwise.
    """
    exprs = [_by_name(e) for e in exprs]
    angles, atoms = _angles(exprs), _trig_atoms(exprs) | _exp_atoms(exprs)
    growths = {_angle_of(f)[1] for f in atoms if isinstance(f, sp.exp)}
    if variables is None:
        independent = _merge_variables(*(_expr_variables(e) for e in exprs),
                                       sorted((angles | growths) - {x, y}, key=str))
        space = JetSpace(max((_expr_order(e) for e in exprs), default=0),
                         max((_expr_channels(e) for e in exprs), default=1), independent)
        exprs = [_in_space(e, space) for e in exprs]
        variables = space.coordinates
    else:
        variables = [_by_name(v) for v in variables]
    for angle in angles | growths:
        hidden = {f: sp.Dummy() for f in atoms if (a := _angle_of(f)) and a[1] == angle}
        if any(e.xreplace(hidden).has(angle) for e in exprs):
            raise ConfigError(f"{angle} occurs outside cos, sin, exp of rational multiples of "
                              f"it: the exact rank test needs rational values of every term")
    rng = random.Random(seed)
    for _ in range(10):
        point = _random_point(variables, rng, angles, atoms)
        try:
            rows = [[_exact(sp.diff(e, v), point) for v in variables] for e in exprs]
        except ZeroDivisionError:
            continue  # hit a pole: draw another point
        return _rank(rows)
    raise ConfigError(
        "could not evaluate the Jacobian of the expressions exactly at 10 random rational points: "
        "a term is not rational there (an irrational constant such as √2 or π, or a function "
        "other than cos, sin, exp of a rational multiple of a variable)")


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
    """Result of :func:`find_invariants` (or :func:`left_invariant_derivatives`).

    Attributes:
        group: the group.
        order: jet order ``n``.
        max_degree: highest polynomial degree searched (numerator and denominator each); None
            for the moving frame, which does not search.
        expressions: functionally independent invariants (SymPy), simplest first.
        expected_count: ``dim J^(n) - s`` predicted by the theory.
        jet_dimension, orbit_dimension: ``dim J^(n)`` and ``s``.
        seconds: wall time of the search.
        notes: caveats (fewer found than predicted, group without translations, ...).
        channels: number of dependent variables ``u1 ... uC`` (1: ``u``).
        method: ``"search"`` (polynomial and rational search) or ``"frame"`` (moving frame).
        names: names of the expressions (``"A13u"``), or empty (the search does not name them).
        frame: the :class:`MovingFrame` the invariants were derived from (``method="frame"``).
    """

    group: LieGroupAction
    order: int
    max_degree: int | None
    expressions: list[sp.Expr]
    expected_count: int
    jet_dimension: int
    orbit_dimension: int
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    channels: int = 1
    method: str = "search"
    names: tuple[str, ...] = ()
    frame: MovingFrame | None = None

    @property
    def found_count(self) -> int:
        """How many invariants were found (``len(expressions)``)."""
        return len(self.expressions)

    @property
    def complete(self) -> bool:
        """Whether as many were found as are functionally independent (``expected_count``)."""
        return self.found_count == self.expected_count

    def __str__(self) -> str:
        channels = f", {self.channels} channels" if self.channels > 1 else ""
        method = ", moving frame" if self.method == "frame" else ""
        lines = [f"{self.group.name}{channels}, order {self.order}: {self.found_count} of "
                 f"{self.expected_count} expected invariants (dim J = {self.jet_dimension}, "
                 f"orbit dim = {self.orbit_dimension}{method}, {self.seconds:.2f} s)"]
        if self.frame is not None:
            lines += [f"  {line}" for line in str(self.frame).splitlines()]
        names = self.names or ("",) * len(self.expressions)
        lines += [f"  {name + ' = ' if name and name != str(e) else ''}{unicode_formula(e)}"
                  for name, e in zip(names, self.expressions, strict=True)]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# Polynomials of the search are dicts {exponents: coefficient in QQ}; the exponents run over the
# independent variables and then the u-jet coordinates (``_JetAction.gens``), or over the u-jet
# coordinates only (a "jet polynomial": x, y-free).


def _padd(a: dict, b: dict, factor=1) -> dict:
    out = dict(a)
    for key, value in b.items():
        total = out.get(key, sp.QQ.zero) + factor * value
        if total:
            out[key] = total
        else:
            out.pop(key, None)
    return out


def _pmul(a: dict, b: dict) -> dict:
    out: dict = {}
    for ka, va in a.items():
        for kb, vb in b.items():
            key = tuple(i + j for i, j in zip(ka, kb, strict=True))
            out[key] = out.get(key, sp.QQ.zero) + va * vb
    return {k: v for k, v in out.items() if v}


def _pdiff(a: dict, index: int) -> dict:
    out = {}
    for key, value in a.items():
        if key[index]:
            lowered = key[:index] + (key[index] - 1,) + key[index + 1:]
            out[lowered] = value * key[index]
    return out


def _fraction(value) -> Fraction:
    """A SymPy ``Rational`` or an element of ``QQ`` as a ``Fraction``."""
    if isinstance(value, sp.Rational):
        return Fraction(int(value.p), int(value.q))
    return Fraction(int(value.numerator), int(value.denominator))


def _pvalue(a: dict, point: Sequence[Fraction]) -> Fraction:
    total = Fraction(0)
    for key, value in a.items():
        term = _fraction(value)
        for v, e in zip(point, key, strict=True):
            if e:
                term *= v**e
        total += term
    return total


def _key(poly: dict) -> tuple:
    return tuple(sorted(poly.items()))


class _JetAction:
    """The prolonged Lie algebra acting on the u-jet, as exact polynomials.

    ``fields[i][k]`` is the coefficient of ``d / d z_k`` (``z_k = gens[p + k]``, a u-jet
    coordinate) in the prolongation of ``basis[i]``, a polynomial in ``x, y`` and the jet.
    ``diagonal[i][k]`` is the constant coefficient of ``z_k`` itself there, so that ``Δ(ζ) =
    Σ_k diagonal_k z_k d/dz_k`` is the *diagonal part* of the prolonged ``ζ`` and ``O(ζ)``, the
    rest, its *off-diagonal part*; both are linear in ``ζ``, so every statement about them for
    the basis holds for the whole algebra, whatever basis the generators gave.
    ``scalings`` is a basis of the elements whose prolongation is diagonal (``O(ζ) = 0``: every
    ``d / d z`` coefficient a constant times ``z``), with their weights ``λ_k``."""

    def __init__(self, group: LieGroupAction, jet: JetSpace):
        self.group, self.jet = group, jet
        self.p, self.n = len(jet.independent), len(jet.derivatives)
        self.gens = (*jet.independent, *jet.derivatives)
        self.basis = group.basis
        self.fields: list[dict[int, dict]] = []
        for field in self.basis:
            prolonged = prolong(field, jet.order, jet.channels, jet.independent)
            polys = {}
            for k, symbol in enumerate(jet.derivatives):
                coefficient = prolonged[symbol]
                if coefficient == 0:
                    continue
                try:
                    poly = sp.Poly(coefficient, *self.gens, domain=sp.QQ)
                except sp.polys.polyerrors.BasePolynomialError:
                    raise ConfigError(
                        f"{group.name}: the prolonged generator {field} has the coefficient "
                        f"{coefficient}, which is not a polynomial in {', '.join(map(str, self.gens))} "
                        f"with rational coefficients; the invariant search needs polynomial "
                        f"vector fields with rational coefficients") from None
                polys[k] = dict(poly.terms())
            self.fields.append(polys)
        self.diagonal = [[polys.get(k, {}).get(self._unit(k), sp.QQ.zero) for k in range(self.n)]
                         for polys in self.fields]
        self.off_diagonal = [
            {k: rest for k, poly in polys.items()
             if (rest := _padd(poly, {self._unit(k): self.diagonal[i][k]}, -1))}
            for i, polys in enumerate(self.fields)]
        self.scalings = self._diagonal_subalgebra()

    def _unit(self, k: int, length: int | None = None) -> tuple[int, ...]:
        """The exponents of the monomial ``z_k`` (over all gens, or the jet's with ``length``)."""
        offset = self.p if length is None else 0
        size = self.p + self.n if length is None else length
        return tuple(int(i == offset + k) for i in range(size))

    def _diagonal_subalgebra(self) -> list[tuple[list, list]]:
        """``[(c, λ)]``: a basis ``Σ_i c_i basis_i`` of the elements acting diagonally, with
        the weights ``λ_k`` of ``z_k`` (exact nullspace of ``Σ_i c_i φ_i^k - λ_k z_k = 0``)."""
        k_fields = len(self.fields)
        rows: dict[tuple, dict[int, object]] = {}
        for i, polys in enumerate(self.fields):
            for k, poly in polys.items():
                for monomial, value in poly.items():
                    rows.setdefault((k, monomial), {})[i] = value
        for k in range(self.n):
            rows.setdefault((k, self._unit(k)), {})[k_fields + k] = -sp.QQ.one
        matrix = {r: row for r, row in enumerate(rows.values())}
        columns = k_fields + self.n
        kernel = DomainMatrix(matrix, (len(matrix), columns), sp.QQ).nullspace().to_Matrix()
        return [([kernel[r, i] for i in range(k_fields)],
                 [kernel[r, k_fields + k] for k in range(self.n)]) for r in range(kernel.rows)]

    def weight(self, monomial: tuple[int, ...]) -> tuple:
        """The weights of a jet monomial under the diagonal elements (:attr:`scalings`)."""
        return tuple(sum((e * lam[k] for k, e in enumerate(monomial) if e), sp.S.Zero)
                     for _, lam in self.scalings)

    def diagonal_weight(self, monomial: tuple[int, ...]) -> tuple:
        """The eigenvalues of a jet monomial under the diagonal parts ``Δ(basis_i)``."""
        return tuple(sum((e * d[k] for k, e in enumerate(monomial) if e), sp.QQ.zero)
                     for d in self.diagonal)

    def kernel(self, columns: list[tuple[int, ...]], operators: list[tuple[dict, dict]]
               ) -> list[dict]:
        """The polynomials ``P`` in the span of the jet monomials ``columns`` with ``V(P) = q P``
        for every operator ``(V, q)`` (``V`` a field ``{k: polynomial}``, ``q`` a polynomial
        cofactor, ``{}`` for 0), identically in ``x, y`` and the jet (exact nullspace)."""
        base = (0,) * self.p
        rows: dict[tuple, dict[int, object]] = {}
        for index, (field, cofactor) in enumerate(operators):
            for column, monomial in enumerate(columns):
                full = (*base, *monomial)
                for k, e in enumerate(monomial):
                    if not e or k not in field:
                        continue
                    lowered = full[:self.p + k] + (e - 1,) + full[self.p + k + 1:]
                    for exponents, value in field[k].items():
                        key = (index, tuple(a + b for a, b in zip(exponents, lowered, strict=True)))
                        row = rows.setdefault(key, {})
                        row[column] = row.get(column, sp.QQ.zero) + sp.QQ(e) * value
                for exponents, value in cofactor.items():
                    key = (index, tuple(a + b for a, b in zip(exponents, full, strict=True)))
                    row = rows.setdefault(key, {})
                    row[column] = row.get(column, sp.QQ.zero) - value
        matrix = [{j: v for j, v in row.items() if v} for row in rows.values()]
        matrix = {i: row for i, row in enumerate(r for r in matrix if r)}
        if not matrix:
            return [{m: sp.QQ.one} for m in columns]
        kernel = DomainMatrix(matrix, (len(matrix), len(columns)), sp.QQ).nullspace().to_Matrix()
        return [{columns[j]: kernel[r, j] for j in range(len(columns)) if kernel[r, j] != 0}
                for r in range(kernel.rows)]

    # ------------------------------------------------------------------ what the search covers

    def coordinate_cofactors(self) -> dict[int, list[dict]]:
        """``{k: [q_i]}`` for the jet coordinates ``z_k`` that every prolonged basis field maps
        to a multiple ``q_i z_k`` (``z_k`` divides ``φ_i^k``), when some ``q_i`` is not constant
        (``u`` under ``u² ∂u``: ``2u``; ``u_x`` under ``u ∂x``: ``-u_x``); empty otherwise."""
        out, non_constant = {}, False
        for k in range(self.n):
            cofactors = []
            for polys in self.fields:
                poly = polys.get(k, {})
                if any(not exponents[self.p + k] for exponents in poly):
                    break
                cofactors.append({exponents[:self.p + k] + (exponents[self.p + k] - 1,)
                                  + exponents[self.p + k + 1:]: value
                                  for exponents, value in poly.items()})
            else:
                out[k] = cofactors
                non_constant |= any(any(exponents) for q in cofactors for exponents in q)
        return out if non_constant else {}

    def mixed_elements_split(self) -> bool:
        """Whether the classes of the diagonal parts (family 1 of :func:`find_invariants`) hold
        every relative invariant of family 2 (weights of the diagonal elements, annihilated by
        :meth:`complement`), so that family 2 need not be searched.

        True when the diagonal parts of the algebra are those of its diagonal elements and of
        elements with zero diagonal part (``Δ(g) = Δ(scalings)``: every ready group; then the
        complement is those elements), and also when each remaining element ``f`` (the spiral
        ``(x/2 - y) ∂x + (x + y/2) ∂y``) has an off-diagonal part that is linear, commutes with
        the diagonal parts of the others, and has purely imaginary eigenvalues (a rotation): then
        ``(Δ(f) + O(f)) P = c P`` splits into ``(w(f) - c + O(f)) P_w = 0`` on each class ``w``,
        and ``O(f)`` has no real nonzero eigenvalue on polynomials (its eigenvalues there are sums
        of its own), so ``P`` lies in the one class with ``w(f) = c`` and ``O(f) P = 0``."""
        echelon = _Echelon()
        for c, _ in self.scalings:
            echelon.add([sum((_fraction(ci) * _fraction(d[k])
                              for ci, d in zip(c, self.diagonal, strict=True)), Fraction(0))
                         for k in range(self.n)])
        rest = [i for i in range(len(self.fields))
                if echelon.add([_fraction(v) for v in self.diagonal[i]])]
        for i in rest:
            matrix = sp.zeros(self.n, self.n)
            for k, poly in self.off_diagonal[i].items():
                for exponents, value in poly.items():
                    if any(exponents[:self.p]) or sum(exponents) != 1:
                        return False  # depends on x, y or is not linear in the jet
                    value = _fraction(value)
                    matrix[k, exponents.index(1) - self.p] = sp.Rational(value.numerator,
                                                                         value.denominator)
            for j in rest:
                d = self.diagonal[j]
                if any(matrix[k, m] and d[k] != d[m] for k in range(self.n) for m in range(self.n)):
                    return False
            if not _imaginary_spectrum(matrix):
                return False
        return True

    def complement(self) -> list[dict[int, dict]]:
        """The prolonged fields of a basis of the elements whose diagonal part is orthogonal to
        those of the diagonal elements (``Δ(ζ) · Δ(d) = 0`` for every diagonal ``d``, the dot
        product of the weight vectors on the jet coordinates): a complement of the diagonal
        elements that depends on the algebra alone, not on its basis (with the diagonal
        elements it spans the algebra)."""
        diagonal = [[_fraction(v) for v in d] for d in self.diagonal]
        scalings = [[sum((_fraction(c) * diagonal[i][k] for i, c in enumerate(cs)), Fraction(0))
                     for k in range(self.n)] for cs, _ in self.scalings]
        rows = {r: {i: sp.QQ(int(value.numerator), int(value.denominator))
                    for i in range(len(diagonal))
                    if (value := sum((a * b for a, b in zip(diagonal[i], weights, strict=True)),
                                     Fraction(0)))}
                for r, weights in enumerate(scalings)}
        rows = {r: row for r, row in enumerate(row for row in rows.values() if row)}
        if rows:
            kernel = DomainMatrix(rows, (len(rows), len(self.fields)), sp.QQ).nullspace()
            combinations = kernel.to_Matrix().tolist()
        else:
            combinations = [[int(i == j) for j in range(len(self.fields))]
                            for i in range(len(self.fields))]
        out = []
        for combination in combinations:
            field: dict[int, dict] = {}
            for c, polys in zip(combination, self.fields, strict=True):
                if c:
                    value = _fraction(sp.Rational(c))
                    for k, poly in polys.items():
                        field[k] = _padd(field.get(k, {}), poly,
                                         sp.QQ(value.numerator, value.denominator))
            if any(field.values()):
                out.append({k: v for k, v in field.items() if v})
        return out

    def confining_scalings(self) -> tuple[list[str], set[int]] | None:
        """The off-diagonal parts' coefficients (of a monomial in ``x, y``) that scale the jet,
        ``Σ_k w_k z_k d/dz_k`` with constant weights ``w_k`` all of one sign, named, and the jet
        coordinates ``k`` that every such scaling leaves alone (``w_k = 0``); None if none does.

        The classes of the diagonal parts (family 1 of :func:`find_invariants`) hold only
        polynomials ``P`` annihilated by each such coefficient: every monomial of ``P`` has weight
        ``Σ_k e_k w_k = 0``, which with ``e_k >= 0`` and weights of one sign means ``e_k = 0``
        wherever ``w_k != 0``. So every invariant formed from them, at any degree, is a function
        of the coordinates left alone. (The special conformal ``(x² - y²) ∂x + 2xy ∂y`` has the
        coefficient of ``x`` ``-2 u_x ∂u_x - 2 u_y ∂u_y - 4 u_xx ∂u_xx - ...``: only ``u`` is
        left.)"""
        names, alone = [], set(range(self.n))
        origin = (0,) * self.p
        for field, pieces in zip(self.basis, self.off_diagonal, strict=True):
            split: dict[tuple, dict[int, dict]] = {}
            for k, poly in pieces.items():
                for exponents, value in poly.items():
                    split.setdefault(exponents[:self.p], {}).setdefault(k, {})[
                        exponents[self.p:]] = value
            for where, piece in split.items():
                if where == origin:
                    continue  # Δ(ζ) took the constant multiples of z_k: the rest mixes them
                weights = {}
                for k, poly in piece.items():
                    if set(poly) != {self._unit(k, self.n)}:
                        break
                    weights[k] = poly[self._unit(k, self.n)]
                else:
                    signs = {w > 0 for w in weights.values()}
                    if len(signs) == 1:
                        monomial = sp.Mul(*(v**e for v, e in zip(self.gens[:self.p], where,
                                                                  strict=True)))
                        names.append(f"the coefficient of {monomial} in the prolonged {field}")
                        alone -= set(weights)
        return (names, alone) if names else None

    def polynomial_coordinates(self) -> tuple[list[str], set[int]]:
        """The diagonal elements (:attr:`scalings`) that move some jet coordinate, named, and
        the jet coordinates ``k`` that occur in some monomial of weight 0 under all of them.

        Every polynomial that the search keeps without ``rational`` (the classes of weight 0)
        has weight 0 under every diagonal element, so it is a polynomial in these coordinates
        alone, at any degree. ``z_k`` occurs in no monomial of weight 0 exactly when some
        combination ``c`` of the weights is ``>= 0`` on every coordinate and ``> 0`` on ``z_k``
        (Farkas); such ``c`` are sums of the extreme rays of the cone ``{c : c · w_j >= 0}``
        (``w_j`` the weights of ``z_j``), each orthogonal to ``r - 1`` independent ``w_j`` in
        the ``r``-dimensional span of the weights, which are enumerated exactly. Under
        ``x ∂x + y ∂y`` every derivative has weight ``-|J|``, so only ``u`` occurs; under
        ``x ∂x - y ∂y`` (weights of both signs) ``u_x u_y`` has weight 0 and every coordinate
        occurs."""
        moving = [(c, lam) for c, lam in self.scalings if any(lam)]
        everything = set(range(self.n))
        if not moving:
            return [], everything
        echelon, rows = _Echelon(), []
        for _, lam in moving:
            row = [_fraction(v) for v in lam]
            if echelon.add(list(row)):
                rows.append(row)
        rank = len(rows)
        weights = {k: tuple(row[k] for row in rows) for k in range(self.n)}
        distinct = sorted({w for w in weights.values() if any(w)})
        excluded: set[tuple] = set()
        if math.comb(len(distinct), rank - 1) <= 20_000:  # else: no coordinate excluded (safe)
            for subset in itertools.combinations(distinct, rank - 1):
                matrix = DomainMatrix([[sp.QQ(v.numerator, v.denominator) for v in w]
                                       for w in subset] or [[sp.QQ.zero] * rank],
                                      (max(len(subset), 1), rank), sp.QQ)
                kernel = matrix.nullspace().to_Matrix()
                if kernel.rows != 1:
                    continue
                ray = [_fraction(v) for v in kernel.row(0)]
                for sign in (1, -1):
                    dots = {w: sign * sum((a * b for a, b in zip(ray, w, strict=True)),
                                          Fraction(0)) for w in distinct}
                    if all(dot >= 0 for dot in dots.values()):
                        excluded |= {w for w, dot in dots.items() if dot > 0}
        names = []
        for c, _ in moving:
            # Named with integer coefficients, the first positive: x ∂x + y ∂y, not -x/2 ∂x - y/2 ∂y.
            c = [_fraction(ci) for ci in c]
            lead = next(ci for ci in c if ci)
            scale = math.lcm(*(ci.denominator for ci in c)) // math.gcd(
                *(ci.numerator for ci in c if ci)) * (1 if lead > 0 else -1)
            c = [sp.Rational(ci * scale) for ci in c]
            field = VectorField(*(sum((ci * getattr(b, part) for ci, b in
                                       zip(c, self.basis, strict=True)), sp.S.Zero)
                                  for part in ("xi_x", "xi_y", "phi_u")), "",
                                {v: sum((ci * b.xi(v) for ci, b in zip(c, self.basis, strict=True)),
                                        sp.S.Zero) for v in self.jet.independent[2:]})
            names.append(str(field))
        return names, {k for k in everything if weights[k] not in excluded}

    def annihilator_rank(self, seed: int = 0) -> int:
        """A lower bound of the generic rank, on the u-jet, of the Lie algebra generated by the
        diagonal parts ``Δ(basis_i)`` and the coefficients of every monomial in ``x, y`` of the
        off-diagonal parts ``O(basis_i)``: the rank at a random rational point of these fields and
        their iterated brackets, added while the rank grows."""
        pieces: list[dict[int, dict]] = []
        for d in self.diagonal:
            if any(d):
                pieces.append({k: {self._unit(k, self.n): value} for k, value in enumerate(d)
                               if value})
        for field in self.off_diagonal:
            pieces += self._by_monomial(field)
        return self._closure_rank(pieces, seed)

    def _by_monomial(self, field: dict[int, dict]) -> list[dict[int, dict]]:
        """``field`` (jet coordinate -> polynomial in the independent variables and the jet) cut
        into its coefficients of each monomial in the independent variables: fields on the jet."""
        split: dict[tuple, dict[int, dict]] = {}
        for k, poly in field.items():
            for exponents, value in poly.items():
                split.setdefault(exponents[:self.p], {}).setdefault(k, {})[
                    exponents[self.p:]] = value
        return list(split.values())

    def free_rank(self, seed: int = 0) -> int:
        """A lower bound of the generic rank, on the u-jet, of the Lie algebra generated by the
        coefficients of every monomial in the independent variables of the prolonged
        ``basis_i`` (each whole: diagonal and off-diagonal parts together), computed like
        :meth:`annihilator_rank`.

        A function ``I`` of the u-jet alone is invariant exactly when every such coefficient
        annihilates it (``pr ζ(I) = Σ_k φ_k(x, y, z) dI/dz_k`` vanishes for all ``x, y``), so
        ``n - free_rank`` is at least the number of functionally independent invariants free of
        the independent variables, whatever their form, and equals it unless the random point
        falls on a proper algebraic subset (probability 0). :meth:`annihilator_rank` splits off
        the diagonal parts, so it bounds the searched form only: the spiral ``(x/2 - y) ∂x +
        (x + y/2) ∂y`` alone has 5 such invariants at order 2, the fifth ``log|∇u|² +
        atan(u_y/u_x)`` not rational, and ``annihilator_rank`` counts 4."""
        pieces: list[dict[int, dict]] = []
        for field in self.fields:
            pieces += self._by_monomial(field)
        return self._closure_rank(pieces, seed)

    def _closure_rank(self, pieces: list[dict[int, dict]], seed: int) -> int:
        """The rank at a random rational point of ``pieces`` (jet polynomial fields) and their
        iterated brackets, added while the rank grows."""
        rng = random.Random(seed)
        point = [Fraction(rng.choice((-1, 1)) * rng.randint(1, 10**4), rng.randint(1, 97))
                 for _ in range(self.n)]
        echelon, kept = _Echelon(), []

        def add(field) -> bool:
            if echelon.add([_pvalue(field.get(k, {}), point) for k in range(self.n)]):
                kept.append(field)
                return True
            return False

        for piece in pieces:
            add(piece)
        grown = True
        while grown and len(kept) < self.n:
            grown = False
            for a, b in itertools.combinations(list(kept), 2):
                if len(kept) == self.n:
                    break
                grown |= add(_jet_bracket(a, b, self.n))
        return len(kept)


def _jet_bracket(a: dict[int, dict], b: dict[int, dict], n: int) -> dict[int, dict]:
    """``[a, b]^k = a(b^k) - b(a^k)`` for fields ``{k: jet polynomial}`` on ``n`` coordinates."""
    out = {}
    for k in range(n):
        value: dict = {}
        for m in range(n):
            if m in a and k in b:
                value = _padd(value, _pmul(a[m], _pdiff(b[k], m)))
            if m in b and k in a:
                value = _padd(value, _pmul(b[m], _pdiff(a[k], m)), -1)
        if value:
            out[k] = value
    return out


def _imaginary_spectrum(matrix: sp.Matrix) -> bool:
    """Whether every eigenvalue of the rational ``matrix`` has real part 0 (exactly: the roots of
    the characteristic polynomial ``p`` are ``i s`` for the real roots ``s`` of ``gcd(Re p(i s),
    Im p(i s))``, counted with multiplicity)."""
    coefficients = matrix.charpoly().all_coeffs()[::-1]  # a_0, a_1, ...
    s = sp.Dummy("s")
    real = sp.Poly(sum(((-1) ** (k // 2) * a * s**k for k, a in enumerate(coefficients)
                        if k % 2 == 0), sp.S.Zero), s, domain=sp.QQ)
    imaginary = sp.Poly(sum(((-1) ** (k // 2) * a * s**k for k, a in enumerate(coefficients)
                             if k % 2 == 1), sp.S.Zero), s, domain=sp.QQ)
    common = sp.gcd(real, imaginary)
    if common.degree() != len(coefficients) - 1:
        return False
    _, factors = common.sqf_list()
    return sum(multiplicity * factor.count_roots() for factor, multiplicity in factors) \
        == common.degree()


def _normalise(poly: sp.Poly) -> sp.Poly:
    """Integer coefficients with gcd 1 and a positive leading coefficient."""
    _, primitive = poly.clear_denoms()
    primitive = primitive.primitive()[1]
    return -primitive if primitive.LC() < 0 else primitive


#: What the search forms (family 1 of :func:`find_invariants`), as the notes say it.
_SEARCHED_FORM = ("polynomial invariants and ratios of relative invariants P (pr ζ(P) = χ(ζ) P "
                  "for every ζ of the Lie algebra) whose character χ(ζ) is the weight of P's "
                  "monomials under the diagonal part of ζ (as for x ∂x + y ∂y, u ∂u), the rest "
                  "of ζ (as rotations, shears, ∂u) annihilating P")


def find_invariants(group: LieGroupAction | str, order: int, max_degree: int = 3,
                    rational: bool = True, seed: int = 0,
                    channels: int = 1, method: str = "auto") -> SymbolicInvariants:
    """Functionally independent differential invariants of order ``<= order`` (see module doc).

    Args:
        group: a :class:`LieGroupAction` or the name of a ready one.
        order: jet order ``n``, at most :data:`MAX_ORDER` (:data:`MAX_FRAME_ORDER` for the
            moving frame).
        max_degree: polynomials of total degree ``1 .. max_degree`` in ``u, u_x, ...`` are
            searched (for ratios, numerator and denominator each); an integer >= 1, with at most
            :data:`MAX_SEARCH_MONOMIALS` such monomials.
        rational: also form ratios of relative invariants of equal character.
        seed: seed of the random point of the rank tests.
        channels: ``C`` dependent variables ``u1 ... uC`` transformed alike (see :func:`prolong`):
            the joint invariants of the channels; at most :data:`MAX_CHANNELS`.
        method: ``"search"``, the polynomial and rational search in the ``u``-jet (free of the
            independent variables); ``"frame"``, the moving frame
            (:func:`left_invariant_derivatives`; ``max_degree`` and ``rational`` unused);
            ``"auto"`` (default): the frame for a group acting on more than ``x, y`` (on M2 the
            invariants depend on ``θ`` through ``cos θ, sin θ``, which the search does not
            form), the search otherwise, and also where the frame refuses the group for not
            acting freely and transitively on its variables (more generators than variables:
            SE(2) x θ-shifts), with a note saying so; ``"frame"`` then refuses it, naming
            ``method='search'``.

    The result does not depend on the basis the generators give of their Lie algebra: the
    search works on the span (see the module doc). Where it finds fewer than expected, a note
    says whether a higher ``max_degree`` can find more (docs/symbolic.md, "Sound, not always
    complete"). Arguments beyond the bounds are a ConfigError naming them, before any
    computation.
    """
    start = time.perf_counter()
    group = get_group(group)
    if method not in ("auto", "search", "frame"):
        raise ConfigError(f"method must be 'auto', 'search' or 'frame', got {method!r}")
    fallback = None
    if method == "frame" or (method == "auto" and len(group.variables) > 2):
        try:
            result = left_invariant_derivatives(group, order, channels=channels, seed=seed)
            # generators not closed under the bracket (∂x and the M2 rotation generate SE(2)):
            # the search says so, and the frame's counts are the generated group's too
            result.notes = _bracket_note(group) + list(result.notes)
            return result
        except _NotFreeAndTransitive as refusal:
            names = ", ".join(v.name for v in group.variables)
            if method == "frame":
                raise ConfigError(f"{refusal}; method='search' finds the invariants free of "
                                  f"{names}") from None
            # The search needs neither freeness nor transitivity, and finds every invariant
            # free of the variables (SE(2) x θ-shifts: 9 of 9 at order 2); it was an error that
            # did not name it, and `eqpdenet symbolic` could not tabulate such a group.
            fallback = (f"method='auto' used the search: the moving frame does not apply "
                        f"({refusal}); only invariants free of {names} are searched")
    _require_search_size(order, channels, MAX_ORDER, "the search's")
    require_int(max_degree, "max_degree", 1)
    jet = JetSpace(order, channels, group.variables)
    gens = jet.derivatives
    searched = math.comb(len(gens) + max_degree, max_degree) - 1
    require(searched <= MAX_SEARCH_MONOMIALS, "max_degree",
            f"max_degree={max_degree} on the {len(gens)} jet coordinates of order {order}"
            f"{f' of {channels} channels' if channels > 1 else ''} is {searched:,} monomials to "
            f"search, more than the bound of {MAX_SEARCH_MONOMIALS:,} (the search grows with "
            f"them: 3,002 take 4 s); lower max_degree or the order")
    action = _JetAction(group, jet)
    monomials = [tuple(combo.count(k) for k in range(len(gens)))
                 for degree in range(1, max_degree + 1)
                 for combo in itertools.combinations_with_replacement(range(len(gens)), degree)]
    # (kind, class) -> relative invariants of one character: ratios within a key are invariant.
    families: dict[tuple, list[dict]] = {}
    zero_keys = set()
    # 1. Classes of the diagonal parts, annihilated by the off-diagonal parts.
    classes: dict[tuple, list[tuple[int, ...]]] = {}
    for monomial in monomials:
        classes.setdefault(action.diagonal_weight(monomial), []).append(monomial)
    for weight, columns in classes.items():
        key = ("diagonal", weight)
        families[key] = action.kernel(columns, [(f, {}) for f in action.off_diagonal if f])
        if not any(weight):
            zero_keys.add(key)
    # 2. Where those classes might miss some: relative invariants across them, of the weights
    # of the diagonal elements and annihilated by a complement of those elements.
    by_scaling: dict[tuple, list[tuple[int, ...]]] = {}
    for monomial in monomials:
        by_scaling.setdefault(action.weight(monomial), []).append(monomial)
    split = action.mixed_elements_split()
    if not split:
        complement = [(f, {}) for f in action.complement()]
        for weight, columns in by_scaling.items():
            key = ("complement", weight)
            families[key] = action.kernel(columns, complement)
            if not any(weight):
                zero_keys.add(key)
    # 3. Relative invariants whose cofactors are those of products of jet coordinates.
    cofactors = action.coordinate_cofactors()
    if cofactors:
        characters: dict[tuple, tuple] = {}
        for monomial in monomials:
            if all(k in cofactors for k, e in enumerate(monomial) if e):
                character = [{} for _ in action.fields]
                for k, e in enumerate(monomial):
                    for i in range(len(action.fields)) if e else ():
                        character[i] = _padd(character[i], cofactors[k][i], e)
                if any(any(exponents) for q in character for exponents in q):
                    key = ("cofactor", action.weight(monomial), tuple(map(_key, character)))
                    characters.setdefault(key, tuple(character))
        for key, character in characters.items():
            families[key] = action.kernel(by_scaling[key[1]], [
                (f, q) for f, q in zip(action.fields, character, strict=True)])
    candidates: list[_Rational] = []
    for key, solutions in families.items():
        polys = [sp.Poly.from_dict(solution, *gens, domain=sp.QQ) for solution in solutions]
        relative = sorted({_normalise(p) for p in polys},
                          key=lambda p: (p.total_degree(), len(p.terms()), str(p.as_expr())))
        if key in zero_keys:
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
    notes = _bracket_note(group) + ([fallback] if fallback else [])
    translations = _has_translations(group)
    if len(kept) < expected and (not translations or len(jet.independent) > 2):
        notes.append(_unsearched_note(action, len(kept), expected, max_degree, rational,
                                      split and not cofactors, seed, translations,
                                      frame=fallback is None))
    elif len(kept) < expected:
        notes.append(_incomplete_note(action, len(kept), expected, max_degree, rational,
                                      split and not cofactors, seed))
    return SymbolicInvariants(group, order, max_degree, kept, expected, jet.dimension,
                              expected_orbit, time.perf_counter() - start, notes, channels)


def _require_search_size(order: int, channels: int, max_order: int, whose: str) -> None:
    """ConfigErrors naming ``order`` or ``channels`` beyond the bounds (:data:`MAX_ORDER`,
    :data:`MAX_FRAME_ORDER`, :data:`MAX_CHANNELS`), before any computation."""
    require_int(order, "order", 0)
    require_int(channels, "channels", 1)
    require(order <= max_order, "order",
            f"{order} is more than the bound of {max_order} ({whose} cost grows steeply with the "
            f"order; the ready groups use orders 1 to 3)")
    require(channels <= MAX_CHANNELS, "channels",
            f"{channels} is more than the bound of {MAX_CHANNELS} ({whose} cost grows steeply "
            f"with the channels: 4 take seconds at order 2, more take minutes to hours)")


def _unsearched_note(action: _JetAction, found: int, expected: int, max_degree: int,
                     rational: bool, structured: bool, seed: int, translations: bool,
                     frame: bool = True) -> str:
    """Why ``found < expected`` where some invariants may depend on independent variables, which
    the search does not form: a group without both translations (they may depend on ``x, y``)
    or one acting on more variables (on ``θ``).

    Both parts are said: how many invariants free of the independent variables exist
    (:meth:`_JetAction.free_rank`) against how many were found, with
    :func:`_incomplete_note`'s advice aimed at that count where some of them are missing, and
    how many of ``expected`` may depend on the variables. (The note used to put the whole
    shortfall on the variables: SO(2) alone at order 2 and ``max_degree=2`` finds 4 of the 5
    x, y-free invariants, the fifth ``∇uᵀ H ∇u`` being of degree 3, and 7 in all.)"""
    names = ", ".join(v.name for v in action.jet.independent)
    depend = action.jet.independent if not translations else action.jet.independent[2:]
    depend_names = ", ".join(v.name for v in depend)
    # Those free of the variables are among the expected ones: the bound never exceeds it
    # (but for a random point of probability 0).
    rank = action.free_rank(seed)
    free = min(action.n - rank, expected)
    why = ("the group does not contain both translations, so" if not translations else
           "the group acts on more than x, y, so")
    # ``frame``: whether the moving frame applies (False where method='auto' fell back from it).
    where = ("method='frame' finds those" if len(action.jet.independent) > 2 and frame else
             "the search does not form them")
    head = (f"found {found} of {expected}: {why} only invariants free of {names} were searched; "
            f"at most {free} of the {expected} {'is' if free == 1 else 'are'} free of them "
            f"(the coefficients of each monomial in {names} of the prolonged generators, which "
            f"annihilate every such invariant, have rank {rank} on the "
            f"{_plural(action.n, 'coordinate', 'coordinates')} of the u-jet), so at least "
            f"{expected - free} {'depends' if expected - free == 1 else 'depend'} on "
            f"{depend_names} ({where})")
    if found >= free:
        return f"{head}; the search found every one free of {names} ({found})"
    return (f"{head}; of those free of {names}, "
            + _incomplete_note(action, found, free, max_degree, rational, structured, seed))


def _incomplete_note(action: _JetAction, found: int, expected: int, max_degree: int,
                     rational: bool, structured: bool, seed: int) -> str:
    """Why ``found < expected``, and whether a higher ``max_degree`` can help.

    Every invariant the search forms from the classes of the diagonal parts is annihilated by
    those parts and by the coefficients of the off-diagonal parts, so at most ``dim - rank`` of
    them are functionally independent (:meth:`_JetAction.annihilator_rank`). Where the search
    forms nothing else (``structured``) and has found that many, no degree finds more of its form;
    likewise where it has found as many as the coordinates that the off-diagonal parts' scalings
    leave alone (:meth:`_JetAction.confining_scalings`); otherwise a higher degree may, and the
    note says so, but never advises a ``max_degree`` that :data:`MAX_SEARCH_MONOMIALS` refuses
    (it says that bound is reached instead). Where every diagonal part is zero the search forms
    polynomials only (no ratio), and the note says that the missing invariants may be rational,
    which no degree finds. Without ``rational`` the kept polynomials use only the coordinates
    that the diagonal elements leave in a monomial of weight 0
    (:meth:`_JetAction.polynomial_coordinates`); where the search has found that many, the note
    says to pass ``rational=True``, not to raise the degree."""
    head = f"found {found} of {expected}"
    # A higher degree is advised only where MAX_SEARCH_MONOMIALS lets find_invariants take it.
    searched = math.comb(action.n + max_degree + 1, max_degree + 1) - 1
    at_bound = searched > MAX_SEARCH_MONOMIALS
    largest = (f"max_degree={max_degree} is the largest that the bound of "
               f"{MAX_SEARCH_MONOMIALS:,} searched monomials allows on the {action.n} "
               f"coordinates of the u-jet ({max_degree + 1} would search {searched:,}), so no "
               f"allowed max_degree searches further")
    other_forms = ("such as ratios of relative invariants with other characters or with "
                   "non-constant cofactors, or functions that are not rational")
    if not rational:
        # Without ratios only polynomials of weight 0 are kept: a scaling confines them to the
        # coordinates of weight 0, whatever the degree ("raise max_degree" was advised for the
        # scaling group, whose only polynomial invariants are functions of u).
        names, alone = action.polynomial_coordinates()
        if names and found >= len(alone):
            left = ", ".join(str(action.gens[action.p + k]) for k in sorted(alone)) or "none"
            return (f"{head}: with rational=False the search keeps only polynomials of weight 0 "
                    f"under the diagonal elements ({'; '.join(names)}), whose weights leave "
                    f"{_plural(len(alone), 'jet coordinate', 'jet coordinates')} ({left}) in a "
                    f"monomial of weight 0, so at most {len(alone)} polynomial "
                    f"{'invariant is' if len(alone) == 1 else 'invariants are'} functionally "
                    f"independent and no max_degree finds more: the other "
                    f"{expected - found} {'is' if expected - found == 1 else 'are'} not "
                    f"polynomial; pass rational=True (ratios of relative invariants)")
    if structured:
        confining = action.confining_scalings()
        if confining is not None and found >= len(confining[1]):
            names, alone = confining
            left = ", ".join(str(action.gens[action.p + k]) for k in sorted(alone)) or "none"
            scales = "scales" if len(names) == 1 else "each scale"
            return (f"{head}: the search forms {_SEARCHED_FORM}; {' and '.join(names)} {scales} "
                    f"the jet coordinates with weights of one sign, so every such P is a "
                    f"polynomial in the coordinates left alone ({left}), and at most "
                    f"{_plural(len(alone), 'invariant', 'invariants')} of the searched form "
                    f"{'is' if len(alone) == 1 else 'are'} functionally independent: no "
                    f"max_degree finds more: "
                    f"{_plural(expected - found, 'invariant is', 'invariants are')} of another "
                    f"form (such as ratios of relative invariants whose cofactors depend on "
                    f"{', '.join(v.name for v in action.jet.independent)}, as Δu / |∇u|² under "
                    f"the conformal group, or functions that are not rational)")
        rank = action.annihilator_rank(seed)
        bound = action.n - rank
        if found >= bound:
            return (f"{head}: the search forms {_SEARCHED_FORM}; the vector fields that annihilate "
                    f"all of these have rank {rank} on the {action.n} coordinates of the u-jet, "
                    f"so at most {bound} of them are functionally independent and no max_degree "
                    f"finds more: {_plural(expected - found, 'invariant is', 'invariants are')} "
                    f"of another form ({other_forms})")
        if not any(any(d) for d in action.diagonal):
            # One class, of weight 0: no ratio is formed, rational=True or not, so the bound
            # (which counts rational invariants too) says nothing about polynomial ones.
            only = ("every diagonal part is zero here, so the search forms polynomial "
                    "invariants only, no ratios")
            rational_ones = ("the missing ones may be rational (ratios of relative invariants "
                             "with non-constant cofactors, as the curvature of the level lines "
                             "under the rotation and u ∂x), which no max_degree forms: write "
                             "them down and check them with is_invariant")
            if at_bound:
                return (f"{head}: up to {bound} functionally independent invariants may exist, "
                        f"but {only}; {largest}; {rational_ones}")
            return (f"{head}: raise max_degree (now {max_degree}): up to {bound} functionally "
                    f"independent invariants may exist, but {only}: a higher max_degree finds "
                    f"more only where they are polynomials; {rational_ones}")
        if at_bound:
            return (f"{head}: up to {bound} functionally independent invariants of the searched "
                    f"form may exist ({_SEARCHED_FORM}), but {largest}"
                    + ("; allow rational invariants (rational=True)" if not rational else
                       "; write the missing ones down and check them with is_invariant"))
        return (f"{head}: raise max_degree (now {max_degree})"
                + ("" if rational else " or allow rational invariants")
                + f": up to {bound} functionally independent invariants of the searched form may "
                  f"exist ({_SEARCHED_FORM})")
    return (f"{head}: the search forms {_SEARCHED_FORM}, and for this group also relative "
            f"invariants across those classes or with the cofactors of products of jet "
            f"coordinates (as u_x under u ∂x); for such a group it is not proven whether a higher "
            f"max_degree finds more" + ("" if rational else " (or rational=True)")
            + (f" ({largest})" if at_bound else "")
            + f", and the missing invariants may be of another form ({other_forms})")


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _has_translations(group: LieGroupAction) -> bool:
    """Whether ``∂x`` and ``∂y`` lie in the Lie algebra (the span of the generators and their
    brackets, not only among the generators as given)."""
    return all(group.contains(field) for field in _TRANSLATIONS)


# ----------------------------------------------------------------------------- moving frame


@dataclasses.dataclass(frozen=True)
class MovingFrame:
    """The left-invariant frame ``A_1 ... A_p`` of a group acting freely and transitively on the
    independent variables (:func:`left_invariant_frame`).

    Attributes:
        group: the group.
        variables: the independent variables ``x^1 ... x^p`` (``x, y, θ`` on M2).
        fields: ``A_i`` as its components ``(a_i^1, ..., a_i^p)`` along ``variables``; ``A_i`` is
            ``d_{x^i}`` at the origin. On M2: ``A1 = cos θ d_x + sin θ d_y``,
            ``A2 = -sin θ d_x + cos θ d_y``, ``A3 = d_θ``.
    """

    group: LieGroupAction
    variables: tuple[sp.Symbol, ...]
    fields: tuple[tuple[sp.Expr, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The operators' names, ``A1, A2, ...`` (one per field)."""
        return tuple(f"A{i + 1}" for i in range(len(self.fields)))

    def apply(self, i: int, expr: sp.Expr, jet: JetSpace) -> sp.Expr:
        """``A_i expr = sum_k a_i^k D_k expr``: ``A_i`` acting on a function on the jet space as a
        total derivative (``D_θ`` includes the explicit dependence on ``θ``, e.g. of ``cos θ``)."""
        return sp.expand(sum((a * jet.total_derivative(expr, k)
                              for k, a in enumerate(self.fields[i]) if a != 0), sp.S.Zero))

    def bracket(self, i: int, field: VectorField) -> tuple[sp.Expr, ...]:
        """``[A_i, zeta]`` (components along ``variables``, reduced on the circle): zero for every
        generator ``zeta`` of the group (the frame commutes with the action)."""
        a, xi = self.fields[i], [field.xi(v) for v in self.variables]
        return tuple(reduce_on_the_circle(sp.expand(
            sum(a[k] * sp.diff(xi[j], v) - xi[k] * sp.diff(a[j], v)
                for k, v in enumerate(self.variables))))
            for j in range(len(self.variables)))

    def commutator(self, i: int, j: int) -> tuple[sp.Expr, ...]:
        """The coefficients ``c^k`` of ``[A_i, A_j] = sum_k c^k A_k`` (constants: the structure
        constants of the group; on M2 ``[A1, A3] = -A2``, ``[A2, A3] = A1``, ``[A1, A2] = 0``)."""
        a, b = self.fields[i], self.fields[j]
        components = sp.Matrix([sum(a[k] * sp.diff(b[m], v) - b[k] * sp.diff(a[m], v)
                                    for k, v in enumerate(self.variables))
                                for m in range(len(self.variables))])
        frame = sp.Matrix(self.fields).T  # column k: A_k
        return tuple(sp.trigsimp(sp.simplify(c)) for c in frame.LUsolve(components))

    def __str__(self) -> str:
        lines = []
        for name, components in zip(self.names, self.fields, strict=True):
            field = VectorField(components[0], components[1], 0, name,
                                dict(zip(self.variables[2:], components[2:], strict=True)))
            lines.append(f"{name} = {field}")
        return "\n".join(lines)


def _real_exp(matrix: sp.Matrix) -> sp.Matrix:
    """``exp(matrix)``, written with real functions (``cos s``, not ``exp(i s)``)."""
    value = matrix.exp()
    if value.has(sp.I):
        value = value.applyfunc(lambda e: sp.simplify(e.rewrite(sp.cos)))
    return value


class _NotFreeAndTransitive(ConfigError):
    """The moving frame's refusal of a group that does not act freely and transitively on its
    independent variables (a span other than ``p`` generators, brackets outside them, no
    transitivity at the origin): ``find_invariants(method="auto")`` then falls back to the
    search, which needs neither."""


def left_invariant_frame(group: LieGroupAction | str) -> MovingFrame:
    """The vector fields on the independent variables that commute with every generator of
    ``group``, one for each variable: the left-invariant frame (solved, then verified).

    The group must act freely and transitively on its ``p`` independent variables (``p``
    generators, spanning every direction at the origin), by affine generators ``zeta = J v + b``
    (``J`` constant; SE(2) on M2: ``d_x, d_y, -y d_x + x d_y + d_θ``), not changing ``u``.
    Then ``g(s) = exp(s_1 zeta_1) ... exp(s_p zeta_p)`` (translations outermost) reaches every
    point ``m = g(s) . 0`` once, and ``A_i(m) = dg(s) e_i``: ``dg = exp(s_1 J_1) ... exp(s_p J_p)``
    is the differential of ``g``, and ``exp(s zeta)`` acts on ``(v, 1)`` as ``exp(s [[J, b],
    [0, 0]])``. Such a field is invariant under every group element, i.e. ``[A_i, zeta] = 0`` for
    every generator; this is checked exactly (:meth:`MovingFrame.bracket`, an ``AssertionError``
    would be a bug). On M2 (``θ`` among the variables, the orientation on the circle) every
    component must be 2π-periodic in ``θ``, else the action is not free on M2 and a
    ConfigError names the component (``cos(θ/2)`` for ``-y d_x + x d_y + 2 d_θ``,
    ``exp(θ)`` for ``x d_x + y d_y + d_θ``): see :func:`_require_periodic_frame`.
    """
    group = get_group(group)
    variables = group.variables
    p, names = len(variables), ", ".join(v.name for v in variables)
    if any(field.phi_u != 0 for field in group.fields):
        raise ConfigError(f"{group.name}: the moving frame needs a group that does not change "
                          f"the values of u (phi_u = 0 for every generator)")
    origin = dict.fromkeys(variables, 0)
    for field in group.fields:
        xi = [field.xi(v) for v in variables]
        jacobian = sp.Matrix([[sp.diff(c, v) for v in variables] for c in xi])
        if any(c.has(u) for c in xi) or not all(e.is_number for e in jacobian):
            raise ConfigError(f"{group.name}: the moving frame needs affine generators "
                              f"(coefficients of degree <= 1 in {names}), "
                              f"got {field}")
    # A basis of the Lie algebra: a generator that is a combination of the others adds nothing,
    # and brackets the generators leave out join it (∂x and the M2 rotation generate SE(2)).
    basis = group.basis
    if group.brackets and len(basis) > p:
        bracket = group.brackets[0]
        raise _NotFreeAndTransitive(
            f"{group.name}: the generators are not closed under the Lie bracket ({bracket.name} "
            f"= {bracket} is not a combination of them): they generate a group of more than {p} "
            f"dimensions, which cannot act freely on {names}")
    if len(basis) != p:
        given = ("" if len(basis) == group.dimension else
                 f" ({group.dimension} given, linearly dependent)")
        raise _NotFreeAndTransitive(
            f"{group.name}: the moving frame needs a group acting freely and transitively on its "
            f"independent variables ({names}), so {p} linearly independent generators; they span "
            f"{len(basis)}{given}")
    linear, offsets = [], []
    for field in basis:
        xi = [field.xi(v) for v in variables]
        linear.append(sp.Matrix([[sp.diff(c, v) for v in variables] for c in xi]))
        offsets.append(sp.Matrix([c.xreplace(origin) for c in xi]))
    if sp.Matrix.hstack(*offsets).rank() != p:
        raise _NotFreeAndTransitive(f"{group.name}: the generators do not span every direction "
                                    f"at the origin, so the action is not free and transitive "
                                    f"there")
    times = [sp.Dummy(f"s{i}", real=True) for i in range(p)]
    point, differential = sp.zeros(p, 1), sp.eye(p)
    # exp(s_i zeta_i) applied innermost first; translations (J = 0) outermost.
    order = sorted(range(p), key=lambda i: not linear[i].is_zero_matrix)
    for i in reversed(order):
        augmented = sp.zeros(p + 1, p + 1)
        augmented[:p, :p], augmented[:p, p] = linear[i], offsets[i]
        flow = _real_exp(times[i] * augmented)
        point = flow[:p, :p] * point + flow[:p, p]
        differential = flow[:p, :p] * differential
    solutions = sp.solve(list(point - sp.Matrix(variables)), times, dict=True)
    if len(solutions) != 1:
        raise ConfigError(f"{group.name}: could not invert the group's coordinates "
                          f"s -> g(s) . 0 (solutions: {solutions})")
    frame_matrix = differential.xreplace(solutions[0]).applyfunc(sp.simplify)
    fields = tuple(tuple(frame_matrix[:, i]) for i in range(p))
    frame = MovingFrame(group, variables, fields)
    if theta in variables:
        _require_periodic_frame(frame)
    for i in range(p):
        for field in group.fields:
            if any(c != 0 for c in frame.bracket(i, field)):  # pragma: no cover - a bug
                raise AssertionError(f"{frame.names[i]} does not commute with {field}")
    return frame


def _turned(expr: sp.Expr) -> sp.Expr | None:
    """``expr`` at ``θ + 2π`` where that differs from ``expr`` (it is not a function of the
    orientation ``θ`` on the circle: ``cos(θ/2)`` gives ``-cos(θ/2)``, ``exp(θ)`` gives
    ``exp(θ + 2π)``, ``θ`` itself ``θ + 2π``); None where it is the same (``cos θ``,
    ``cos 2θ``, anything free of ``θ``)."""
    if not expr.has(theta):
        return None
    shifted = expr.xreplace({theta: theta + 2 * sp.pi})
    return None if sp.simplify(shifted - expr) == 0 else shifted


def _with_pi(text: str) -> str:
    """``text`` (of :func:`unicode_formula`) with ``2 pi`` written ``2π``."""
    return re.sub(r"\bpi\b", "π", re.sub(r"(\d) pi\b", r"\1π", text))


def _require_periodic_frame(frame: MovingFrame) -> None:
    """ConfigError unless every component of the frame is 2π-periodic in ``θ``.

    The frame is derived on the cover, ``θ`` a real number. Where a component differs at ``θ``
    and ``θ + 2π`` (one point of M2), two group elements take the origin to that point with
    different differentials: the action on M2 = R² x S¹ is not free (an element that turns ``θ``
    by a multiple of 2π fixes the origin and is not the identity; ``-y ∂x + x ∂y + 2 ∂θ``
    turned by π, ``x ∂x + y ∂y + ∂θ`` by 2π). The frame is then no field on M2, and the
    derivatives along it are no functions on M2 and are not invariant under that element (the
    first gives ``cos(θ/2) u_x + ...``, flipped by it). Nothing of the frame's form is left to
    return, so it is refused (it was returned, "4 of 4" and complete, and only
    compile_invariants refused it)."""
    for name, components in zip(frame.names, frame.fields, strict=True):
        for component in components:
            shifted = _turned(component)
            if shifted is None:
                continue
            field = VectorField(components[0], components[1], 0, name,
                                dict(zip(frame.variables[2:], components[2:], strict=True)))
            raise ConfigError(
                f"{frame.group.name}: the moving frame has {name} = {field}, and "
                f"{unicode_formula(component)} is not 2π-periodic in θ (at θ + 2π it is "
                f"{_with_pi(unicode_formula(shifted))}): the group does not act freely on M2 = R² x S¹ "
                f"(an element that turns θ by a multiple of 2π fixes the origin and is not the "
                f"identity), so derivatives along this frame are not functions on M2 and not "
                f"invariant under that element; an independent variable on the line rather "
                f"than the circle takes another name than θ")


def left_invariant_derivatives(group: LieGroupAction | str, order: int, channels: int = 1,
                               seed: int = 0) -> SymbolicInvariants:
    """The differential invariants of order ``<= order`` by the moving frame: ``u`` and its
    symmetrised iterated derivatives along the left-invariant frame (:func:`left_invariant_frame`).

    For a multi-index ``i_1 <= ... <= i_k`` (``k <= order``) the invariant is the mean of
    ``A_{j_1} ... A_{j_k} u`` over the distinct orderings ``j`` of ``i``, each ``A_j`` acting as a
    total derivative (:meth:`MovingFrame.apply`); named ``A<i_1...i_k>u`` (``A13u``). On M2:
    ``u, A1u, A2u, A3u, A11u, A12u, A13u, A22u, A23u, A33u`` with ``A13u = (A1 A3 + A3 A1) u / 2
    = A1 A3 u + A2 u / 2``: ``A1`` and ``A3`` do not commute (``[A1, A3] = -A2``), and the mean
    does not depend on a choice of order (the frame's analogue of the Hessian). Any fixed choice
    of orderings is a complete set too: they differ by derivatives of lower order.

    Each ``A_J u`` is invariant because the frame commutes with the action; this is verified
    exactly (:func:`criterion` on every generator, modulo ``cos² + sin² = 1``; a failure would
    be a bug and raises ``AssertionError``). Their number is ``C binom(n + p, p) = dim J^(n) -
    p``, the expected count of a free action; the Jacobian rank of the set (at a random rational
    point with rational ``cos θ, sin θ``) is compared with it, and a note says if they differ.
    With ``channels = C`` every channel's derivatives are included (joint invariants), named
    ``A13u2`` etc. ``order`` is at most :data:`MAX_FRAME_ORDER`, ``channels`` at most
    :data:`MAX_CHANNELS` (a ConfigError before any computation).
    """
    start = time.perf_counter()
    group = get_group(group)
    _require_search_size(order, channels, MAX_FRAME_ORDER, "the moving frame's")
    frame = left_invariant_frame(group)
    p = len(frame.variables)
    jet = JetSpace(order, channels, frame.variables)
    ordered: dict[tuple[int, tuple[int, ...]], sp.Expr] = {}

    def product(channel: int, word: tuple[int, ...]) -> sp.Expr:
        """``A_{word[0]} A_{word[1]} ... u`` (the last one applied first)."""
        key = (channel, word)
        if key not in ordered:
            ordered[key] = (jet.dependent[channel] if not word else
                            frame.apply(word[0], product(channel, word[1:]), jet))
        return ordered[key]

    expressions, names = [], []
    for channel, dependent in enumerate(jet.dependent):
        suffix = dependent.name[1:]
        for k in range(order + 1):
            for multi_index in itertools.combinations_with_replacement(range(p), k):
                words = sorted(set(itertools.permutations(multi_index)))
                mean = sum((product(channel, w) for w in words), sp.S.Zero) / len(words)
                expressions.append(sp.collect(sp.expand(mean), jet.derivatives))
                names.append(f"A{''.join(str(i + 1) for i in multi_index)}u{suffix}" if k
                             else dependent.name)
    prolonged = group.prolonged(order, channels, frame.variables)
    for name, expr in zip(names, expressions, strict=True):
        for field, coefficients in zip(group.fields, prolonged, strict=True):
            if _apply_prolonged(expr, coefficients) != 0:  # pragma: no cover - a bug
                raise AssertionError(f"{name} = {expr} is not invariant under {field}")
    orbit = group.orbit_dimension(order, seed, channels)
    rank = jacobian_rank(expressions, jet.coordinates, seed)
    notes = [] if rank == len(expressions) == jet.dimension - orbit else [
        f"{len(expressions)} derivatives along the frame, Jacobian rank {rank}, "
        f"expected {jet.dimension - orbit}"]
    return SymbolicInvariants(group, order, None, expressions, jet.dimension - orbit,
                              jet.dimension, orbit, time.perf_counter() - start, notes, channels,
                              "frame", tuple(names), frame)


# ----------------------------------------------------------------------------- compilation


_SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def _readable_numbers(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every number written in more than 16 characters (``1e300`` read as a
    301-digit integer) as a float of 4 significant digits, for labels only: what is computed
    keeps the exact value."""
    long = {n: sp.Float(n, 4) for n in expr.atoms(sp.Number) if len(str(n)) > 16}
    return expr.xreplace(long) if long else expr


def unicode_formula(expr: sp.Expr) -> str:
    """One-line unicode form: ``u_x² + u_y²``, ``(u_x² + u_y²)/(u_xx + u_yy)``, ``u_x⁻²``; an
    exponent that is not an integer keeps its form after ``^`` (``u_x^(1/3)``); a number of more
    than 16 characters in 4 significant digits (``1.000e+300``)."""
    text = sp.sstr(_readable_numbers(expr))
    # Integer exponents, ``**2`` and ``**(-2)``, as superscripts; any other power as ``^``
    # (``*`` becomes a space below, so a ``**`` left over would read as a double space).
    text = re.sub(r"\*\*(?:(\d+)|\((-\d+)\))(?![\d.])",
                  lambda m: (m.group(1) or m.group(2)).translate(_SUPERSCRIPTS), text)
    return text.replace("**", "^").replace("*", " ")


def _torch_polynomial(expr: sp.Expr) -> Callable:
    """``expr`` (a polynomial in the jet symbols, and in ``cos θ, sin θ`` on M2) as
    ``f(d) -> tensor``, by walking its tree (``d.u_x``, ``d.cos``: an
    :class:`~eqpdenet.pde.m2.M2Derivatives` view on M2)."""
    if isinstance(expr, (sp.cos, sp.sin)) and expr.args[0] == theta:
        attribute = "cos" if isinstance(expr, sp.cos) else "sin"
        return lambda d: getattr(d, attribute)
    if expr.is_number:
        # Any finite real constant is a coefficient (1/3, 0.5, π, √2): torch computes in floats.
        try:
            value = float(expr)
        except TypeError:
            raise ConfigError(f"cannot compile the constant {_shown(expr)}: coefficients must "
                              f"be real numbers") from None
        if not math.isfinite(value):
            # a number SymPy holds exactly (1e400) may still be beyond float64: say which
            exact = expr.is_finite and expr.is_real
            shown = _shown(sp.N(expr, 4) if exact else expr)
            raise ConfigError(f"cannot compile the constant {shown}: " + (
                "it is beyond float64 (at most 1.8e+308), in which torch computes it" if exact
                else "coefficients must be finite"))
        return lambda d: value
    if expr.is_Symbol:
        name = expr.name
        return lambda d: getattr(d, name)
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
                       order: int | None = None, register: bool = False,
                       invariant_under: Sequence[str] | None = None,
                       replace: bool = False) -> InvariantSet:
    """An :class:`~eqpdenet.pde.invariants.InvariantSet` computing the expressions with torch.

    Each expression is split into numerator and denominator (``sympy.fraction`` of its
    ``together`` form); a ratio is evaluated as ``safe_ratio(numerator, denominator, eps)``.
    ``eps`` is the one the layer passes (``EulerConv(ratio_eps=...)``) unless ``ratio_eps`` fixes
    it for this set. Invariants equal to one of the paper's (``u``, ``laplacian``, ...) get its
    name (so ``PDELayer.build(init="heat")`` finds the Laplacian); others are ``{name}_{k}``,
    unless the result names them (the moving frame's ``A13u``).
    With ``register``, the set is also registered by ``name`` (see
    :func:`eqpdenet.pde.invariants.register_invariant_set`; a name already registered is refused
    before any work unless ``replace``, which only ``register`` takes). Either way the set
    pickles (``torch.save`` of a model holding it) as the recipe that compiles it again, never
    by name: loaded in another process it computes the same invariants whatever that process
    registered under ``name``, and it is not registered there.

    Everything is checked here, before any use (a ``ConfigError`` naming the cause): ``name`` is
    a non-empty string; the expressions use only jet coordinates (matched by name, so a plain
    ``sp.Symbol("u_x")`` is ``u_x``) and numbers: any other symbol (a parameter ``a`` left
    unsubstituted, the position ``x, y``, ``v_x``) is refused, naming every such symbol; a
    coefficient may be any finite real number (``1/3``, ``0.5``, ``π``, ``√2``; torch evaluates
    it as a float); ``order``, where given, is at least the highest derivative used (it defaults
    to that), and at most :data:`MAX_ORDER` (as is the highest derivative used). A mixed
    derivative may be named in any order (``u_yx`` is ``u_xy``).

    ``invariant_under`` (plane only) declares the transformations (translations, rotations,
    scalings) every invariant is invariant under, which ``EqPdeNet.quarter_turn_invariant`` and
    the tests read (:attr:`~eqpdenet.pde.invariants.InvariantSet.invariant_under`). It is verified
    exactly, by the infinitesimal criterion (:func:`is_invariant` under ``se2``, ``scaling``), and
    a claim that fails is refused; by default (None) it is derived the same way. A ratio with a
    fixed ``ratio_eps`` divides with the absolute ``eps`` (``a b / (b² + eps²)``), which is not
    scale invariant, so such a set is never declared invariant under scalings.

    Expressions in the jet of M2 (``u_θ``, ``u_xθ``, ``cos θ``, ``sin θ``: the moving frame's
    result for ``se2_m2``) give an :class:`~eqpdenet.pde.m2.M2InvariantSet`, called on an M2
    jet ``(..., 10, N, H, W)`` (:class:`~eqpdenet.pde.m2.M2Jet`); they must be polynomials in
    the jet and ``cos θ, sin θ`` of order <= 2.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an invariant set's name must be a non-empty string, got {name!r}")
    for flag, value in (("register", register), ("replace", replace)):
        if not isinstance(value, bool):
            raise ConfigError(f"compile_invariants: {flag} must be True or False, got {value!r}")
    if replace and not register:
        raise ConfigError("compile_invariants: replace=True replaces a registered set, so it "
                          "needs register=True")
    if register and not replace and name in INVARIANT_SETS:
        raise ConfigError(f"compile_invariants: an invariant set named {name!r} is already "
                          f"registered (pass replace=True, with register=True, to replace it)")
    names: tuple[str, ...] = ()
    if isinstance(symbolic, SymbolicInvariants):
        exprs, names = list(symbolic.expressions), symbolic.names
        group = group or symbolic.group.description or symbolic.group.name
        order = symbolic.order if order is None else order
        how = ("moving frame" if symbolic.max_degree is None
               else f"degree <= {symbolic.max_degree}")
        equation = f"derived by eqpdenet.pde.symbolic (order {symbolic.order}, {how})"
    else:
        if isinstance(symbolic, (str, sp.Basic)) or not isinstance(symbolic, Iterable):
            raise ConfigError(f"compile_invariants takes a list of expressions or a "
                              f"find_invariants result, got {type(symbolic).__name__}")
        equation = "compiled by eqpdenet.pde.symbolic"
        exprs = list(symbolic)
    read = []
    for e in exprs:
        try:
            e = _sympify(e, calculus=False)
        except ConfigError:
            raise ConfigError(f"compile_invariants: cannot read {e!r} as an expression (a SymPy "
                              f"expression, a number or a string such as 'u_x**2 + u_y**2')"
                              ) from None
        # Derivative(u, x), u(x, y): the one message of every entry taking expressions
        read.append(_by_name(e))
    exprs = read
    if ratio_eps is not None:
        require_positive(ratio_eps, "ratio_eps")
    if not exprs:
        raise ConfigError("no invariants to compile")
    if max(_expr_channels(e) for e in exprs) > 1:
        raise ConfigError("compile_invariants compiles invariants of one channel u; for joint "
                          "invariants of several channels use eqpdenet.pde.joint.JointInvariants")
    # Only the orientation θ of M2 is an angle here: cos(u_x) is not a function on M2 but a
    # function of the jet that is not rational (the message of _torch_polynomial), and cos(a) of
    # a parameter a is a symbol to substitute (_check_jet_symbols).
    angles = _angles(exprs) & {theta}
    variables = _merge_variables(*(_expr_variables(e) for e in exprs),
                                 sorted(angles - {x, y}, key=str))
    on_m2 = variables != PLANE
    if on_m2:
        _check_m2_expressions(exprs, variables, angles)
        if invariant_under is not None:
            raise ConfigError("compile_invariants: invariant_under is derived and checked for "
                              "sets of the plane only; an M2 set declares none")
    else:
        _check_jet_symbols(exprs, lambda symbol: _JET_NAME.match(symbol.name) is not None,
                           "the plane", "u, u_x, u_y, u_xx, ...")
    needed = max(max(_expr_order(e) for e in exprs), 0)
    if order is not None:
        require_int(order, "order", 0)
    deepest = max(needed, order or 0)
    require(deepest <= MAX_ORDER, "order",
            f"{deepest} is more than the bound of {MAX_ORDER} for a compiled set (a jet of order n "
            f"computes (n + 1)(n + 2) / 2 derivatives with stencils of n + 1 pixels)"
            + ("" if order is not None else
               f": {next(e for e in exprs if _expr_order(e) == needed)} uses derivatives of "
               f"order {needed}"))
    if order is None:
        order = needed
    elif order < needed:
        deepest = next(e for e in exprs if _expr_order(e) == needed)
        raise ConfigError(f"compile_invariants: order={order}, but {deepest} uses "
                          f"derivatives of order {needed}")
    invariants, used, ratios = [], set(), False
    for index, expr in enumerate(exprs):
        numerator, denominator = sp.fraction(sp.together(expr))
        if on_m2:
            if not denominator.is_number:
                raise ConfigError(f"cannot compile {expr} on M2: only polynomials in the jet "
                                  f"and cos θ, sin θ are supported there")
            numerator, denominator = sp.expand(expr), sp.S.One
        numerator_f = _torch_polynomial(numerator)
        if denominator.is_number:
            constant = _torch_polynomial(denominator)(None)
            if constant == 0:
                raise ConfigError(f"cannot compile {expr}: it divides by zero")
            function = _polynomial_function(_torch_polynomial(numerator / denominator)
                                            if denominator != 1 else numerator_f)
        else:
            denominator_f = _torch_polynomial(denominator)
            function = _ratio_function(numerator_f, denominator_f, ratio_eps)
            ratios = True
        label = (names[index] if names else _name_of(expr)) or f"{name}_{index}"
        if label in used:
            label = f"{name}_{index}"
        used.add(label)
        invariants.append(Invariant(label, unicode_formula(expr),
                                    sp.latex(_readable_numbers(expr)), function))
    if on_m2:
        invariant_set = M2InvariantSet(name, group or name, order, invariants, equation)
    else:
        declared = _invariance(exprs, invariant_under, fixed_eps=ratio_eps is not None and ratios)
        invariant_set = InvariantSet(name, group or name, order, invariants, equation,
                                     invariant_under=declared)
    invariant_set.fixed_ratio_eps = ratio_eps
    # What pickle (torch.save of a layer holding the set) stores instead of the closures.
    invariant_set.compiled_from = (_compile_again, (
        tuple(sp.srepr(e) for e in exprs), name, ratio_eps, group or name, order,
        None if on_m2 else tuple(sorted(invariant_set.invariant_under)),
        tuple(inv.name for inv in invariants), equation))
    if register:
        register_invariant_set(invariant_set, replace=replace)
    return invariant_set


def _compile_again(exprs: tuple[str, ...], name: str, ratio_eps, group: str, order: int,
                   invariant_under, labels: tuple[str, ...], equation: str) -> InvariantSet:
    """The set :func:`compile_invariants` made, compiled again from its recorded expressions
    (``sympy.srepr`` forms) and labels: how a compiled set is unpickled."""
    compiled = compile_invariants([sp.sympify(e) for e in exprs], name, ratio_eps=ratio_eps,
                                  group=group, order=order, invariant_under=invariant_under)
    compiled.invariants = tuple(dataclasses.replace(inv, name=label)
                                for inv, label in zip(compiled.invariants, labels, strict=True))
    compiled.equation = equation
    recipe, args = compiled.compiled_from
    compiled.compiled_from = (recipe, args[:6] + (labels, equation))
    return compiled


#: The ready group that tests each transformation a planar set may declare.
_TRANSFORMATION_GROUPS = {"translations": None, "rotations": "se2", "scalings": "scaling"}


def _invariance(exprs: Sequence[sp.Expr], claimed: Sequence[str] | None,
                fixed_eps: bool) -> tuple[str, ...]:
    """The transformations every expression is invariant under (derived exactly), or ``claimed``
    after checking each claim; ``fixed_eps``: ratios divide with an absolute ``eps``."""
    if claimed is not None and (isinstance(claimed, str) or not isinstance(claimed, Sequence)
                                or not all(isinstance(t, str) for t in claimed)):
        raise ConfigError(f"invariant_under must be a list of names among "
                          f"{', '.join(_TRANSFORMATION_GROUPS)}, got {claimed!r}")
    unknown = sorted(set(claimed or ()) - set(_TRANSFORMATION_GROUPS))
    if unknown:
        raise ConfigError(f"invariant_under: unknown transformation(s) {unknown}; known: "
                          f"{', '.join(_TRANSFORMATION_GROUPS)}")

    def failure(transformation: str) -> str | None:
        """Why the set is not invariant under ``transformation``, or None."""
        group = _TRANSFORMATION_GROUPS[transformation]
        if group is None:
            return None  # functions of the jet alone (checked) do not see where they are
        if transformation == "scalings" and fixed_eps:
            return ("its ratios divide with the fixed ratio_eps, a b / (b² + eps²), which is not "
                    "scale invariant")
        for expr in exprs:
            if not is_invariant(expr, group):
                return f"{expr} is not (the infinitesimal criterion of the group {group} fails)"
        return None

    if claimed is None:
        return tuple(t for t in _TRANSFORMATION_GROUPS if failure(t) is None)
    for transformation in claimed:
        reason = failure(transformation)
        if reason is not None:
            raise ConfigError(f"invariant_under: the set is not invariant under "
                              f"{transformation}: {reason}")
    return tuple(dict.fromkeys(claimed))


def _check_jet_symbols(exprs: Sequence[sp.Expr], allowed: Callable[[sp.Symbol], bool],
                       where: str, coordinates: str, hide: Sequence[sp.Expr] = ()) -> None:
    """One ConfigError naming every symbol of ``exprs`` that ``allowed`` refuses (the jet of
    ``where``, whose coordinates are listed in ``coordinates``), with the expressions using
    them; the atoms ``hide`` (``cos θ``, ``sin θ``) are allowed whole."""
    unknown: dict[str, list[sp.Expr]] = {}
    hidden = {atom: sp.Dummy() for atom in hide}
    for expr in exprs:
        for symbol in sorted(expr.xreplace(hidden).free_symbols - set(hidden.values()), key=str):
            if not allowed(symbol):
                unknown.setdefault(symbol.name, []).append(expr)
    if not unknown:
        return
    users = list(dict.fromkeys(e for used in unknown.values() for e in used))
    position = sorted(set(unknown) & {"x", "y", "θ"})
    hint = (f"; the position ({', '.join(position)}) is not a jet coordinate: an invariant of a "
            f"PDE layer does not depend on where it is evaluated" if position else
            "; substitute parameters by numbers")
    one = len(unknown) == 1
    raise ConfigError(
        f"compile_invariants: the {'symbol' if one else 'symbols'} {', '.join(sorted(unknown))} "
        f"in {', '.join(map(str, users[:3]))}{' ...' if len(users) > 3 else ''} "
        f"{'is not a jet coordinate' if one else 'are not jet coordinates'} of {where} "
        f"({coordinates}){hint}")


def _check_m2_expressions(exprs: Sequence[sp.Expr], variables: tuple[sp.Symbol, ...],
                          angles: set[sp.Symbol]) -> None:
    """ConfigError unless ``exprs`` are functions of the M2 2-jet and ``cos θ, sin θ`` only."""
    if not set(variables) <= set(M2) or not angles <= {theta}:
        raise ConfigError(f"compile_invariants compiles functions of the jet of the plane (x, y) "
                          f"or of M2 (x, y, θ), not of {', '.join(v.name for v in variables)}")
    circle = {sp.cos(theta), sp.sin(theta)}
    # exp(θ), cos(θ/2): what the moving frame of a group not free on M2 (x ∂x + y ∂y + ∂θ,
    # -y ∂x + x ∂y + 2 ∂θ) had before left_invariant_frame refused it, still written by hand;
    # of θ only: cos(u_x), exp(u_x) get the message of any function that is not rational
    other = sorted((f for f in (_trig_atoms(exprs) | _exp_atoms(exprs)) - circle
                    if f.has(theta)), key=str)
    if other:
        def listed(atoms):
            names = ", ".join(unicode_formula(f) for f in atoms)
            return f"{names} {'is' if len(atoms) == 1 else 'are'}"

        # Name the functions that are not 2π-periodic (they were always called "cos(θ/2)");
        # cos 2θ is a function on the circle, only not of the compiled form.
        turned = [f for f in other if _turned(f) is not None]
        why = ((f"a function of the orientation θ on the circle; {listed(turned)} not one"
                if len(turned) == 1 else
                f"functions of the orientation θ on the circle; {listed(turned)} not")
               if turned else
               f"{listed(other)} 2π-periodic, "
               + ("a function on the circle: write it as a polynomial" if len(other) == 1 else
                  "functions on the circle: write them as polynomials")
               + " in cos θ, sin θ (sympy.expand_trig)")
        raise ConfigError(f"compile_invariants: {listed(other)} not compiled on M2: only "
                          f"cos θ, sin θ ({why})")
    _check_jet_symbols(exprs, lambda symbol: symbol.name in M2_DERIVATIVE_NAMES, "M2",
                       f"the 2-jet {', '.join(M2_DERIVATIVE_NAMES)} and cos θ, sin θ", circle)


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


def joint_expressions(invariants: JointInvariants, eps: sp.Expr | float = 0,
                      floor: sp.Expr | float = 0) -> list[sp.Expr]:
    """The maps of a :class:`~eqpdenet.pde.joint.JointInvariants` as SymPy expressions in the
    2-jets of its channels (``JetSpace(2, channels)``), in the module's output order.

    Mixing weights become the exact rationals of their floating-point values. For SIM(2),
    ``eps = 0`` and ``floor = 0`` give the plain ratios ``T / G``, ``T / N``; numbers or symbols
    give the regularised ``T G / (G^2 + eps^2 N')`` and ``T / N'``, ``N' = N + floor^2``, the
    module computes with ``ratio_eps = eps`` and ``jet_floor = floor`` (without its ``0 / 0``
    guard).
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
            n = g**2 + sum(jets[c][3] ** 2 + 2 * jets[c][4] ** 2 + jets[c][5] ** 2 for c in scope) + floor**2
            if term.weight == -4:
                out.append(value / n)
            else:
                out.append(value / g if eps == 0 else value * g / (g**2 + eps**2 * n))
    return out
