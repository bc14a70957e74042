"""Explicit Euler integration of ``du/dt = F(u)`` for any right-hand side module ``F``.

For a right-hand side ``F`` (e.g. :class:`~eqpdenet.pde.rhs.InvariantRHS`, eq. (6) of the paper),

    u_0 = f,        u_{l+1} = u_l + dt * F(u_l),        l = 0 .. steps - 1           (eq. (9))

with ``steps = floor(T / dt)`` (:func:`steps_for`). :class:`EulerStep` is one step (the paper's
*EulerConv*), :class:`EulerFlow` the chain ``u(0) -> u(T)`` sharing one ``F`` (the paper's
*ConvInt*; both paper names remain as aliases). ``dt`` and ``T`` are in the PDE's time unit; space
is measured in units of the grid spacing of ``F``'s jet.

Stability. Explicit Euler with learned coefficients can blow up. For the diffusion part
``a (u_xx + u_yy)`` of a linear ``F`` the scheme is stable only if ``0 <= a dt <= 2 / lambda_max``
where ``lambda_max`` is the largest eigenvalue of the discrete ``-Laplacian`` (``8 / h^2`` for the
``central`` stencil, i.e. ``a dt <= h^2 / 4``): :meth:`EulerStep.stability` reports it for the
current coefficients. This bound is *checked and reported*, not enforced, because the coefficients
are learned and the other (nonlinear) terms have no such simple bound. What is enforced: by
default every state is checked, and a non-finite one raises
:class:`~eqpdenet.errors.NonFiniteStateError` naming the PDE and the first bad step, never NaN or
inf passed on silently. The check stays on the device during the steps (no host synchronisation
per step) and is read once after the last one (:func:`~eqpdenet.checks.report_non_finite`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import (
    check_images,
    check_values,
    exporting,
    first_failed_step,
    match_dtype,
    module_dtype,
    report_non_finite,
    require_int,
    require_nonnegative,
    require_positive,
)
from ..errors import NonFiniteStateError

__all__ = ["ConvInt", "EulerConv", "EulerFlow", "EulerStep", "input_range_hint", "steps_for"]


def input_range_hint(low: float, high: float) -> str:
    """The explanation of a :class:`~eqpdenet.errors.NonFiniteStateError` from a finite input
    with values in ``[low, high]``: the scheme, with the input's range to judge by."""
    return (f"{NonFiniteStateError.SCHEME_HINT} (The input was finite, with values in "
            f"[{low:.4g}, {high:.4g}]: if that is not the range the PDE was made for, rescale "
            f"the input.)")


def steps_for(T: float, dt: float) -> int:
    """``floor(T / dt)``, robust to rounding (``T=0.3, dt=0.1`` gives 3, not 2).

    Example:
        >>> steps_for(0.3, 0.1)
        3
    """
    dt = require_positive(dt, "dt")
    T = require_nonnegative(T, "T")
    return int(math.floor(T / dt + 1e-9))


class EulerStep(nn.Module):
    """One explicit Euler step ``u <- u + dt F(u)`` (eq. (9); the paper's EulerConv, Fig. 4).

    Args:
        rhs: the right-hand side, any module ``(B, C, H, W) -> (B, C, H, W)``.
        dt: time step.
        name: label used in errors and reports (default: the invariant set's name, if any).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    # Version 2 moved F into ``rhs`` (keys ``F.*`` became ``rhs.F.*``); older state dicts load.
    _version = 2

    def __init__(self, rhs: nn.Module, dt: float = 0.1, name: str | None = None):
        super().__init__()
        self.rhs = rhs
        self.dt = require_positive(dt, "dt")
        invariant_set = getattr(rhs, "invariant_set", None)
        self.name = name or (invariant_set.name if invariant_set is not None else type(rhs).__name__)

    def forward(self, u: Tensor) -> Tensor:
        # A right-hand side that can take the whole step in one fused operator does so.
        fused = getattr(self.rhs, "euler_step", None)
        step = fused(u, self.dt) if fused is not None else None
        return step if step is not None else u + self.dt * self.rhs(u)

    def stability(self) -> dict:
        """The linear diffusion stability check: ``0 <= a dt <= 2 / lambda_max``.

        ``{"pde", "dt", "diffusivity", "max_a_dt", "stable"}``; ``stable`` is None where the
        right-hand side has no diffusion coefficient to check.
        """
        diffusivity = getattr(self.rhs, "diffusivity", lambda: None)()
        eigenvalue = getattr(self.rhs, "laplacian_max_eigenvalue", None)
        bound = 2.0 / eigenvalue() if eigenvalue is not None else math.nan
        report = {"pde": self.name, "dt": self.dt, "diffusivity": diffusivity, "max_a_dt": bound}
        report["stable"] = None if diffusivity is None else bool(0.0 <= diffusivity * self.dt <= bound)
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

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``, the state at ``T``.
    """

    def __init__(self, step: EulerStep, steps: int, check_finite: bool = True):
        super().__init__()
        self.step = step
        self.steps = require_int(steps, "steps", 0)
        self.check_finite = bool(check_finite)

    @property
    def T(self) -> float:
        return self.steps * self.step.dt

    @property
    def name(self) -> str:
        return self.step.name

    def forward(self, u: Tensor, return_trajectory: bool = False) -> Tensor:
        """``(B, C, H, W) -> u(T)``; with ``return_trajectory``, ``(steps + 1, B, C, H, W)``.

        Checks ``u`` (:mod:`eqpdenet.checks`: finite values, dtype) once.
        """
        check_images(u, "u")
        values = check_values(u, "u")
        x = match_dtype(u, module_dtype(self), "u")
        try:
            return self.integrate(x, return_trajectory).to(u.dtype)
        except NonFiniteStateError as error:
            raise error.with_hint(input_range_hint(*values)) from None

    def integrate(self, u: Tensor, return_trajectory: bool = False) -> Tensor:
        """:meth:`forward` without the input check (for callers that checked ``u`` already)."""
        trajectory = [u] if return_trajectory else None
        finite = []
        check = self.check_finite and not exporting()  # an exported graph reports nothing
        for _ in range(self.steps):
            u = self.step(u)
            if check:
                finite.append(torch.isfinite(u).all())  # stays on the device: no sync per step
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
