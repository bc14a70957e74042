"""Explicit Euler integration of ``du/dt = F(u)`` for any right-hand side module ``F``.

For a right-hand side ``F`` (e.g. :class:`~eqpdenet.pde.rhs.InvariantRHS`, eq. (6) of the paper),

    u_0 = f,        u_{l+1} = u_l + dt * F(u_l),        l = 0 .. steps - 1           (eq. (9))

with ``steps = T / dt`` (:func:`steps_for`: ``T`` must be a whole multiple of ``dt``).
:class:`EulerStep` is one step (the paper's *EulerConv*), :class:`EulerFlow` the chain
``u(0) -> u(T)`` sharing one ``F`` (the paper's *ConvInt*; both paper names remain as
aliases). ``dt`` and ``T`` are in the PDE's time unit; space is measured in units of the grid
spacing of ``F``'s jet.

Stability. Explicit Euler with learned coefficients can blow up. For the diffusion part
``a (u_xx + u_yy)`` of ``F`` (of its linearisation at ``u = 0`` for a polynomial ``F``) the scheme
is stable only if ``0 <= a dt <= 2 / lambda_max`` where ``lambda_max`` is the largest eigenvalue
of the discrete ``-Laplacian`` (``8 / h^2`` for the ``central`` stencil, i.e. ``a dt <= h^2 / 4``):
:meth:`EulerStep.stability` reports it for the current coefficients, and for a linearisation
with terms of other orders (a compiled set holding ``Δ²u`` or ``u_x``) the von Neumann condition
``|1 + dt sigma| <= 1`` on the symbol ``sigma`` of all of them. This bound is *checked and
reported*, not enforced, because the coefficients are learned and the other (nonlinear) terms
have no such simple bound. What is enforced: by default every state is checked, and a non-finite
one raises :class:`~eqpdenet.errors.NonFiniteStateError` naming the PDE and the first bad step,
never NaN or inf passed on silently. The check stays on the device during the steps (no host
synchronisation per step) and is read once after the last one
(:func:`~eqpdenet.checks.report_non_finite`).

Entry checks. Every piece usable alone (:class:`EulerFlow`, :class:`EulerStep` of a right-hand
side that declares its checks, :class:`~eqpdenet.pde.rhs.InvariantRHS`,
:class:`~eqpdenet.pde.rhs.InvariantSystemRHS`, :class:`~eqpdenet.pde.layer.PDELayer`) checks
its input where it enters (:mod:`eqpdenet.checks`: shape, finite values, dtype), once: a caller
that checked already calls the next piece inside :class:`input_checked`, which the piece reads
as "skip the checks" (one host read per call of the outermost piece, not one per Euler step).
The pieces are still called as modules, so their hooks fire.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import (
    check_device,
    check_images,
    check_values,
    exporting,
    first_failed_step,
    input_checked,
    is_input_checked,
    match_dtype,
    module_dtype,
    non_finite_parameters,
    report_non_finite,
    require,
    require_int,
    require_positive,
    vmapped,
)
from ..errors import NonFiniteStateError
from .stencils import Jet

__all__ = ["MAX_STEPS", "STABILITY_RTOL", "STEPS_RTOL", "ConvInt", "EulerConv", "EulerFlow",
           "EulerStep", "breaks_upper_bound", "input_checked", "input_range_hint",
           "keeps_state_dtype", "steps_for"]

#: The most Euler steps :func:`steps_for` accepts: a bound on work and memory found before any is
#: spent (the paper's layer takes 10; the equivariance studies a few hundred), and by
#: :class:`EulerFlow` for an explicit number of steps.
MAX_STEPS = 100_000

#: Relative tolerance of the upper stability bound ``a dt <= 2 / lambda_max``
#: (:meth:`EulerStep.stability`): a few units in the last place of a float64, the rounding of
#: ``lambda_max`` (computed from the stencil's symbol) and of ``2 / lambda_max``, so that ``a dt``
#: exactly at the bound is not called unstable; far below any growth that could matter (a
#: factor ``1 + 1e-15`` per step).
STABILITY_RTOL = 4 * 2.0**-52

#: How far ``T / dt`` may be from a whole number, relative to it, and still count as one: rounding
#: only (``1 / 0.1``, ``0.3 / 0.1 = 2.9999999999999996``, a ``dt`` stored in float32).
STEPS_RTOL = 1e-6


def call_checked(module: nn.Module, *args):
    """``module(*args)`` (hooks included) inside :class:`input_checked` (for
    ``torch.utils.checkpoint``, whose recomputation runs outside the caller's block)."""
    with input_checked(module):
        return module(*args)


def input_range_hint(low: float, high: float, module: nn.Module | None = None,
                     standardised: tuple[float, float] | None = None) -> str:
    """The explanation of a :class:`~eqpdenet.errors.NonFiniteStateError` from a finite input
    with values in ``[low, high]``: the scheme, with the range the PDE received to judge by (a
    model's ``standardised = (mean, std)`` maps the input's range to ``(x - mean) / std``), and
    the grid spacing of ``module``'s jets where it is not 1 (derivatives of order ``k`` scale as
    ``spacing^-k``, so the Euler bound on ``dt`` shrinks with it). Round 17: a layer stable at
    spacing 1 blew up at 1e-3, and the message named neither the spacing nor the range the PDE
    saw, only the raw images'."""
    received = f"[{low:.4g}, {high:.4g}]"
    if standardised is not None and tuple(standardised) != (0.0, 1.0):
        mean, std = standardised
        received = (f"[{(low - mean) / std:.4g}, {(high - mean) / std:.4g}] as the PDE received "
                    f"them, standardised from {received}")
    hint = (f"{NonFiniteStateError.SCHEME_HINT} (The input was finite, with values in "
            f"{received}: if that is not the range the PDE was made for, rescale the input.)")
    spacings = sorted({float(m.spacing) for m in module.modules() if isinstance(m, Jet)}
                      if module is not None else ())
    if spacings and spacings != [1.0]:
        hint += (f" The grid spacing is {', '.join(f'{h:g}' for h in spacings)}: a derivative of "
                 f"order k scales as spacing^-k, so the explicit Euler bound on dt shrinks with "
                 f"the spacing (as its square for a diffusion; EulerStep.stability() gives the "
                 f"bound).")
    return hint


def steps_for(T: float, dt: float, names: tuple[str, str] = ("T", "dt")) -> int:
    """The number of explicit Euler steps that integrate from 0 to ``T`` with step ``dt``.

    The one rule for every place where a horizon and a step become steps: ``T`` must be a
    positive whole multiple of ``dt`` (within rounding, :data:`STEPS_RTOL`) and ``T / dt`` at most
    :data:`MAX_STEPS`; anything else is a :class:`~eqpdenet.errors.ConfigError` naming both
    values, never a silent ``floor`` that integrates to another ``T`` than the one recorded.
    ``names`` are the two fields as the caller's user knows them (``("layer.T", "layer.dt")``).

    Example:
        >>> steps_for(0.3, 0.1), steps_for(1.0, 0.1)
        (3, 10)
        >>> try:
        ...     steps_for(0.25, 0.1)
        ... except ValueError as error:
        ...     print(str(error).split(":")[2].strip())
        T = 0.25 is not a whole multiple of dt = 0.1 (2.5 steps)
    """
    T_name, dt_name = names
    dt = require_positive(dt, dt_name)
    T = require_positive(T, T_name)
    ratio = T / dt
    where = f"{T_name} / {dt_name}"
    require(ratio <= MAX_STEPS * (1 + STEPS_RTOL), where,
            f"{T:g} / {dt:g} is about {ratio:.3g} Euler steps per PDE, more than the bound of "
            f"{MAX_STEPS:,}; raise dt or lower T")
    steps = round(ratio)
    require(ratio >= 1 - STEPS_RTOL, where,
            f"T = {T:g} is smaller than dt = {dt:g}: not one Euler step would run; choose T >= dt "
            f"(a whole multiple of it) or a smaller dt")
    lower, upper = math.floor(ratio), math.ceil(ratio)
    require(abs(ratio - steps) <= STEPS_RTOL * steps, where,
            f"T = {T:g} is not a whole multiple of dt = {dt:g} ({ratio:.4g} steps): the Euler steps "
            f"would stop at t = {lower * dt:g}; choose T = k dt ({lower * dt:g} or "
            f"{upper * dt:g}) or another dt")
    return int(steps)


def breaks_upper_bound(report: dict) -> bool:
    """Whether a :meth:`EulerStep.stability` report's ``dt`` is above the explicit Euler bound
    (``a dt > 2 / lambda_max``, or ``-dt sigma > 2`` at some frequency), as opposed to failing
    only its lower bound (a negative diffusivity, or non-elliptic coefficients: anti-diffusion,
    which no ``dt`` mends)."""
    rate = report.get("max_rate_dt")
    return rate is not None and rate > 2.0 * (1.0 + STABILITY_RTOL)


def keeps_state_dtype(state: Tensor, rate: Tensor) -> bool:
    """Whether ``state + dt rate`` keeps ``state``'s dtype as the caller meant: ``rate`` real
    floating-point, of at most ``state``'s precision (a lower one is promoted back), or of a
    higher one under autocast (which runs some operations in float32 while the state is in the
    low precision: its own choice). A float64 rate "for precision" turned a float32 state into
    float64, a complex one into a complex state, without a word (round 14)."""
    return rate.is_floating_point() and (
        torch.promote_types(state.dtype, rate.dtype) == state.dtype
        or torch.is_autocast_enabled(state.device.type))


def non_finite_coefficients_reason(names: list[str]) -> str:
    """The stability checks' reason where coefficients of ``F`` are NaN or inf (``names``, of
    :func:`~eqpdenet.checks.non_finite_parameters`)."""
    return (f"F has coefficients that are not finite (NaN or inf, in {', '.join(names)}): every "
            f"Euler step gives a non-finite state")


class EulerStep(nn.Module):
    """One explicit Euler step ``u <- u + dt F(u)`` (eq. (9); the paper's EulerConv, Fig. 4).

    Args:
        rhs: the right-hand side, any module ``(B, C, H, W) -> (B, C, H, W)``.
        dt: time step.
        name: label used in errors and reports (default: the invariant set's name, if any).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``. Where ``rhs`` declares its entry checks
    (a method ``enter(u) -> u``: :class:`~eqpdenet.pde.rhs.InvariantRHS`,
    :class:`~eqpdenet.pde.rhs.InvariantSystemRHS`,
    :class:`~eqpdenet.pde.m2_rhs.M2SystemRHS`), a step called alone checks ``u`` with it
    (finite values, shape, dtype: lower precision computed in the module's dtype and returned
    in the input's), once, and its result too: a non-finite state raises
    :class:`~eqpdenet.errors.NonFiniteStateError` naming the step, as :class:`EulerFlow` does
    (one host read per call; before, a step called alone passed NaN or inf on). A step inside
    :class:`EulerFlow` or a model is not checked again.
    """

    # Version 2 moved F into ``rhs`` (keys ``F.*`` became ``rhs.F.*``); older state dicts load.
    _version = 2
    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def __init__(self, rhs: nn.Module, dt: float = 0.1, name: str | None = None):
        super().__init__()
        require(isinstance(rhs, nn.Module), "rhs", f"must be the right-hand side F as an "
                f"nn.Module ((B, C, H, W) -> (B, C, H, W), e.g. InvariantRHS('se2')), got "
                f"{type(rhs).__name__}")
        require(name is None or isinstance(name, str), "name",
                f"must be a string or None, got {type(name).__name__}")
        self.rhs = rhs
        self.dt = require_positive(dt, "dt")
        invariant_set = getattr(rhs, "invariant_set", None)
        self.name = name or (invariant_set.name if invariant_set is not None else type(rhs).__name__)

    def forward(self, u: Tensor) -> Tensor:
        enter = getattr(self.rhs, "enter", None)
        x = u if is_input_checked(self) or enter is None else enter(u)
        # A right-hand side that can take the whole step in one fused operator does so; either
        # way x is checked already (by enter, or by the caller).
        fused = getattr(self.rhs, "euler_step", None)
        with input_checked(self.rhs):
            step = fused(x, self.dt) if fused is not None else None
            if step is None:
                step = x + self.dt * self._rate(x)
        if enter is not None and not is_input_checked(self) and not exporting() \
                and not vmapped(step):
            # checked on entry here, so its result too (a caller that checks calls the step
            # inside input_checked: EulerFlow, the models)
            report_non_finite([self.name], [self.dt], first_failed_step([torch.isfinite(step).all()]))
        return step if x is u else step.to(u.dtype)

    def _rate(self, x: Tensor) -> Tensor:
        """``F(x)``, refused unless it has ``x``'s shape: ``x + dt F(x)`` would broadcast an
        ``F`` of another shape (``nn.Linear`` over the rows, a channel too few) silently; and
        unless it keeps the state's dtype (:func:`keeps_state_dtype`)."""
        rate = self.rhs(x)
        if not isinstance(rate, Tensor) or rate.shape != x.shape:
            got = (f"shape {tuple(rate.shape)}" if isinstance(rate, Tensor)
                   else type(rate).__name__)
            require(False, "rhs", f"{type(self.rhs).__name__} of EulerStep {self.name!r} must "
                    f"return du/dt of the state's shape {tuple(x.shape)}, got {got}")
        if not keeps_state_dtype(x, rate):
            require(False, "rhs", f"{type(self.rhs).__name__} of EulerStep {self.name!r} must "
                    f"return du/dt in the state's dtype {x.dtype} (or a lower floating-point "
                    f"precision), got {rate.dtype}")
        return rate

    def stability(self) -> dict:
        """The von Neumann stability check of the right-hand side linearised at ``u = 0``.

        ``{"pde", "dt", "diffusivity", "a_dt", "max_a_dt", "second_order", "linear_part",
        "max_rate_dt", "max_dt", "stable", "reason"}``. ``linear_part`` is ``{name: c_J}``, the
        nonzero terms of ``F`` linearised at ``u = 0`` over every order of the jet
        (:meth:`~eqpdenet.pde.rhs.InvariantRHS.linearisation`), ``second_order`` its
        ``(c_xx, c_xy, c_yy)`` (:meth:`~eqpdenet.pde.rhs.InvariantRHS.linearised_second_order`).
        A right-hand side with a method ``euler_stability(dt)`` checks itself (on M2:
        :meth:`~eqpdenet.pde.m2_rhs.M2SystemRHS.euler_stability`, whose keys replace these);
        None where nothing is checked: ``F`` cannot be linearised (it is not a
        :class:`~eqpdenet.pde.rhs.MonomialF`: the reason says so and names its type, the
        stability being unknown, not shown), or no invariant of the set has a linear term of
        order >= 1 and none of order 0 either (then ``stable`` is None too; a reaction term
        ``c_u u`` alone is checked: ``dt c_u >= -2``). ``reason`` says why a scheme is not
        stable, or why nothing was checked.

        Euler multiplies the Fourier mode of frequency ``omega`` by ``g = 1 + dt sigma(omega)``
        per step, ``sigma`` the symbol of the stencil's ``sum_J c_J u_J``; "stable" means
        ``|g| <= 1`` at every frequency, or ``<= 1 + dt c_u`` where the reaction term ``c_u u``
        has ``c_u > 0`` (the PDE's own growth, not the scheme's). A negative ``c_u`` counts in
        full: ``dt c_u < -2`` alone blows up.

        * Isotropic (only ``u``, ``c_xx = c_yy = a``, ``c_xy = 0``: every rotation-invariant set
          of order 2): ``a`` is ``diffusivity`` and the check is ``0 <= a dt <= 2 / lambda_max``
          (``max_a_dt``), ``lambda_max`` the largest eigenvalue of the stencil's
          ``-(u_xx + u_yy)``, with ``dt (a lambda_max - c_u) <= 2`` where ``c_u < 0``.
        * Anisotropic (only ``u`` and second-order terms: a compiled set of a group without
          rotations, holding ``u_xx``, ``u_xy``, ``u_yy`` apart): stable iff the coefficients are
          elliptic (the matrix ``[[c_xx, c_xy / 2], [c_xy / 2, c_yy]]`` positive semi-definite:
          the anisotropic ``0 <= a``) and ``-dt (sigma + min(c_u, 0)) <= 2`` at every frequency.
        * Any other term (first order, order > 2: a compiled set such as ``u, Δu, Δ²u`` or one
          holding ``u_x``): the modulus of ``g`` on a grid of
          :data:`~eqpdenet.pde.rhs.SYMBOL_POINTS` squared frequencies. A frequency where
          ``Re sigma > max(c_u, 0)``, or where ``Re sigma = max(c_u, 0)`` and ``sigma`` is not
          (pure advection, ``u_t = u_x``, which central differences with Euler amplify for
          every ``dt``), grows whatever ``dt``; elsewhere ``|g| <= 1 + dt max(c_u, 0)`` holds up
          to ``dt = -2 (Re sigma - c+) / (|sigma|^2 - c+^2)``.

        ``max_rate_dt`` is ``2 dt / max_dt`` (``a dt lambda_max`` in the isotropic case,
        ``max(-dt sigma)`` in the anisotropic one, without a negative ``c_u``; where no ``dt``
        is bounded, ``max(0, -dt Re sigma)``): above 2, ``dt`` breaks the upper bound
        (:func:`breaks_upper_bound`). ``max_dt`` is the largest ``dt`` the upper bound allows
        (None where it allows any, or where no ``dt`` is stable and no frequency bounds it).
        The upper bound is met within :data:`STABILITY_RTOL` (``2 / lambda_max`` is computed,
        not exact: ``a dt = 0.375`` exactly at the ``isotropic`` bound ``2 / (16 / 3)``, which
        evaluates to ``0.37499999999999994``, counts as stable).
        """
        own = getattr(self.rhs, "euler_stability", None)
        if own is not None:  # a right-hand side with its own check (M2SystemRHS on M2)
            return {"pde": self.name, "dt": self.dt, "diffusivity": None, "a_dt": None,
                    "max_a_dt": math.nan, "second_order": None, **own(self.dt)}
        bad = non_finite_parameters(self.rhs)
        if bad:  # the linearisation of NaN coefficients is NaN, whose comparisons said stable
            return {"pde": self.name, "dt": self.dt, "diffusivity": None, "a_dt": None,
                    "max_a_dt": math.nan, "second_order": None, "linear_part": None,
                    "max_rate_dt": None, "max_dt": None, "stable": False,
                    "reason": non_finite_coefficients_reason(bad)}
        linearise = getattr(self.rhs, "linearised_second_order", None)
        second_order = None if linearise is None else linearise()
        linearisation = getattr(self.rhs, "linearisation", None)
        linear = None if linearisation is None else linearisation()
        eigenvalue = getattr(self.rhs, "laplacian_max_eigenvalue", None)
        bound = 2.0 / eigenvalue() if eigenvalue is not None else math.nan
        report = {"pde": self.name, "dt": self.dt, "diffusivity": None, "a_dt": None,
                  "max_a_dt": bound, "second_order": second_order,
                  "linear_part": None if linear is None else {n: c for n, c in linear.items() if c},
                  "max_rate_dt": None, "max_dt": None, "stable": None, "reason": None}
        reaction = 0.0 if linear is None else linear.get("u", 0.0)
        other = {} if linear is None else {
            name: c for name, c in linear.items()
            if c and name not in ("u", "u_xx", "u_xy", "u_yy")}
        if other:
            report["second_order"] = tuple(linear.get(n, 0.0) for n in ("u_xx", "u_xy", "u_yy"))
            return self._symbol_check(report, linear, reaction, other)
        if second_order is None and linear is not None and reaction != 0.0:
            return self._reaction_check(report, reaction)
        if second_order is None:
            if linear is None and linearisation is not None:
                # It has a linearisation but cannot compute it for this F (InvariantRHS of an F
                # that is not a MonomialF): "no linear term" was false, nothing is known.
                F = getattr(self.rhs, "F", None)
                what = "its F" if F is None else f"its F ({type(F).__name__})"
                report["reason"] = (f"cannot check: {type(self.rhs).__name__} cannot linearise "
                                    f"{what} at u = 0 (only a MonomialF is linearised), so "
                                    f"the scheme's stability is unknown")
            elif linear is not None or linearise is not None:
                report["reason"] = ("nothing to check: no linear term of order >= 1 in F "
                                    "linearised at u = 0")
            else:
                report["reason"] = (f"nothing to check: {type(self.rhs).__name__} has no "
                                    f"linearisation")
            report["linear_part"] = None
            return report
        # A decaying reaction term c_u u (c_u < 0) adds to the fastest decay; a growing one is
        # the PDE's own growth, which the check allows (leaving it out is conservative).
        decay = min(reaction, 0.0)
        c_xx, c_xy, c_yy = second_order
        tolerance = 2.0 * (1.0 + STABILITY_RTOL)
        if c_xy == 0.0 and c_xx == c_yy:
            a = c_xx
            rate = 2.0 * a * self.dt / bound - decay * self.dt
            upper = a * self.dt <= bound * (1.0 + STABILITY_RTOL) and (
                decay == 0.0 or rate <= tolerance)
            fastest = 2.0 * a / bound - decay
            report.update(diffusivity=a, a_dt=a * self.dt, max_rate_dt=rate,
                          max_dt=(bound / a if decay == 0.0 else 2.0 / fastest)
                          if fastest > 0 and a >= 0 else None,
                          stable=bool(0.0 <= a * self.dt and upper))
            if a < 0:
                report["reason"] = f"negative diffusivity {a:g}: anti-diffusion, which no dt mends"
            elif not upper:
                report["reason"] = f"dt = {self.dt:g} is above the explicit Euler bound"
            return report
        lowest, _ = self.rhs.second_order_symbol_range(second_order)
        lowest += decay
        elliptic = c_xx >= 0.0 and c_yy >= 0.0 and c_xx * c_yy >= c_xy * c_xy / 4.0
        upper = -lowest * self.dt <= tolerance
        report.update(max_rate_dt=-lowest * self.dt, max_dt=2.0 / -lowest if lowest < 0 else None,
                      stable=bool(elliptic and upper))
        if not elliptic:
            report["reason"] = ("the second-order coefficients are not elliptic: "
                                "anti-diffusion in some direction, which no dt mends")
        elif not upper:
            report["reason"] = f"dt = {self.dt:g} is above the explicit Euler bound"
        return report

    def _reaction_check(self, report: dict, reaction: float) -> dict:
        """The check of ``F`` linearised to ``c_u u`` alone (no term of order >= 1: a set whose
        derivatives enter through ratios, such as ``sim2``): Euler multiplies every mode by
        ``1 + dt c_u``, stable where ``dt c_u >= -2``; a growing ``c_u > 0`` is the PDE's own
        growth. This case said "nothing to check" before, while the same equation under ``se2``
        was found unstable."""
        rate = -reaction * self.dt if reaction < 0 else 0.0
        stable = rate <= 2.0 * (1.0 + STABILITY_RTOL)
        report.update(max_rate_dt=rate, max_dt=-2.0 / reaction if reaction < 0 else None,
                      stable=bool(stable))
        if not stable:
            report["reason"] = (f"dt = {self.dt:g} is above the explicit Euler bound of the "
                                f"reaction term {reaction:g} u: 1 + dt c_u = "
                                f"{1.0 + self.dt * reaction:g} (dt <= {-2.0 / reaction:g})")
        return report

    def _symbol_check(self, report: dict, linear: dict[str, float], reaction: float,
                      other: dict[str, float]) -> dict:
        """The check of a linear part with terms of first order or of order > 2 (see
        :meth:`stability`): ``|1 + dt sigma| <= 1 + dt max(c_u, 0)`` on the frequency grid."""
        sigma = self.rhs.linear_symbol(linear)
        # Rounding of the symbol: a few units in the last place of its largest possible size.
        size = self.rhs.linear_symbol_bound(linear)
        rounding = 64 * 2.0**-52 * size
        allowed = max(reaction, 0.0)
        excess = sigma.real - allowed                       # Re sigma - c+: <= 0 for any dt > 0
        spread = np.abs(sigma) ** 2 - allowed**2            # |sigma|^2 - c+^2
        grows = (excess > rounding) | ((excess >= -rounding) & (spread > rounding * size))
        limited = (excess < -rounding) & (spread > rounding * size)
        max_dt = float((-2.0 * excess[limited] / spread[limited]).min()) if limited.any() else None
        terms = ", ".join(f"{name} {c:+.3g}" for name, c in other.items())
        # 2 dt / max_dt (breaks_upper_bound: dt above max_dt); with no bound on dt, the largest
        # decay rate, as in the anisotropic check (no frequency decays: at most 0).
        rate = (2.0 * self.dt / max_dt if max_dt is not None
                else max(0.0, float((-self.dt * sigma.real).max())))
        report.update(max_dt=max_dt, max_rate_dt=rate)
        if grows.any():
            report.update(stable=False, reason=(
                f"the linear part (with {terms}) amplifies some frequencies whatever dt: "
                f"anti-diffusion, or a first- or third-order term that explicit Euler with these "
                f"stencils amplifies (|1 + dt sigma| > 1 for every dt > 0)"))
            return report
        upper = max_dt is None or self.dt <= max_dt * (1.0 + STABILITY_RTOL)
        report["stable"] = bool(upper)
        if not upper:
            report["reason"] = (f"dt = {self.dt:g} is above the explicit Euler bound of the "
                                f"linear part (with {terms}): |1 + dt sigma| <= 1 needs "
                                f"dt <= {max_dt:g}")
        return report

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if version is None or version < 2:
            for key in [k for k in state_dict if k.startswith(prefix + "F.")]:
                state_dict[prefix + "rhs." + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dt={self.dt}"


class EulerFlow(nn.Module):
    """``steps`` chained :class:`EulerStep` s sharing one ``F`` (the paper's ConvInt, Fig. 5):
    ``u(0) -> u(T)``.

    Args:
        step: the Euler step.
        steps: number of steps; ``T = steps * step.dt`` (see :func:`steps_for`).
        check_finite: raise :class:`~eqpdenet.errors.NonFiniteStateError` naming the first
            non-finite state (after the last step: the states are checked on the device).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``, the state at ``T``; where the step's
    right-hand side declares its entry checks (``step.rhs.enter``, as :class:`EulerStep` reads
    them), the fields it takes, e.g. ``(B, C, N, H, W)`` of an
    :class:`~eqpdenet.pde.m2_rhs.M2SystemRHS` on M2.
    """

    _input_checked = False  # while compiling only: see eqpdenet.checks.input_checked

    def __init__(self, step: EulerStep, steps: int, check_finite: bool = True):
        super().__init__()
        # A right-hand side where the step is due failed at the first call (and in repr) with
        # "'EulerFlow' object has no attribute 'name'".
        require(isinstance(step, nn.Module) and hasattr(step, "dt") and hasattr(step, "name"),
                "step", f"must be an Euler step (an EulerStep, or a module with dt and name), got "
                f"{type(step).__name__}" + ("; wrap a right-hand side: EulerFlow(EulerStep(rhs, "
                                            "dt), steps)" if isinstance(step, nn.Module) else ""))
        self.step = step
        self.steps = require_int(steps, "steps", 0, maximum=MAX_STEPS)
        self.check_finite = bool(check_finite)

    @property
    def T(self) -> float:
        return self.steps * self.step.dt

    @property
    def name(self) -> str:
        return self.step.name

    def forward(self, u: Tensor, return_trajectory: bool = False) -> Tensor:
        """``u -> u(T)``; with ``return_trajectory``, ``(steps + 1, *u.shape)``.

        Checks ``u`` (:mod:`eqpdenet.checks`: shape, device, finite values, dtype) once (not
        inside :class:`input_checked`): by the step's right-hand side's own entry check where it
        has one (``step.rhs.enter``: the fields it takes, as :class:`EulerStep` checks them),
        else as images ``(B, C, H, W)``.
        """
        if is_input_checked(self):
            return self.integrate(u, return_trajectory)
        # The step's own check, as EulerStep.forward reads it: the 4-D image check alone refused
        # the (B, C, N, H, W) fields of an M2 step, blaming their shape (round 20).
        enter = getattr(getattr(self.step, "rhs", None), "enter", None)
        if enter is None:
            check_images(u, "u")
            check_device(u, self, "u")
            values = check_values(u, "u")
            x = match_dtype(u, module_dtype(self), "u")
        else:
            if isinstance(u, Tensor):
                check_device(u, self, "u")  # naming the flow, as above, before the step's check
            values, x = None, enter(u)
        try:
            return self.integrate(x, return_trajectory).to(u.dtype)
        except NonFiniteStateError as error:
            if values is None:  # the range of the finite input: read only on this failure
                values = check_values(u, "u")
            raise error.with_hint(input_range_hint(*values, self)) from None

    def integrate(self, u: Tensor, return_trajectory: bool = False) -> Tensor:
        """:meth:`forward` without the input check (for callers that checked ``u`` already)."""
        trajectory = [u] if return_trajectory else None
        finite = []
        # an exported graph reports nothing; under vmap no value can be read
        check = self.check_finite and not exporting() and not vmapped(u)
        with input_checked(self.step):
            for _ in range(self.steps):
                u = self.step(u)
                if check:
                    finite.append(torch.isfinite(u).all())  # on the device: no sync per step
                if trajectory is not None:
                    trajectory.append(u)
        if finite:
            report_non_finite([self.name], [self.step.dt], first_failed_step(finite))
        return torch.stack(trajectory) if trajectory is not None else u

    def extra_repr(self) -> str:
        return f"steps={self.steps}, T={self.T:g}"


#: The paper's names (Figs. 4 and 5).
EulerConv = EulerStep
ConvInt = EulerFlow
