"""Analytic test functions and patch-wise jets shared by the tests."""

from __future__ import annotations

import torch

from eqpdenet.stencils import jet


def jet_at(function, points: torch.Tensor, spacing: float, stencil: str = "central",
           order: int = 2) -> torch.Tensor:
    """Numerical jet of an analytic ``function(x, y)`` at arbitrary ``points`` ``(N, 2)``.

    Samples ``function`` on a small grid of spacing ``spacing`` centred on each point (rows
    downwards, so ``y`` decreases with the row index) and returns the jet at the centre, ``(N, D)``.
    """
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=points.dtype) * spacing
    dy, dx = torch.meshgrid(-offsets, offsets, indexing="ij")
    x = points[:, 0, None, None] + dx
    y = points[:, 1, None, None] + dy
    patches = function(x, y)[:, None]
    return jet(patches, order=order, stencil=stencil, spacing=spacing)[:, 0, :, radius, radius]


def bump(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth, non-symmetric, non-polynomial test function."""
    return (torch.exp(-((x - 0.3) ** 2 + 2.0 * (y + 0.2) ** 2 + 0.5 * x * y))
            + 0.3 * torch.sin(1.3 * x - 0.7 * y + 0.4))


def convex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth, with all second derivatives far from zero near the origin (for ratios)."""
    return torch.exp(0.3 * x + 0.2 * y + 0.4 * x * y + 0.35 * x**2 + 0.25 * y**2)
