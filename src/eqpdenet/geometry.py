"""Axis and angle conventions of eqpdenet, stated once, and group actions on images.

Conventions (every module follows these; ``tests/test_geometry.py`` pins them down):

* Images are tensors of shape ``(batch, channels, height, width)``.
* Pixel ``(row i, column j)`` of an ``H x W`` image with grid spacing ``h`` sits at

      x = (j - (W - 1) / 2) * h,        y = ((H - 1) / 2 - i) * h,

  so ``x`` grows to the right along a row, ``y`` grows *upwards* (against the row index), and
  the origin is the centre of the image. ``(x, y)`` is right-handed as the image is displayed.
* Angles are in radians; a positive angle rotates counterclockwise as displayed. A rotation by
  ``+pi/2`` is exactly ``torch.rot90(u, k=1, dims=(-2, -1))`` for square images.
* A group element ``g: p -> A p + t`` (``A`` a 2x2 matrix, ``t`` in pixels) acts on an image by
  push-forward, ``(g . f)(p) = f(g^{-1} p)``: the content moves with ``g``. A translation
  ``t = (1, 0)`` moves the content one pixel to the right, ``t = (0, 1)`` one pixel up.
* Resampling uses :func:`torch.nn.functional.grid_sample` with ``align_corners=False``, bilinear
  interpolation and zero fill by default. With ``align_corners=False`` the normalised point
  ``(0, 0)`` is the pixel-grid centre ``((W - 1) / 2, (H - 1) / 2)``, which is the centre above,
  so rotations by multiples of ``pi/2`` of square images map pixel centres onto pixel centres.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_images
from .errors import InputError

__all__ = [
    "halvings_stay_even",
    "pixel_coordinates",
    "affine_warp",
    "rotate",
    "rotate_about_mass",
    "center_of_mass",
    "scale",
    "translate",
    "rotation_matrix",
    "degrees",
    "working_dtype",
]


def pixel_coordinates(
    height: int,
    width: int,
    spacing: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Return ``(x, y)``, each of shape ``(height, width)``: the coordinates of the pixel centres.

    ``x`` grows along columns (to the right), ``y`` grows against the row index (upwards); both
    are zero at the image centre and measured in units of ``spacing`` per pixel.
    """
    dtype = dtype or torch.get_default_dtype()
    cols = (torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2) * spacing
    rows = ((height - 1) / 2 - torch.arange(height, dtype=dtype, device=device)) * spacing
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return x, y


def rotation_matrix(angle: Tensor | float, *, dtype=None, device=None) -> Tensor:
    """Counterclockwise rotation matrices, shape ``(*angle.shape, 2, 2)``; ``angle`` in radians
    (any real value: one beyond a full turn is reduced modulo 2π in float64 first, so that 37° +
    10⁵ turns gives 37°'s matrix rather than float32's rounding of a 6e5-radian angle)."""
    dtype = dtype or torch.get_default_dtype()
    angle = (angle.to(device) if isinstance(angle, Tensor) and device is not None
             else torch.as_tensor(angle, device=device) if isinstance(angle, Tensor)
             else torch.as_tensor(angle, dtype=torch.float64, device=device))
    if angle.device.type in ("cpu", "cuda"):  # float64 there; an angle within a turn is unchanged
        wide = angle.to(torch.float64)
        angle = torch.where(wide.abs() > 2 * math.pi, torch.remainder(wide, 2 * math.pi), wide)
    angle = angle.to(dtype)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def affine_warp(
    images: Tensor,
    matrix: Tensor,
    translation: Tensor | None = None,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> Tensor:
    """Push images forward by ``p -> A p + t`` about the image centre: ``out(p) = in(A^{-1}(p - t))``.

    Args:
        images: ``(B, C, H, W)`` floating-point tensor.
        matrix: ``A``, shape ``(2, 2)`` (shared) or ``(B, 2, 2)`` (one per image), in ``(x, y)``
            coordinates as defined in this module (``y`` up).
        translation: ``t`` in pixels, shape ``(2,)`` or ``(B, 2)``, as ``(t_x, t_y)``; default 0.
        mode, padding_mode: passed to :func:`torch.nn.functional.grid_sample`
            (``align_corners=False``).

    Returns:
        ``(B, C, H, W)`` tensor of the same dtype and device. float16 and bfloat16 images are
        warped in float32 (:func:`working_dtype`: the matrix inverse has no half-precision kernel,
        and a sampling grid in float16 is off by up to 0.01 pixel) and returned in their dtype;
        float32 and float64 images are warped in their own. The autograd graph is kept.

    Raises :class:`~eqpdenet.errors.InputError` (a ``ValueError``) where ``matrix`` or
    ``translation`` has another shape.
    """
    check_images(images)
    batch, _, height, width = images.shape
    dtype, device = working_dtype(images.dtype), images.device
    matrix = torch.as_tensor(matrix, dtype=dtype, device=device)
    if matrix.shape == (2, 2):
        matrix = matrix.expand(batch, 2, 2)
    if matrix.shape != (batch, 2, 2):
        raise InputError(f"matrix must have shape (2, 2) or ({batch}, 2, 2), got {tuple(matrix.shape)}")
    if translation is None:
        translation = torch.zeros(batch, 2, dtype=dtype, device=device)
    translation = torch.as_tensor(translation, dtype=dtype, device=device)
    if translation.shape == (2,):
        translation = translation.expand(batch, 2)
    if translation.shape != (batch, 2):
        raise InputError(
            f"translation must have shape (2,) or ({batch}, 2), got {tuple(translation.shape)}"
        )
    # Normalised grid coordinates of affine_grid (align_corners=False) are q = D p with
    # D = diag(2/W, -2/H): x/W-scaled to the right, and the sign flip because rows grow downwards.
    d = torch.tensor([2.0 / width, -2.0 / height], dtype=dtype, device=device)
    inverse = torch.linalg.inv(matrix)
    theta_linear = d[:, None] * inverse / d[None, :]
    theta_shift = -(d * (inverse @ translation[..., None])[..., 0])
    theta = torch.cat([theta_linear, theta_shift[..., None]], dim=-1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.to(dtype), grid, mode=mode, padding_mode=padding_mode,
                        align_corners=False)
    return out.to(images.dtype)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the warps compute in for images of ``dtype``: float32 for float16 and bfloat16,
    else ``dtype`` itself.

    Example:
        >>> working_dtype(torch.float16), working_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def rotate(images: Tensor, angle: Tensor | float, **kwargs) -> Tensor:
    """Rotate images counterclockwise (as displayed) by ``angle`` radians about their centre.

    ``angle`` is a float or a ``(B,)`` tensor (one angle per image).
    """
    check_images(images)
    return affine_warp(images, rotation_matrix(angle, dtype=working_dtype(images.dtype),
                                               device=images.device), **kwargs)


def center_of_mass(images: Tensor) -> Tensor:
    """``(B, 2)`` float64: the (row, column) of each image's centre of mass, of the weights
    ``sum_c max(f_c, 0)`` (zero is the blank value), rows and columns numbered from 0; NaN for an
    image without weight. ``images``: ``(B, C, H, W)``. The sums run in float64."""
    weights = images.detach().to(torch.float64).clamp_min(0).sum(1)          # (B, H, W)
    rows = torch.arange(images.shape[-2], dtype=torch.float64, device=images.device)
    cols = torch.arange(images.shape[-1], dtype=torch.float64, device=images.device)
    mass = weights.sum((-2, -1))
    return torch.stack([(weights.sum(-1) * rows).sum(-1) / mass,
                        (weights.sum(-2) * cols).sum(-1) / mass], dim=1)


def rotate_about_mass(images: Tensor, angle: Tensor | float, **kwargs) -> Tensor:
    """Rotate images counterclockwise by ``angle`` radians, each about its own centre of mass
    (:func:`center_of_mass`; the image centre for an image without weight): ``p -> R (p - c) +
    c``, so the centre of mass stays where it was (up to the resampling) and the image's place in
    its frame says nothing about the angle."""
    check_images(images)
    batch, _, height, width = images.shape
    rows_cols = center_of_mass(images)
    frame_centre = torch.full_like(rows_cols, (height - 1) / 2)
    frame_centre[:, 1] = (width - 1) / 2  # no host-to-device copy (see recenter)
    rows_cols = torch.where(torch.isfinite(rows_cols), rows_cols, frame_centre)
    dtype = working_dtype(images.dtype)
    centre = torch.stack([rows_cols[:, 1] - (width - 1) / 2, (height - 1) / 2 - rows_cols[:, 0]],
                         dim=1).to(dtype)                                    # (x, y) about the centre
    matrix = rotation_matrix(angle, dtype=dtype, device=images.device)
    matrix = matrix.expand(batch, 2, 2) if matrix.dim() == 2 else matrix
    translation = centre - (matrix @ centre[..., None])[..., 0]
    return affine_warp(images, matrix, translation, **kwargs)


def scale(images: Tensor, factor: Tensor | float, **kwargs) -> Tensor:
    """Scale images about their centre, ``(x, y) -> (factor x, factor y)``; float or ``(B,)``."""
    check_images(images)
    dtype = working_dtype(images.dtype)
    factor = torch.as_tensor(factor, dtype=dtype, device=images.device)
    eye = torch.eye(2, dtype=dtype, device=images.device)
    return affine_warp(images, factor[..., None, None] * eye, **kwargs)


def translate(images: Tensor, shift: Tensor, **kwargs) -> Tensor:
    """Translate images by ``shift = (t_x, t_y)`` pixels (``(2,)`` or ``(B, 2)``; ``t_y`` upwards)."""
    check_images(images)
    eye = torch.eye(2, dtype=working_dtype(images.dtype), device=images.device)
    return affine_warp(images, eye, shift, **kwargs)


def degrees(angle_radians: float) -> float:
    """Radians to degrees (kept here so that every conversion goes through one place)."""
    return angle_radians * 180.0 / math.pi


def halvings_stay_even(size: int, poolings: int) -> bool:
    """Whether a square map of ``size`` pixels has an even size before each of ``poolings``
    2x2 poolings (each halving it, rounding down). A 2x2 pooling commutes with quarter turns
    only then: on an odd size it drops the last row and column, which a turn moves elsewhere.

    Example:
        >>> halvings_stay_even(28, 2), halvings_stay_even(28, 3)
        (True, False)
    """
    for _ in range(poolings):
        if size % 2:
            return False
        size //= 2
    return True
