"""Measuring equivariance: how far ``Phi(g . f)`` is from ``g . Phi(f)``, and against what.

Protocol (``docs/equivariance.md`` states it with the measured numbers):

* **Error.** For a map ``Phi`` (one PDE, a PDE layer, a convolution), images ``f`` and a group
  element ``g`` acting by push-forward (:mod:`eqpdenet.geometry`), the *relative equivariance
  error* is

      E(Phi, g) = || M (Phi(g . f) - g . Phi(f)) || / || M Phi(f) ||

  with the Euclidean norm taken over the whole batch (all images, channels and pixels together)
  and ``M`` the indicator of a *central disk* (radius ``0.35 x`` the image side by default): the
  corners of a rotated image leave the frame (``g . f`` is zero-filled there), so an unmasked
  error would measure the frame, not the map.
* **References.** The identity map has ``E = 0`` *exactly* for every ``g`` (both sides are the
  same resampling of ``f``), so it says nothing about interpolation. The *interpolation floor*
  is the round trip ``|| M (g^{-1} . (g . f) - f) || / || M f ||``: what one resampling forth and
  back costs on these inputs. The *non-equivariant reference* is a seeded random 3x3
  convolution (:mod:`eqpdenet.analysis.references`). A layer is as equivariant as the grid
  allows when its ``E`` is of the order of the interpolation floor and far below the random
  convolution's.
* **Exact group elements.** Rotations by multiples of 90 degrees (of square images) map pixel
  centres onto pixel centres and are applied with :func:`torch.rot90`, which is exactly
  :func:`eqpdenet.geometry.rotate` there; at those angles no interpolation is involved, so an
  equivariant map must give ``E ~ 1e-7`` (float32 round-off) and a non-equivariant one cannot
  hide behind interpolation error: :func:`quarter_turn_check` uses that to flag maps.

Everything here is deterministic (seeded generators, no data augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..geometry import affine_warp, pixel_coordinates, rotate, rotation_matrix, scale, translate

__all__ = [
    "DISK_FRACTION",
    "Transform",
    "central_disk",
    "equivariance_error",
    "interpolation_floor",
    "layer_quarter_turn_report",
    "model_invariance",
    "quarter_turn_check",
    "similarity",
]

#: Default radius of the measurement disk, as a fraction of the image side.
DISK_FRACTION = 0.35


# ----------------------------------------------------------------------------- group elements


@dataclass(frozen=True)
class Transform:
    """A group element ``p -> A p + t`` acting on images, with a printable name.

    ``kind`` is ``"rotation"`` (``value`` in degrees), ``"scale"`` (``value`` = lambda),
    ``"translation"`` (``value`` = ``(t_x, t_y)`` in pixels of the *original* grid; on an image
    upsampled ``k`` times the shift is ``k`` times as many pixels) or ``"affine"``.
    """

    kind: str
    value: float | tuple[float, float]
    label: str = ""

    @staticmethod
    def rotation(degrees: float) -> Transform:
        return Transform("rotation", float(degrees), f"rot {degrees:g}°")

    @staticmethod
    def scale(factor: float) -> Transform:
        return Transform("scale", float(factor), f"scale {factor:g}")

    @staticmethod
    def translation(tx: float, ty: float) -> Transform:
        return Transform("translation", (float(tx), float(ty)), f"shift ({tx:g}, {ty:g})")

    @property
    def is_quarter_turn(self) -> bool:
        return self.kind == "rotation" and float(self.value) % 90.0 == 0.0

    def __call__(self, images: Tensor, *, pixels_per_unit: float = 1.0) -> Tensor:
        """Apply to ``(B, C, H, W)`` images; ``pixels_per_unit`` scales translations."""
        if self.kind == "rotation":
            if self.is_quarter_turn and images.shape[-1] == images.shape[-2]:
                return torch.rot90(images, k=int(round(float(self.value) / 90.0)) % 4,
                                   dims=(-2, -1))
            return rotate(images, math.radians(float(self.value)))
        if self.kind == "scale":
            return scale(images, float(self.value))
        if self.kind == "translation":
            shift = torch.tensor(self.value, dtype=images.dtype) * pixels_per_unit
            return translate(images, shift)
        raise ConfigError(f"unknown transform kind {self.kind!r}")

    def inverse(self) -> Transform:
        if self.kind == "rotation":
            return Transform.rotation(-float(self.value))
        if self.kind == "scale":
            return Transform.scale(1.0 / float(self.value))
        if self.kind == "translation":
            return Transform.translation(-self.value[0], -self.value[1])
        raise ConfigError(f"unknown transform kind {self.kind!r}")


def similarity(images: Tensor, angle_degrees: float = 0.0, factor: float = 1.0,
               shift: Sequence[float] = (0.0, 0.0)) -> Tensor:
    """``p -> factor R(angle) p + shift`` by :func:`eqpdenet.geometry.affine_warp` (for figures)."""
    matrix = factor * rotation_matrix(math.radians(angle_degrees), dtype=images.dtype)
    return affine_warp(images, matrix, torch.tensor(shift, dtype=images.dtype))


# ----------------------------------------------------------------------------- the measurement


def central_disk(height: int, width: int | None = None,
                 radius_fraction: float = DISK_FRACTION) -> Tensor:
    """Boolean ``(H, W)`` mask of the pixels within ``radius_fraction * min(H, W)`` of the centre."""
    width = width or height
    x, y = pixel_coordinates(height, width, dtype=torch.float64)
    return x**2 + y**2 <= (radius_fraction * min(height, width)) ** 2


def _masked_norm(t: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        t = t * mask.to(t.dtype)
    return torch.linalg.vector_norm(t.flatten())


@torch.no_grad()
def equivariance_error(phi: Callable[[Tensor], Tensor], images: Tensor,
                       transform: Callable[[Tensor], Tensor],
                       mask: Tensor | None = None) -> float:
    """``|| M (phi(g f) - g phi(f)) || / || M phi(f) ||`` over the whole batch (see module doc).

    Args:
        phi: a map ``(B, C, H, W) -> (B, C', H, W)`` (a module or any callable).
        images: ``(B, C, H, W)``.
        transform: the group action ``g`` on images (a :class:`Transform` or any callable); it
            is applied to inputs and outputs alike.
        mask: boolean ``(H, W)`` (default: :func:`central_disk`); ``None`` is not "no mask":
            pass ``torch.ones(H, W, dtype=torch.bool)`` for the whole frame.
    """
    if mask is None:
        mask = central_disk(images.shape[-2], images.shape[-1])
    out = phi(images)
    difference = phi(transform(images)) - transform(out)
    denominator = _masked_norm(out, mask)
    if denominator == 0:
        return 0.0 if _masked_norm(difference, mask) == 0 else math.inf
    return float(_masked_norm(difference, mask) / denominator)


@torch.no_grad()
def interpolation_floor(images: Tensor, transform: Transform, mask: Tensor | None = None,
                        **kwargs) -> float:
    """``|| M (g^{-1} (g f) - f) || / || M f ||``: the cost of resampling forth and back."""
    if mask is None:
        mask = central_disk(images.shape[-2], images.shape[-1])
    back = transform.inverse()(transform(images, **kwargs), **kwargs)
    return float(_masked_norm(back - images, mask) / _masked_norm(images, mask))


def quarter_turn_check(phi: Callable[[Tensor], Tensor], images: Tensor,
                       tolerance: float = 1e-4) -> dict:
    """Flag non-equivariant maps: ``E`` at the exact rotations by 90, 180, 270 degrees.

    No interpolation is involved, so a rotation-equivariant map (on the pixel grid) has
    ``E ~ 1e-7``; returns ``{"error": max E, "equivariant": error <= tolerance}``.
    """
    errors = [equivariance_error(phi, images, Transform.rotation(a)) for a in (90, 180, 270)]
    return {"error": max(errors), "equivariant": max(errors) <= tolerance}


@torch.no_grad()
def model_invariance(model: nn.Module, images: Tensor, transform: Transform) -> dict:
    """Fraction of unchanged predictions and relative logit change ``||l(g f) - l(f)|| / ||l(f)||``."""
    model.eval()
    logits, moved = model(images), model(transform(images))
    unchanged = float((logits.argmax(1) == moved.argmax(1)).double().mean())
    change = float(torch.linalg.vector_norm(moved - logits) / torch.linalg.vector_norm(logits))
    return {"unchanged": unchanged, "logit_change": change}


def layer_quarter_turn_report(layer: nn.Module, images: Tensor) -> list[dict]:
    """:func:`quarter_turn_check` of each PDE of a layer and of the layer."""
    rows = [{"map": pde.name, **quarter_turn_check(pde, images)} for pde in layer.pdes]
    rows.append({"map": "layer", **quarter_turn_check(layer, images)})
    return rows
