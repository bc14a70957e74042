"""The PDE layer: equivariant PDEs ``du/dt = F_theta(invariants of u)`` integrated by explicit Euler.

For one PDE (eq. (6) of the paper) with invariant set ``I`` (see :mod:`eqpdenet.invariants`),

    u_0 = f,        u_{l+1} = u_l + dt * F_theta(I(jet(u_l))),    l = 0 .. steps - 1     (eq. (9))

with ``steps = floor(T / dt)``. :class:`EulerConv` is one step, :class:`ConvInt` the chain, and
:class:`PDELayer` evolves ``n_e`` PDEs from the same input and reduces them to one image
(learned linear combination with bias, as in the paper; or mean, max, concatenation).

Tensors are ``(batch, channels, height, width)``; each channel evolves independently under the
same PDE. ``dt`` and ``T`` are in the PDE's time unit; space is measured in units of the grid
spacing ``h`` (1 = one pixel by default).

Stability. Explicit Euler with learned coefficients can blow up. For the diffusion part
``a (u_xx + u_yy)`` of a linear ``F`` the scheme is stable only if ``0 <= a dt <= 2 / lambda_max``
where ``lambda_max`` is the largest eigenvalue of the discrete ``-Laplacian`` (``8 / h^2`` for the
``central`` stencil, i.e. ``a dt <= h^2 / 4``): :meth:`EulerConv.stability` reports it for the
current coefficients. This bound is *checked and reported*, not enforced, because the coefficients
are learned and the other (nonlinear) terms have no such simple bound. What is enforced: by
default every state is checked, and a non-finite one raises :class:`NonFiniteStateError` naming
the PDE and the step, never NaN or inf passed on silently.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .geometry import check_images
from .invariants import DEFAULT_RATIO_EPS, InvariantSet, get_invariant_set
from .stencils import Jet, laplacian_max_eigenvalue

__all__ = [
    "ConvInt",
    "EulerConv",
    "LinearCombination",
    "LinearF",
    "NonFiniteStateError",
    "PDELayer",
    "PolynomialF",
    "REDUCTIONS",
    "make_reduction",
    "make_rhs",
    "steps_for",
]


class NonFiniteStateError(FloatingPointError):
    """The state of a PDE became NaN or infinite during integration.

    Attributes:
        pde: name of the PDE (``"pde0:se2"``).
        step: the Euler step (1-based) after which the state was first non-finite.
    """

    def __init__(self, pde: str, step: int, dt: float):
        self.pde, self.step, self.dt = pde, step, dt
        super().__init__(
            f"PDE {pde!r} produced a non-finite state (NaN or inf) at Euler step {step} "
            f"(dt={dt}). The explicit scheme is probably unstable: lower dt, bound the "
            f"coefficients (see EulerConv.stability()) or lower the learning rate."
        )


def steps_for(T: float, dt: float) -> int:
    """``floor(T / dt)``, robust to rounding (``T=0.3, dt=0.1`` gives 3, not 2)."""
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    if not (T >= 0 and math.isfinite(T)):
        raise ValueError(f"T must be a non-negative finite number, got {T!r}")
    return int(math.floor(T / dt + 1e-9))


# ----------------------------------------------------------------------------- F_theta


class LinearF(nn.Module):
    """``F(I) = sum_k w_k I_k + b``: ``(..., K, H, W) -> (..., H, W)``; ``K + 1`` parameters."""

    def __init__(self, n_invariants: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_invariants))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def degree(self) -> int:
        return 1

    def monomials(self) -> list[tuple[int, ...]]:
        """Exponent tuples of the terms multiplying ``self.weight``."""
        k = self.weight.numel()
        return [tuple(int(i == j) for i in range(k)) for j in range(k)]

    def forward(self, invariants: Tensor) -> Tensor:
        return torch.einsum("...khw,k->...hw", invariants, self.weight) + self.bias


class PolynomialF(nn.Module):
    """Multivariate polynomial of total degree ``<= degree`` in the ``K`` invariants.

    ``F(I) = b + sum_m w_m prod_k I_k^{e_{m,k}}`` over all exponent vectors with
    ``1 <= sum_k e_{m,k} <= degree``: ``C(K + degree, degree) - 1`` weights plus the bias.
    Degree 1 is :class:`LinearF`.
    """

    def __init__(self, n_invariants: int, degree: int = 2):
        super().__init__()
        if degree < 1:
            raise ValueError(f"polynomial degree must be >= 1, got {degree}")
        self._degree = degree
        self._monomials = [
            tuple(combo.count(k) for k in range(n_invariants))
            for d in range(1, degree + 1)
            for combo in itertools.combinations_with_replacement(range(n_invariants), d)
        ]
        # Each monomial of degree d > 1 is a lower one times one invariant: build them in order.
        self._recipe = []
        index = {m: i for i, m in enumerate(self._monomials)}
        for m in self._monomials:
            if sum(m) == 1:
                self._recipe.append((-1, m.index(1)))
            else:
                k = next(i for i, e in enumerate(m) if e)
                lower = tuple(e - (i == k) for i, e in enumerate(m))
                self._recipe.append((index[lower], k))
        self.weight = nn.Parameter(torch.zeros(len(self._monomials)))
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def degree(self) -> int:
        return self._degree

    def monomials(self) -> list[tuple[int, ...]]:
        return list(self._monomials)

    def forward(self, invariants: Tensor) -> Tensor:
        terms: list[Tensor] = []
        for lower, k in self._recipe:
            base = invariants[..., k, :, :]
            terms.append(base if lower < 0 else terms[lower] * base)
        return torch.einsum("...mhw,m->...hw", torch.stack(terms, dim=-3), self.weight) + self.bias


def make_rhs(kind: str, n_invariants: int, degree: int = 1) -> nn.Module:
    """``"linear"`` -> :class:`LinearF`; ``"polynomial"`` -> :class:`PolynomialF` of ``degree``."""
    if kind == "linear":
        return LinearF(n_invariants)
    if kind == "polynomial":
        return PolynomialF(n_invariants, degree)
    raise ValueError(f"unknown F kind {kind!r}; available: linear, polynomial")


# ----------------------------------------------------------------------------- one PDE


class EulerConv(nn.Module):
    """One explicit Euler step ``u <- u + dt F_theta(I(jet(u)))`` of one PDE (eq. (9), Fig. 4).

    Args:
        invariants: invariant set or its registered name (``"se2"``, ``"scaling"``).
        rhs: ``"linear"`` (default, the paper's) or ``"polynomial"``.
        degree: degree of a polynomial ``F``.
        dt: time step.
        stencil, spacing, boundary: how the jet is computed (:func:`eqpdenet.stencils.jet`).
        ratio_eps: regularisation scale of ratios (:func:`eqpdenet.invariants.safe_ratio`).
        name: label used in errors and reports.

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(
        self,
        invariants: str | InvariantSet = "se2",
        rhs: str = "linear",
        degree: int = 1,
        dt: float = 0.1,
        stencil: str = "central",
        spacing: float = 1.0,
        boundary: str = "replicate",
        ratio_eps: float = DEFAULT_RATIO_EPS,
        name: str | None = None,
    ):
        super().__init__()
        steps_for(0.0, dt)  # validates dt
        if not ratio_eps > 0:
            raise ValueError(f"ratio_eps must be positive, got {ratio_eps!r}")
        self.invariant_set = get_invariant_set(invariants)
        self.jet = Jet(self.invariant_set.order, stencil, spacing, boundary)
        self.F = make_rhs(rhs, len(self.invariant_set), degree)
        self.dt, self.ratio_eps = float(dt), float(ratio_eps)
        self.name = name or self.invariant_set.name

    def invariants(self, u: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, K, H, W)``: the invariants of ``u``."""
        return self.invariant_set(self.jet(u), self.ratio_eps)

    def rate(self, u: Tensor) -> Tensor:
        """``du/dt = F_theta(invariants of u)``, ``(B, C, H, W)``."""
        return self.F(self.invariants(u))

    def forward(self, u: Tensor) -> Tensor:
        return u + self.dt * self.rate(u)

    def diffusivity(self) -> float | None:
        """Coefficient of ``u_xx + u_yy`` in a linear ``F``, or None where there is none."""
        if "laplacian" not in self.invariant_set.names or not isinstance(self.F, LinearF):
            return None
        return float(self.F.weight.detach()[self.invariant_set.names.index("laplacian")])

    def stability(self) -> dict:
        """The linear diffusion stability check: ``0 <= a dt <= 2 / lambda_max``."""
        a = self.diffusivity()
        bound = 2.0 / laplacian_max_eigenvalue(self.jet.stencil, self.jet.spacing)
        report = {"pde": self.name, "dt": self.dt, "diffusivity": a, "max_a_dt": bound}
        report["stable"] = None if a is None else bool(0.0 <= a * self.dt <= bound)
        return report

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dt={self.dt}, ratio_eps={self.ratio_eps}"


class ConvInt(nn.Module):
    """``steps`` chained :class:`EulerConv` units sharing one ``F_theta`` (Fig. 5): ``u(0) -> u(T)``.

    Args:
        step: the Euler step.
        steps: number of steps; ``T = steps * step.dt`` (see :func:`steps_for`).
        check_finite: raise :class:`NonFiniteStateError` at the first non-finite state.
    """

    def __init__(self, step: EulerConv, steps: int, check_finite: bool = True):
        super().__init__()
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.step, self.steps, self.check_finite = step, steps, check_finite

    @property
    def T(self) -> float:
        return self.steps * self.step.dt

    @property
    def name(self) -> str:
        return self.step.name

    def forward(self, u: Tensor, return_trajectory: bool = False):
        """``(B, C, H, W) -> u(T)``; with ``return_trajectory``, ``(steps + 1, B, C, H, W)``."""
        check_images(u, "u")
        trajectory = [u] if return_trajectory else None
        for index in range(self.steps):
            u = self.step(u)
            if self.check_finite and not bool(torch.isfinite(u).all()):
                raise NonFiniteStateError(self.name, index + 1, self.step.dt)
            if trajectory is not None:
                trajectory.append(u)
        return torch.stack(trajectory) if trajectory is not None else u

    def extra_repr(self) -> str:
        return f"steps={self.steps}, T={self.T:g}"


# ----------------------------------------------------------------------------- reductions


class LinearCombination(nn.Module):
    """``sum_e w_e u_e + b`` over the PDE axis: ``(B, n_e, C, H, W) -> (B, C, H, W)``.

    ``n_e + 1`` parameters, initialised to the mean (``w_e = 1 / n_e``, ``b = 0``).
    """

    def __init__(self, n_pdes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_pdes,), 1.0 / n_pdes))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, states: Tensor) -> Tensor:
        return torch.einsum("bechw,e->bchw", states, self.weight) + self.bias


class Mean(nn.Module):
    """Mean over the PDE axis, no parameters."""

    def forward(self, states: Tensor) -> Tensor:
        return states.mean(dim=1)


class Max(nn.Module):
    """Pointwise maximum over the PDE axis, no parameters."""

    def forward(self, states: Tensor) -> Tensor:
        return states.amax(dim=1)


class Concat(nn.Module):
    """All evolved images as channels: ``(B, n_e, C, H, W) -> (B, n_e C, H, W)``."""

    def forward(self, states: Tensor) -> Tensor:
        return states.flatten(1, 2)


REDUCTIONS = {"linear": LinearCombination, "mean": Mean, "max": Max, "concat": Concat}


def make_reduction(kind: str, n_pdes: int) -> nn.Module:
    if kind not in REDUCTIONS:
        raise ValueError(f"unknown reduction {kind!r}; available: {', '.join(REDUCTIONS)}")
    return REDUCTIONS[kind](n_pdes) if kind == "linear" else REDUCTIONS[kind]()


# ----------------------------------------------------------------------------- the layer


class PDELayer(nn.Module):
    """``n_e`` PDEs evolved from the same input, then reduced (Fig. 3, eq. (7)).

    Args:
        pdes: the :class:`ConvInt` units.
        reduction: ``"linear"`` (default), ``"mean"``, ``"max"`` or ``"concat"``.
        backend: how :meth:`evolve` integrates: ``"auto"`` (default: the fused C++ kernel of
            :mod:`eqpdenet.fused` where supported, else this reference implementation; the
            environment variable ``EQPDENET_BACKEND`` overrides ``"auto"``), ``"reference"``
            (always the plain PyTorch code below) or ``"fused"``. Results agree to rounding;
            an unusable fast path falls back to the reference with one warning, never an error.
        checkpoint: during training, keep no intermediate states and recompute them in the
            backward pass (less memory, about one more forward of work).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)`` (``(B, n_e C, H, W)`` for ``concat``).
    :meth:`evolve` gives the unreduced ``(B, n_e, C, H, W)``.

    Example:
        >>> layer = PDELayer.paper()
        >>> layer(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, pdes: Sequence[ConvInt], reduction: str = "linear", backend: str = "auto",
                 checkpoint: bool = False):
        super().__init__()
        if not pdes:
            raise ValueError("a PDE layer needs at least one PDE")
        self.pdes = nn.ModuleList(pdes)
        self.reduction_kind = reduction
        self.reduction = make_reduction(reduction, len(self.pdes))
        from .fused import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        self.backend, self.checkpoint = backend, bool(checkpoint)

    @property
    def n_pdes(self) -> int:
        return len(self.pdes)

    def out_channels(self, in_channels: int) -> int:
        return in_channels * (self.n_pdes if self.reduction_kind == "concat" else 1)

    def evolve(self, u: Tensor) -> Tensor:
        """Every PDE from the same ``u``: ``(B, C, H, W) -> (B, n_e, C, H, W)``."""
        check_images(u, "u")
        from .fused import fused_evolve, resolve_backend

        checkpoint = getattr(self, "checkpoint", False)  # layers pickled before the fast path
        if resolve_backend(getattr(self, "backend", "auto")) != "reference":
            states = fused_evolve(self, u, checkpoint=checkpoint)
            if states is not None:
                return states
        return self.evolve_reference(u)

    def evolve_reference(self, u: Tensor) -> Tensor:
        """:meth:`evolve` by the plain PyTorch reference (with ``checkpoint``, states recomputed)."""
        check_images(u, "u")
        if getattr(self, "checkpoint", False) and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return torch.stack([checkpoint(pde, u, use_reentrant=False) for pde in self.pdes],
                               dim=1)
        return torch.stack([pde(u) for pde in self.pdes], dim=1)

    def forward(self, u: Tensor) -> Tensor:
        return self.reduction(self.evolve(u))

    def stability(self) -> list[dict]:
        """:meth:`EulerConv.stability` of every PDE."""
        return [pde.step.stability() for pde in self.pdes]

    @classmethod
    def build(
        cls,
        invariants: Sequence[str] = ("se2", "se2", "scaling", "scaling"),
        *,
        rhs: str = "linear",
        degree: int = 1,
        T: float = 1.0,
        dt: float = 0.1,
        stencil: str = "central",
        spacing: float = 1.0,
        boundary: str = "replicate",
        ratio_eps: float = DEFAULT_RATIO_EPS,
        reduction: str = "linear",
        init: str = "zeros",
        init_scale: float = 0.0,
        init_noise: float = 0.0,
        check_finite: bool = True,
        backend: str = "auto",
        checkpoint: bool = False,
    ) -> PDELayer:
        """A layer of one PDE per entry of ``invariants``; defaults are the paper's layer.

        ``init`` sets the initial ``F_theta``: ``"zeros"`` (every PDE is the identity map at
        first), ``"heat"`` (``F = init_scale (u_xx + u_yy)`` for sets that contain the Laplacian,
        zero otherwise) or ``"normal"`` (weights ~ N(0, init_scale^2)). ``init_noise`` adds
        N(0, init_noise^2) to every weight of F: without it, PDEs with the same invariant set and
        init receive identical gradients (the reduction starts as the mean) and stay identical
        for ever, so the paper's 2 + 2 PDEs would be 1 + 1. The noise (and ``"normal"``) is
        drawn from a generator seeded by ``torch.initial_seed()``, so it does not shift the
        global random stream (EqPdeNet's perceptron is initialised exactly like FCNN's for the
        same seed).
        ``backend`` and ``checkpoint``: see :class:`PDELayer`.
        """
        steps = steps_for(T, dt)
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63 + 7919)
        pdes = []
        for index, name in enumerate(invariants):
            step = EulerConv(name, rhs, degree, dt, stencil, spacing, boundary, ratio_eps,
                             name=f"pde{index}:{get_invariant_set(name).name}")
            _initialise(step, init, init_scale, init_noise, generator)
            pdes.append(ConvInt(step, steps, check_finite))
        layer = cls(pdes, reduction, backend=backend, checkpoint=checkpoint)
        for report in layer.stability():
            # Only the upper bound warns here: a slightly negative diffusivity from init_noise
            # is anti-diffusion of growth exp(|a| lambda_max T), harmless for small |a|.
            if report["stable"] is False and report["diffusivity"] > 0:
                warnings.warn(
                    f"{report['pde']}: initial diffusivity {report['diffusivity']:g} with "
                    f"dt={dt:g} violates the explicit Euler bound 0 <= a dt <= "
                    f"{report['max_a_dt']:g}", stacklevel=2)
        return layer

    @classmethod
    def paper(cls, **kwargs) -> PDELayer:
        """The paper's layer: 2 ``se2`` and 2 ``scaling`` PDEs, linear ``F``, linear reduction."""
        return cls.build(("se2", "se2", "scaling", "scaling"), **kwargs)


def _initialise(step: EulerConv, init: str, scale: float, noise: float = 0.0,
                generator: torch.Generator | None = None) -> None:
    if init not in ("zeros", "heat", "normal"):
        raise ValueError(f"unknown init {init!r}; available: zeros, heat, normal")
    with torch.no_grad():
        step.F.weight.zero_()
        step.F.bias.zero_()
        if init == "heat":
            names = step.invariant_set.names
            if "laplacian" in names:
                monomials = step.F.monomials()
                target = tuple(int(n == "laplacian") for n in names)
                step.F.weight[monomials.index(target)] = scale
        elif init == "normal":
            step.F.weight.copy_(scale * torch.randn(step.F.weight.shape, generator=generator))
        if noise:
            step.F.weight.add_(noise * torch.randn(step.F.weight.shape, generator=generator))
