"""Differential invariants: named, printable functions of the jet, grouped in sets per Lie group.

An :class:`InvariantSet` maps a jet ``(..., D, H, W)`` (see :mod:`eqpdenet.stencils`) to its
invariants ``(..., K, H, W)``. Two sets come registered:

``se2`` (eq. (4)), invariant under rotations and translations of the plane::

    u,  u_x^2 + u_y^2,  u_xx + u_yy,  u_x^2 u_xx + 2 u_x u_y u_xy + u_y^2 u_yy,
    u_xx^2 + 2 u_xy^2 + u_yy^2

``scaling`` (eq. (5)), invariant under ``x -> lambda x`` (and translations)::

    u_x^2/u_xx, u_x^2/u_xy, u_x^2/u_yy, u_y^2/u_xx, u_y^2/u_xy, u_y^2/u_yy

Regularised ratios
------------------
A plain ``a / b`` is infinite where ``b = 0`` (flat regions of an image, which are most of an
MNIST digit's background). Every division goes through :func:`safe_ratio`::

    safe_ratio(a, b, eps) = a b / (b^2 + eps^2)

which equals ``a / b`` up to a relative error ``eps^2 / b^2`` when ``|b| >> eps``, is bounded by
``|a| / (2 eps)``, goes smoothly to 0 as ``b -> 0``, and is differentiable in ``a`` and ``b``
everywhere (the derivative in ``b`` is ``a (eps^2 - b^2) / (b^2 + eps^2)^2``). ``eps`` has the
unit of ``b`` (second derivatives here) and is a parameter of every set that divides
(``ratio_eps``); it breaks exact scale invariance only where ``|b|`` is of order ``eps`` or smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..registry import Registry
from .stencils import derivative_names, jet_order

__all__ = [
    "DEFAULT_RATIO_EPS",
    "INVARIANT_SETS",
    "Invariant",
    "InvariantSet",
    "available_invariant_sets",
    "get_invariant_set",
    "register_invariant_set",
    "safe_ratio",
]

#: Default regularisation scale of :func:`safe_ratio`, in the unit of the denominator.
DEFAULT_RATIO_EPS = 0.1


def safe_ratio(a: Tensor, b: Tensor, eps: float = DEFAULT_RATIO_EPS,
               reference_sq: Tensor | None = None) -> Tensor:
    """Regularised ``a / b = a b / (b^2 + eps^2)``: finite and smooth for every finite input.

    With ``reference_sq``, a tensor that scales like ``b^2`` (e.g. ``|H|^2 + |grad u|^4`` for a
    second-order ``b``), the regulariser scales with it and ``eps`` is dimensionless::

        safe_ratio(a, b, eps, reference_sq) = a b / (b^2 + eps^2 reference_sq + tiny)

    so the ratio is exactly as invariant under ``p -> lambda p`` as ``a / b`` itself. ``tiny``
    (``torch.finfo(dtype).tiny``) only turns ``0 / 0`` (``b = reference_sq = 0``) into 0.
    """
    if not eps > 0:
        raise ConfigError(f"ratio regularisation eps must be positive, got {eps!r}")
    if reference_sq is None:
        return a * b / (b * b + eps * eps)
    tiny = torch.finfo(torch.result_type(b, reference_sq)).tiny
    return a * b / (b * b + eps * eps * reference_sq + tiny)


class Derivatives:
    """Read-only view of a jet ``(..., D, H, W)`` by name: ``d.u_x`` is ``jet[..., 1, :, :]``."""

    def __init__(self, jet: Tensor):
        order = self._order = jet_order(jet.shape[-3])
        for index, name in enumerate(derivative_names(order)):
            setattr(self, name, jet[..., index, :, :])

    def __getattr__(self, name: str) -> Tensor:
        # only reached for names not set in __init__
        if name.startswith("u_") and not name.startswith("__"):
            raise InputError(f"{name} needs a higher-order jet than the one given (order {self._order})")
        raise AttributeError(name)


@dataclass(frozen=True)
class Invariant:
    """One differential invariant.

    Attributes:
        name: short identifier (``"grad_sq"``).
        unicode: human-readable formula (``"u_x² + u_y²"``).
        latex: LaTeX formula.
        function: ``function(d, eps)`` -> tensor ``(..., H, W)``, where ``d`` gives derivatives by
            name (``d.u_x``) and ``eps`` is the ratio regularisation scale.
    """

    name: str
    unicode: str
    latex: str
    function: Callable[[Derivatives, float], Tensor]


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

    Calling the set on a jet ``(..., D, H, W)`` returns ``(..., K, H, W)``, ``K = len(self)``.
    """

    def __init__(self, name: str, group: str, order: int, invariants, equation: str = "",
                 kernel: str | None = None):
        self.name, self.group, self.order, self.equation = name, group, order, equation
        self.kernel = kernel
        self.invariants: tuple[Invariant, ...] = tuple(invariants)
        if not self.invariants:
            raise ConfigError(f"invariant set {name!r} is empty")

    def __len__(self) -> int:
        return len(self.invariants)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(invariant.name for invariant in self.invariants)

    def __call__(self, jet: Tensor, ratio_eps: float = DEFAULT_RATIO_EPS) -> Tensor:
        if jet.dim() < 3:
            raise InputError(f"expected a jet of shape (..., D, H, W), got {tuple(jet.shape)}")
        derivatives = Derivatives(jet)
        return torch.stack([inv.function(derivatives, ratio_eps) for inv in self.invariants],
                           dim=-3)

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


#: The invariant sets known by name (to :class:`~eqpdenet.pde.PDELayer` and configurations).
INVARIANT_SETS: Registry[InvariantSet] = Registry("invariant set")


def register_invariant_set(invariant_set: InvariantSet, *, replace: bool = False) -> InvariantSet:
    """Make a set available by name to the PDE layer and the configuration files."""
    return INVARIANT_SETS.register(invariant_set.name, invariant_set, replace=replace)


def get_invariant_set(name: str | InvariantSet) -> InvariantSet:
    """Look a set up by name (an :class:`InvariantSet` is returned as is)."""
    return name if isinstance(name, InvariantSet) else INVARIANT_SETS.get(name)


def available_invariant_sets() -> tuple[str, ...]:
    return INVARIANT_SETS.names()


SE2 = register_invariant_set(InvariantSet(
    "se2", "SE(2), rotations and translations of the plane", 2, [
        Invariant("u", "u", "u", lambda d, eps: d.u),
        Invariant("grad_sq", "u_x² + u_y²", "u_x^2 + u_y^2",
                  lambda d, eps: d.u_x**2 + d.u_y**2),
        Invariant("laplacian", "u_xx + u_yy", "u_{xx} + u_{yy}", lambda d, eps: d.u_xx + d.u_yy),
        Invariant("grad_hess_grad", "u_x² u_xx + 2 u_x u_y u_xy + u_y² u_yy",
                  "u_x^2 u_{xx} + 2 u_x u_y u_{xy} + u_y^2 u_{yy}",
                  lambda d, eps: d.u_x**2 * d.u_xx + 2 * d.u_x * d.u_y * d.u_xy
                  + d.u_y**2 * d.u_yy),
        Invariant("hess_sq", "u_xx² + 2 u_xy² + u_yy²", "u_{xx}^2 + 2 u_{xy}^2 + u_{yy}^2",
                  lambda d, eps: d.u_xx**2 + 2 * d.u_xy**2 + d.u_yy**2),
    ], equation="eq. (4)", kernel="se2",
))


def _ratio(numerator: str, denominator: str) -> Invariant:
    n, m = numerator[2:], denominator[2:]
    return Invariant(
        f"{numerator}2_over_{denominator}", f"{numerator}² / {denominator}",
        rf"\frac{{u_{n}^2}}{{u_{{{m}}}}}",
        lambda d, eps: safe_ratio(getattr(d, numerator) ** 2, getattr(d, denominator), eps),
    )


SCALING = register_invariant_set(InvariantSet(
    "scaling", "scalings x -> λx (with translations)", 2,
    [_ratio(a, b) for a in ("u_x", "u_y") for b in ("u_xx", "u_xy", "u_yy")],
    equation="eq. (5)", kernel="scaling",
))
