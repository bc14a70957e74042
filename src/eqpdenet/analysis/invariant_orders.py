"""How fast the discrete invariants converge, and how rotation-invariant they are, per stencil.

For an analytic function ``f`` and a point ``x0``, the samples ``f(x0 + R_theta p)`` on the grid
``p = h (i, j)`` are ``f`` seen in a frame rotated by ``theta``; the jet computed from them at
``p = 0`` approximates the jet of ``f`` at ``x0`` in that frame, and an invariant of it
approximates ``I[f](x0)`` *whatever* ``theta`` is. No image is resampled: both errors below are
pure discretisation errors of the stencil.

* **Rotation error** ``E_rot(h)``: the spread of ``I`` over the frames, ``max_{x0, theta}
  |I_h^theta(x0) - mean_theta I_h^theta(x0)|``, divided by ``max_{x0} |I(x0)|``. It vanishes to
  the order at which the stencil's error is rotation-covariant.
* **Error** ``E(h)``: ``max_{x0, theta} |I_h^theta(x0) - I(x0)|`` (same scale), against the
  invariants of the exact jet (automatic differentiation of ``f``).

The orders are ``log2(E(h) / E(h / 2))``. The function is the issue's test function
``exp(-(x^2 + 2 y^2)) + 0.3 sin(1.7 x + 0.4 y)``; points, angles and spacings are fixed, so the
numbers are deterministic. Everything is in float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..pde.invariants import available_invariant_sets, get_invariant_set
from ..pde.stencils import available_stencils, derivative_multi_indices, jet, stencil_has_scale

__all__ = ["InvariantOrder", "analytic_jet", "invariant_orders", "test_function"]

#: Grid spacings of the measurement (each half the previous).
SPACINGS = (0.2, 0.1, 0.05, 0.025)
#: Frames: 12 angles in [0, 90) degrees (quarter turns are exact for the symmetric stencils).
ANGLES = tuple(math.radians(7.5 * k) for k in range(12))


def test_function(x: Tensor, y: Tensor) -> Tensor:
    """``exp(-(x^2 + 2 y^2)) + 0.3 sin(1.7 x + 0.4 y)`` (the issue's function)."""
    return torch.exp(-(x**2 + 2 * y**2)) + 0.3 * torch.sin(1.7 * x + 0.4 * y)


test_function.__test__ = False  # not a pytest test (doctest collection imports this module)


def analytic_jet(function: Callable[[Tensor, Tensor], Tensor], points: Tensor) -> Tensor:
    """The exact 2-jet ``(N, 6)`` of ``function(x, y)`` at ``points`` ``(N, 2)`` (autograd)."""
    from torch.func import grad, hessian, vmap

    scalar = lambda p: function(p[0], p[1])  # noqa: E731
    values = vmap(scalar)(points)
    gradients = vmap(grad(scalar))(points)
    hessians = vmap(hessian(scalar))(points)
    return torch.stack([values, gradients[:, 0], gradients[:, 1], hessians[:, 0, 0],
                        hessians[:, 0, 1], hessians[:, 1, 1]], dim=1)


def _rotated_jets(function, points: Tensor, angles: Sequence[float], spacing: float,
                  stencil: str) -> Tensor:
    """Jets ``(N, A, 6)`` at ``points`` from samples in frames rotated by ``angles``."""
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64) * spacing
    dy, dx = torch.meshgrid(-offsets, offsets, indexing="ij")  # rows downwards: y decreases
    patches = []
    for angle in angles:
        c, s = math.cos(angle), math.sin(angle)
        x = points[:, 0, None, None] + c * dx - s * dy
        y = points[:, 1, None, None] + s * dx + c * dy
        patches.append(function(x, y))
    stack = torch.stack(patches, dim=1).reshape(-1, 1, 2 * radius + 1, 2 * radius + 1)
    jets = jet(stack, 2, stencil, spacing)[:, 0, :, radius, radius]
    # the jet is in the rotated frame; rotating it back is not needed for invariants
    return jets.reshape(len(points), len(angles), len(derivative_multi_indices(2)))


@dataclass
class InvariantOrder:
    """Errors of one invariant with one stencil at each spacing, and the observed orders."""

    invariant_set: str
    invariant: str
    stencil: str
    rotation_invariant: bool
    spacings: tuple[float, ...]
    rotation_error: tuple[float, ...]
    error: tuple[float, ...]

    @staticmethod
    def _orders(values) -> tuple[float, ...]:
        return tuple(math.log2(a / b) if a > 0 and b > 0 else math.nan
                     for a, b in zip(values, values[1:], strict=False))

    @property
    def rotation_orders(self) -> tuple[float, ...]:
        return self._orders(self.rotation_error)

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders(self.error)


@torch.no_grad()
def invariant_orders(sets: Sequence[str] | None = None, stencils: Sequence[str] | None = None,
                     spacings: Sequence[float] = SPACINGS, points: int = 24, seed: int = 0,
                     ratio_eps: float = 0.1,
                     ratio_regularisation: str = "covariant") -> list[InvariantOrder]:
    """Rotation error and error against the exact invariants, per set, invariant and stencil.

    Sets default to every registered order-2 set, stencils to every registered finite-difference
    family (not those with a scale of their own, such as ``gaussian``, whose jet converges to the
    derivatives of the blurred function, not of ``f``). ``points`` points are drawn (seeded) in
    the disk of radius 0.8; the scale of each invariant is its largest exact magnitude over them.

    ``None`` means every set or stencil; an empty list is a
    :class:`~eqpdenet.errors.ConfigError` (it meant every one, silently), as are ``points``
    below 1 and fewer than two ``spacings`` (an order compares two).
    """
    sets = None if sets is None else list(sets)
    stencils = None if stencils is None else list(stencils)
    for name, given in (("sets", sets), ("stencils", stencils)):
        if given is not None and not given:
            raise ConfigError(f"{name} is empty: name at least one, or pass None for every one")
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 1:
        raise ConfigError(f"points must be a whole number >= 1, got {points!r}")
    if len(spacings) < 2:
        raise ConfigError(f"spacings must hold at least two spacings (an order compares two), "
                          f"got {tuple(spacings)}")
    for index, h in enumerate(spacings):
        if not (isinstance(h, numbers.Real) and math.isfinite(h) and h > 0):
            raise ConfigError(f"spacings[{index}] must be a positive number, got {h!r}")
    if sets is None:
        sets = [n for n in available_invariant_sets("plane") if get_invariant_set(n).order == 2]
    if stencils is None:
        stencils = [s for s in available_stencils() if not stencil_has_scale(s)]
    for name in sets:
        get_invariant_set(name)  # an unknown name is refused before any jet is computed
    generator = torch.Generator().manual_seed(seed)
    radius = 0.8 * torch.sqrt(torch.rand(points, generator=generator, dtype=torch.float64))
    phase = 2 * math.pi * torch.rand(points, generator=generator, dtype=torch.float64)
    centres = torch.stack([radius * torch.cos(phase), radius * torch.sin(phase)], dim=1)
    exact_jet = analytic_jet(test_function, centres)[:, :, None, None]
    rows = []
    for stencil in stencils:
        jets = {h: _rotated_jets(test_function, centres, ANGLES, h, stencil) for h in spacings}
        for name in sets:
            invariant_set = get_invariant_set(name)
            exact = invariant_set(exact_jet, ratio_eps, ratio_regularisation)[..., 0, 0]  # (N, K)
            scale = exact.abs().amax(0)
            discrete = {h: invariant_set(j.permute(0, 2, 1)[..., None], ratio_eps,
                                         ratio_regularisation)[..., 0]
                        for h, j in jets.items()}  # (N, K, A)
            for k, invariant in enumerate(invariant_set.names):
                spread, error = [], []
                for h in spacings:
                    values = discrete[h][:, k, :]
                    spread.append(float((values - values.mean(1, keepdim=True)).abs().max()
                                        / scale[k]))
                    error.append(float((values - exact[:, k, None]).abs().max() / scale[k]))
                rows.append(InvariantOrder(name, invariant, stencil,
                                           "rotations" in invariant_set.invariant_under,
                                           tuple(spacings), tuple(spread), tuple(error)))
    return rows


def orders_table(rows: Sequence[InvariantOrder]) -> str:
    """Markdown: per set and invariant, each stencil's rotation error at the finest spacing and
    its observed order (between the two finest spacings), then the same for the error. No rows:
    a :class:`~eqpdenet.errors.ConfigError`."""
    if not rows:
        raise ConfigError("orders_table: no rows to tabulate")
    stencils = list(dict.fromkeys(r.stencil for r in rows))
    h = rows[0].spacings
    lines = [f"Rotation error (spread over {len(ANGLES)} frames) at h = {h[-1]:g} and its order "
             f"log2(E(h)/E(h/2)) between h = {h[-2]:g} and {h[-1]:g}; then the error against the "
             f"exact invariants, the same way. Spacings {', '.join(f'{v:g}' for v in h)}.", "",
             "| set | invariant | " + " | ".join(f"{s}: rot. error (order)" for s in stencils)
             + " | " + " | ".join(f"{s}: error (order)" for s in stencils) + " |",
             "|---|---|" + "---:|" * (2 * len(stencils))]
    by_key = {(r.invariant_set, r.invariant, r.stencil): r for r in rows}
    for key in dict.fromkeys((r.invariant_set, r.invariant) for r in rows):
        first = by_key[(*key, stencils[0])]
        label = key[0] + ("" if first.rotation_invariant else " (not rotation invariant)")
        cells = [label, f"`{key[1]}`"]
        for field in ("rotation", ""):
            for stencil in stencils:
                r = by_key[(*key, stencil)]
                errors = r.rotation_error if field else r.error
                orders = r.rotation_orders if field else r.orders
                cells.append(f"{errors[-1]:.1e} ({orders[-1]:.1f})" if errors[-1] > 1e-13
                             else f"{errors[-1]:.0e} (exact)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
